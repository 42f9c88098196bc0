"""A viewer (mlpd.roles): reads what the members of their teams see and changes nothing.

Walked, not listed by hand: every operation of /api/v1/openapi.json (a route added later is in the
walk the day it is declared), every route of MLflow's own URL map that takes a mutating method (read
in a subprocess, as tests/integration/test_mlflow_walk.py reads it), and every page of the web UI's
navigation. Refusals happen in the token check, the session check and the MLflow mount, before any
route runs, so the walk needs no real object for them (made-up ids in the path are refused the same).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from app_client import error_of, make_api

MUTATING = ("POST", "PUT", "PATCH", "DELETE")
VIEWER = "vera"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Team vision: member (submits a job) and vera, a viewer; outsider (not in it) submits one too."""
    from mlpd import users
    from mlpd.scheduling import quotas

    api = make_api(tmp_path_factory.mktemp("viewer-state"))
    st = api.store
    users.add_user(st, VIEWER, "viewer")
    viewer, _ = users.create_token(st, VIEWER, "test")
    outsider = api.user("outsider")
    quotas.add_team(st, "vision", "root")
    for name in (api.member_name, VIEWER):
        quotas.set_membership(st, "vision", name, True, "root")
    spec = {"command": ["python", "-c", "print(1)"], "name": "team-job"}
    team_job = api.call("POST", "jobs", api.member, json=spec).get_json()["job"]["id"]
    other_job = api.call("POST", "jobs", outsider, json={**spec, "name": "other-job"}).get_json()["job"]["id"]
    return {"api": api, "viewer": viewer, "team_job": team_job, "other_job": other_job}


def _openapi_operations(api):
    doc = api.call("GET", "openapi.json", api.admin).get_json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


def _filled(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "nosuchthing", path)


def test_every_mutating_api_operation_is_refused(world):
    api, viewer = world["api"], world["viewer"]
    walked, allowed = 0, []
    for method, path, op in _openapi_operations(api):
        if method not in MUTATING:
            continue
        if op.get("x-mlpd-viewer"):
            allowed.append((method, path))
            continue
        response = api.call(method, _filled(path), viewer, json={})
        assert error_of(response) == (403, "forbidden"), f"{method} {path}: {response.status_code}"
        assert "viewer" in response.get_json()["error"]["message"]
        walked += 1
    assert walked > 30 and allowed == [("POST", "/api/v1/password")]



def test_a_viewer_changes_their_own_password(world):
    from mlpd import users

    api, viewer = world["api"], world["viewer"]
    users.set_password(api.store, VIEWER, "the first long passphrase 1")
    changed = api.call("POST", "password", viewer, json={"old": "the first long passphrase 1", "new": "the second long passphrase 2"})
    assert changed.status_code == 200, changed.get_data(as_text=True)
    users.login_with_password(api.store, VIEWER, "the second long passphrase 2")


def test_nothing_the_walk_tried_changed_anything(world):
    api = world["api"]
    # Nothing made or changed by vera: her events are at most her own password and logins.
    actions = {r["action"] for r in api.store.query("SELECT action FROM events WHERE actor = ?", [VIEWER])}
    assert actions <= {"user.password_set", "user.login"}, actions
    assert api.store.query("SELECT COUNT(*) AS n FROM jobs WHERE owner = ?", [VIEWER])[0]["n"] == 0


def test_reads_open_to_a_viewer_answer_and_admin_reads_do_not(world):
    api, viewer = world["api"], world["viewer"]
    for method, path, op in _openapi_operations(api):
        if method != "GET" or "follow" in path:
            continue
        response = api.call("GET", _filled(path), viewer)
        if op.get("x-mlpd-admin"):
            assert error_of(response) == (403, "forbidden"), path
        else:
            assert response.status_code != 403, f"GET {path}: {response.get_data(as_text=True)[:200]}"


def test_a_viewer_sees_their_teams_work_and_only_it(world):
    api, viewer = world["api"], world["viewer"]
    listed = {j["id"] for j in api.call("GET", "jobs", viewer).get_json()["jobs"]}
    assert world["team_job"] in listed and world["other_job"] not in listed
    assert api.call("GET", f"jobs/{world['team_job']}", viewer).status_code == 200
    assert error_of(api.call("GET", f"jobs/{world['other_job']}", viewer)) == (404, "not_found")
    assert api.call("GET", "usage?team=vision", viewer).status_code == 200
    assert error_of(api.call("GET", "usage?user=outsider", viewer)) == (403, "forbidden")
    # ... and cannot cancel what they see.
    assert error_of(api.call("POST", f"jobs/{world['team_job']}/cancel", viewer)) == (403, "forbidden")
    assert api.call("GET", f"jobs/{world['team_job']}", api.member).get_json()["job"]["state"] == "queued"


