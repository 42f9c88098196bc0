"""MLflow under /mlflow, behind mlpd's tokens and ownership rules (a WSGI wrapper).

Every request whose path is /mlflow or starts with /mlflow/ comes here, before Flask:
the REST API (/mlflow/api/..., /mlflow/ajax-api/...), the proxied artifact routes and
the UI alike. It needs an mlpd token, as ``Authorization: Bearer mlpd_...`` (what an
MLflow client sends from MLFLOW_TRACKING_TOKEN) or HTTP Basic with the token as the
password (browsers: a 401 carries ``WWW-Authenticate: Basic realm="mlpd"`` so they ask).
Then ``mlpd.mlflow_policy`` decides, mutations are checked against their owner, creates
are rewritten (the run's user is the token's user), and the request goes to MLflow's own
Flask app with its path unchanged: MLflow registers its routes under the prefix itself
(werkzeug's DispatcherMiddleware would strip the prefix, and MLflow would answer 404).

MLflow is imported on the first /mlflow request in each worker (``mlpd.tracking``), so
`import mlpd.web` stays cheap and a daemon nobody tracks with never loads it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
import uuid
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from mlpd import jobs, tracking
from mlpd.mlflow_policy import Refused, Rule, artifact_target, classify, job_tags, may_change, PATH_PARAMS, \
    protected_key, rewrite_create_run, rewrite_owned_create, tags_written, unsafe_path
from mlpd.users import User, authenticate

log = logging.getLogger("mlpd.web.mlflow")
MAX_JSON_BODY = 64 * 1024 * 1024
_TOKEN_ID = re.compile(r"mlpd_([0-9a-f]{12})_")


def _is_mlflow_path(path: str) -> bool:
    return path == tracking.PREFIX or path.startswith(tracking.PREFIX + "/")


def presented_token(environ: dict[str, Any]) -> str | None:
    """The token in the Authorization header: Bearer, or Basic with the token as password."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, value = header.partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and value:
        return value
    if scheme == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        password = decoded.partition(":")[2]
        return password or None
    return None


