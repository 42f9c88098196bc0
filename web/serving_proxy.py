"""The stable endpoint of every deployment: /serve/NAME/{invocations,ping,health,version} on the daemon.

A WSGI wrapper in front of mlpd's Flask app (like the MLflow mount): a request whose path starts
with /serve/ is authenticated, its deployment looked up, and passed to a healthy replica of the
revision that serves now (one SQLite read: the worker moves traffic by changing that row). The
request body is read whole, up to serving.max_body_mb, so that a request is retried on another
replica (or on a fresh connection) when the one chosen refuses the connection; nothing has reached
a model then, and predictions are free of side effects anyway. The response is streamed back as
the replica sends it. Connections to replicas are kept alive, one pool per thread.

Who may call: with auth "token" (the default), the deployment's owner (any of their tokens) or an
admin with an mlpd token, or anyone with the deployment's own key (``mlpdk_...``, shown once when
it is created): a client that should not hold a person's token gets the key. Everyone else gets
404, as for the API. With auth "none" the endpoint is open to whoever reaches the daemon's address.
The caller's Authorization header is never passed to the model.
"""

from __future__ import annotations

import bisect
import functools
import http.client
import json
import logging
import random
import secrets
import threading
import time
from http import HTTPStatus
from typing import Any, Callable, Iterable

from mlpd.serving import deployments as serving
from mlpd.users import authenticate
from mlpd.web.mlflow_mount import presented_token

log = logging.getLogger("mlpd.web.serving")
PREFIX = "/serve/"
ENDPOINTS = {"invocations": "POST", "ping": "GET", "health": "GET", "version": "GET"}
PASSED_REQUEST_HEADERS = ("CONTENT_TYPE", "HTTP_ACCEPT", "HTTP_CONTENT_ENCODING", "HTTP_ACCEPT_ENCODING")
# The only headers of a replica's answer that reach the client: what describes the body. A model's
# code writes the rest, and on mlpd's origin a Set-Cookie, Location, Refresh or Link would act for it
# (mlpd.web.content_guard adds the sandbox and nosniff headers to what is left).
PASSED_RESPONSE_HEADERS = frozenset({"content-type", "content-length", "content-encoding", "cache-control", "etag",
                                     "last-modified", "vary", "retry-after"})
UPSTREAM_TIMEOUT = 120.0
CHUNK = 64 * 1024
FLUSH_INTERVAL = 2.0  # seconds between additions of this worker's request counts to the state database
MONITOR_MAX_BYTES = 4 * 1024 * 1024  # a request or answer larger than this is counted but not read for monitoring


def _error(start_response: Callable, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}", [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


class _Pool(threading.local):
    """This thread's kept-alive connections to replicas, by port."""

    def __init__(self):
        self.conns: dict[int, http.client.HTTPConnection] = {}


class _Streamed:
    """The replica's response body as a WSGI iterable; the connection is reused only once it was read to the end.
    With a tap, the body (up to MONITOR_MAX_BYTES) is handed to it once it was sent whole."""

    def __init__(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection, release: Callable[[], None],
                 tap: Callable[[bytes], None] | None = None):
        self.resp, self.conn, self.release, self.done = resp, conn, release, False
        self.kept: list[bytes] | None = [] if tap else None
        self.tap, self.size = tap, 0

    def __iter__(self):
        while True:
            chunk = self.resp.read(CHUNK) if self.resp.length is None or self.resp.length > CHUNK else self.resp.read()
            if not chunk:
                self.done = True
                if self.tap is not None and self.kept is not None:
                    self.tap(b"".join(self.kept))
                return
            if self.kept is not None:
                self.size += len(chunk)
                if self.size > MONITOR_MAX_BYTES:
                    self.kept = None  # too large to read here: not monitored
                else:
                    self.kept.append(chunk)
            yield chunk

    def close(self) -> None:
        if self.done and not self.resp.will_close:
            self.release()
        else:
            self.conn.close()


