"""Routes the MLflow UI calls that a stock ``mlflow server`` serves from outside the Flask app mlpd mounts.

- The assistant panel (``ajax-api/3.0/mlflow/assistant/...``): a stock server serves it from its
  FastAPI half and lets only localhost use it, since it runs a coding agent's tools (a shell among
  them) on the server's host. mlpd serves MLflow to a team over the network, so it is off for
  everyone: the UI's two questions on every page (config, providers) get a stock server's answer to
  a remote browser with nothing set up (no provider, remote access not allowed), so the panel shows
  itself as off instead of the browser logging 404s; every other assistant route is refused.
- ``users/current``: the UI asks who is logged in; MLflow's auth app answers it, and a stock server
  without that app answers 404. mlpd answers that there is no MLflow account (``user`` null,
  ``is_basic_auth`` false): the UI then behaves as on a server without MLflow's auth (it asks for no
  per-user permissions and offers no password change or logout of its own; mlpd's web UI has those)
  and the browser logs no 404.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from mlpd.tracking.policy import Refused
from mlpd.users import User  # noqa: F401  (the caller's; the answers do not depend on it)

ASSISTANT_OFF = "the MLflow assistant is switched off in mlpd (it would run tools on the daemon's host)"
ASSISTANT_ANSWERS = {
    "assistant/config": {"providers": {}, "projects": {}, "remote_access_allowed": False},
    "assistant/providers": {"providers": [], "resolved": None, "gateway_vendor_options": {}},
}


def answer(environ: dict[str, Any], start_response: Callable, endpoint: str, user: User) -> list[bytes]:
    """The answer to one of these routes (endpoint as after .../mlflow/); refused when it changes anything."""
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if method not in ("GET", "HEAD"):
        raise Refused(403, "forbidden", ASSISTANT_OFF if endpoint.startswith("assistant/") else "mlpd answers this MLflow route read-only")
    if endpoint == "users/current":
        found: Any = {"user": None, "is_basic_auth": False}
    else:
        found = ASSISTANT_ANSWERS.get(endpoint)
    if found is None:
        raise Refused(403, "forbidden", ASSISTANT_OFF)
    body = json.dumps(found).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")])
    return [body] if method != "HEAD" else []
