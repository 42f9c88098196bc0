"""The spine, end to end: users and tokens, login, auth on every route, the OpenAPI document,
config errors and the daemon's life (lock, SIGTERM, SIGKILL and restart) against real daemons."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

import mlpd
from conftest import BIN, free_port
from helpers import as_json, wait_for

# The shipped file, so that an /etc/mlpd/mlpd.toml on the test host cannot change the app built here.
SHIPPED_CONFIG = str(Path(__file__).resolve().parents[2] / "mlpd.toml")


def unique(prefix: str) -> str:
    """A user name no other test on the shared daemon uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run_cli(daemon, *args: str, token: str | None = None, xdg: Path | None = None, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """`mlpd ARGS` as a user with their own config directory (so stored logins never leak between tests)."""
    full_env = daemon.env(token)
    if xdg is not None:
        full_env["XDG_CONFIG_HOME"] = str(xdg)
    full_env.update(env or {})
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=full_env, input=input, timeout=60)


def assert_error(resp: requests.Response, status: int, code: str | None = None) -> dict:
    """The one JSON error shape, with the expected status (and code)."""
    assert resp.status_code == status, f"{resp.request.method} {resp.url}: {resp.status_code} {resp.text[:300]}"
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers["Content-Type"]
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def new_member(daemon) -> tuple[str, str]:
    """A member created through the API by the admin; returns (name, token)."""
    name = unique("m")
    resp = daemon.api("POST", "/api/v1/users", daemon.admin_token, json={"name": name})
    assert resp.status_code == 201, resp.text
    return name, resp.json()["token"]


# ---------------------------------------------------------------- the routes the app serves


