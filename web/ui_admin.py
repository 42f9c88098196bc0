"""Admin pages of the web UI (/ui/admin/...): users, passwords, tokens, teams, quotas, GPUs, events.

Every URL here is checked on the server: a session, then an admin's (403 for members,
before any data is read). The actions call the same functions as the JSON API's admin
routes, with the admin as the actor, so the audit trail reads the same either way.
"""

from __future__ import annotations

import time

from flask import Blueprint, abort, g, render_template, request
from werkzeug.exceptions import HTTPException

from mlpd import jobs, users

from mlpd.scheduling import quotas
from mlpd.errors import MlpdError
from mlpd.kinds.base import names as kind_names
from mlpd.web import config, store, ui, ui_auth

ui_admin = Blueprint("ui_admin", __name__, url_prefix="/ui/admin", template_folder="templates")
ui_admin.before_request(ui_auth.load_session)
ui_admin.before_request(ui_auth.require_login)


@ui_admin.before_request
def _admins_only():
    if not g.user.is_admin:
        abort(403, "This page is for admins.")


ui_admin.context_processor(ui.page_furniture)
ui_admin.after_request(ui.page_headers)
ui_admin.register_error_handler(MlpdError, ui.page_for_mlpd_error)
ui_admin.register_error_handler(HTTPException, ui.page_for_http_error)

SECTIONS = [("ui_admin.overview", "Overview"), ("ui_admin.users_page", "Users"), ("ui_admin.tokens_page", "Tokens"),
            ("ui_admin.teams_page", "Teams"), ("ui_admin.quotas_page", "Quotas"), ("ui_admin.gpus_page", "GPUs"),
            ("ui_admin.events_page", "Events")]


def _page(template: str, status: int = 200, **context):
    return render_template(template, sections=SECTIONS, **context), status


def _act(fn, done: str) -> tuple[str, str]:
    """Run an admin action: (notice, error) for the page to show."""
    try:
        fn()
    except MlpdError as exc:
        return "", exc.message
    return done, ""


def workload_counts(st) -> dict[str, dict[str, int]]:
    """{kind: {"queued": n, "running": n}} for jobs, workspaces (their sessions) and deployments (their replicas)."""
    out = {kind: {"queued": 0, "running": 0} for kind in kind_names()}
    states = sorted(jobs.QUEUED_OR_ACTIVE_STATES)
    for r in st.query("SELECT kind, CASE WHEN state = 'queued' THEN 'queued' ELSE 'running' END AS s, COUNT(*) AS n FROM jobs "
                      f"WHERE state IN ({','.join('?' * len(states))}) GROUP BY kind, s", states):
        out.setdefault(r["kind"] or "job", {"queued": 0, "running": 0})[r["s"]] += r["n"]
    return out


@ui_admin.route("/")
def overview():
    st = store()
    counts = {
        "users": len(users.list_users(st)),
        "teams": len(quotas.list_teams(st)),
        # Per kind of workload: a workspace's session and a deployment's replica are not jobs.
        "by_kind": workload_counts(st),
        "locked": st.query_one("SELECT COUNT(*) AS n FROM login_failures WHERE locked_until > ?", [time.time()])["n"],
    }
    return _page("admin_overview.html", counts=counts)


@ui_admin.route("/users", methods=("GET", "POST"))
def users_page():
    st, notice, error, new_token = store(), "", "", None
    if request.method == "POST":
        action, name = request.form.get("action", ""), request.form.get("name", "").strip()[:64]
        if action == "add":
            role = "admin" if request.form.get("admin") == "1" else "member"
            try:
                users.add_user(st, name, role, actor=g.user.name)
                new_token, _ = users.create_token(st, name, "initial", actor=g.user.name)
            except MlpdError as exc:
                error = exc.message
            else:
                notice = f"created {role} {name}"
                if request.form.get("password"):
                    notice2, error = _act(lambda: users.set_password(st, name, request.form["password"], actor=g.user.name), " with a password")
                    notice += notice2
        elif action == "remove":
            if name == g.user.name:
                error = "you cannot remove yourself; ask another admin"
            else:
                notice, error = _act(lambda: users.remove_user(st, name, actor=g.user.name), f"removed {name}; their tokens and sessions are revoked")
        elif action == "password":
            notice, error = _act(lambda: users.set_password(st, name, request.form.get("password", "")[: users.PASSWORD_MAX + 1], actor=g.user.name),
                                 f"set the password of {name}; their lockout is cleared and their web sessions ended")
        else:
            abort(400, "unknown action")
    rows = users.list_users(st)
    extra = {r["name"]: r for r in st.query("SELECT name, password_hash IS NOT NULL AS has_password FROM users WHERE removed_at IS NULL")}
    now = time.time()
    locks = {r["name"]: r["locked_until"] for r in st.query("SELECT name, locked_until FROM login_failures WHERE locked_until > ?", [now])}
    for r in rows:
        r["has_password"] = bool(extra.get(r["name"], {}).get("has_password"))
        r["locked_until"] = locks.get(r["name"])
    return _page("admin_users.html", 400 if error else 200, rows=rows, notice=notice, error=error, new_token=new_token,
                 new_name=request.form.get("name", "") if new_token else "")


