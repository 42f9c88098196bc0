"""Team admins (mlpd.roles): lead administers team vision. They add and remove vision's members, set
their quotas within vision's own limits, grant them the priority class vision holds, and are refused
on team nlp, on users outside vision, and on every admin-only setting."""

from __future__ import annotations

import pytest
from app_client import Served, error_of, make_api


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    api = make_api(tmp_path_factory.mktemp("team-admin-state"))
    for name in ("lead", "alice", "bob", "newcomer"):
        setattr(api, name, api.user(name))
    for path, body in (("teams", {"name": "vision"}), ("teams", {"name": "nlp"}),
                       ("teams/vision/members", {"user": "lead"}), ("teams/vision/members", {"user": "alice"}),
                       ("teams/nlp/members", {"user": "bob"}),
                       ("quotas", {"team": "vision", "gpu_hours": 100, "max_gpus": 2, "max_jobs": 5}),
                       ("admin/priority-classes/production/grants", {"user": "team:vision"}),
                       ("teams/vision/admins", {"user": "lead"})):
        response = api.call("POST", path, api.admin, json=body)
        assert response.status_code in (200, 201), (path, response.get_data(as_text=True))
    return api


def quota_of(api, user):
    return next((q for q in api.call("GET", "quotas", api.admin).get_json()["quotas"] if q["subject"] == user), None)


def test_a_team_admin_manages_their_team(api):
    added = api.call("POST", "teams/vision/members", api.lead, json={"user": "newcomer"})
    assert added.status_code == 200 and "newcomer" in added.get_json()["members"]
    ok = api.call("POST", "quotas", api.lead, json={"user": "alice", "gpu_hours": 40, "max_gpus": 1})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    assert (quota_of(api, "alice")["gpu_hours"], quota_of(api, "alice")["max_gpus"]) == (40, 1)
    assert api.call("POST", "quotas", api.lead, json={"user": "alice", "max_jobs": 5}).status_code == 200
    granted = api.call("POST", "admin/priority-classes/production/grants", api.lead, json={"user": "alice"})
    assert granted.status_code == 201, granted.get_data(as_text=True)
    assert api.call("DELETE", "admin/priority-classes/production/grants/alice", api.lead).status_code == 200
    removed = api.call("DELETE", "teams/vision/members/newcomer", api.lead)
    assert removed.status_code == 200 and "newcomer" not in removed.get_json()["members"]
    events = api.store.query("SELECT action FROM events WHERE actor = 'lead' ORDER BY id")
    assert [e["action"] for e in events] == ["team.member_add", "quota.set", "quota.caps_set", "priority_class.grant",
                                             "priority_class.revoke", "team.member_remove"]


def test_outside_their_team_they_are_refused(api):
    refusals = [
        ("POST", "teams/nlp/members", {"user": "alice"}),  # another team
        ("DELETE", "teams/nlp/members/bob", None),
        ("POST", "quotas", {"user": "bob", "gpu_hours": 1}),  # a user outside vision
        ("POST", "quotas", {"user": "alice", "gpu_hours": 101, "max_gpus": 1}),  # over vision's own limit
        ("POST", "quotas", {"user": "alice", "gpu_hours": 10, "max_gpus": 3}),
        ("POST", "quotas", {"user": "alice", "gpu_hours": 0, "max_gpus": 1}),  # unlimited, under a limited team
        ("POST", "quotas", {"user": "alice", "max_jobs": 6}),
        ("POST", "quotas", {"user": "alice", "clear": True}),
        ("POST", "quotas", {"team": "vision", "gpu_hours": 1000}),  # the team's own limit is the admin's
        ("POST", "admin/priority-classes/production/grants", {"user": "bob"}),  # not a member
        ("POST", "admin/priority-classes/production/grants", {"user": "team:nlp"}),
        ("DELETE", "admin/priority-classes/production/grants/team:vision", None),
    ]
    for method, path, body in refusals:
        response = api.call(method, path, api.lead, **({"json": body} if body is not None else {}))
        assert error_of(response) == (403, "forbidden"), (method, path, body, response.get_data(as_text=True))
    # ... and the admin-only settings: users, tokens of others, teams, GPUs, team admins, roles.
    for method, path, body in (("POST", "users", {"name": "sneaky"}), ("POST", "teams", {"name": "mine"}),
                               ("DELETE", "teams/vision", None), ("POST", "teams/vision/admins", {"user": "alice"}),
                               ("PUT", "users/alice/role", {"role": "admin"}), ("POST", "gpus/declare", {"count": 8}),
                               ("POST", "tokens", {"user": "alice"}), ("GET", "events", None), ("GET", "admin/report", None)):
        response = api.call(method, path, api.lead, **({"json": body} if body is not None else {}))
        assert error_of(response) == (403, "forbidden"), (method, path)
    assert quota_of(api, "bob") is None
    nlp = next(t for t in api.call("GET", "teams", api.admin).get_json()["teams"] if t["name"] == "nlp")
    assert nlp["members"] == ["bob"]
    vision_grants = api.store.query("SELECT subject FROM priority_grants WHERE class = 'production' ORDER BY subject")
    assert [r["subject"] for r in vision_grants] == ["team:vision"]


def test_a_member_is_not_a_team_admin_and_a_removed_member_stops_being_one(api):
    assert error_of(api.call("POST", "teams/vision/members", api.alice, json={"user": "bob"})) == (403, "forbidden")
    assert api.call("POST", "teams/vision/members", api.admin, json={"user": "bob"}).status_code == 200
    assert api.call("POST", "teams/vision/admins", api.admin, json={"user": "bob"}).status_code == 201
    assert api.call("DELETE", "teams/vision/members/bob", api.admin).status_code == 200
    assert error_of(api.call("POST", "teams/vision/members", api.bob, json={"user": "newcomer"})) == (403, "forbidden")
    teams = {t["name"]: t for t in api.call("GET", "teams", api.admin).get_json()["teams"]}
    assert teams["vision"]["admins"] == ["lead"]
    # A team admin must be a member; a viewer never is one.
    assert error_of(api.call("POST", "teams/vision/admins", api.admin, json={"user": "bob"})) == (409, "conflict")
    from mlpd import users

    users.add_user(api.store, "watcher", "viewer")
    assert api.call("POST", "teams/vision/members", api.admin, json={"user": "watcher"}).status_code == 200
    assert error_of(api.call("POST", "teams/vision/admins", api.admin, json={"user": "watcher"})) == (409, "conflict")


def test_the_cli(api):
    served = Served(api)
    try:
        added = served.cli(api.admin, "admin", "team", "admin", "add", "vision", "alice")
        assert added.exit_code == 0 and "alice is now a team admin of vision" in added.output, added.output
        listed = served.cli(api.admin, "admin", "team", "list")
        assert "lead, alice" in listed.output or "alice, lead" in listed.output
        removed = served.cli(api.admin, "admin", "team", "admin", "rm", "vision", "alice")
        assert removed.exit_code == 0 and "alice is no longer a team admin of vision" in removed.output
        refused = served.cli(api.lead, "admin", "team", "admin", "add", "vision", "alice")
        assert refused.exit_code != 0 and "admin" in refused.output
        member = served.cli(api.lead, "admin", "team", "member", "add", "vision", "newcomer")
        assert member.exit_code == 0 and "newcomer" in member.output, member.output
    finally:
        served.close()