def _load_walk():
    """tests/integration/test_mlflow_walk.py's reader of MLflow's URL map (one definition of it)."""
    path = Path(__file__).resolve().parents[1] / "integration" / "test_mlflow_walk.py"
    spec = importlib.util.spec_from_file_location("mlflow_walk_for_viewer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_mutating_mlflow_route_is_refused(world, tmp_path):
    from mlpd.tracking.policy import classify

    api, viewer = world["api"], world["viewer"]
    walk = _load_walk()
    routes = walk.mlflow_url_map(tmp_path)
    walked, reads = 0, []
    for rule in routes:
        if not rule["rule"].startswith("/mlflow/"):
            continue
        path = walk._VARIABLE.sub("nosuchthing", rule["rule"])
        for method in rule["methods"]:
            if method not in MUTATING:
                continue
            if classify(method, path[len("/mlflow"):]).action == "read":
                reads.append(path)  # searches sent as POST: reads (checked below)
                continue
            response = api.call(method, path, viewer, json={})
            assert response.status_code == 403, f"{method} {path}: {response.status_code} {response.get_data(as_text=True)[:200]}"
            assert "viewer" in response.get_json()["error"]["message"], path
            walked += 1
    assert walked > 50
    # What the policy lets through as reads is searches and lookups by POST, nothing that writes.
    odd = [p for p in reads if not re.search(r"(search|get|graphql|query|calculate-filter-correlation|traces/metrics)", p, re.IGNORECASE)]
    assert reads and not odd, odd


class _Forms(HTMLParser):
    """The POST forms (their actions) and the links of a page."""

    def __init__(self):
        super().__init__()
        self.posts, self.links = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and (a.get("method") or "").lower() == "post":
            self.posts.append(a.get("action") or "")
        if tag == "a":
            self.links.append(a.get("href") or "")


def _ui(api, name):
    from mlpd.web.ui_auth import COOKIE

    from mlpd import users

    secret, session = users.create_session(api.store, users.get_user(api.store, name), "token")
    client = api.app.test_client()
    client.set_cookie(COOKIE, secret)
    return client, session.csrf


def test_every_page_a_viewer_may_read_opens_with_no_button_they_cannot_use(world):
    api = world["api"]
    client, csrf = _ui(api, VIEWER)
    nav = _Forms()
    nav.feed(client.get("/ui/").get_data(as_text=True))
    pages = {link for link in nav.links if link.startswith("/ui/")} | {f"/ui/jobs/{world['team_job']}", "/ui/account"}
    assert "/ui/jobs" in pages and not any(p.startswith("/ui/jobs/new") for p in pages)
    for page in sorted(pages):
        response = client.get(page)
        assert response.status_code == 200, page
        found = _Forms()
        found.feed(response.get_data(as_text=True))
        # Only logging out, and (on the account page) their own password.
        assert set(found.posts) <= {"/ui/logout", ""}, (page, found.posts)
        assert not [link for link in found.links if link.startswith("/ui/jobs/new")], page
    dashboard = client.get("/ui/").get_data(as_text=True)
    assert "My teams' work" in dashboard and "team-job" in dashboard and "other-job" not in dashboard
    usage = client.get("/ui/usage")
    assert usage.status_code == 200
    job_page = client.get(f"/ui/jobs/{world['team_job']}").get_data(as_text=True)
    assert "team-job" in job_page and "Cancel job" not in job_page and "Run again" not in job_page
    member, _ = _ui(api, api.member_name)
    assert "Cancel job" in member.get(f"/ui/jobs/{world['team_job']}").get_data(as_text=True)  # the same page, to a member
    assert client.get("/ui/jobs/new").status_code == 403
    refused = client.post(f"/ui/jobs/{world['team_job']}/cancel", data={"csrf": csrf})
    assert refused.status_code == 403
    assert client.get(f"/ui/jobs/{world['other_job']}").status_code == 404


def test_the_cli_adds_a_viewer_and_changes_roles(world):
    from app_client import Served

    api = world["api"]
    served = Served(api)
    try:
        added = served.cli(api.admin, "admin", "user", "add", "victor", "--viewer")
        assert added.exit_code == 0 and "created viewer victor" in added.output, added.output
        token = added.output.strip().splitlines()[-1]
        assert error_of(api.call("POST", "jobs", token, json={"command": ["true"]})) == (403, "forbidden")
        changed = served.cli(api.admin, "admin", "user", "role", "victor", "member")
        assert changed.exit_code == 0 and "victor is now a member" in changed.output, changed.output
        assert api.call("POST", "jobs", token, json={"command": ["true"]}).status_code == 201  # the same token, the new role
        assert "already" in served.cli(api.admin, "admin", "user", "role", "victor", "member").output
        both = served.cli(api.admin, "admin", "user", "add", "vic2", "--viewer", "--admin")
        assert both.exit_code != 0 and "choose one" in both.output
        refused = served.cli(api.member, "admin", "user", "role", "victor", "admin")
        assert refused.exit_code != 0 and "admin" in refused.output
        bad = served.cli(api.admin, "admin", "user", "role", "nobody", "viewer")
        assert bad.exit_code != 0 and "no such user" in bad.output
    finally:
        served.close()