def served_routes(tmp_path_factory) -> list[tuple[str, str]]:
    """(rule, method) for every /api/v1 route of the app, built in-process on an empty state dir."""
    from mlpd.config import load_config
    from mlpd.store import Store
    from mlpd.web import create_app

    state = tmp_path_factory.mktemp("app-state")
    cfg = load_config(SHIPPED_CONFIG, {"server.state_dir": str(state)})
    Store(cfg.db_path).migrate()
    app = create_app(cfg)
    pairs = []
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            pairs += [(rule.rule, m) for m in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return sorted(pairs)


@pytest.fixture(scope="module")
def routes(tmp_path_factory) -> list[tuple[str, str]]:
    pairs = served_routes(tmp_path_factory)
    assert ("/api/v1/whoami", "GET") in pairs and ("/api/v1/users", "POST") in pairs
    return pairs


def to_openapi(rule: str) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def concrete(rule: str) -> str:
    """A requestable path: each path parameter replaced by a dummy value its converter accepts."""
    def dummy(m: re.Match) -> str:
        converter = (m.group(1) or "string").split("(")[0]
        return {"int": "1", "float": "1.5", "uuid": "00000000-0000-0000-0000-000000000000", "path": "dummy/x"}.get(converter, "dummy")

    return re.sub(r"<(?:([^:>]+):)?[^>]+>", dummy, rule)


@pytest.fixture(scope="module")
def openapi(daemon) -> dict:
    resp = daemon.api("GET", "/api/v1/openapi.json", daemon.admin_token)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_openapi_lists_exactly_the_served_routes(openapi, routes):
    documented = sorted((path, method.upper()) for path, ops in openapi["paths"].items() for method in ops)
    served = sorted((to_openapi(rule), method) for rule, method in routes)
    assert documented == served, f"only documented: {set(documented) - set(served)}; only served: {set(served) - set(documented)}"
    assert openapi["openapi"].startswith("3.") and openapi["info"]["version"] == mlpd.__version__


def test_openapi_admin_flags_match_what_the_routes_enforce(openapi, tmp_path_factory):
    from mlpd.config import load_config
    from mlpd.web import create_app

    app = create_app(load_config(SHIPPED_CONFIG, {"server.state_dir": str(tmp_path_factory.mktemp("flags"))}))
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        enforced = getattr(app.view_functions[rule.endpoint], "mlpd_admin", None)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            op = openapi["paths"][to_openapi(rule.rule)][method.lower()]
            assert bool(op.get("x-mlpd-admin")) == bool(enforced), f"{method} {rule.rule}"


# ---------------------------------------------------------------- the auth walk


@pytest.fixture(scope="module")
def bad_tokens(daemon) -> dict[str, str]:
    """Tokens that must all be refused: wrong, malformed, revoked, expired, of a removed user."""
    name, token = new_member(daemon)
    revoked = daemon.api("POST", "/api/v1/tokens", token, json={"label": "to revoke"}).json()
    assert daemon.api("DELETE", f"/api/v1/tokens/{revoked['token_record']['id']}", daemon.admin_token).status_code == 200
    expired = daemon.api("POST", "/api/v1/tokens", token, json={"label": "short", "expires_in": 1}).json()
    gone_name, gone_token = new_member(daemon)
    assert daemon.api("DELETE", f"/api/v1/users/{gone_name}", daemon.admin_token).status_code == 200
    prefix, token_id, secret = token.split("_", 2)
    wait_for(lambda: daemon.api("GET", "/api/v1/whoami", expired["token"]).status_code == 401, timeout=10, message="the 1 s token to expire")
    return {
        "wrong secret": f"mlpd_{token_id}_{'x' * len(secret)}",
        "unknown id": f"mlpd_{'0' * 12}_{secret}",
        "malformed": "not-a-token",
        "revoked": revoked["token"],
        "expired": expired["token"],
        "removed user": gone_token,
    }


def test_every_api_route_refuses_requests_without_a_valid_token(daemon, routes, bad_tokens):
    failures = []
    for rule, method in routes:
        url = daemon.url + concrete(rule)
        attempts = {"no token": {}, **{kind: {"Authorization": f"Bearer {tok}"} for kind, tok in bad_tokens.items()}}
        attempts["basic, wrong password"] = {"Authorization": "Basic " + base64.b64encode(b"root:nope").decode()}
        attempts["empty bearer"] = {"Authorization": "Bearer "}
        for kind, headers in attempts.items():
            resp = requests.request(method, url, headers=headers, json={} if method in ("POST", "PUT", "PATCH") else None, timeout=30)
            try:
                err = assert_error(resp, 401, "unauthorized")
                assert "token" in err["message"]
            except AssertionError as exc:
                failures.append(f"{kind}: {exc}")
    assert not failures, "\n".join(failures)


def test_a_member_gets_403_from_every_admin_route(daemon, openapi):
    _, member = new_member(daemon)
    admin_ops = [(path, method.upper()) for path, ops in openapi["paths"].items() for method, op in ops.items() if op.get("x-mlpd-admin")]
    assert ("/api/v1/users", "POST") in admin_ops and ("/api/v1/events", "GET") in admin_ops
    users_before = daemon.api("GET", "/api/v1/users", daemon.admin_token).json()["users"]
    for path, method in admin_ops:
        url = daemon.url + re.sub(r"\{[^}]+\}", "dummy", path)
        body = {"name": unique("sneaky")} if (path, method) == ("/api/v1/users", "POST") else {}
        resp = requests.request(method, url, headers={"Authorization": f"Bearer {member}"}, json=body if method != "GET" else None, timeout=30)
        assert_error(resp, 403, "forbidden")
    assert daemon.api("GET", "/api/v1/users", daemon.admin_token).json()["users"] == users_before


def test_unknown_routes_and_methods_use_the_json_error_shape(daemon):
    admin = daemon.admin_token
    err = assert_error(daemon.api("GET", "/api/v1/no-such-thing", admin), 404, "not_found")
    assert "openapi.json" in err["message"]
    assert_error(daemon.api("GET", "/no-such-page"), 404, "not_found")
    resp = daemon.api("PUT", "/api/v1/whoami", admin)
    assert_error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    assert_error(daemon.api("DELETE", "/api/v1/users/nobody-here", admin), 404, "not_found")


def test_bad_request_bodies_are_refused_with_the_field_named(daemon):
    admin = daemon.admin_token
    err = assert_error(daemon.api("POST", "/api/v1/users", admin, data="{not json", headers={"Content-Type": "application/json"}), 400)
    assert "JSON" in err["message"]
    assert "name" in assert_error(daemon.api("POST", "/api/v1/users", admin, json={}), 400, "missing_field")["message"]
    assert "colour" in assert_error(daemon.api("POST", "/api/v1/users", admin, json={"name": unique("x"), "colour": "red"}), 400)["message"]
    assert "admin" in assert_error(daemon.api("POST", "/api/v1/users", admin, json={"name": unique("x"), "admin": "yes"}), 400)["message"]
    assert "user name" in assert_error(daemon.api("POST", "/api/v1/users", admin, json={"name": "Bad Name"}), 400)["message"]
    assert_error(daemon.api("POST", "/api/v1/tokens", admin, json={"expires_in": -1}), 400)


def test_healthz_is_public_and_reports_the_version(daemon):
    body = requests.get(daemon.url + "/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["version"] == mlpd.__version__ and body["worker"] == "ok"


# ---------------------------------------------------------------- members and their own tokens, over HTTP


def test_members_manage_only_their_own_tokens(daemon):
    alice, alice_token = new_member(daemon)
    bob, bob_token = new_member(daemon)
    assert daemon.api("GET", "/api/v1/whoami", alice_token).json() == {"user": {"name": alice, "role": "member"}}
    assert_error(daemon.api("POST", "/api/v1/tokens", alice_token, json={"user": bob}), 403, "forbidden")
    second = daemon.api("POST", "/api/v1/tokens", alice_token, json={"label": "laptop"})
    assert second.status_code == 201
    assert daemon.api("GET", "/api/v1/whoami", second.json()["token"]).json()["user"]["name"] == alice
    for query in ({}, {"all": 1}, {"user": bob}):
        listed = daemon.api("GET", "/api/v1/tokens", alice_token, params=query).json()["tokens"]
        assert {t["user"] for t in listed} == {alice}, query
        assert len(listed) == 2
        assert all("secret" not in k and "hash" not in k for t in listed for k in t)
    bob_tokens = daemon.api("GET", "/api/v1/tokens", bob_token).json()["tokens"]
    assert_error(daemon.api("DELETE", f"/api/v1/tokens/{bob_tokens[0]['id']}", alice_token), 404, "not_found")
    assert daemon.api("GET", "/api/v1/whoami", bob_token).status_code == 200
    assert daemon.api("DELETE", f"/api/v1/tokens/{second.json()['token_record']['id']}", alice_token).status_code == 200
    assert_error(daemon.api("GET", "/api/v1/whoami", second.json()["token"]), 401)
    assert daemon.api("GET", "/api/v1/whoami", alice_token).status_code == 200


def test_an_admin_cannot_remove_themselves(daemon):
    assert_error(daemon.api("DELETE", "/api/v1/users/root", daemon.admin_token), 400)
    assert daemon.api("GET", "/api/v1/whoami", daemon.admin_token).status_code == 200


def test_user_and_token_changes_over_http_are_in_the_audit_trail(daemon):
    name, token = new_member(daemon)
    created = daemon.api("POST", "/api/v1/tokens", daemon.admin_token, json={"user": name, "label": "ci"}).json()["token_record"]
    daemon.api("DELETE", f"/api/v1/tokens/{created['id']}", token)
    daemon.api("DELETE", f"/api/v1/users/{name}", daemon.admin_token)
    evs = daemon.api("GET", "/api/v1/events", daemon.admin_token, params={"limit": 1000}).json()["events"]
    mine = [(e["actor"], e["action"], e["object_id"]) for e in reversed(evs)
            if e["object_id"] in (name, created["id"]) or e["detail"].get("user") == name]
    assert ("root", "user.add", name) in mine
    assert ("root", "token.create", created["id"]) in mine
    assert (name, "token.revoke", created["id"]) in mine
    assert mine[-1] == ("root", "user.remove", name)
    one = daemon.api("GET", "/api/v1/events", daemon.admin_token, params={"object_id": name}).json()["events"]
    assert [e["action"] for e in one] == ["user.remove", "user.add"]
    assert_error(daemon.api("GET", "/api/v1/events", daemon.admin_token, params={"limit": "many"}), 400)


# ---------------------------------------------------------------- the CLI: admin on the host


def test_host_user_add_prints_the_token_alone_on_the_last_line(tmp_path, daemon):
    state = tmp_path / "state"
    result = run_cli(daemon, "admin", "user", "add", "alice", "--admin", "--state-dir", str(state))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    token = lines[-1]
    assert re.fullmatch(r"mlpd_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}", token), lines
    assert "alice" in lines[0] and "admin" in lines[0]
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    # only the hash is stored: no cell of any table and no byte of the file holds the secret
    secret = token.split("_", 2)[2]
    conn = sqlite3.connect(state / "mlpd.db")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        cells = [v for t in tables for row in conn.execute(f'SELECT * FROM "{t}"') for v in row]
        assert conn.execute("SELECT COUNT(*) FROM tokens").fetchone()[0] == 1
    finally:
        conn.close()
    assert not any(isinstance(v, str) and secret in v for v in cells)
    for f in state.glob("mlpd.db*"):
        assert secret.encode() not in f.read_bytes(), f


def test_host_admin_commands_round_trip_with_json(tmp_path, daemon):
    state = str(tmp_path / "state")
    added = as_json(run_cli(daemon, "admin", "user", "add", "carol", "--json", "--state-dir", state))
    assert added["user"] == {"name": "carol", "role": "member"} and added["token"].startswith("mlpd_")
    assert added["token_record"]["user"] == "carol" and added["token_record"]["label"] == "initial"
    table = run_cli(daemon, "admin", "user", "list", "--state-dir", state)
    assert table.returncode == 0 and "NAME" in table.stdout and re.search(r"^carol\s+member\s+1\s", table.stdout, re.M), table.stdout

    created = run_cli(daemon, "admin", "token", "create", "carol", "--label", "ci", "--expires", "30d", "--state-dir", state)
    assert created.returncode == 0, created.stderr
    new_token = created.stdout.strip().splitlines()[-1]
    assert new_token.startswith("mlpd_") and "expires" in created.stdout
    tokens = as_json(run_cli(daemon, "admin", "token", "list", "--user", "carol", "--json", "--state-dir", state))["tokens"]
    assert [t["label"] for t in tokens] == ["initial", "ci"]
    assert tokens[1]["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=120)
    listing = json.dumps(tokens)
    for tok in (added["token"], new_token):
        assert tok.split("_", 2)[2] not in listing

    ci_id = tokens[1]["id"]
    revoked = run_cli(daemon, "admin", "token", "revoke", ci_id, "--state-dir", state)
    assert revoked.returncode == 0 and ci_id in revoked.stdout

    assert run_cli(daemon, "admin", "user", "rm", "carol", "--state-dir", state).returncode == 0
    assert as_json(run_cli(daemon, "admin", "user", "list", "--json", "--state-dir", state)) == {"users": []}

    conn = sqlite3.connect(os.path.join(state, "mlpd.db"))
    try:
        trail = conn.execute("SELECT actor, action, object_id FROM events ORDER BY id").fetchall()
        revoked_at = dict(conn.execute("SELECT id, revoked_at FROM tokens").fetchall())
    finally:
        conn.close()
    assert [a for _, a, _ in trail] == ["user.add", "token.create", "token.create", "token.revoke", "user.remove"]
    assert {actor for actor, _, _ in trail} == {"host"}
    assert trail[3][2] == ci_id and trail[4][2] == "carol"
    assert all(revoked_at.values()) and len(revoked_at) == 2, "removing a user revokes all their tokens"


def test_host_admin_errors_are_one_line_messages(tmp_path, daemon):
    state = str(tmp_path / "state")
    assert run_cli(daemon, "admin", "user", "add", "erin", "--state-dir", state).returncode == 0
    dup = run_cli(daemon, "admin", "user", "add", "erin", "--state-dir", state)
    assert dup.returncode == 1 and "already exists" in dup.stderr and "Traceback" not in dup.stderr
    bad = run_cli(daemon, "admin", "user", "add", "Erin!", "--state-dir", state)
    assert bad.returncode == 1 and "invalid user name" in bad.stderr
    expiry = run_cli(daemon, "admin", "token", "create", "erin", "--expires", "someday", "--state-dir", state)
    assert expiry.returncode == 2 and "--expires" in expiry.stderr
    missing = run_cli(daemon, "admin", "user", "rm", "nobody", "--state-dir", state)
    assert missing.returncode == 1 and "no such user" in missing.stderr
    gone = run_cli(daemon, "admin", "token", "revoke", "abcdefabcdef", "--state-dir", state)
    assert gone.returncode == 1 and "no such token" in gone.stderr


def test_host_created_token_with_expiry_works_then_expires(daemon):
    name = unique("exp")
    result = daemon.host_cli("admin", "user", "add", name, "--expires", "1s")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    # the token is valid for one second: it authenticates now (or has just expired on a slow machine), and then never again
    first = daemon.api("GET", "/api/v1/whoami", token)
    assert first.status_code in (200, 401)
    if first.status_code == 200:
        assert first.json()["user"]["name"] == name
    wait_for(lambda: daemon.api("GET", "/api/v1/whoami", token).status_code == 401, timeout=10, message="the token to expire")
    assert_error(daemon.api("GET", "/api/v1/whoami", token), 401, "unauthorized")
    who = run_cli(daemon, "whoami", token=token)
    assert who.returncode == 1 and "mlpd login" in who.stderr


def test_host_created_user_can_use_the_running_daemon(daemon):
    name = unique("host")
    token = daemon.add_user(name)
    assert daemon.api("GET", "/api/v1/whoami", token).json()["user"] == {"name": name, "role": "member"}
    assert daemon.host_cli("admin", "user", "rm", name).returncode == 0
    assert_error(daemon.api("GET", "/api/v1/whoami", token), 401)


# ---------------------------------------------------------------- the CLI: admin through the API


def test_admin_commands_through_the_api(daemon):
    admin = daemon.admin_token
    name = unique("api")
    added = as_json(run_cli(daemon, "admin", "user", "add", name, "--json", token=admin))
    assert added["user"] == {"name": name, "role": "member"}
    member_token = added["token"]
    assert daemon.api("GET", "/api/v1/whoami", member_token).json()["user"]["name"] == name

    text = run_cli(daemon, "admin", "user", "add", unique("api"), "--admin", token=admin)
    assert text.returncode == 0 and text.stdout.strip().splitlines()[-1].startswith("mlpd_")

    users = as_json(run_cli(daemon, "admin", "user", "list", "--json", token=admin))["users"]
    assert {"name": name, "role": "member"}.items() <= next(u for u in users if u["name"] == name).items()

    token = as_json(run_cli(daemon, "admin", "token", "create", name, "--label", "nb", "--expires", "2h", "--json", token=admin))
    assert token["token_record"]["user"] == name and token["token_record"]["label"] == "nb"
    assert token["token_record"]["expires_at"] == pytest.approx(time.time() + 7200, abs=120)
    assert daemon.api("GET", "/api/v1/whoami", token["token"]).status_code == 200

    listed = as_json(run_cli(daemon, "admin", "token", "list", "--user", name, "--json", token=admin))["tokens"]
    assert sorted(t["label"] for t in listed) == ["initial", "nb"]
    everyone = as_json(run_cli(daemon, "admin", "token", "list", "--json", token=admin))["tokens"]
    assert {name, "root"} <= {t["user"] for t in everyone}
    assert member_token.split("_", 2)[2] not in json.dumps(everyone)

    revoked = run_cli(daemon, "admin", "token", "revoke", token["token_record"]["id"], token=admin)
    assert revoked.returncode == 0, revoked.stderr
    assert_error(daemon.api("GET", "/api/v1/whoami", token["token"]), 401)

    removed = run_cli(daemon, "admin", "user", "rm", name, token=admin)
    assert removed.returncode == 0, removed.stderr
    assert name not in [u["name"] for u in as_json(run_cli(daemon, "admin", "user", "list", "--json", token=admin))["users"]]
    assert_error(daemon.api("GET", "/api/v1/whoami", member_token), 401)


def test_admin_commands_as_a_member_say_an_admin_is_needed(daemon):
    _, member = new_member(daemon)
    for args in (("admin", "user", "list"), ("admin", "user", "add", unique("no")), ("admin", "user", "rm", "root")):
        result = run_cli(daemon, *args, token=member)
        assert result.returncode == 1, args
        assert "admin" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert daemon.api("GET", "/api/v1/whoami", daemon.admin_token).status_code == 200


# ---------------------------------------------------------------- login, whoami, version, help


def test_login_stores_credentials_0600_and_whoami_uses_them(daemon, tmp_path):
    name, token = new_member(daemon)
    xdg = tmp_path / "cfg"
    result = run_cli(daemon, "login", daemon.url, "--token", token, xdg=xdg)
    assert result.returncode == 0, result.stderr
    assert name in result.stdout
    path = xdg / "mlpd" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": daemon.url, "token": token}
    assert not list(path.parent.glob("*.tmp"))

    who = run_cli(daemon, "whoami", xdg=xdg)
    assert who.returncode == 0, who.stderr
    assert who.stdout.strip() == f"{name} (member) at {daemon.url}"
    assert as_json(run_cli(daemon, "whoami", "--json", xdg=xdg)) == {"user": {"name": name, "role": "member"}, "url": daemon.url}


def test_login_reads_the_token_from_stdin(daemon, tmp_path):
    name, token = new_member(daemon)
    xdg = tmp_path / "cfg"
    result = run_cli(daemon, "login", daemon.url, xdg=xdg, input=token + "\n")
    assert result.returncode == 0, result.stderr
    assert run_cli(daemon, "whoami", xdg=xdg).stdout.startswith(name)


def test_login_with_a_bad_token_fails_and_stores_nothing(daemon, tmp_path):
    xdg = tmp_path / "cfg"
    result = run_cli(daemon, "login", daemon.url, "--token", "mlpd_000000000000_" + "x" * 43, xdg=xdg)
    assert result.returncode != 0
    assert "login failed" in result.stderr
    assert not (xdg / "mlpd" / "credentials.json").exists()
    unreachable = run_cli(daemon, "login", f"http://127.0.0.1:{free_port()}", "--token", daemon.admin_token, xdg=xdg)
    assert unreachable.returncode != 0 and "cannot reach" in unreachable.stderr
    assert not (xdg / "mlpd" / "credentials.json").exists()


def test_environment_wins_over_the_stored_login(daemon, tmp_path):
    stored_name, stored_token = new_member(daemon)
    env_name, env_token = new_member(daemon)
    xdg = tmp_path / "cfg"
    assert run_cli(daemon, "login", daemon.url, "--token", stored_token, xdg=xdg).returncode == 0
    both = run_cli(daemon, "whoami", xdg=xdg, env={"MLPD_URL": daemon.url, "MLPD_TOKEN": env_token})
    assert both.stdout.startswith(env_name + " "), both.stdout + both.stderr
    token_only = run_cli(daemon, "whoami", xdg=xdg, env={"MLPD_TOKEN": env_token})
    assert token_only.stdout.startswith(env_name + " "), token_only.stdout + token_only.stderr
    dead_url = f"http://127.0.0.1:{free_port()}"
    url_only = run_cli(daemon, "whoami", xdg=xdg, env={"MLPD_URL": dead_url})
    assert url_only.returncode == 1 and "cannot reach" in url_only.stderr and dead_url in url_only.stderr
    assert run_cli(daemon, "whoami", xdg=xdg).stdout.startswith(stored_name + " ")


def test_whoami_without_login_says_how_to_log_in(daemon, tmp_path):
    result = run_cli(daemon, "whoami", xdg=tmp_path / "empty")
    assert result.returncode != 0
    assert "not logged in: run 'mlpd login http://HOST:PORT'" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_whoami_with_a_revoked_stored_token_says_log_in_again(daemon, tmp_path):
    _, token = new_member(daemon)
    xdg = tmp_path / "cfg"
    assert run_cli(daemon, "login", daemon.url, "--token", token, xdg=xdg).returncode == 0
    token_id = token.split("_")[1]
    assert daemon.api("DELETE", f"/api/v1/tokens/{token_id}", daemon.admin_token).status_code == 200
    result = run_cli(daemon, "whoami", xdg=xdg)
    assert result.returncode == 1 and "mlpd login" in result.stderr and "Traceback" not in result.stderr


def test_version_shows_client_and_daemon(daemon, tmp_path):
    text = run_cli(daemon, "version", token=daemon.admin_token)
    assert text.returncode == 0, text.stderr
    assert f"client {mlpd.__version__}" in text.stdout and f"daemon {mlpd.__version__}" in text.stdout
    assert as_json(run_cli(daemon, "version", "--json", token=daemon.admin_token)) == {"client": mlpd.__version__, "daemon": mlpd.__version__}
    offline = run_cli(daemon, "version", "--json", xdg=tmp_path / "empty")
    assert as_json(offline) == {"client": mlpd.__version__, "daemon": None}
    offline_text = run_cli(daemon, "version", xdg=tmp_path / "empty")
    assert f"client {mlpd.__version__}" in offline_text.stdout and "daemon unknown (not logged in" in offline_text.stdout
    short = run_cli(daemon, "-V", xdg=tmp_path / "empty")
    assert short.returncode == 0 and mlpd.__version__ in short.stdout


@pytest.mark.parametrize("args, expected", [
    (("--help",), ("login", "whoami", "version", "admin", "daemon")),
    (("-h",), ("login",)),
    (("admin", "--help"), ("user", "token")),
    (("admin", "user", "add", "--help"), ("--admin", "--expires", "--state-dir", "--json")),
    (("admin", "token", "--help"), ("create", "list", "revoke")),
    (("daemon", "--help"), ("--config", "--listen", "--state-dir")),
])
def test_help_works(daemon, tmp_path, args, expected):
    result = run_cli(daemon, *args, xdg=tmp_path / "empty")
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout, (args, word)


def test_unknown_command_is_a_usage_error(daemon, tmp_path):
    result = run_cli(daemon, "frobnicate", xdg=tmp_path / "empty")
    assert result.returncode == 2 and "No such command" in result.stderr


# ---------------------------------------------------------------- the daemon's life


def run_daemon(args: list[str], home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
    env["HOME"] = str(home)
    return subprocess.run([BIN, "daemon", *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("text, needles", [
    ('[server]\nlisten = "127.0.0.1:8470\nworkers = 2\n', ("not valid TOML", "line 2")),
    ('[server]\nlisen = "x"\n', ("server.lisen", "unknown key", "server.listen")),
    ('[server]\nworkers = "two"\n', ("server.workers", "expected a whole number", "'two'")),
], ids=["bad-syntax", "unknown-key", "wrong-type"])
def test_malformed_config_stops_the_daemon_with_exit_2(tmp_path, text, needles):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    state = tmp_path / "state"
    result = run_daemon(["--config", str(config), "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert str(config) in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    assert "Traceback" not in result.stderr
    assert not state.exists(), "nothing may be created before the configuration is valid"


def test_bad_listen_flag_stops_the_daemon_with_exit_2(tmp_path):
    result = run_daemon(["--state-dir", str(tmp_path / "s"), "--listen", "nowhere"], tmp_path)
    assert result.returncode == 2 and "server.listen" in result.stderr and "HOST:PORT" in result.stderr


def test_mlpd_config_env_is_read_by_the_daemon(tmp_path):
    config = tmp_path / "env.toml"
    config.write_text("[server]\nthreads = -3\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
    env.update(HOME=str(tmp_path), MLPD_CONFIG=str(config))
    result = subprocess.run([BIN, "daemon", "--state-dir", str(tmp_path / "s"), "--listen", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and str(config) in result.stderr and "server.threads" in result.stderr


def test_second_daemon_on_the_same_state_dir_refuses_to_start(daemon):
    # the lock is taken before anything in the state directory is touched, so the shared daemon can serve as the first
    result = run_daemon(["--state-dir", str(daemon.state_dir), "--listen", f"127.0.0.1:{free_port()}"], daemon.home, timeout=30)
    assert result.returncode != 0
    assert "another mlpd daemon" in result.stderr and "already running" in result.stderr
    assert str(daemon.proc.pid) in result.stderr
    assert daemon.proc.poll() is None
    assert daemon.api("GET", "/api/v1/whoami", daemon.admin_token).status_code == 200


def test_sigkill_and_restart_lose_no_committed_row_and_sigterm_stops_cleanly(make_daemon):
    d = make_daemon()
    admin = d.admin_token
    member = d.api("POST", "/api/v1/users", admin, json={"name": "kim"}).json()
    extra = d.api("POST", "/api/v1/tokens", member["token"], json={"label": "second"}).json()
    doomed = d.api("POST", "/api/v1/tokens", admin, json={"user": "kim", "label": "doomed"}).json()
    assert d.api("DELETE", f"/api/v1/tokens/{doomed['token_record']['id']}", admin).status_code == 200
    host_token = d.add_user("hank")  # written on the host while the daemon runs
    users_before = d.api("GET", "/api/v1/users", admin).json()["users"]
    tokens_before = d.api("GET", "/api/v1/tokens", admin, params={"all": 1}).json()["tokens"]
    events_before = d.api("GET", "/api/v1/events", admin, params={"limit": 1000}).json()["events"]
    assert len(events_before) >= 8

    # SIGKILL: no chance to clean up; the restart (same state dir, so the lock died with it) finds every committed row
    d.stop(signal.SIGKILL)
    assert d.proc.returncode == -signal.SIGKILL
    d.start()

    assert d.api("GET", "/api/v1/whoami", admin).json()["user"]["name"] == "root"
    assert d.api("GET", "/api/v1/whoami", member["token"]).json()["user"]["name"] == "kim"
    assert d.api("GET", "/api/v1/whoami", extra["token"]).json()["user"]["name"] == "kim"
    assert d.api("GET", "/api/v1/whoami", host_token).json()["user"]["name"] == "hank"
    assert_error(d.api("GET", "/api/v1/whoami", doomed["token"]), 401)

    def strip_usage(rows):
        return [{k: v for k, v in r.items() if k != "last_used_at"} for r in rows]

    assert d.api("GET", "/api/v1/users", admin).json()["users"] == users_before
    assert strip_usage(d.api("GET", "/api/v1/tokens", admin, params={"all": 1}).json()["tokens"]) == strip_usage(tokens_before)
    events_after = d.api("GET", "/api/v1/events", admin, params={"limit": 1000}).json()["events"]
    assert events_after[-len(events_before):] == events_before

    # SIGTERM: exit 0 within a few seconds, no traceback, the port released
    started = time.monotonic()
    code = d.stop(signal.SIGTERM)
    took = time.monotonic() - started
    assert code == 0, d.log_text()
    assert took < 10, f"SIGTERM took {took:.1f}s"
    log = d.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert log.rstrip().endswith("mlpd daemon stopped"), log[-1000:]
    with pytest.raises(requests.ConnectionError):
        requests.get(d.url + "/healthz", timeout=2)