class RequestCounts:
    """This web worker's request counts per deployment and revision, added to the state database every few
    seconds by a thread of its own (a write per request would serialise the endpoint on SQLite's lock)."""

    def __init__(self, store):
        self.store = store
        self.source = secrets.token_hex(6)  # this process: its rows are its own, so adding to them never races
        self.pending: dict[tuple[str, str], list] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def record(self, dep_id: str, rev_id: str, status: int, seconds: float) -> None:
        with self.lock:
            entry = self.pending.setdefault((dep_id, rev_id), [0, 0, 0.0, [0] * (len(serving.LATENCY_BUCKETS) + 1)])
            entry[0] += 1
            entry[1] += status >= 400
            entry[2] += seconds
            entry[3][bisect.bisect_left(serving.LATENCY_BUCKETS, seconds)] += 1
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="serving-counts", daemon=True)
                self.thread.start()

    def flush(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, {}
        if pending:
            try:
                serving.add_request_counts(self.store, self.source, pending)
            except Exception:
                log.exception("could not record %d deployments' request counts; they are lost", len(pending))

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.flush()


class Monitor:
    """This web worker's observations of inputs and predictions per deployment and revision
    (mlpd.serving.monitoring), read after the answer was sent and added to the state database every few
    seconds by a thread of its own."""

    def __init__(self, store, reference_size: int):
        self.store, self.reference_size = store, reference_size
        self.pending: dict[tuple[str, str], Any] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def tap(self, dep_id: str, rev_id: str, request_body: bytes) -> Callable[[bytes], None] | None:
        """What reads one answer's body, with its request's (None when monitoring is off or the request too large)."""
        if not self.reference_size or len(request_body) > MONITOR_MAX_BYTES:
            return None
        return functools.partial(self.observe, dep_id, rev_id, request_body)

    def observe(self, dep_id: str, rev_id: str, request_body: bytes, answer_body: bytes) -> None:
        from mlpd.serving.monitoring import Observed

        try:
            request, answer = json.loads(request_body), json.loads(answer_body)
        except ValueError:
            return  # not JSON (CSV bodies): nothing this reads
        with self.lock:
            seen = self.pending.get((dep_id, rev_id))
            if seen is None:
                seen = self.pending[(dep_id, rev_id)] = Observed()
            seen.add(request, answer)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="serving-monitor", daemon=True)
                self.thread.start()

    def flush(self) -> None:
        from mlpd.serving import monitoring

        with self.lock:
            pending, self.pending = self.pending, {}
        if pending:
            try:
                monitoring.add(self.store, pending, self.reference_size)
            except Exception:
                log.exception("could not record %d deployments' monitoring; it is lost", len(pending))

    def _run(self) -> None:
        while True:
            time.sleep(FLUSH_INTERVAL)
            self.flush()


