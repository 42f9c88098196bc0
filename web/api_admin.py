"""Identity, users, tokens, priority-class grants and the audit trail."""

from __future__ import annotations


from flask import g, jsonify, request

import mlpd
from mlpd import users
from mlpd.web import config, store
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body

area = Area("admin")  # registered by the app factory (mlpd.web.create_app)
route = area.route


@route("/whoami", summary="The user the token belongs to", job_token=True)
def whoami():
    out = {"user": g.user.to_dict()}
    if g.user.job_id:
        out["job_id"] = g.user.job_id  # a job's token (see mlpd.users.User)
    if g.user.session_id:
        out["workspace_session"] = g.user.session_id  # a workspace session's token: a member, no credentials
    return jsonify(out)


@route("/version", summary="The daemon's version", job_token=True)
def version():
    return jsonify({"version": mlpd.__version__})


@route("/users", summary="List users", admin=True)
def list_users():
    return jsonify({"users": users.list_users(store())})


@route("/users", methods=("POST",), summary="Create a user and its first token", admin=True,
       body={"name": Field(str, True, "user name"), "admin": Field(bool, False, "make the user an admin"),
             "role": Field(str, False, "member (default), admin or viewer (reads what their teams' members see, changes nothing)"),
             "expires_in": Field((int, float), False, "token lifetime in seconds")})
def add_user():
    body = json_body()
    role = body.get("role") or ("admin" if body.get("admin") else "member")
    if body.get("admin") and role != "admin":
        raise ApiError(400, "invalid_field", "admin, role: give one of them")
    user = users.add_user(store(), body["name"], role, actor=g.user.name)
    token, record = users.create_token(store(), user.name, "initial", body.get("expires_in"), actor=g.user.name)
    return jsonify({"user": user.to_dict(), "token": token, "token_record": record}), 201


@route("/users/<name>", methods=("DELETE",), summary="Remove a user and revoke their tokens", admin=True)
def remove_user(name: str):
    if name == g.user.name:
        raise ApiError(400, "invalid", "you cannot remove yourself; ask another admin")
    users.remove_user(store(), name, actor=g.user.name)
    return jsonify({"removed": name})


@route("/users/<name>/role", methods=("PUT",), summary="Change a user's role: member, admin or viewer", admin=True,
       body={"role": Field(str, True, "member, admin or viewer")})
def set_role(name: str):
    from mlpd.roles import set_role as change

    role = json_body()["role"]
    if name == g.user.name and role != "admin":
        raise ApiError(400, "invalid", "you cannot take away your own admin role; ask another admin")
    return jsonify(change(store(), name, role, g.user.name))


@route("/tokens", summary="List tokens (yours; admins: ?user=NAME or ?all=1)", credentials=True)
def list_tokens():
    name = request.args.get("user")
    if request.args.get("all") and g.user.is_admin:
        name = None
    elif not g.user.is_admin or not name:
        name = name if g.user.is_admin else g.user.name
        name = name or g.user.name
    return jsonify({"tokens": users.list_tokens(store(), name)})


@route("/tokens", methods=("POST",), summary="Create a token (for yourself; admins for anyone)",
       body={"user": Field(str, False, "whose token (admins only)"), "label": Field(str, False, "what it is for"),
             "expires_in": Field((int, float), False, "lifetime in seconds")}, credentials=True)
def create_token():
    body = json_body()
    name = body.get("user") or g.user.name
    if name != g.user.name and not g.user.is_admin:
        raise ApiError(403, "forbidden", "only admins create tokens for other users")
    token, record = users.create_token(store(), name, body.get("label") or "", body.get("expires_in"), actor=g.user.name)
    return jsonify({"token": token, "token_record": record}), 201


@route("/tokens/<token_id>", methods=("DELETE",), summary="Revoke a token (yours; admins any)", credentials=True)
def revoke_token(token_id: str):
    owner = None if g.user.is_admin else g.user.name
    return jsonify(users.revoke_token(store(), token_id, actor=g.user.name, owner=owner))


@route("/events", summary="The audit trail, newest first, a page at a time: ?action= (a prefix), ?actor=, ?object_id= "
                         "(or a workspace's/deployment's name), ?user= (by or about them), ?kind= (job, or job.queued), "
                         "?since= (a date, date-time or unix time), ?limit= (100), ?before= (next_before of the previous page), "
                         "?format=csv", admin=True)
def events():
    from flask import Response

    from mlpd.event_log import EventFilter, page, to_csv
    from mlpd.web.api_usage import _time_arg

    try:
        limit = max(1, min(int(request.args.get("limit", 100)), 1000))
        before = int(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        raise ApiError(400, "invalid_field", "limit, before: expected a whole number") from None
    since = _time_arg("since", 0.0) if request.args.get("since") else None
    rows, next_before = page(store(), EventFilter(action=request.args.get("action", "")[:100], actor=request.args.get("actor", "")[:100],
                                                  object=request.args.get("object_id", "")[:100], before=before, limit=limit,
                                                  user=request.args.get("user", "")[:100], kind=request.args.get("kind", "")[:100],
                                                  since=since))
    if request.args.get("format") == "csv":
        response = Response(to_csv(rows), mimetype="text/csv")
        if next_before is not None:
            response.headers["X-Next-Before"] = str(next_before)
        return response
    return jsonify({"events": rows, "next_before": next_before})


def _priority_classes():
    from mlpd.scheduling.priority_classes import PriorityClasses

    return PriorityClasses.from_config(config())


@route("/admin/priority-classes", summary="Priority classes, highest first: rank, default, preemptible, and who may use each "
       "(mlpd.toml's scheduler.priority_class_users and the grants; admins may use every class)", admin=True)
def list_priority_classes():
    from mlpd.scheduling.priority_classes import listing

    return jsonify(listing(store(), _priority_classes()))


GRANT_BODY = {"user": Field(str, True, 'the user, or "team:NAME" for a team\'s members')}


def _check_team_admin_grant(subject: str, name: str) -> None:
    """A team admin grants (or takes back) only a class their team holds, to their team's members (mlpd.roles)."""
    if g.user.is_admin:
        return
    from mlpd.scheduling.priority_classes import load
    from mlpd.roles import check_member_grant

    check_member_grant(store(), g.user, subject, load(config(), store()).allowed(name))


@route("/admin/priority-classes/<name>/grants", methods=("POST",), admin=True, team_admin=True, body=GRANT_BODY,
       summary="Let a user (or team:NAME) use a priority class, from their next submit on (idempotent); team admins: a class "
               "their team holds, to its members")
def grant_priority_class(name: str):
    from mlpd.scheduling.priority_classes import grant

    subject = json_body()["user"]
    _check_team_admin_grant(subject, name)
    done = grant(store(), _priority_classes(), subject, name, g.user.name)
    return jsonify(done), 201 if done["granted"] else 200


@route("/admin/priority-classes/<name>/grants/<user>", methods=("DELETE",), admin=True, team_admin=True,
       summary="Take back a grant of a priority class (queued work keeps its class; the next submit is checked without it); "
               "team admins: their team's members' grants of a class the team holds")
def revoke_priority_class(name: str, user: str):
    from mlpd.scheduling.priority_classes import revoke

    _check_team_admin_grant(user, name)

    return jsonify(revoke(store(), _priority_classes(), user, name, g.user.name))
