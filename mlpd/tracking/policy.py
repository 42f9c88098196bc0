"""Who may do what to the embedded MLflow: pure request classification and rewrites.

Members read everything (a team shares results) and change only what they own: a run
is its user's (``user_id``, which mlpd sets from the token on create), an experiment,
registered model or logged model is the user's in its ``mlpd.owner`` tag (set by mlpd
on create). Admins change everything. A mutation that mlpd does not know how to
attribute is for admins only, so a new MLflow endpoint is closed until it is mapped here.

Everything here is plain data in, plain data out (no MLflow, no Flask); the WSGI
wrapper in ``mlpd.web.mlflow_mount`` does the lookups and answers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import unquote

from mlpd.errors import MlpdError

OWNER_TAG = "mlpd.owner"
API_PREFIXES = ("/api/2.0/mlflow/", "/ajax-api/2.0/mlflow/", "/api/3.0/mlflow/", "/ajax-api/3.0/mlflow/")
ARTIFACT_PREFIXES = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Query parameters that name an artifact path on MLflow's download/upload routes.
PATH_PARAMS = ("path", "artifact_path", "artifact_file_path")

# Mutations of one run; the body names it as run_id (or the older run_uuid).
RUN_ENDPOINTS = frozenset({
    "runs/delete", "runs/restore", "runs/update", "runs/log-metric", "runs/log-parameter", "runs/set-tag",
    "runs/delete-tag", "runs/log-batch", "runs/log-model", "runs/log-inputs", "runs/outputs",
})
EXPERIMENT_ENDPOINTS = frozenset({
    "experiments/delete", "experiments/restore", "experiments/update", "experiments/set-experiment-tag",
    "experiments/delete-experiment-tag",
})
# Registered models and their versions; the body names the model as `name`.
MODEL_ENDPOINTS = frozenset({
    "registered-models/rename", "registered-models/update", "registered-models/delete", "registered-models/set-tag",
    "registered-models/delete-tag", "registered-models/alias", "model-versions/create", "model-versions/update",
    "model-versions/delete", "model-versions/set-tag", "model-versions/delete-tag", "model-versions/transition-stage",
})
# POSTs that only read.
READ_ENDPOINTS = frozenset({
    "experiments/search", "runs/search", "registered-models/get-latest-versions", "logged-models/search",
    "traces/search", "traces/batchGetInfos", "traces/metrics", "traces/calculate-filter-correlation",
    "datasets/search", "experiments/search-datasets", "issues/search", "prompt-optimization/jobs/search",
})
# Creations anyone may make; mlpd stamps the owner into the new object.
OWNED_CREATES = {"experiments/create": "experiment", "registered-models/create": "registered_model", "logged-models": "logged_model"}
# Traces are created by tracing clients; changing them afterwards is for admins.
OPEN_CREATES = frozenset({"traces"})
_LOGGED_MODEL = re.compile(r"logged-models/([^/]+)(/.*)?")
_RUN_ID = re.compile(r"[0-9a-f]{32}")
_CAMEL = re.compile(r"(?<=[a-z0-9])([A-Z])")
# Where MLflow reads artifacts on the server's side (GETs): the object named decides the store it reads from.
ARTIFACT_READS = {"get-artifact": "run", "artifacts/list": "run", "model-versions/get-artifact": "model_version",
                  "get-trace-artifact": "trace"}
_LOGGED_MODEL_ARTIFACTS = re.compile(r"logged-models/([^/]+)/artifacts/(?:files|directories)")
# The only model version sources mlpd accepts: MLflow's own references into its store. A local path or
# any other URL would make the server read (model-versions/get-artifact) from where the member chose.
MODEL_SOURCE_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/")


@dataclass(frozen=True)
class Rule:
    """What a request is, for the purpose of deciding who may send it.

    action: "read", "create_run", "create_owned", "create", "owned" (a change to the object
    `kind` named by `ref`), "artifact_write" (ref is the artifact path), or "admin".
    """

    action: str
    kind: str = ""
    ref: str = ""  # where the object is named: a body field, or the id itself
    endpoint: str = ""


class Refused(MlpdError):
    """A request to MLflow that mlpd answers itself; mlflow_code adds MLflow's own error code
    to the answer, for MLflow clients that look for it."""

    def __init__(self, status: int, code: str, message: str, mlflow_code: str = ""):
        super().__init__(status, code, message)
        self.mlflow_code = mlflow_code


def endpoint_of(path: str) -> tuple[str, str]:
    """Split a path under /mlflow into (family, endpoint): ("api", "runs/create"), ("artifacts", "artifacts/x"), ("other", path)."""
    for prefix in API_PREFIXES:
        if path.startswith(prefix):
            return "api", path[len(prefix):]
    for prefix in ARTIFACT_PREFIXES:
        if path.startswith(prefix):
            return "artifacts", path[len(prefix):]
    return "other", path


def classify(method: str, path: str) -> Rule:
    """The rule for a request to MLflow; path is the part after /mlflow."""
    method = method.upper()
    family, endpoint = endpoint_of(path)
    if family == "artifacts":
        if method in READ_METHODS:
            return Rule("read", endpoint=endpoint)
        for head in ("artifacts/", "mpu/create/", "mpu/complete/", "mpu/abort/"):
            if endpoint.startswith(head):
                return Rule("artifact_write", ref=endpoint[len(head):], endpoint=endpoint)
        return Rule("admin", endpoint=endpoint)
    if method in READ_METHODS:
        return Rule("read", endpoint=endpoint)
    if family == "other":
        # The GraphQL endpoint's only "mutations" are searches; the UI's upload route names its run in the query.
        if path == "/graphql":
            return Rule("read", endpoint="graphql")
        return Rule("admin", endpoint=path)
    if endpoint == "runs/create":
        return Rule("create_run", kind="run", endpoint=endpoint)
    if endpoint in RUN_ENDPOINTS:
        return Rule("owned", kind="run", ref="run_id", endpoint=endpoint)
    if endpoint == "traces/link-to-run":
        return Rule("owned", kind="run", ref="run_id", endpoint=endpoint)
    if endpoint == "upload-artifact":
        return Rule("owned", kind="run", ref="?run_uuid", endpoint=endpoint)
    if endpoint in EXPERIMENT_ENDPOINTS:
        return Rule("owned", kind="experiment", ref="experiment_id", endpoint=endpoint)
    if endpoint in MODEL_ENDPOINTS:
        return Rule("owned", kind="registered_model", ref="name", endpoint=endpoint)
    if endpoint in OWNED_CREATES:
        return Rule("create_owned", kind=OWNED_CREATES[endpoint], endpoint=endpoint)
    if endpoint in READ_ENDPOINTS:
        return Rule("read", endpoint=endpoint)
    if endpoint in OPEN_CREATES:
        return Rule("create", endpoint=endpoint)
    match = _LOGGED_MODEL.fullmatch(endpoint)
    if match and match.group(1) != "search":
        return Rule("owned", kind="logged_model", ref=match.group(1), endpoint=endpoint)
    return Rule("admin", endpoint=endpoint)


def snake_case(key: str) -> str:
    """A JSON field name as its protobuf field name: MLflow's parser accepts both ``runId`` and ``run_id``."""
    return _CAMEL.sub(lambda m: "_" + m.group(1).lower(), key)


