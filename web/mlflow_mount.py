"""MLflow under /mlflow, behind mlpd's tokens and ownership rules (a WSGI wrapper).

Every request whose path is /mlflow or starts with /mlflow/ comes here, before Flask:
the REST API (/mlflow/api/..., /mlflow/ajax-api/...), the proxied artifact routes and
the UI alike. It needs an mlpd token, as ``Authorization: Bearer mlpd_...`` (what an
MLflow client sends from MLFLOW_TRACKING_TOKEN) or HTTP Basic with the token as the
password (browsers: a 401 carries ``WWW-Authenticate: Basic realm="mlpd"`` so they ask).
Then ``mlpd.tracking.policy`` decides, mutations are checked against their owner, creates
are rewritten (the run's user is the token's user), and the request goes to MLflow's own
Flask app with its path unchanged: MLflow registers its routes under the prefix itself
(werkzeug's DispatcherMiddleware would strip the prefix, and MLflow would answer 404).

MLflow is imported on the first /mlflow request in each worker (``mlpd.tracking.server``), so
`import mlpd.web` stays cheap and a daemon nobody tracks with never loads it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import stat
import time
import uuid
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from mlpd import jobs, strict_json

from mlpd.tracking import server as tracking
from mlpd.tracking.policy import (PATH_PARAMS, artifact_read, READ_METHODS, Refused, Rule, artifact_target, canonical_body,
                                check_create_locations, classify, endpoint_of, in_store, job_tags, logged_models_named, may_change,
                                protected_key, trace_ids_named,
                                rewrite_create_run, rewrite_owned_create, tags_written, unsafe_path)
from mlpd.users import User, authenticate

log = logging.getLogger("mlpd.web.mlflow")
MAX_JSON_BODY = 64 * 1024 * 1024


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


def _json_response(start_response: Callable, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = (),
                   mlflow_code: str = "") -> list[bytes]:
    """mlpd's JSON error; with mlflow_code, MLflow's own fields beside it, so MLflow clients read it too."""
    from http import HTTPStatus

    payload: dict[str, Any] = {"error": {"code": code, "message": message}}
    if mlflow_code:
        payload.update(error_code=mlflow_code, message=message)
    body = json.dumps(payload).encode()
    start_response(f"{status} {HTTPStatus(status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers])
    return [body]


def _page_request(environ: dict[str, Any]) -> bool:
    """A browser navigating to a page (not a script or an MLflow client): GET asking for HTML."""
    return environ.get("REQUEST_METHOD") == "GET" and "text/html" in environ.get("HTTP_ACCEPT", "")


def _redirect_to_login(start_response: Callable, environ: dict[str, Any]) -> list[bytes]:
    from urllib.parse import quote

    target = "/ui/login?next=" + quote(environ.get("PATH_INFO") or tracking.PREFIX + "/", safe="/")
    start_response("303 See Other", [("Location", target), ("Content-Length", "0"), ("Cache-Control", "no-store")])
    return []


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
        seen: dict[str, Any] = {"status": "-", "user": "-", "crashed": False}

        def respond(status: str, headers: list, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            content_type = next((v for k, v in headers if k.lower() == "content-type"), "")
            if status.startswith("5") and "html" in content_type:
                seen["crashed"] = True  # answered below in mlpd's JSON shape instead of an HTML page
                return lambda data: None
            return start_response(status, [*headers, ("X-Request-Id", request_id)], exc_info)

        try:
            user = self._authenticate(environ)
            seen["user"] = user.name
            self._admit(environ, user)
            try:
                result = tracking.server_app(self.config)(environ, respond)
            except Exception:
                log.exception("MLflow crashed on %s %s [%s]", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), request_id)
                seen["crashed"] = True
                result = []
            if seen["crashed"]:
                if hasattr(result, "close"):
                    result.close()
                seen["status"] = "500"
                result = _json_response(start_response, 500, "internal", f"MLflow failed on this request (request id {request_id}); "
                                                                          "the daemon log has the details", [("X-Request-Id", request_id)])
        except Refused as refusal:
            if refusal.status == 401 and _page_request(environ):
                # a person opening MLflow in a browser logs in on mlpd's page, then comes back here
                return _redirect_to_login(start_response, environ)
            headers = [("WWW-Authenticate", 'Basic realm="mlpd"')] if refusal.status == 401 else []
            result = _json_response(respond, refusal.status, refusal.code, refusal.message, headers, refusal.mlflow_code)
        log.info("%s %s %s %.1fms user=%s [%s]", environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), seen["status"],
                 (time.monotonic() - started) * 1000, seen["user"], request_id)
        return result

    # ------------------------------------------------------------ who
    def _authenticate(self, environ: dict[str, Any]) -> User:
        token = presented_token(environ)
        if not token:
            # A browser logged in to mlpd's web UI: the same user, under the same rules. A change made
            # with the session cookie must come from this site's pages (MLflow's UI posts with fetch).
            from mlpd.web.ui_auth import same_origin, session_from_environ

            session = session_from_environ(environ, self.store)
            if session is not None:
                if environ.get("REQUEST_METHOD", "GET").upper() not in READ_METHODS and not same_origin(environ):
                    raise Refused(403, "forbidden", "a change with the web session must come from this site's own pages; "
                                                    "scripts send a token (MLFLOW_TRACKING_TOKEN)")
                environ["mlpd.user"] = session.user
                return session.user
            raise Refused(401, "unauthorized", "no token: MLflow clients set MLFLOW_TRACKING_TOKEN (eval \"$(mlpd env)\"); "
                                               "browsers log in with any user name and the mlpd token as password")
        user = authenticate(self.store, token)
        if user is None:
            raise Refused(401, "unauthorized", "invalid, revoked or expired token: ask an admin for a new one ('mlpd admin token create')")
        environ["mlpd.user"] = user
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
        twice = sorted(k for k, v in query.items() if len(v) > 1)
        if twice and method not in READ_METHODS:
            raise Refused(400, "ambiguous_request", f"the query names {twice[0]!r} more than once; send it once")
        family, endpoint = endpoint_of(path)
        rule = classify(method, path)
        reads = artifact_read(path)
        if reads is not None:
            self._check_artifact_read(*reads, query)
        elif family == "artifacts" and endpoint.startswith("artifacts/") and method in READ_METHODS:
            self._check_store_path(endpoint[len("artifacts/"):])
        if method in READ_METHODS:
            return
        if (family == "artifacts" and endpoint.startswith("artifacts/")) or (family == "api" and endpoint == "upload-artifact"):
            self._check_upload_size(environ)
        # Every body MLflow will parse as JSON is parsed here first, canonicalised, checked and passed
        # on exactly as checked: the object mlpd authorizes is the object MLflow acts on.
        body: dict[str, Any] = {}
        if (family == "api" and endpoint != "upload-artifact") or path == "/graphql":
            body = canonical_body(self._json_body(environ))
            check_create_locations(endpoint, body)
            self._replace_body(environ, body)
        if rule.action == "read":
            return
        if rule.action == "create":
            if not user.is_admin:
                for trace_id in trace_ids_named(body):
                    if self.db.trace_exists(trace_id):
                        raise Refused(403, "forbidden", f"trace {trace_id!r} exists already; a trace is written once, by its creator")
            return
        if rule.action == "admin":
            if not user.is_admin:
                raise Refused(403, "forbidden", f"this MLflow operation ({method} {rule.endpoint}) is for admins in mlpd")
            return
        if rule.action == "artifact_write":
            self._check_artifact_write(rule, user)
            return
        if not user.is_admin:
            protected = [k for k in tags_written(rule.endpoint, body) if protected_key(k)]
            if protected:
                raise Refused(403, "forbidden", f"tag {protected[0]!r} is set by mlpd; members cannot set or delete mlpd.* or mlflow.user tags")
        if rule.action == "create_run":
            self._replace_body(environ, rewrite_create_run(body, user.name, self._job_tags(user)))
        elif rule.action == "create_owned":
            self._replace_body(environ, rewrite_owned_create(body, user.name))
        elif rule.action == "owned":
            if rule.ref.startswith("?"):
                ref = (query.get(rule.ref[1:]) or [""])[0]
            elif rule.kind == "logged_model":
                ref = rule.ref
                named = body.get("model_id")
                if named not in (None, "") and str(named) != ref:
                    raise Refused(400, "ambiguous_request", "the body names another logged model than the path; send one")
            else:
                value = body.get(rule.ref)
                ref = "" if value is None else str(value)
            self._check_owner(rule.kind, ref, user, f"{method} {rule.endpoint}")
        if rule.action in ("owned", "create_run", "create_owned") and not user.is_admin:
            for model_id in logged_models_named(body):
                self._check_owner("logged_model", model_id, user, f"{method} {rule.endpoint} naming a logged model")

    def _check_upload_size(self, environ: dict[str, Any]) -> None:
        """An artifact upload MLflow would write into the store: refused before a byte is read when it
        names no length (411), is over mlflow.max_artifact_mb (413), or would leave the disk under
        jobs.min_free_gb (507). The server reads no more than the length it names."""
        from mlpd.disk import free_space_refusal

        limit_mb = self.config["mlflow.max_artifact_mb"]
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length < 0:
            raise Refused(411, "length_required", "an artifact upload must say its size (Content-Length); "
                                                  "MLflow's clients do, a chunked upload is refused")
        if length > limit_mb * 1024 * 1024:
            raise Refused(413, "too_large", f"artifact of {length / 2**20:.1f} MiB is over the {limit_mb} MiB limit of one upload "
                                            "(mlflow.max_artifact_mb); split it, or ask an admin to raise it", "RESOURCE_EXHAUSTED")
        artifacts = tracking.artifacts_dir(self.config.state_dir)
        problem = free_space_refusal(artifacts if os.path.isdir(artifacts) else self.config.state_dir,
                                     self.config["jobs.min_free_gb"], length, "an artifact upload")
        if problem:
            raise Refused(507, "disk_full", problem, "RESOURCE_EXHAUSTED")

    def _check_owner(self, kind: str, ref: str, user: User, what: str) -> None:
        """Refuse unless user may change the object; one mlpd cannot find is refused too (for members),
        since MLflow might find it under a spelling mlpd's lookup does not read."""
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
        label = kind.replace("_", " ")
        if owner is None:
            if user.is_admin:
                return  # MLflow answers RESOURCE_DOES_NOT_EXIST
            raise Refused(404, "not_found", f"no such {label} {ref[:100]!r} ({what})", mlflow_code="RESOURCE_DOES_NOT_EXIST")
        if not may_change(user.name, user.is_admin, owner):
            whose = f"belongs to {owner}" if owner else "has no owner (admins only)"
            raise Refused(403, "forbidden", f"{label} {ref!r} {whose}; members change only their own runs, experiments and models ({what})")
        if kind == "run" and user.job_id and self.db.run_job_id(ref) != user.job_id:
            raise Refused(403, "forbidden", f"run {ref!r} was not created by job {user.job_id}; a job's token changes only its own runs ({what})")

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

    def _check_artifact_read(self, kind: str, ref: str, query: dict[str, list[str]]) -> None:
        """Artifacts are served only from mlpd's store, whatever an old row or a client named.
        The object is found as MLflow's handler finds it (the same query fields, first value)."""
        one = {k: v[0] for k, v in query.items()}
        if kind == "run":
            ref = one.get("run_id") or one.get("run_uuid") or ""
            location = self.db.run_artifact_uri(ref) if ref else None
        elif kind == "model_version":
            location = self.db.model_version_location(one.get("name", ""), one.get("version", ""))
        elif kind == "trace":
            location = self.db.trace_artifact_location(one.get("request_id", ""))
        else:
            location = self.db.logged_model_location(ref)
        if location is None:
            return  # no such object: MLflow answers RESOURCE_DOES_NOT_EXIST
        if not in_store(location):
            raise Refused(403, "forbidden", "this object's artifacts are not in mlpd's artifact store; mlpd serves artifacts only from there")
        relative = one.get("path") or one.get("artifact_file_path") or ""
        if relative:
            self._check_store_path(location[len("mlflow-artifacts:/"):].strip("/") + "/" + relative)

    def _check_store_path(self, relative: str) -> None:
        """Refuse a read through a symbolic link in the artifact store. Only MLflow's proxy writes
        there (regular files), so a link is never mlpd's: it is refused rather than followed."""
        current = tracking.artifacts_dir(self.config.state_dir)
        for part in [p for p in relative.split("/") if p]:
            current = os.path.join(current, part)
            try:
                mode = os.lstat(current).st_mode
            except OSError:
                return  # absent: MLflow answers that itself
            if stat.S_ISLNK(mode):
                raise Refused(403, "forbidden", "the artifact path goes through a symbolic link; mlpd never follows links in its store")

    def _job_tags(self, user: User) -> dict[str, str] | None:
        """The tags of the job whose token this is (None for a person's token)."""
        if not user.job_id:
            return None
        job = jobs.get(self.store, user.job_id)
        if job is None or job["owner"] != user.name:
            return None
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
        if len(data) > MAX_JSON_BODY:
            raise Refused(413, "too_large", f"request body over {MAX_JSON_BODY // (1024 * 1024)} MiB")
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        if not data.strip():
            return {}
        try:
            body = strict_json.loads(data)
        except strict_json.JsonError as exc:
            raise Refused(400, "invalid_json", str(exc)) from None
        if not isinstance(body, dict):
            raise Refused(400, "invalid_body", "the request body must be a JSON object")
        return body

    @staticmethod
    def _replace_body(environ: dict[str, Any], body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        environ["wsgi.input"] = io.BytesIO(data)
        environ["CONTENT_LENGTH"] = str(len(data))
        environ["CONTENT_TYPE"] = "application/json"
