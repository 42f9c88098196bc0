"""The serving proxy's configuration and plans (mlpd.serving.front), without a daemon."""

from __future__ import annotations

import os
import subprocess

import pytest

from mlpd.serving import front as serving_front
from mlpd.config import ConfigError, load_config


def test_haproxy_accepts_the_configuration(tmp_path):
    binary = serving_front.find_haproxy()
    if binary is None:  # under CI it must be there: tests/run.sh and install.sh install it
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed though CI=true (tests/run.sh installs it)")
        pytest.skip("needs haproxy, the serving proxy (apt-get install haproxy)")
    for name in serving_front.MAPS:
        (tmp_path / f"{name}.map").write_text("")
    conf = tmp_path / "haproxy.cfg"
    conf.write_text(serving_front.config_text(str(tmp_path), "127.0.0.1:18471", 64))
    checked = subprocess.run([binary, "-c", "-f", str(conf)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_a_canary_gets_its_share_of_the_weight_and_none_without_a_serving_revision():
    w = serving_front.weights([("a", 1), ("b", 2)], [("c", 3)], 20)
    assert w == {"a": (1, 102), "b": (2, 102), "c": (3, 51)}
    assert 51 / (102 + 102 + 51) == pytest.approx(0.2, abs=0.005)
    assert serving_front.weights([("a", 1)], [], 20) == {"a": (1, 256)}  # a canary with no healthy replica: all to the serving one
    assert serving_front.weights([], [("c", 3)], 20) == {"c": (3, 256)}


def test_deployments_keep_their_backend_and_new_ones_take_a_free_one():
    want = serving_front.Desired(
        deployments={"old": {"owner": "ann", "key_hash": "k1", "open": False, "servers": {}},
                     "new": {"owner": "bob", "key_hash": "k2", "open": True, "servers": {}}},
        users={"h1": "ann", "h2": serving_front.ADMIN})
    maps = serving_front.plan_maps(want, {"old": "b0", "gone": "b1"})
    assert maps["deployments"] == {"old": "b0", "new": "b2"}  # b1 is still the removed one's until its servers are gone
    assert maps["owners"] == {"old": "ann", "new": "bob"} and maps["keys"] == {"k1": "old", "k2": "new"}
    assert maps["open"] == {"new": "1"} and maps["users"] == {"h1": "ann", "h2": "*"}


def test_serving_listen_is_auto_by_default_and_checked(tmp_path):
    assert serving_front.resolve_listen("auto", "127.0.0.1:8470") == "127.0.0.1:8471"
    assert serving_front.resolve_listen("0.0.0.0:9000", "127.0.0.1:8470") == "0.0.0.0:9000"
    bad = tmp_path / "mlpd.toml"
    bad.write_text('[serving]\nlisten = "nowhere"\n')
    with pytest.raises(ConfigError, match="serving.listen"):
        load_config(str(bad))


# ------------------------------------------------------------------ a real haproxy, kept current by ServingFront
class _Replica:
    """A scoring server stand-in on a loopback port: answers every path with its own name."""

    def __init__(self, name: str):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = f"{name} {self.path} {self.headers.get('Authorization')}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Set-Cookie", "session=model")
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def proxied(tmp_path):
    """A state database with one deployment (churn, owner ann, one healthy replica) and a ServingFront on it."""
    import hashlib
    import socket
    import time

    from mlpd import users
    from mlpd.store import Store

    binary = serving_front.find_haproxy()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("haproxy is not installed though CI=true (tests/run.sh installs it)")
        pytest.skip("needs haproxy, the serving proxy (apt-get install haproxy)")
    state = tmp_path / "state"
    state.mkdir()
    store = Store(str(state / "state.db"))
    store.migrate()
    users.add_user(store, "ann")
    users.add_user(store, "bob")
    users.add_user(store, "root", role="admin")
    tokens = {name: users.create_token(store, name)[0] for name in ("ann", "bob", "root")}
    now = time.time()
    replica = _Replica("A")
    with store.write() as db:
        db.execute("""INSERT INTO deployments (id, owner, name, model_uri, follow_alias, spec, key_hash, restarts, last_error, created_at,
                      updated_at, current) VALUES ('d1', 'ann', 'churn', 'models:/churn/1', 0, '{"auth": "token"}', ?, 0, '', ?, ?, 'r1')""",
                   [hashlib.sha256(b"mlpdk_thekey").hexdigest(), now, now])
        db.execute("""INSERT INTO deployment_revisions (id, deployment, seq, model_uri, model_version, location, state, reason, created_at)
                      VALUES ('r1', 'd1', 1, 'models:/churn/1', '1', '', 'serving', '', ?)""", [now])
    _add_replica(store, "j1", "r1", replica.port)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        listen = f"127.0.0.1:{s.getsockname()[1]}"
    front = serving_front.ServingFront(str(state), str(state / "state.db"), listen, 64, binary)
    yield {"front": front, "store": store, "tokens": tokens, "url": f"http://{listen}", "state": str(state), "binary": binary, "listen": listen}
    front.stop()
    front.close()


def _add_replica(store, job_id: str, revision: str, port: int) -> None:
    import time

    now = time.time()
    with store.write() as db:
        db.execute("""INSERT INTO jobs (id, owner, spec, state, reason, priority, gpu_uuids, gpu_indices, submitted_at, updated_at, gpu_models,
                      kind, attempts, workload) VALUES (?, 'ann', '{}', 'running', '', 100, '[]', '[]', ?, ?, '[]', 'deployment', 0, 'd1')""",
                   [job_id, now, now])
        db.execute("""INSERT INTO deployment_replicas (job_id, deployment, revision, slot, port, healthy, last_check_error, created_at)
                      VALUES (?, 'd1', ?, 0, ?, 1, '', ?)""", [job_id, revision, port, now])


def _call(world, bearer: str | None, name: str = "churn"):
    import requests

    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return requests.post(f"{world['url']}/serve/{name}/invocations", data=b"{}", headers=headers, timeout=10)


def test_the_proxy_lets_in_the_owner_an_admin_and_the_key_and_no_one_else(proxied):
    proxied["front"].tick()
    tokens = proxied["tokens"]
    answer = _call(proxied, tokens["ann"])
    assert answer.status_code == 200 and answer.text == "A /invocations None", answer.text  # no Authorization reaches the model
    assert "set-cookie" not in answer.headers and answer.headers["X-Mlpd-Model-Version"] == "1" and answer.headers["X-Mlpd-Revision"] == "1"
    assert _call(proxied, tokens["root"]).status_code == 200
    assert _call(proxied, "mlpdk_thekey").status_code == 200
    assert _call(proxied, tokens["bob"]).status_code == 404
    assert _call(proxied, None).status_code == 401
    assert _call(proxied, tokens["ann"][:-2] + "xx").status_code == 401
    assert _call(proxied, tokens["ann"], name="other").status_code == 404
    import requests

    assert requests.get(f"{proxied['url']}/serve/churn/invocations", headers={"Authorization": f"Bearer {tokens['ann']}"}).status_code == 405
    assert requests.post(f"{proxied['url']}/elsewhere", timeout=10).status_code == 404


def test_a_revoked_token_leaves_the_proxy_at_the_next_tick(proxied):
    from mlpd import users

    front, tokens = proxied["front"], proxied["tokens"]
    front.tick()
    assert _call(proxied, tokens["ann"]).status_code == 200
    users.revoke_token(proxied["store"], tokens["ann"].split("_")[1], actor="host")
    front.tick()
    assert _call(proxied, tokens["ann"]).status_code == 401


def test_a_canary_gets_its_weight_and_a_new_daemon_adopts_the_proxy_as_it_is(proxied):
    front, store = proxied["front"], proxied["store"]
    front.tick()
    canary = _Replica("B")
    import time

    with store.write() as db:
        db.execute("""INSERT INTO deployment_revisions (id, deployment, seq, model_uri, model_version, location, state, reason, created_at,
                      canary_percent) VALUES ('r2', 'd1', 2, 'models:/churn/2', '2', '', 'canary', '', ?, 20)""", [time.time()])
        db.execute("UPDATE deployments SET canary = 'r2' WHERE id = 'd1'")
    _add_replica(store, "j2", "r2", canary.port)
    front.tick()
    import requests

    session = requests.Session()
    session.headers["Authorization"] = "Bearer mlpdk_thekey"
    answers = [session.post(f"{proxied['url']}/serve/churn/invocations", data=b"{}", timeout=10) for _ in range(500)]
    assert {a.status_code for a in answers} == {200}
    share = sum(1 for a in answers if a.text.startswith("B")) / len(answers)
    assert 0.18 <= share <= 0.22, share  # weighted round robin: 51 of 256
    assert {a.headers["X-Mlpd-Model-Version"] for a in answers if a.text.startswith("B")} == {"2"}
    pid, servers = front.pid(), front.api.servers()
    adopter = serving_front.ServingFront(proxied["state"], front.db_path, proxied["listen"], 64, proxied["binary"])
    adopter.tick()
    assert adopter.pid() == pid and adopter.api.servers() == servers
    adopter.close()
