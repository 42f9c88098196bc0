"""The app in this process, its test client and two users: what the fast API tier (tests/api) drives.

``make_api`` builds the Flask app as the daemon's web workers do, except that the runtime is
the in-memory one (``create_app(cfg, runtime=MemoryRuntime(...))``): no Docker engine, no
network. GPUs are two declared ones; the state database is real SQLite in a temporary directory,
migrated as the daemon migrates it. Nothing runs the controller on its own: a submitted job stays queued (what a request sees
before the worker's next pass) until a test calls ``Api.reconcile()``.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import pytest

SHIPPED_CONFIG = str(Path(__file__).resolve().parents[2] / "mlpd.toml")


@dataclass
class Api:
    """The app, its test client, its runtime and state, and a token for an admin and a member."""

    app: object
    client: object
    runtime: object
    state_dir: Path
    admin: str
    member: str
    member_name: str
    controller: object = None

    @property
    def store(self):
        return self.app.extensions["mlpd.store"]

    def call(self, method: str, path: str, token: str | None = None, **kwargs):
        """One request as a client sends it: ``path`` under /api/v1 unless it starts with /."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = path if path.startswith("/") else "/api/v1/" + path
        return self.client.open(url, method=method, headers=headers, **kwargs)

    def reconcile(self) -> None:
        """One pass of the worker's job controller over the in-memory runtime (what the daemon's
        worker does on its own): queued work is placed and launched, ended work is recorded."""
        from mlpd.controller import JobController
        from mlpd.runtime.gpus import make_inventory

        if self.controller is None:
            cfg = self.app.extensions["mlpd.config"]
            inventory = make_inventory(cfg["gpus.declare"], cfg["gpus.declared_model"], self.store)
            self.controller = JobController(self.store, cfg, self.runtime, inventory)
        self.controller.reconcile()

    def user(self, name: str, admin: bool = False) -> str:
        """Create a user directly in the state database; return their token."""
        from mlpd import users

        users.add_user(self.store, name, "admin" if admin else "member")
        token, _ = users.create_token(self.store, name, "test")
        return token


def make_api(state_dir: Path, declare_gpus: int = 2, **settings) -> Api:
    """A fresh app on a fresh state directory (what the api fixture gives, for tests that need their own);
    `settings` override configuration keys, e.g. **{"quotas.home_gb": 1}."""
    from mlpd.config import load_config
    from mlpd.runtime.memory import MemoryRuntime
    from mlpd.store import Store
    from mlpd.tracking.server import artifacts_dir
    from mlpd.web import create_app

    cfg = load_config(SHIPPED_CONFIG, {"server.state_dir": str(state_dir), "gpus.declare": declare_gpus, **settings})
    Store(cfg.db_path).migrate()
    instance = "fast" + secrets.token_hex(4)
    (state_dir / "instance_id").write_text(instance + "\n")  # the daemon writes it at start
    os.makedirs(artifacts_dir(str(state_dir)), mode=0o700)  # so does tracking.init_store (which also migrates MLflow: slow)
    runtime = MemoryRuntime(instance, images=(cfg["jobs.default_image"], cfg["workspaces.image"]))
    app = create_app(cfg, runtime=runtime)
    api = Api(app, app.test_client(), runtime, state_dir, "", "", "member")
    api.admin = api.user("root", admin=True)
    api.member = api.user(api.member_name)
    return api


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Api:
    """One app per test module (state accumulates within a module, as on a real daemon). Test
    modules import this fixture by name: a tests/api/conftest.py would take the module name
    'conftest' that tests/helpers.py and the integration tests import from tests/conftest.py."""
    return make_api(tmp_path_factory.mktemp("api-state"))


def error_of(response) -> tuple[int, str]:
    """(status, error code) of an error response, checking it has the API's one error shape."""
    body = response.get_json(silent=True)
    assert isinstance(body, dict) and set(body) == {"error"}, f"{response.status_code}: {response.get_data(as_text=True)[:300]}"
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return response.status_code, body["error"]["code"]
