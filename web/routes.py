"""Route declaration for the JSON API: each area (jobs, workspaces, ...) is a blueprint, and one
decorator (area.route) registers a route, declares its request body and documents it.

The OpenAPI document is built from these declarations, and a test checks it
against the routes the app really serves, so the two cannot drift.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

from flask import Blueprint, current_app, g, request

from mlpd import strict_json

from mlpd.web.auth import require_user
from mlpd.web.errors import ApiError

@dataclass(frozen=True)
class Field:
    """One field of a JSON request body."""

    type: type | tuple[type, ...]
    required: bool = False
    doc: str = ""


@dataclass
class RouteDoc:
    rule: str
    methods: tuple[str, ...]
    summary: str
    admin: bool
    body: dict[str, Field] | None
    streaming: bool = False
    endpoint: str = ""
    job_token: bool = False
    credentials: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


ROUTES: list[RouteDoc] = []


class Area:
    """One area of the API (jobs, workspaces, admin, ...): its own blueprint under /api/v1, which the
    app factory registers by name (mlpd.web.create_app). Its routes are declared with area.route."""

    def __init__(self, name: str):
        self.name = name
        self.blueprint = Blueprint(f"api_{name}", __name__, url_prefix="/api/v1")
        self.blueprint.before_request(require_user)

    def route(self, rule: str, methods: tuple[str, ...] = ("GET",), summary: str = "", admin: bool = False,
              body: dict[str, Field] | None = None, streaming: bool = False, job_token: bool = False,
              credentials: bool = False):
        """Register an authenticated /api/v1 route; admin routes answer 403 to members.

        A ``credentials`` route makes, lists or changes credentials (tokens, SSH keys, passwords,
        deployment keys): a workspace session's token never reaches it, so nothing a notebook's
        code does with that token outlives the session or acts beyond it.

        A job's token (see mlpd.users.User) reaches only the routes marked ``job_token``: what
        a job needs, never anything that makes credentials or outlives the job. ``body`` declares
        the JSON request body once: json_body() checks a request against it and OpenAPI documents it.
        """

        def decorate(fn: Callable):
            endpoint = fn.__name__

            @functools.wraps(fn)
            def view(**kwargs):
                if g.user.job_id and not job_token:
                    raise ApiError(403, "forbidden", f"a job's token (job {g.user.job_id}) cannot do this; it may read its own job "
                                                     "and use MLflow. Use your own token ('mlpd login') outside the job")
                if credentials and g.user.session_id:
                    raise ApiError(403, "forbidden", "a workspace session's token cannot make or change tokens, keys or passwords; "
                                                     "use your own token ('mlpd login') outside the workspace")
                if admin and not g.user.is_admin:
                    raise ApiError(403, "forbidden", "this needs an admin token")
                return fn(**kwargs)

            view.mlpd_admin = admin  # type: ignore[attr-defined]
            view.mlpd_job_token = job_token  # type: ignore[attr-defined]
            view.mlpd_credentials = credentials  # type: ignore[attr-defined]
            view.mlpd_body = body  # type: ignore[attr-defined]  # what json_body() checks
            self.blueprint.add_url_rule(rule, endpoint=endpoint, view_func=view, methods=list(methods))
            ROUTES.append(RouteDoc(rule, methods, summary, admin, body, streaming, endpoint, job_token, credentials))
            return view

        return decorate


_TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list", dict: "an object"}


def _type_name(t) -> str:
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t)
    return _TYPE_NAMES.get(t, t.__name__)


MAX_JSON_BODY = 1024 * 1024


def request_json() -> Any:
    """The request's JSON body (None when empty): at most MAX_JSON_BODY bytes, finite numbers, bounded depth."""
    if (request.content_length or 0) > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"the request body is over {MAX_JSON_BODY // 1024} KiB")
    raw = request.stream.read(MAX_JSON_BODY + 1)
    if len(raw) > MAX_JSON_BODY:
        raise ApiError(413, "too_large", f"the request body is over {MAX_JSON_BODY // 1024} KiB")
    if not raw.strip():
        return None
    try:
        return strict_json.loads(raw)
    except strict_json.JsonError as exc:
        raise ApiError(400, "invalid_json", str(exc)) from None


def json_body(schema: dict[str, Field] | None = None) -> dict[str, Any]:
    """The request's JSON object, checked against the body its route declares (or `schema`); errors name the field."""
    if schema is None:
        schema = getattr(current_app.view_functions[request.endpoint], "mlpd_body", None) or {}  # type: ignore[index]  # routed: it has one
    data = request_json()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_body", "the request body must be a JSON object")
    for name, value in data.items():
        spec = schema.get(name)
        if spec is None:
            shown = name if len(name) <= 40 else name[:40] + "..."  # a key may be as long as the body: quote a bounded part
            raise ApiError(400, "invalid_field", f"{shown}: unknown field; expected one of: {', '.join(sorted(schema))}")
        wrong_bool = isinstance(value, bool) and spec.type is not bool and not (isinstance(spec.type, tuple) and bool in spec.type)
        if value is not None and (wrong_bool or not isinstance(value, spec.type)):
            raise ApiError(400, "invalid_field", f"{name}: expected {_type_name(spec.type)}, got {type(value).__name__}")
    for name, spec in schema.items():
        if spec.required and data.get(name) is None:
            raise ApiError(400, "missing_field", f"{name}: required")
    return data