def _json_response(start_response: Callable, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> list[bytes]:
    from http import HTTPStatus

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


class MlflowMount:
    """WSGI middleware: /mlflow/... to MLflow through mlpd's rules; everything else to mlpd's app."""

    def __init__(self, mlpd_app: Callable, config, store):
        self.mlpd_app = mlpd_app
        self.config, self.store = config, store
        self.db = tracking.TrackingDb(config.state_dir)

    def __call__(self, environ: dict[str, Any], start_response: Callable):
        if not _is_mlflow_path(environ.get("PATH_INFO") or ""):
            return self.mlpd_app(environ, start_response)
        started = time.monotonic()
        request_id = (environ.get("HTTP_X_REQUEST_ID") or "")[:64] or uuid.uuid4().hex[:12]
        seen: dict[str, Any] = {"status": "-", "user": "-"}

        def respond(status: str, headers: list, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            return start_response(status, [*headers, ("X-Request-Id", request_id)], exc_info)

        try:
            user = self._authenticate(environ)
            seen["user"] = user.name
            self._admit(environ, user)
            result = tracking.server_app(self.config)(environ, respond)
        except Refused as refusal:
            headers = [("WWW-Authenticate", 'Basic realm="mlpd"')] if refusal.status == 401 else []
            result = _json_response(respond, refusal.status, refusal.code, refusal.message, headers)
        log.info("%s %s %s %.1fms user=%s [%s]", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), seen["status"],
                 (time.monotonic() - started) * 1000, seen["user"], request_id)
        return result

    # ------------------------------------------------------------ who
    def _authenticate(self, environ: dict[str, Any]) -> User:
        token = presented_token(environ)
        if not token:
            raise Refused(401, "unauthorized", "no token: MLflow clients set MLFLOW_TRACKING_TOKEN (eval \"$(mlpd env)\"); "
                                               "browsers log in with any user name and the mlpd token as password")
        user = authenticate(self.store, token)
        if user is None:
            raise Refused(401, "unauthorized", "invalid, revoked or expired token: ask an admin for a new one ('mlpd admin token create')")
        environ["mlpd.user"] = user
        environ["mlpd.token_id"] = (_TOKEN_ID.match(token) or [None, None])[1]
        return user

    # ------------------------------------------------------------ what
    def _admit(self, environ: dict[str, Any], user: User) -> None:
        """Refuse what this user may not do; rewrite creates. Returns normally to pass the request on."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "")[len(tracking.PREFIX):]
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        raw_path = (environ.get("RAW_URI") or environ.get("REQUEST_URI") or "").split("?")[0]
        if unsafe_path(path.lstrip("/")) or unsafe_path(raw_path.lstrip("/")):
            raise Refused(400, "invalid_path", "the path leaves its directory ('..', an absolute path or a backslash); refused")
        for name in PATH_PARAMS:
            for value in query.get(name, []):
                if value and unsafe_path(value):
                    raise Refused(400, "invalid_path", f"{name}: the artifact path leaves its directory; refused")
        rule = classify(method, path)
        if rule.action == "read" or rule.action == "create":
            return
        if rule.action == "admin":
            if not user.is_admin:
                raise Refused(403, "forbidden", f"this MLflow operation ({method} {rule.endpoint}) is for admins in mlpd")
            return
        if rule.action == "artifact_write":
            self._check_artifact_write(rule, user)
            return
        body = self._json_body(environ)
        if not user.is_admin:
            protected = [k for k in tags_written(rule.endpoint, body) if protected_key(k)]
            if protected:
                raise Refused(403, "forbidden", f"tag {protected[0]!r} is set by mlpd; members cannot set or delete mlpd.* or mlflow.user tags")
        if rule.action == "create_run":
            self._replace_body(environ, rewrite_create_run(body, user.name, self._job_tags(environ, user)))
        elif rule.action == "create_owned":
            self._replace_body(environ, rewrite_owned_create(body, user.name))
        elif rule.action == "owned":
            ref = (query.get(rule.ref[1:]) or [""])[0] if rule.ref.startswith("?") else \
                rule.ref if rule.kind == "logged_model" else self._body_ref(body, rule)
            self._check_owner(rule.kind, str(ref), user, f"{method} {rule.endpoint}")

    def _body_ref(self, body: dict[str, Any], rule: Rule) -> str:
        value = body.get(rule.ref)
        if value is None and rule.ref == "run_id":
            value = body.get("run_uuid")
        return "" if value is None else str(value)

    def _check_owner(self, kind: str, ref: str, user: User, what: str) -> None:
        if not ref:
            return  # MLflow itself refuses the request for its missing field
        if kind == "run":
            found = self.db.run(ref)
            owner = found[0] if found else None
        elif kind == "experiment":
            owner = self.db.experiment_owner(ref) if self.db.experiment_exists(ref) else None
        elif kind == "registered_model":
            owner = self.db.model_owner(ref) if self.db.model_exists(ref) else None
        else:
            found = self.db.logged_model(ref)
            owner = found[0] if found else None
        if owner is None:
            return  # no such object: MLflow answers RESOURCE_DOES_NOT_EXIST
        if not may_change(user.name, user.is_admin, owner):
            label = kind.replace("_", " ")
            whose = f"belongs to {owner}" if owner else "has no owner (admins only)"
            raise Refused(403, "forbidden", f"{label} {ref!r} {whose}; members change only their own runs, experiments and models ({what})")

    def _check_artifact_write(self, rule: Rule, user: User) -> None:
        target = artifact_target(rule.ref)
        if user.is_admin:
            return
        if target.kind == "run":
            found = self.db.run(target.id)
            if found and found[1] == target.experiment_id:
                self._check_owner("run", target.id, user, "artifact upload")
                return
        elif target.kind == "logged_model":
            found = self.db.logged_model(target.id)
            if found and found[1] == target.experiment_id:
                self._check_owner("logged_model", target.id, user, "artifact upload")
                return
        raise Refused(403, "forbidden", "members write artifacts only into their own runs and models "
                                        "(EXPERIMENT/RUN_ID/artifacts/... or EXPERIMENT/models/MODEL_ID/artifacts/...)")

    def _job_tags(self, environ: dict[str, Any], user: User) -> dict[str, str] | None:
        token_id = environ.get("mlpd.token_id")
        if not token_id:
            return None
        row = self.store.query_one("SELECT label FROM tokens WHERE id = ?", [token_id])
        label = (row or {}).get("label") or ""
        if not label.startswith("job:"):
            return None
        job = jobs.get(self.store, label[4:])
        if job is None or job["owner"] != user.name:
            return None  # a token labelled like a job, but not that job's: no job tags
        return job_tags(job, self.config["jobs.default_image"])

    # ------------------------------------------------------------ bodies
    @staticmethod
    def _json_body(environ: dict[str, Any]) -> dict[str, Any]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_JSON_BODY:
            raise Refused(413, "too_large", f"request body over {MAX_JSON_BODY // (1024 * 1024)} MiB")
        stream = environ["wsgi.input"]
        data = stream.read(length) if length else (stream.read(MAX_JSON_BODY + 1) if environ.get("wsgi.input_terminated") else b"")
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except ValueError:
            raise Refused(400, "invalid_json", "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise Refused(400, "invalid_body", "the request body must be a JSON object")
        return body

    @staticmethod
    def _replace_body(environ: dict[str, Any], body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ["CONTENT_TYPE"] = "application/json"