def canonical_body(body: dict[str, Any]) -> dict[str, Any]:
    """The request body with every top-level field under the one name MLflow's handlers read.

    MLflow parses bodies with protobuf's JSON parser, which takes a field under its proto
    name (``run_id``) or its JSON name (``runId``), and several handlers fall back from
    one field to another (``run_id or run_uuid``). mlpd decides ownership from this
    canonical body and sends MLflow exactly this body, so the object checked is the object
    acted on. A body that names one field twice, or a run twice (``run_id`` and
    ``run_uuid`` with different values), is refused.
    """
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = snake_case(key)
        if name in out:
            raise Refused(400, "ambiguous_request", f"the body names {name!r} twice ({key!r} and another spelling); send it once")
        out[name] = value
    for key in [k for k in out if k == "experiment_id" or k.endswith("_experiment_id")]:
        out[key] = _experiment_id(key, out[key])
    run_id, run_uuid = out.get("run_id"), out.get("run_uuid")
    if run_id not in (None, "") and run_uuid not in (None, "") and run_id != run_uuid:
        raise Refused(400, "ambiguous_request", "the body names two runs (run_id and run_uuid differ); send run_id only")
    if run_id in (None, "") and run_uuid not in (None, ""):
        out["run_id"] = run_uuid
    return out


