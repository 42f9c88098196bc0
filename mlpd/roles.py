"""Roles beyond member and admin: viewers and team admins (docs/roles.md).

- A **viewer** reads what the members of their teams see (their jobs, logs, deployments, usage, and
  MLflow, which every member reads) and changes nothing. The web layer enforces it in one place each:
  the API's token check (mlpd.web.auth), the UI's session check (mlpd.web.ui_auth) and the MLflow
  mount refuse every request that may change state, so a route added later is refused by default.
- A **team admin** of team T adds and removes T's members, sets quotas of T's members within T's own
  limits, and grants T's members the priority classes T holds; nothing outside T. The checks are the
  functions here; the API's team, quota and grant routes call them for anyone who is not an admin.

Pure questions over the state database; no flask.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from mlpd.store import Store, record_event
from mlpd.users import ROLES, User, UserError, _active_user_id

VIEWER = "viewer"
# What a viewer's request may do: read. Everything else is refused before any route runs.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_viewer(user: User | None) -> bool:
    return user is not None and user.role == VIEWER


def viewer_refusal(user: User | None, method: str, allowed: bool = False) -> str | None:
    """Why this request is refused to a viewer (None when it is not a viewer's, or only reads, or the
    route is one of the few a viewer may use: their own password, logging out)."""
    if not is_viewer(user) or method.upper() in READ_METHODS or allowed:
        return None
    return "a viewer reads and changes nothing: ask an admin for a member's role ('mlpd admin user role NAME member')"


def set_role(store: Store, name: str, role: str, actor: str) -> dict[str, Any]:
    """Change a user's role (member, admin or viewer); their sessions and tokens keep working with the new role."""
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: expected one of {', '.join(ROLES)}")
    with store.write() as db:
        user_id = _active_user_id(db, name)
        old = db.execute("SELECT role FROM users WHERE id = ?", [user_id]).fetchone()[0]
        if old != role:
            db.execute("UPDATE users SET role = ? WHERE id = ?", [role, user_id])
            record_event(db, actor, "user.role", "user", name, old=old, new=role)
    return {"name": name, "role": role, "changed": old != role}


def teams_of_user(store: Store, name: str) -> list[str]:
    return [r["team"] for r in store.query("SELECT team FROM team_members WHERE user = ? ORDER BY team", [name])]


def readable_owners(store: Store, user: User) -> frozenset[str] | None:
    """Whose objects this user may read: None for an admin (everyone's); a viewer, the members of their
    teams and themselves; anyone else, themselves."""
    if user.is_admin:
        return None
    if not is_viewer(user):
        return frozenset([user.name])
    rows = store.query("SELECT DISTINCT m.user FROM team_members m JOIN team_members mine ON mine.team = m.team WHERE mine.user = ?",
                       [user.name])
    return frozenset([user.name, *(r["user"] for r in rows)])


def may_read(store: Store, user: User, owner: str) -> bool:
    """Whether this user may read an object that `owner` owns."""
    owners = readable_owners(store, user)
    return owners is None or owner in owners


# ---------------------------------------------------------------- team admins


def team_admins(store: Store, team: str | None = None) -> list[dict[str, Any]]:
    """Team admin records (team, user, actor, added_at), of one team or all."""
    sql, params = "SELECT team, user, actor, added_at FROM team_admins", []
    if team:
        sql, params = sql + " WHERE team = ?", [team]
    return store.query(sql + " ORDER BY team, user", params)


def administered(store: Store, user: User) -> list[str]:
    """The teams this user is a team admin of (never through a job's or a workspace's token)."""
    if user.job_id or user.session_id or is_viewer(user):
        return []
    return [r["team"] for r in store.query("SELECT team FROM team_admins WHERE user = ? ORDER BY team", [user.name])]


