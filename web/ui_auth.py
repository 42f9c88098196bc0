"""Web UI sign-in: sessions in a cookie, CSRF tokens on every form, login, logout and lockout.

The cookie (``mlpd_session``) holds a random secret; the database keeps only its hash
(mlpd.users). It is HttpOnly, SameSite=Lax, path / (so the embedded MLflow UI sees it
too), and Secure when the request came over https (directly or through a proxy that
says so). Every POST in the UI carries the session's CSRF token in the ``csrf`` field;
the login form, which has no session yet, carries a token bound to a pre-login cookie.
The MLflow mount (mlflow_mount.py) asks :func:`session_from_environ` who a browser is.
"""

from __future__ import annotations

import hmac
import secrets
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Blueprint, abort, g, make_response, redirect, render_template, request, url_for

from mlpd import users
from mlpd.users import LoginRefused, Session, UserError

COOKIE = "mlpd_session"
LOGIN_CSRF_COOKIE = "mlpd_login_csrf"
# Endpoints reachable without a session (the login page itself and static files).
PUBLIC_ENDPOINTS = frozenset({"ui.login", "ui.login_token", "ui.static"})


def _store():
    from mlpd.web import store

    return store()


def is_https() -> bool:
    """Whether the browser reached us over https (so cookies get Secure). A forged header can
    only make the cookie stricter, never looser."""
    return request.is_secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def _set_cookie(response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="Lax", secure=is_https())


def load_session() -> None:
    """Before every UI request: set g.session and g.user from the cookie (None when logged out)."""
    secret = request.cookies.get(COOKIE, "")
    session = users.get_session(_store(), secret) if secret else None
    g.session = session
    g.user = session.user if session else None


def require_login():
    """Before every UI request: redirect to the login page without a session; check CSRF on POST."""
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    if g.session is None:
        if request.method == "GET":
            return redirect(url_for("ui.login", next=request.full_path.rstrip("?")))
        abort(401)
    if request.method not in ("GET", "HEAD"):
        check_csrf(g.session.csrf)
    return None


def check_csrf(expected: str) -> None:
    """403 unless the form carries the expected CSRF token."""
    sent = request.form.get("csrf", "")
    if not expected or not sent or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(403, "the form's security token is missing or stale; reload the page and submit it again")


def csrf_token() -> str:
    """The token for this page's forms (templates call it as csrf_token())."""
    if g.get("session") is not None:
        return g.session.csrf
    if "login_csrf" not in g:
        g.login_csrf = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    return g.login_csrf


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site under /ui or /mlflow, never another host."""
    default = url_for("ui.dashboard")
    if not target or len(target) > 2000 or "\\" in target or any(ord(c) < 32 for c in target):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return default
    # A browser resolves dot segments (also written %2e) before it asks: /ui/../serve/x is /serve/x.
    if any(segment in (".", "..") for segment in unquote(parts.path).split("/")):
        return default
    if not (parts.path.startswith("/ui/") or parts.path == "/ui" or parts.path == "/mlflow" or parts.path.startswith("/mlflow/")):
        return default
    return target


def _start_session(user, method: str):
    secret, session = users.create_session(_store(), user, method)
    response = redirect(safe_next(request.form.get("next")), code=303)
    _set_cookie(response, COOKIE, secret)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    g.user = user
    return response


def _login_page(status: int = 200, error: str = "", token_error: str = "", name: str = ""):
    page = render_template("login.html", error=error, token_error=token_error, name=name, next=safe_next(request.values.get("next")))
    response = make_response(page, status)
    _set_cookie(response, LOGIN_CSRF_COOKIE, csrf_token(), max_age=3600)
    return response


def register(bp: Blueprint) -> None:
    """Add the login and logout routes and the session checks to the UI blueprint."""
    bp.before_request(load_session)
    bp.before_request(require_login)

    @bp.route("/login", methods=("GET", "POST"))
    def login():
        if request.method == "GET":
            if g.session is not None:
                return redirect(safe_next(request.args.get("next")))
            return _login_page()
        check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE, ""))
        name = request.form.get("name", "")[:64]
        try:
            user = users.login_with_password(_store(), name, request.form.get("password", "")[: users.PASSWORD_MAX + 1])
        except LoginRefused as exc:
            return _login_page(exc.status, error=exc.message, name=name)
        return _start_session(user, "password")

    @bp.route("/login/token", methods=("POST",))
    def login_token():
        check_csrf(request.cookies.get(LOGIN_CSRF_COOKIE, ""))
        user = users.authenticate_personal(_store(), request.form.get("token", "").strip()[:200])
        if user is None:
            return _login_page(401, token_error="that token is invalid, revoked or expired (a job's or a workspace's token cannot log in here)")
        return _start_session(user, "token")

    @bp.route("/logout", methods=("POST",))
    def logout():
        users.end_session(_store(), request.cookies.get(COOKIE, ""))
        response = redirect(url_for("ui.login"), code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @bp.route("/account", methods=("GET", "POST"))
    def account():
        from mlpd.scheduling import quotas
        from mlpd.web import config

        errors: dict[str, str] = {}
        done = False
        if request.method == "POST":
            old, new, again = (request.form.get(k, "")[: users.PASSWORD_MAX + 1] for k in ("old", "new", "again"))
            if new != again:
                errors["again"] = "the two new passwords differ"
            else:
                try:
                    users.check_password_strength(new, g.user.name)
                except UserError as exc:
                    errors["new"] = exc.message.removeprefix("password: ")
            if not errors:
                try:
                    users.change_password(_store(), g.user.name, old, new)
                except UserError as exc:
                    errors["old"] = exc.message.removeprefix("old: ")
                else:
                    # the change ended every session of this user; this browser gets a new one
                    return _start_session(g.user, g.session.method)
        has_password = bool(_store().query_one("SELECT password_hash FROM users WHERE id = ?", [g.user.id])["password_hash"])
        return render_template("account.html", errors=errors, done=done, has_password=has_password,
                               quotas=quotas.status(_store(), config(), g.user.name)), 400 if errors else 200


def session_from_environ(environ: dict[str, Any], store) -> Session | None:
    """The web session a raw WSGI request carries (for the MLflow mount, which runs before Flask)."""
    cookie = SimpleCookie()
    try:
        cookie.load(environ.get("HTTP_COOKIE", ""))
    except Exception:  # a malformed Cookie header: no session
        return None
    morsel = cookie.get(COOKIE)
    return users.get_session(store, morsel.value) if morsel else None


def same_origin(environ: dict[str, Any]) -> bool:
    """Whether a request with side effects comes from a page of this site: the browser's Origin
    (or Sec-Fetch-Site) says so. Cookies ride along on cross-site requests a page can send, so a
    session alone never authorizes a change (MLflow's UI posts JSON with fetch, which sends Origin)."""
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        return site == "same-origin"
    origin = environ.get("HTTP_ORIGIN")
    host = environ.get("HTTP_HOST", "")
    if not origin or not host:
        return False
    parts = urlsplit(origin)
    return parts.netloc == host and parts.scheme in ("http", "https")
