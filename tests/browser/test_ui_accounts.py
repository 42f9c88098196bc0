"""Web UI accounts over plain HTTP (no browser): passwords from the CLI, session cookies, CSRF on
login and logout, redirects that stay on the site, and the embedded MLflow reached with the web
session under the same ownership rules as with a token."""

from __future__ import annotations

import re
import subprocess
import uuid

import requests

from conftest import BIN
from helpers import needs_docker

pytestmark = needs_docker


def member(daemon, prefix: str = "acct") -> tuple[str, str]:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    resp = daemon.api("POST", "/api/v1/users", daemon.admin_token, json={"name": name})
    assert resp.status_code == 201, resp.text
    return name, resp.json()["token"]


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def web_login(daemon, name: str, password: str, next_url: str = "", headers: dict | None = None) -> tuple[requests.Session, requests.Response]:
    s = requests.Session()
    s.headers["Connection"] = "close"  # a fresh connection per request: no race with the server's keep-alive timeout
    page = s.get(daemon.url + "/ui/login", timeout=30)
    resp = s.post(daemon.url + "/ui/login", data={"csrf": csrf_of(page.text), "name": name, "password": password, "next": next_url},
                  allow_redirects=False, timeout=30, headers=headers)
    return s, resp


def cli(daemon, *args: str, token: str | None = None, input: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=daemon.env(token), input=input, timeout=60)


def test_admins_set_passwords_from_the_cli_and_users_change_their_own(daemon):
    name, token = member(daemon)
    # on the host, against the state directory
    done = cli(daemon, "admin", "user", "password", name, "--password-stdin", "--state-dir", str(daemon.state_dir), input="first-password-1\n")
    assert done.returncode == 0 and f"password of {name} set" in done.stdout, done.stderr
    assert web_login(daemon, name, "first-password-1")[1].status_code == 303
    # through the API as an admin; a weak one is refused before anything is sent
    weak = cli(daemon, "admin", "user", "password", name, "--password-stdin", token=daemon.admin_token, input="short\n")
    assert weak.returncode == 1 and "at least 10 characters" in weak.stderr
    assert cli(daemon, "admin", "user", "password", name, "--password-stdin", token=daemon.admin_token, input="second-password-2\n").returncode == 0
    assert web_login(daemon, name, "first-password-1")[1].status_code == 401
    # the user changes their own; a wrong current password says so and changes nothing
    wrong = cli(daemon, "password", "--password-stdin", token=token, input="not-it-at-all\nthird-password-3\n")
    assert wrong.returncode == 1 and "not your current password" in wrong.stderr
    changed = cli(daemon, "password", "--password-stdin", token=token, input="second-password-2\nthird-password-3\n")
    assert changed.returncode == 0, changed.stderr
    assert web_login(daemon, name, "third-password-3")[1].status_code == 303
    # a member cannot set someone else's
    other, _ = member(daemon)
    refused = cli(daemon, "admin", "user", "password", other, "--password-stdin", token=token, input="fourth-password-4\n")
    assert refused.returncode == 1 and "admin" in refused.stderr
    events = daemon.api("GET", f"/api/v1/events?object_id={name}", daemon.admin_token).json()["events"]
    assert [e["actor"] for e in events if e["action"] == "user.password_set"] == [name, "root", "host"]