def set_team_admin(store: Store, team: str, name: str, on: bool, actor: str) -> dict[str, Any]:
    """Make (on=True) or unmake a user a team admin of team; idempotent. A team admin must be a member
    (never a viewer) of the team."""
    with store.write() as db:
        if not db.execute("SELECT 1 FROM teams WHERE name = ?", [team]).fetchone():
            raise UserError(f"no such team {team!r}", code="not_found", status=404)
        if on:
            row = db.execute("SELECT role FROM users WHERE name = ? AND removed_at IS NULL", [name]).fetchone()
            if row is None:
                raise UserError(f"no such user {name!r}", code="not_found", status=404)
            if row[0] == VIEWER:
                raise UserError(f"{name} is a viewer, who changes nothing: make them a member first", code="conflict", status=409)
            if not db.execute("SELECT 1 FROM team_members WHERE team = ? AND user = ?", [team, name]).fetchone():
                raise UserError(f"{name} is not a member of team {team}: add them first ('mlpd admin team add-member')",
                                code="conflict", status=409)
            changed = db.execute("INSERT OR IGNORE INTO team_admins (team, user, actor, added_at) VALUES (?, ?, ?, ?)",
                                 [team, name, actor, time.time()]).rowcount
        else:
            changed = db.execute("DELETE FROM team_admins WHERE team = ? AND user = ?", [team, name]).rowcount
        if changed:
            record_event(db, actor, "team.admin_add" if on else "team.admin_remove", "team", team, user=name)
    return {"team": team, "user": name, "team_admin": on, "changed": bool(changed)}


def check_team_admin(store: Store, user: User, team: str) -> None:
    """Pass for an admin, or a team admin of team; UserError 403 otherwise."""
    if user.is_admin or team in administered(store, user):
        return
    raise UserError(f"you are not an admin of team {team!r}: a team admin manages their own team only", code="forbidden", status=403)


def _limit_refusal(field: str, value: float | None, limit: float | None, team: str) -> str | None:
    """Why `value` is outside team's own limit (None when within; 0 and None are unlimited)."""
    if not limit:
        return None
    if value is None or value == 0:
        return f"{field}: team {team} is limited to {limit:g}; a member's limit cannot be unlimited"
    if value > limit:
        return f"{field}: {value:g} is over team {team}'s own limit of {limit:g}"
    return None


def check_member_quota(store: Store, user: User, member: str, values: dict[str, Any],
                       defaults: dict[str, Any] | None = None) -> None:
    """A team admin setting `member`'s quota: refused unless member is in a team they administer and
    every value given is within that team's own limits (its GPU quota and resource caps; where the team
    has none, the configured per-user default, `defaults`, so no team admin lifts a limit the admin set
    for everyone). Admins pass."""
    if user.is_admin:
        return
    teams = [t for t in administered(store, user) if member in {r["user"] for r in
             store.query("SELECT user FROM team_members WHERE team = ?", [t])}]
    if not teams:
        raise UserError(f"{member} is not a member of a team you administer", code="forbidden", status=403)
    reasons = []
    for team in teams:
        q = store.query_one("SELECT gpu_hours, max_gpus FROM quotas WHERE subject_kind = 'team' AND subject = ?", [team]) or {}
        c = store.query_one("SELECT max_cpus, max_memory, max_jobs FROM resource_caps WHERE subject_kind = 'team' AND subject = ?",
                            [team]) or {}
        limits = {k: v for k, v in (defaults or {}).items() if v}
        limits.update({k: v for k, v in {**q, **c}.items() if v})
        refusals = [r for r in (_limit_refusal(k, values[k], limits.get(k), team) for k in values) if r]
        if not refusals:
            return
        reasons.extend(refusals)
    raise UserError("; ".join(reasons), code="forbidden", status=403)


def check_member_grant(store: Store, user: User, subject: str, holders: Iterable[str] | None) -> None:
    """A team admin granting (or taking back) a priority class: refused unless subject is a member of a
    team T they administer and T holds the class ("team:T" among its holders). Admins pass."""
    if user.is_admin:
        return
    holders = set(holders or ())
    for team in administered(store, user):
        member = store.query_one("SELECT 1 AS x FROM team_members WHERE team = ? AND user = ?", [team, subject])
        if member and f"team:{team}" in holders:
            return
    raise UserError(f"a team admin grants only the priority classes their team holds, to their team's members; "
                    f"{subject!r} with this class is outside that", code="forbidden", status=403)