class ServeMount:
    """WSGI middleware: /serve/NAME/... to a replica of that deployment; everything else to the wrapped app."""

    def __init__(self, app: Callable, config, store):
        self.app, self.config, self.store = app, config, store
        self.max_body = config["serving.max_body_mb"] * 1024 * 1024
        self.pool = _Pool()
        self.counts = RequestCounts(store)
        self.monitor = Monitor(store, config["serving.monitor_reference"])

    def __call__(self, environ: dict[str, Any], start_response: Callable):
        path = environ.get("PATH_INFO") or ""
        if not path.startswith(PREFIX):
            return self.app(environ, start_response)
        started = time.monotonic()
        result = self._serve(environ, start_response, path)
        log.debug("%s %s %.1fms", environ.get("REQUEST_METHOD"), path, (time.monotonic() - started) * 1000)
        return result

    def _serve(self, environ: dict[str, Any], start_response: Callable, path: str):
        name, _, endpoint = path[len(PREFIX):].partition("/")
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if endpoint not in ENDPOINTS:
            return _error(start_response, 404, "not_found", f"no such endpoint; a deployment answers {', '.join('/serve/NAME/' + e for e in ENDPOINTS)}")
        if method != ENDPOINTS[endpoint] and not (method == "HEAD" and ENDPOINTS[endpoint] == "GET"):
            return _error(start_response, 405, "method_not_allowed", f"/{endpoint} takes {ENDPOINTS[endpoint]}", [("Allow", ENDPOINTS[endpoint])])
        dep = self.store.query_one("""SELECT d.id, d.owner, d.key_hash, d.spec, d.current, d.canary, v.model_version, v.seq,
                                      c.model_version AS canary_version, c.seq AS canary_seq, c.canary_percent FROM deployments d
                                      LEFT JOIN deployment_revisions v ON v.id = d.current
                                      LEFT JOIN deployment_revisions c ON c.id = d.canary WHERE d.name = ?""", [name])
        refused = self._refuse(environ, dep, name)
        if refused:
            return _error(start_response, *refused)
        target, version, seq = dep["current"], dep["model_version"], dep["seq"]
        if dep["canary"] and random.random() * 100 < (dep["canary_percent"] or 0):
            target, version, seq = dep["canary"], dep["canary_version"], dep["canary_seq"]
        ports = self._ports(target)
        if not ports and target != dep["current"]:  # the canary has no healthy replica now: the rest of the traffic's version answers
            target, version, seq = dep["current"], dep["model_version"], dep["seq"]
            ports = self._ports(target)
        if not ports:
            return _error(start_response, 503, "unavailable", f"deployment {name!r} has no healthy replica now; "
                                                              f"see 'mlpd deployments show {name}'", [("Retry-After", "2")])
        body = self._body(environ)
        if body is None:
            return _error(start_response, 413, "too_large", f"the request body is over serving.max_body_mb ({self.config['serving.max_body_mb']} MiB)")
        headers = {key.replace("HTTP_", "").replace("_", "-").title(): environ[key] for key in PASSED_REQUEST_HEADERS if environ.get(key)}
        if body or method == "POST":
            headers["Content-Length"] = str(len(body))
        random.shuffle(ports)
        started = time.monotonic()
        for port in ports:
            answer = self._forward(port, method, endpoint, body, headers)
            if answer == "timeout":
                self.counts.record(dep["id"], target, 504, time.monotonic() - started)
                return _error(start_response, 504, "timeout", f"the model of {name!r} did not answer within {UPSTREAM_TIMEOUT:g}s")
            if answer is not None:
                resp, conn = answer
                if endpoint == "invocations":
                    self.counts.record(dep["id"], target, resp.status, time.monotonic() - started)
                out = [(k, v) for k, v in resp.getheaders() if k.lower() in PASSED_RESPONSE_HEADERS]
                out.append(("X-Mlpd-Model-Version", str(version or "")))
                out.append(("X-Mlpd-Revision", str(seq)))
                start_response(f"{resp.status} {resp.reason}", out)
                tap = self.monitor.tap(dep["id"], target, body) if endpoint == "invocations" and resp.status == 200 else None
                return _Streamed(resp, conn, functools.partial(self._release, port, conn), tap)
        self.counts.record(dep["id"], target, 502, time.monotonic() - started)
        return _error(start_response, 502, "bad_gateway", f"no replica of deployment {name!r} accepted the request; try again, "
                                                          f"or see 'mlpd deployments show {name}'", [("Retry-After", "1")])

    def _ports(self, revision: str | None) -> list[int]:
        """The loopback ports of a revision's replicas that answered their last /ping and run."""
        if revision is None:
            return []
        return [r["port"] for r in self.store.query("""SELECT r.port FROM deployment_replicas r JOIN jobs j ON j.id = r.job_id
                                                       WHERE r.revision = ? AND r.healthy = 1 AND j.state = 'running'""", [revision])]

    def _refuse(self, environ: dict[str, Any], dep: dict[str, Any] | None, name: str) -> tuple | None:
        """(status, code, message, headers) for a caller who may not call this deployment; None to go on."""
        if dep is not None and json.loads(dep["spec"]).get("auth") == "none":
            return None
        token = presented_token(environ)
        challenge = [("WWW-Authenticate", 'Bearer realm="mlpd"')]
        if not token:
            return 401, "unauthorized", "no token: send 'Authorization: Bearer <your mlpd token or the deployment's key>'", challenge
        if dep is not None and serving.key_matches(dep, token):
            return None
        user = authenticate(self.store, token)
        if user is None:
            return 401, "unauthorized", "invalid, revoked or expired token (or not this deployment's key)", challenge
        if dep is None or not (user.is_admin or dep["owner"] == user.name):
            return 404, "not_found", f"no such deployment {name[:60]!r}", ()
        return None

    def _body(self, environ: dict[str, Any]) -> bytes | None:
        """The request body, or None when it is over the cap (checked before reading it whole)."""
        stream = environ["wsgi.input"]
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > self.max_body:
            return None
        if length:
            return stream.read(length)
        if environ.get("wsgi.input_terminated") or "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            data = stream.read(self.max_body + 1)
            return None if len(data) > self.max_body else data
        return b""

    def _forward(self, port: int, method: str, endpoint: str, body: bytes, headers: dict[str, str]):
        """(response, connection) from the replica on port, or None when it could not be reached.

        A kept-alive connection the replica closed meanwhile fails on use; the request is then sent
        once more on a fresh one. A refused connection moves on to the next replica.
        """
        for _attempt in (0, 1):
            conn = self.pool.conns.pop(port, None)
            reused = conn is not None
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=UPSTREAM_TIMEOUT)
            try:
                conn.request(method, "/" + endpoint, body=body if method == "POST" else None, headers=headers)
                return conn.getresponse(), conn
            except TimeoutError:
                conn.close()
                return "timeout"  # the model is slow, not gone: sending it again would only run it twice
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                if not reused:
                    log.info("replica on port %d did not take the request (%s); trying another", port, exc)
                    return None
        return None

    def _release(self, port: int, conn: http.client.HTTPConnection) -> None:
        old = self.pool.conns.get(port)
        if old is not None and old is not conn:
            old.close()
        self.pool.conns[port] = conn


