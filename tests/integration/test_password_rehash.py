"""A password hash of an older method logs in through the web UI and is replaced by werkzeug's current one."""

from __future__ import annotations

import re
import sqlite3
import uuid

import requests
from werkzeug.security import generate_password_hash

from helpers import needs_docker

pytestmark = needs_docker
PASSWORD = "an-old-password-1"


def web_login(daemon, name: str, password: str) -> int:
    s = requests.Session()
    s.headers["Connection"] = "close"
    page = s.get(daemon.url + "/ui/login", timeout=30)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    return s.post(daemon.url + "/ui/login", data={"csrf": csrf, "name": name, "password": password}, allow_redirects=False,
                  timeout=30).status_code


def test_an_outdated_hash_logs_in_on_the_web_and_is_stored_anew(daemon):
    name = f"rehash{uuid.uuid4().hex[:8]}"
    assert daemon.api("POST", "/api/v1/users", daemon.admin_token, json={"name": name}).status_code == 201
    old = generate_password_hash(PASSWORD, method="pbkdf2:sha256:260000")  # werkzeug 2's default
    with sqlite3.connect(daemon.state_dir / "mlpd.db", timeout=30) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE name = ?", [old, name])

    def stored() -> str:
        with sqlite3.connect(f"file:{daemon.state_dir / 'mlpd.db'}?mode=ro", uri=True, timeout=30) as db:
            return db.execute("SELECT password_hash FROM users WHERE name = ?", [name]).fetchone()[0]

    assert web_login(daemon, name, PASSWORD + "x") == 401 and stored() == old
    assert web_login(daemon, name, PASSWORD) == 303
    new = stored()
    assert new.startswith("scrypt:32768:8:1$") and new != old
    assert web_login(daemon, name, PASSWORD) == 303 and stored() == new
    events = daemon.api("GET", f"/api/v1/events?object_id={name}", daemon.admin_token).json()["events"]
    assert [e["actor"] for e in events if e["action"] == "user.password_rehashed"] == ["mlpd"]
