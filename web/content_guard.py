"""Bytes a member controls never run as active content on mlpd's origin.

A served model's answer, an MLflow artifact, a job's log or outputs: each is written by a member's
code, and each is served from the same origin as the admin pages. A response that a browser would
render as a page there could read an admin's CSRF token and act as the admin, or set mlpd's
session cookie. This WSGI wrapper, outermost in the app, is the one place that prevents it:

- every response gets ``X-Content-Type-Options: nosniff`` and ``X-Frame-Options: DENY``;
- every response that is not one of mlpd's or MLflow's own pages gets
  ``Content-Security-Policy: sandbox`` (a document in a sandbox has an opaque origin: no script,
  no cookies, no forms, no access to the daemon's pages), whatever it says it is;
- on the routes that return member content (:func:`member_content`), any ``Set-Cookie``,
  ``Location``, ``Refresh`` or ``Link`` header is dropped, and a body that is not JSON, plain text
  or a raster image is sent as an attachment, so a browser saves it instead of opening it.

The serving proxy keeps only an allowlist of a replica's headers besides (web/serving_proxy.py).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

SANDBOX = "sandbox"
# mlpd's own pages (which carry their own CSP, web/ui.py) and MLflow's UI documents and assets.
_OWN_PAGES = re.compile(r"^/(ui(/.*)?|mlflow/?|mlflow/static-files/.*)$")
# Routes whose body a member (or a member's code) wrote.
_MEMBER_CONTENT = re.compile(
    r"^/(serve/.*"
    r"|api/v1/jobs/[^/]+/(logs|outputs)"
    r"|api/v1/(workspaces|deployments)/[^/]+/logs"
    r"|mlflow/(get-artifact|model-versions/get-artifact|get-trace-artifact|get-logged-model-artifact)"
    r"|mlflow/(ajax-)?api/[^/]+/mlflow-artifacts/.*"
    r"|mlflow/(ajax-)?api/[^/]+/mlflow/(logged-models/[^/]+/artifacts/files|get-trace-artifact).*)$")
DROPPED_FROM_MEMBER_CONTENT = frozenset({"set-cookie", "location", "refresh", "link", "content-disposition",
                                         "content-security-policy", "x-frame-options", "x-content-type-options"})
# Content types a browser shows without running anything (with nosniff it never guesses another).
INERT_TYPES = ("application/json", "text/plain", "image/png", "image/jpeg", "image/gif", "image/webp")


def member_content(path: str) -> bool:
    """Whether the response to path carries bytes a member controls."""
    return bool(_MEMBER_CONTENT.match(path))


def guarded_headers(path: str, headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The response headers for path as they leave the daemon (see the module's docstring)."""
    member = member_content(path)
    out = [(k, v) for k, v in headers if not (member and k.lower() in DROPPED_FROM_MEMBER_CONTENT)]
    names = {k.lower() for k, _ in out}
    if "x-content-type-options" not in names:
        out.append(("X-Content-Type-Options", "nosniff"))
    if "x-frame-options" not in names:
        out.append(("X-Frame-Options", "DENY"))
    own_page = bool(_OWN_PAGES.match(path)) and ".." not in path
    if member or (not own_page and "content-security-policy" not in names):
        out.append(("Content-Security-Policy", SANDBOX))
    if member:
        ctype = next((v for k, v in out if k.lower() == "content-type"), "").split(";")[0].strip().lower()
        if ctype not in INERT_TYPES:
            out.append(("Content-Disposition", "attachment"))
    return out


class ContentGuard:
    """WSGI middleware applying :func:`guarded_headers` to every response of the wrapped app."""

    def __init__(self, app: Callable):
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable):
        path = environ.get("PATH_INFO") or "/"

        def guarded_start(status, headers, exc_info=None):
            return start_response(status, guarded_headers(path, headers), exc_info)

        return self.app(environ, guarded_start)
