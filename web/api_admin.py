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
             "expires_in": Field((int, float), False, "token lifetime in seconds")})
def add_user():
    body = json_body()
    role = "admin" if body.get("admin") else "member"
    user = users.add_user(store(), body["name"], role, actor=g.user.name)
    token, record = users.create_token(store(), user.name, "initial", body.get("expires_in"), actor=g.user.name)
    return jsonify({"user": user.to_dict(), "token": token, "token_record": record}), 201


@route("/users/<name>", methods=("DELETE",), summary="Remove a user and revoke their tokens", admin=True)
def remove_user(name: str):
    if name == g.user.name:
        raise ApiError(400, "invalid", "you cannot remove yourself; ask another admin")
    users.remove_user(store(), name, actor=g.user.name)
    return jsonify({"removed": name})


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
                         "(or a workspace's/deployment's name), ?limit= (100), ?before= (next_before of the previous page)", admin=True)
def events():
    from mlpd.event_log import EventFilter, page

    try:
        limit = max(1, min(int(request.args.get("limit", 100)), 1000))
        before = int(request.args["before"]) if request.args.get("before") else None
    except ValueError:
        raise ApiError(400, "invalid_field", "limit, before: expected a whole number") from None
    rows, next_before = page(store(), EventFilter(action=request.args.get("action", ""), actor=request.args.get("actor", ""),
                                                  object=request.args.get("object_id", ""), before=before, limit=limit))
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


@route("/admin/priority-classes/<name>/grants", methods=("POST",), admin=True, body=GRANT_BODY,
       summary="Let a user (or team:NAME) use a priority class, from their next submit on (idempotent)")
def grant_priority_class(name: str):
    from mlpd.scheduling.priority_classes import grant

    done = grant(store(), _priority_classes(), json_body()["user"], name, g.user.name)
    return jsonify(done), 201 if done["granted"] else 200


@route("/admin/priority-classes/<name>/grants/<user>", methods=("DELETE",), admin=True,
       summary="Take back a grant of a priority class (queued work keeps its class; the next submit is checked without it)")
def revoke_priority_class(name: str, user: str):
    from mlpd.scheduling.priority_classes import revoke

    return jsonify(revoke(store(), _priority_classes(), user, name, g.user.name))
