"""Web passwords over the JSON API: an admin sets one, a user changes their own.

The API itself takes tokens only; these routes exist so that `mlpd admin user password`
and `mlpd password` work from any machine, as every other CLI command does.
"""

from __future__ import annotations

from flask import g, jsonify

from mlpd import users
from mlpd.web import store
from mlpd.web.routes import Area, Field, json_body

area = Area("passwords")  # registered by the app factory (mlpd.web.create_app)
route = area.route


@route("/users/<name>/password", methods=("POST",), summary="Set a user's web UI password (ends their web sessions, clears a lockout)",
       admin=True, body={"password": Field(str, True, f"at least {users.PASSWORD_MIN} characters")})
def set_user_password(name: str):
    body = json_body()
    users.set_password(store(), name, body["password"], actor=g.user.name)
    return jsonify({"user": name, "password_set": True})


@route("/password", methods=("POST",), summary="Change your own web UI password (the current one is checked; failures count toward the lockout)", credentials=True,
       viewer=True,
       body={"old": Field(str, True, "your current password"), "new": Field(str, True, f"at least {users.PASSWORD_MIN} characters")})
def change_own_password():
    body = json_body()
    users.check_password_strength(body["new"], g.user.name)
    users.change_password(store(), g.user.name, body["old"], body["new"])
    return jsonify({"user": g.user.name, "password_set": True})
