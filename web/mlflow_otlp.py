"""Span uploads over OTLP/HTTP (``POST /mlflow/v1/traces``), answered by mlpd under its ownership rules.

MLflow 3's tracing client sends each finished span here (with the experiment in the
``X-Mlflow-Experiment-Id`` header) before it creates the trace itself; a stock ``mlflow
server`` serves this route from its FastAPI half, which mlpd does not run. mlpd parses the
upload, checks every trace it names (a member adds spans only to their own traces, and a
trace is created owned by its uploader), and stores the spans through MLflow's tracking
store, as MLflow's own endpoint does. Refusals come in MLflow's error shape.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

from mlpd.tracking import server as tracking
from mlpd.tracking.policy import Refused, canonical_body, protected_key
from mlpd.users import User

MAX_OTLP_BODY = 64 * 1024 * 1024  # compressed and expanded alike
TRACE_TAG_ATTRIBUTE = "mlflow.traceTag."  # a root span's attribute MLflow stores as a trace tag


def _body(environ: dict[str, Any]) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError:
        length = -1
    if length < 0:
        raise Refused(411, "length_required", "a span upload must say its size (Content-Length)")
    if length > MAX_OTLP_BODY:
        raise Refused(413, "too_large", f"span upload over {MAX_OTLP_BODY // 2**20} MiB")
    data = environ["wsgi.input"].read(length)
    encoding = (environ.get("HTTP_CONTENT_ENCODING") or "").strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding not in ("gzip", "deflate"):
        raise Refused(415, "unsupported_encoding", f"Content-Encoding {encoding[:40]!r}: send gzip, deflate or none")
    # Expanded with a cap: a small compressed body must not become gigabytes in the worker.
    for wbits in ((16 + zlib.MAX_WBITS,) if encoding == "gzip" else (zlib.MAX_WBITS, -zlib.MAX_WBITS)):
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, MAX_OTLP_BODY + 1)
        except zlib.error:
            continue
        if len(out) > MAX_OTLP_BODY or inflater.unconsumed_tail:
            raise Refused(413, "too_large", f"span upload expands to over {MAX_OTLP_BODY // 2**20} MiB")
        return out
    raise Refused(400, "invalid_body", f"the {encoding} body could not be expanded")


def export_spans(mount, environ: dict[str, Any], start_response: Callable, user: User) -> list[bytes]:
    """Answer one OTLP trace export: check, store, and reply with an (empty) ExportTraceServiceResponse."""
    media_type = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
    if media_type not in ("application/x-protobuf", "application/json"):
        raise Refused(400, "invalid_content_type", "Content-Type: send application/x-protobuf or application/json (OTLP/HTTP)")
    experiment_id = canonical_body({"experiment_id": (environ.get("HTTP_X_MLFLOW_EXPERIMENT_ID") or "").strip()})["experiment_id"]
    if not experiment_id:
        raise Refused(400, "invalid_field", "X-Mlflow-Experiment-Id: name the experiment the spans belong to")
    if not mount.db.experiment_exists(experiment_id):
        raise Refused(404, "not_found", f"no such experiment {experiment_id!r}")
    run_id = (environ.get("HTTP_X_MLFLOW_RUN_ID") or "").strip()
    try:
        spans = tracking.parse_otlp_spans(_body(environ), media_type)
    except ValueError as exc:
        raise Refused(400, "invalid_body", str(exc)) from None
    if run_id:
        mount._check_owner("run", run_id, user, "span upload linking a run")
    starts: dict[str, int] = {}
    roots: set[str] = set()
    for span in spans:
        starts[span.trace_id] = min(starts.get(span.trace_id, span.start_time_ns), span.start_time_ns)
        if span.parent_id is None:
            roots.add(span.trace_id)
            protected = [k for k in tracking.span_attributes(span)
                         if k.startswith(TRACE_TAG_ATTRIBUTE) and protected_key(k[len(TRACE_TAG_ATTRIBUTE):])]
            if protected and not user.is_admin:
                raise Refused(403, "forbidden", f"span attribute {protected[0]!r} would set a tag only mlpd sets")
    # Every trace that exists is checked before anything is written, so a refused upload creates nothing;
    # then each new one is created owned by the uploader, and checked again (another upload may have won).
    new = {trace_id: start for trace_id, start in starts.items() if mount.db.trace(trace_id) is None}
    for trace_id in sorted(set(starts) - set(new)):
        mount._check_owner("trace", trace_id, user, "span upload")
    for trace_id, start_ns in sorted(new.items()):
        tracking.claim_trace(mount.config, experiment_id, trace_id, user.name, start_ns // 1_000_000)
        mount._check_owner("trace", trace_id, user, "span upload")
    tracking.log_spans(mount.config, experiment_id, spans)
    if run_id and roots:
        tracking.link_traces_to_run(mount.config, sorted(roots), run_id)
    start_response("200 OK", [("Content-Type", "application/x-protobuf"), ("Content-Length", "0")])
    return [b""]