def test_session_cookies_are_httponly_lax_and_secure_behind_https_and_redirects_stay_on_the_site(daemon):
    name, _ = member(daemon)
    assert daemon.api("POST", f"/api/v1/users/{name}/password", daemon.admin_token, json={"password": "cookie-password"}).status_code == 200
    s, resp = web_login(daemon, name, "cookie-password")
    cookie = resp.headers["Set-Cookie"]
    assert "mlpd_session=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert resp.headers["Location"] == "/ui/"
    _, behind_tls = web_login(daemon, name, "cookie-password", headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in behind_tls.headers["Set-Cookie"]
    for target in ("//evil.example/x", "http://evil.example/", "/\\evil.example", "/api/v1/whoami", "javascript:alert(1)"):
        assert web_login(daemon, name, "cookie-password", next_url=target)[1].headers["Location"] == "/ui/", target
    assert web_login(daemon, name, "cookie-password", next_url="/ui/usage?days=7")[1].headers["Location"] == "/ui/usage?days=7"
    page = s.get(daemon.url + "/ui/", timeout=30)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"] and page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    # logout is a form post with the session's token: a cross-site page cannot log people out
    assert s.post(daemon.url + "/ui/logout", data={}, allow_redirects=False, timeout=30).status_code == 403
    assert s.post(daemon.url + "/ui/logout", data={"csrf": csrf_of(page.text)}, allow_redirects=False, timeout=30).status_code == 303
    assert s.get(daemon.url + "/ui/", allow_redirects=False, timeout=30).status_code == 302
    # the login form itself carries a token bound to its cookie
    fresh = requests.post(daemon.url + "/ui/login", data={"name": name, "password": "cookie-password"}, allow_redirects=False, timeout=30)
    assert fresh.status_code == 403


def test_a_token_logs_in_but_not_a_jobs_token_and_the_root_sends_browsers_to_the_ui(daemon):
    name, token = member(daemon)
    s = requests.Session()
    page = s.get(daemon.url + "/ui/login", timeout=30)
    resp = s.post(daemon.url + "/ui/login/token", data={"csrf": csrf_of(page.text), "token": token}, allow_redirects=False, timeout=30)
    assert resp.status_code == 303
    assert name in s.get(daemon.url + "/ui/", timeout=30).text
    other = requests.Session()
    page = other.get(daemon.url + "/ui/login", timeout=30)
    bad = other.post(daemon.url + "/ui/login/token", data={"csrf": csrf_of(page.text), "token": "mlpd_000000000000_" + "x" * 43}, timeout=30)
    assert bad.status_code == 401 and "invalid" in bad.text
    root = requests.get(daemon.url + "/", allow_redirects=False, timeout=30)
    assert root.status_code == 302 and root.headers["Location"].endswith("/ui/")


API = "/mlflow/ajax-api/2.0/mlflow/"


def test_the_web_session_opens_mlflow_with_the_same_users_rules(daemon):
    alice, a_token = member(daemon, "mla")
    bob, _ = member(daemon, "mlb")
    for name in (alice, bob):
        assert daemon.api("POST", f"/api/v1/users/{name}/password", daemon.admin_token, json={"password": f"{name}-password"}).status_code == 200
    # alice's run, made with her token
    exp = daemon.api("POST", API + "experiments/create", a_token, json={"name": f"exp-{alice}"}).json()["experiment_id"]
    run = daemon.api("POST", API + "runs/create", a_token, json={"experiment_id": exp}).json()["run"]["info"]["run_id"]

    bob_web, _ = web_login(daemon, bob, f"{bob}-password")
    origin = {"Origin": daemon.url, "Content-Type": "application/json"}
    # reads work with the session alone, as the MLflow UI does them
    assert bob_web.get(daemon.url + API + "runs/get", params={"run_id": run}, timeout=30).json()["run"]["info"]["user_id"] == alice
    assert bob_web.get(daemon.url + "/mlflow/", timeout=30).status_code == 200
    # a change from this site's page is his own; alice's run stays hers
    mine = bob_web.post(daemon.url + API + "experiments/create", json={"name": f"exp-{bob}"}, headers=origin, timeout=30)
    assert mine.status_code == 200, mine.text
    created = daemon.api("GET", API + "experiments/get", a_token, params={"experiment_id": mine.json()["experiment_id"]}).json()
    assert {t["key"]: t["value"] for t in created["experiment"]["tags"]}.get("mlpd.owner") == bob
    refused = bob_web.post(daemon.url + API + "runs/delete", json={"run_id": run}, headers=origin, timeout=30)
    assert refused.status_code == 403 and alice in refused.json()["error"]["message"]
    # a change with the cookie but from elsewhere (or saying nothing about where) is refused
    for headers in ({"Origin": "http://evil.example"}, {}, {"Sec-Fetch-Site": "cross-site", "Origin": daemon.url}):
        resp = bob_web.post(daemon.url + API + "experiments/create", json={"name": f"x-{uuid.uuid4().hex[:6]}"}, headers=headers, timeout=30)
        assert resp.status_code == 403, headers
    # a browser without any credentials is sent to the login page, a client still gets 401
    nav = requests.get(daemon.url + "/mlflow/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=30)
    assert nav.status_code == 303 and nav.headers["Location"] == "/ui/login?next=/mlflow/"
    assert requests.get(daemon.url + "/mlflow/", timeout=30).status_code == 401