def _experiment_id(key: str, value: Any) -> Any:
    """An experiment id as plain ASCII digits: MLflow reads ids with int(), which also takes '0_7'
    and fullwidth digits that a lookup by text would not find."""
    if value in (None, ""):
        return value
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is None or not re.fullmatch(r"[0-9]{1,18}", text):
        raise Refused(400, "invalid_field", f"{key}: expected an experiment id of digits, got {str(value)[:40]!r}")
    return str(int(text))


def _field(item: Any, name: str) -> Any:
    """A nested message's field under its proto name or its JSON name (refused when both are given)."""
    if not isinstance(item, dict):
        return None
    camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), name)
    if name in item and camel in item and camel != name:
        raise Refused(400, "ambiguous_request", f"a nested field is named twice ({name!r} and {camel!r}); send it once")
    return item.get(name, item.get(camel))


def logged_models_named(body: dict[str, Any]) -> list[str]:
    """Logged models a request body ties something to: model_id, each metric's and each listed model's
    model_id, and a models:/m-... source. MLflow writes to (or shows on) each of them."""
    found = [body.get("model_id")]
    for key in ("metrics", "models"):
        items = body.get(key)
        if isinstance(items, list):
            found += [_field(item, "model_id") for item in items]
    source = body.get("source")
    if isinstance(source, str):
        match = re.fullmatch(r"models:/(m-[0-9a-f]+)", source)
        if match:
            found.append(match.group(1))
    return [str(x) for x in found if x not in (None, "")]


def trace_ids_named(body: dict[str, Any]) -> list[str]:
    """Trace ids a trace upload names (MLflow's start_trace merges into an existing trace)."""
    found = [body.get("request_id"), body.get("trace_id")]
    trace = _field(body, "trace")
    info = _field(trace, "trace_info")
    found += [_field(info, "trace_id"), _field(info, "request_id")]
    return [str(x) for x in found if x not in (None, "")]


def artifact_read(path: str) -> tuple[str, str] | None:
    """For a request that makes MLflow read artifacts on the server: (kind of object, its id or "" when
    the query names it); None for anything else. ``path`` is the part after /mlflow."""
    family, endpoint = endpoint_of(path)
    if family == "other":
        endpoint = endpoint.lstrip("/")
    elif family != "api":
        return None
    if endpoint in ARTIFACT_READS:
        return ARTIFACT_READS[endpoint], ""
    match = _LOGGED_MODEL_ARTIFACTS.fullmatch(endpoint)
    return ("logged_model", match.group(1)) if match else None


def check_create_locations(endpoint: str, body: dict[str, Any]) -> None:
    """Refuse storage locations chosen by the client: mlpd keeps every artifact in its own store."""
    if endpoint == "experiments/create" and body.get("artifact_location") not in (None, ""):
        raise Refused(400, "invalid_field", "artifact_location: mlpd keeps every experiment's artifacts in its own store "
                                            "(served through /mlflow); leave artifact_location out")
    if endpoint == "model-versions/create":
        source = body.get("source")
        if not isinstance(source, str) or not source.startswith(MODEL_SOURCE_SCHEMES):
            raise Refused(400, "invalid_field", "source: a model version's source must be a runs:/RUN_ID/PATH, models:/MODEL_ID "
                                                f"or mlflow-artifacts:/ URI inside mlpd's store, not {str(source)[:200]!r}")


def in_store(location: str | None) -> TypeGuard[str]:
    """True for a location inside mlpd's proxied artifact store (the only place MLflow may read or write)."""
    return isinstance(location, str) and location.startswith("mlflow-artifacts:/") and not unsafe_path(location[len("mlflow-artifacts:/"):].lstrip("/") or "x")


