"""Token authentication for every /api/v1 route: ``Authorization: Bearer mlpd_...``."""

from __future__ import annotations

from flask import g, request

from mlpd.users import authenticate
from mlpd.web.errors import ApiError


def presented_token() -> str | None:
    """The token in the Authorization header (Bearer, or Basic with the token as password)."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    if scheme.lower() == "basic" and request.authorization and request.authorization.password:
        return request.authorization.password
    return None


def require_user() -> None:
    """Set g.user from the token or answer 401."""
    from mlpd.web import store

    token = presented_token()
    if not token:
        raise ApiError(401, "unauthorized", "no token: send 'Authorization: Bearer <token>' (run 'mlpd login' for the CLI)")
    user = authenticate(store(), token)
    if user is None:
        raise ApiError(401, "unauthorized", "invalid, revoked or expired token: ask an admin for a new one ('mlpd admin token create')")
    g.user = user
    # A viewer changes nothing: every request that may change state is refused here, before its route
    # runs, except on the few routes declared viewer=True (their own password). A new route is safe by default.
    from flask import current_app

    from mlpd.roles import viewer_refusal

    view = current_app.view_functions.get(request.endpoint or "")
    refusal = viewer_refusal(user, request.method, bool(getattr(view, "mlpd_viewer", False)))
    if refusal:
        raise ApiError(403, "forbidden", refusal)