class ServingCollector:
    """The endpoint's request counts in /metrics, per deployment and model version (read from the state database,
    so every web worker reports the same numbers)."""

    def __init__(self, store):
        self.store = store

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        labels = ["deployment", "version", "revision"]
        requests = CounterMetricFamily("mlpd_serving_requests", "Requests to /serve/NAME/invocations that reached a replica (or found none)", labels=labels)
        errors = CounterMetricFamily("mlpd_serving_errors", "Of those, answers with status 400 or above (the model's own included)", labels=labels)
        latency = HistogramMetricFamily("mlpd_serving_request_seconds", "Time from the request to the replica's answer", labels=labels)
        for m in serving.request_metrics(self.store):
            values = [m["deployment"], str(m["version"] or ""), str(m["revision"] or "")]
            requests.add_metric(values, m["requests"])
            errors.add_metric(values, m["errors"])
            cumulative, running = [], 0
            for bound, count in zip((*serving.LATENCY_BUCKETS, float("inf")), m["buckets"], strict=False):
                running += count
                cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
            latency.add_metric(values, cumulative, m["seconds"])
        yield from (requests, errors, latency)
        yield from monitoring_metrics(self.store)


def monitoring_metrics(store):
    """The monitoring summary (mlpd.serving.monitoring) as metric families: each numeric feature's PSI, the
    numeric predictions' quantiles, the labels' counts."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    from mlpd.serving import monitoring

    labels = ["deployment", "version", "revision"]
    drift = GaugeMetricFamily("mlpd_serving_feature_psi", "Population stability index of a numeric input feature against the "
                                                          "version's reference (its first serving.monitor_reference values); "
                                                          "> 0.25 is drift", labels=[*labels, "feature"])
    quantile = GaugeMetricFamily("mlpd_serving_prediction_quantile", "Quantiles of the version's numeric predictions (a uniform sample)",
                                 labels=[*labels, "quantile"])
    label_count = CounterMetricFamily("mlpd_serving_prediction_labels", "Predictions of each label", labels=[*labels, "label"])
    for m in monitoring.summary(store):
        values = [m["deployment"], str(m["version"] or ""), str(m["revision"] or "")]
        for f in m["features"]:
            if f["psi"] is not None:
                drift.add_metric([*values, f["feature"]], f["psi"])
        for key, value in m["predictions"]["quantiles"].items():
            quantile.add_metric([*values, str(int(key[1:]) / 100)], value)
        for label, count in m["predictions"]["labels"].items():
            label_count.add_metric([*values, label], count)
    yield from (drift, quantile, label_count)