def unsafe_path(value: str) -> bool:
    """True for an artifact path that could leave its directory: '..' segments (also
    percent-encoded, once or twice), absolute paths, backslashes or NUL bytes."""
    seen = value
    for _ in range(3):
        if "\x00" in seen or "\\" in seen or seen.startswith("/") or re.match(r"^[A-Za-z]:", seen):
            return True
        if any(part in ("..", ".") for part in seen.split("/")):
            return True
        decoded = unquote(seen)
        if decoded == seen:
            return False
        seen = decoded
    return True  # still encoded after three rounds: nobody needs that


@dataclass(frozen=True)
class ArtifactTarget:
    """What an artifact path under the proxied store belongs to."""

    experiment_id: str
    kind: str  # "run", "logged_model" or "" (something else: traces, datasets, ...)
    id: str


def artifact_target(path: str) -> ArtifactTarget:
    """Parse ``<experiment>/<run id>/artifacts/...`` or ``<experiment>/models/<model id>/artifacts/...``."""
    parts = path.split("/")
    experiment = parts[0] if parts else ""
    if len(parts) >= 3 and _RUN_ID.fullmatch(parts[1]) and parts[2] == "artifacts":
        return ArtifactTarget(experiment, "run", parts[1])
    if len(parts) >= 4 and parts[1] == "models" and parts[3] == "artifacts":
        return ArtifactTarget(experiment, "logged_model", parts[2])
    return ArtifactTarget(experiment, "", "")


# ---------------------------------------------------------------- rewrites and tag rules


def protected_key(key: str) -> bool:
    """Tags only mlpd (or an admin) sets: mlpd's own and MLflow's run user."""
    return key.startswith("mlpd.") or key == "mlflow.user"


def tags_written(endpoint: str, body: dict[str, Any]) -> list[str]:
    """The tag keys a request sets or deletes (for refusing protected ones)."""
    keys: list[str] = []
    if endpoint.endswith(("set-tag", "delete-tag", "set-experiment-tag", "delete-experiment-tag")):
        keys.append(str(body.get("key", "")))
    if endpoint.startswith("logged-models/") and "/tags" in endpoint:
        keys += [str(t.get("key", "")) for t in body.get("tags") or [] if isinstance(t, dict)]
        keys.append(endpoint.rsplit("/tags/", 1)[1] if "/tags/" in endpoint else "")
    if endpoint == "runs/log-batch":
        keys += [str(t.get("key", "")) for t in body.get("tags") or [] if isinstance(t, dict)]
    return [k for k in keys if k]


def _tags(body: dict[str, Any]) -> list[dict[str, Any]]:
    tags = body.get("tags") or []
    if not isinstance(tags, list):
        raise Refused(400, "invalid_field", "tags: expected a list of {key, value}")
    return [t for t in tags if isinstance(t, dict) and not protected_key(str(t.get("key", "")))]


def rewrite_create_run(body: dict[str, Any], user: str, job_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """The runs/create body as mlpd records it: the token's user, whatever the client said.

    The client's own mlpd.* and mlflow.user tags are dropped; mlpd adds mlflow.user,
    mlpd.user and, for a job's token, the job's tags.
    """
    out = dict(body)
    out["user_id"] = user
    tags = _tags(body)
    added = {"mlflow.user": user, "mlpd.user": user, **(job_tags or {})}
    out["tags"] = tags + [{"key": k, "value": v} for k, v in added.items()]
    return out


def rewrite_owned_create(body: dict[str, Any], user: str) -> dict[str, Any]:
    """An experiments/registered-models/logged-models create body with mlpd.owner set to the user."""
    out = dict(body)
    out["tags"] = _tags(body) + [{"key": OWNER_TAG, "value": user}]
    return out


def job_tags(job: dict[str, Any], default_image: str) -> dict[str, str]:
    """The tags mlpd puts on every run a job creates."""
    spec = job["spec"]
    return {
        "mlpd.job_id": job["id"],
        "mlpd.gpu_uuids": ",".join(job.get("gpu_uuids") or []),
        "mlpd.gpu_indices": ",".join(str(i) for i in job.get("gpu_indices") or []),
        "mlpd.image": spec.get("image") or default_image,
        "mlpd.code_digest": spec.get("code") or "",
    }


def may_change(user: str, is_admin: bool, owner: str) -> bool:
    """Admins change everything; members what they own (an object without an owner is admin-only)."""
    return is_admin or (bool(owner) and owner == user)