@ui_admin.route("/tokens", methods=("GET", "POST"))
def tokens_page():
    st, notice, error, new_token = store(), "", "", None
    if request.method == "POST":
        action = request.form.get("action", "")
        if action == "create":
            from mlpd.units import parse_duration

            name, label = request.form.get("user", "").strip()[:64], request.form.get("label", "")[:200]
            try:
                expires = request.form.get("expires", "").strip()
                expires_in = parse_duration(expires) if expires else None
                new_token, record = users.create_token(st, name, label, expires_in, actor=g.user.name)
            except ValueError as exc:
                error = f"expires: {exc}" if not isinstance(exc, MlpdError) else exc.message
            else:
                notice = f"token {record['id']} created for {name}"
        elif action == "revoke":
            token_id = request.form.get("id", "")[:40]
            notice, error = _act(lambda: users.revoke_token(st, token_id, actor=g.user.name), f"revoked token {token_id}")
        else:
            abort(400, "unknown action")
    rows = [t for t in users.list_tokens(st) if not t["job_id"]]
    return _page("admin_tokens.html", 400 if error else 200, rows=rows[::-1], notice=notice, error=error, new_token=new_token,
                 user_names=[u["name"] for u in users.list_users(st)])


@ui_admin.route("/teams", methods=("GET", "POST"))
def teams_page():
    st, notice, error = store(), "", ""
    if request.method == "POST":
        action, team, name = request.form.get("action", ""), request.form.get("team", "").strip()[:64], request.form.get("user", "").strip()[:64]
        if action == "add":
            notice, error = _act(lambda: quotas.add_team(st, team, g.user.name), f"created team {team}")
        elif action == "remove":
            notice, error = _act(lambda: quotas.remove_team(st, team, g.user.name), f"removed team {team}")
        elif action == "member_add":
            notice, error = _act(lambda: quotas.set_membership(st, team, name, True, g.user.name), f"added {name} to {team}")
        elif action == "member_remove":
            notice, error = _act(lambda: quotas.set_membership(st, team, name, False, g.user.name), f"removed {name} from {team}")
        else:
            abort(400, "unknown action")
    return _page("admin_teams.html", 400 if error else 200, teams=quotas.list_teams(st), notice=notice, error=error,
                 user_names=[u["name"] for u in users.list_users(st)])


def _number(text: str, kind, field: str):
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise MlpdError(400, "invalid_field", f"{field}: expected {'a whole number' if kind is int else 'a number'}, got {text[:20]!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise MlpdError(400, "invalid_field", f"{field}: expected a finite number")
    return value


@ui_admin.route("/quotas", methods=("GET", "POST"))
def quotas_page():
    st, cfg, notice, error = store(), config(), "", ""
    if request.method == "POST":
        subject = request.form.get("subject", "").strip()[:64]
        kind = request.form.get("kind", "user")
        if kind not in ("user", "team"):
            abort(400, "kind: user or team")

        def apply():
            hours = _number(request.form.get("gpu_hours", ""), float, "gpu_hours")
            gpus = _number(request.form.get("max_gpus", ""), int, "max_gpus")
            quotas.set_quota(st, kind, subject, hours, gpus, g.user.name)
            from mlpd.web.api_jobs import wake

            wake("quota changed")

        notice, error = _act(apply, f"quota of {kind} {subject} set")
    defaults = {"period": cfg["quotas.period"], "gpu_hours": cfg["quotas.gpu_hours"] or None, "max_gpus": cfg["quotas.max_gpus"] or None,
                "over_quota": cfg["quotas.over_quota"]}
    rows = st.query("SELECT subject_kind, subject, gpu_hours, max_gpus, updated_at FROM quotas ORDER BY subject_kind, subject")
    return _page("admin_quotas.html", 400 if error else 200, defaults=defaults, rows=rows, notice=notice, error=error,
                 user_names=[u["name"] for u in users.list_users(st)], team_names=[t["name"] for t in quotas.list_teams(st)])


@ui_admin.route("/gpus", methods=("GET", "POST"))
def gpus_page():
    from mlpd.scheduling.gpu_state import drains, find_gpu, set_drained
    from mlpd.web.api_jobs import inventory, wake

    st, cfg, notice, error = store(), config(), "", ""
    devices = inventory().devices()
    if request.method == "POST":
        action, ref = request.form.get("action", ""), request.form.get("gpu", "")[:80]

        def apply():
            device = find_gpu(devices, ref)
            if action == "drain":
                set_drained(st, device.uuid, True, g.user.name, request.form.get("reason", "")[:500])
            elif action == "undrain":
                set_drained(st, device.uuid, False, g.user.name)
                wake(f"undrained {device.uuid}")
            else:
                abort(400, "unknown action")

        notice, error = _act(apply, f"GPU {ref} {'drained: running work finishes, nothing new is placed' if action == 'drain' else 'takes new work again'}")
    drained = drains(st, cfg["gpus.drained"], devices)
    return _page("admin_gpus.html", 400 if error else 200, devices=devices, drained=drained, inventory_kind=inventory().kind,
                 notice=notice, error=error)


@ui_admin.route("/events")
def events_page():
    """The audit trail, a page at a time (newest first), filtered by action prefix, actor and object."""
    from mlpd.event_log import PAGE_SIZE, EventFilter, page

    args = request.args
    try:
        before = int(args["before"]) if args.get("before") else None
    except ValueError:
        before = None
    f = EventFilter(action=args.get("action", "").strip()[:100], actor=args.get("actor", "").strip()[:100],
                    object=(args.get("object") or args.get("object_id") or "").strip()[:100], before=before, limit=PAGE_SIZE)
    rows, next_before = page(store(), f)
    filters = {k: v for k, v in (("action", f.action), ("actor", f.actor), ("object", f.object)) if v}
    return _page("admin_events.html", rows=rows, f=f, filters=filters, next_before=next_before)
