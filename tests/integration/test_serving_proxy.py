"""The serving proxy (HAProxy at serving.listen) end to end: tokens and keys checked with no Python on the
request path, a revoked token refused within a second, a canary's weight, and serving that goes on while
the daemon is SIGKILLed and restarted, with the restarted daemon still in charge; a quality gate that
holds back a version whose run scored too low.

One daemon and one trained model for the module (the model of test_serving: version 1 predicts 2x,
version 2 predicts 3x); the tests run in order, each leaving the deployment as the next one expects.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
import requests

from helpers import as_json, needs_docker, new_user, wait_for
from test_serving import INPUT, MLFLOW, TERMINAL, TRAIN

pytestmark = needs_docker
WEAK = """
import mlflow, mlflow.sklearn, numpy as np, pandas as pd
from sklearn.linear_model import LinearRegression
X = pd.DataFrame({"x": np.arange(10, dtype=float)})
with mlflow.start_run():
    mlflow.log_metric("r2", 0.52)
    mlflow.sklearn.log_model(LinearRegression().fit(X, 5 * X["x"]), name="model", registered_model_name="{model_name}", input_example=X[:2])
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """A daemon (short drain), a member who trained the model, and a deployment of models:/M@prod served through the proxy."""
    from conftest import RunningDaemon, docker_available, remove_containers

    base = tmp_path_factory.mktemp("serving-proxy")
    (base / "home").mkdir()
    config = base / "mlpd.toml"
    config.write_text('[serving]\ndrain = "3s"\nstart_timeout = "90s"\n')
    daemon = RunningDaemon(base / "state", base / "home", config_file=config)
    daemon.start()
    daemon.admin_token = daemon.add_user("root", admin=True)
    name, token = new_user(daemon, "ds")
    model_name = f"px-{name}"
    work = base / "train"
    work.mkdir()
    (work / "train.py").write_text(TRAIN.replace("{model_name}", model_name))
    job_id = as_json(daemon.cli("run", "--json", "--", "python", "train.py", token=token, cwd=str(work)))["job"]["id"]
    job = wait_for(lambda: (j := daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"] in TERMINAL and j,
                   300, 0.5, "the training job")
    assert job["state"] == "succeeded", job["reason"]
    served = daemon.cli("serve", f"models:/{model_name}@prod", "--gate", "metrics.r2>=0.9", "--json", token=token, timeout=600)
    created = as_json(served)
    world = {"daemon": daemon, "user": name, "token": token, "model": model_name, "deployment": created["deployment"]["name"],
             "key": created["key"], "endpoint": created["deployment"]["endpoint"]}
    yield world
    failed = any(getattr(item, "rep_call", None) and item.rep_call.failed for item in request.session.items if item.module is request.module)
    if failed:
        print(f"\n--- daemon log ---\n{daemon.log_text()}")
    daemon.stop()
    if docker_available():
        remove_containers(daemon)


def call(world, bearer: str | None, name: str | None = None, session=None) -> requests.Response:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return (session or requests).post(f"{world['daemon'].serving_url}/serve/{name or world['deployment']}/invocations", json=INPUT,
                                      headers=headers, timeout=30)


def show(world):
    return world["daemon"].api("GET", f"/api/v1/deployments/{world['deployment']}", world["token"]).json()["deployment"]


def test_the_endpoint_is_the_proxy_and_checks_tokens_and_keys(world):
    d = world["daemon"]
    assert world["endpoint"] == f"{d.serving_url}/serve/{world['deployment']}/invocations", world["endpoint"]
    answer = wait_for(lambda: (r := call(world, world["token"])).status_code == 200 and r, 60, 0.2, "the proxy to know the replica")
    assert round(answer.json()["predictions"][0], 6) == 2.0 and answer.headers["X-Mlpd-Model-Version"] == "1"
    assert "set-cookie" not in answer.headers and answer.headers["X-Content-Type-Options"] == "nosniff"
    assert call(world, world["key"]).status_code == 200  # the deployment's own key
    assert call(world, d.admin_token).status_code == 200  # an admin
    ping = requests.get(f"{d.serving_url}/serve/{world['deployment']}/ping", headers={"Authorization": f"Bearer {world['key']}"}, timeout=10)
    assert ping.status_code == 200
    nobody = call(world, None)
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "unauthorized"
    assert call(world, "mlpd_0123456789ab_" + "x" * 32).status_code == 401
    _, other_token = new_user(d, "other")
    # another member (their new token known to the proxy within a tick): as if the deployment did not exist
    wait_for(lambda: call(world, other_token).status_code == 404, 5, 0.05, "another member's token to get 404")
    assert call(world, world["token"], name="no-such-model").status_code == 404
    # Another deployment's key opens that deployment, not this one.
    other = as_json(d.cli("serve", f"models:/{world['model']}/1", "--name", "px-other", "--json", token=other_token, timeout=600))
    other_key = other["key"]
    wait_for(lambda: call(world, other_key, name="px-other").status_code == 200, 60, 0.2, "the other deployment's key on its own deployment")
    refused = call(world, other_key)
    assert refused.status_code == 401, refused.text
    assert d.cli("deployments", "rm", "px-other", token=other_token).returncode == 0
    wait_for(lambda: call(world, other_key, name="px-other").status_code == 401, 10, 0.1, "the removed deployment's key to be refused")
    assert call(world, d.admin_token, name="px-other").status_code == 404  # and its endpoint is gone


def test_a_revoked_token_is_refused_within_a_second(world):
    d = world["daemon"]
    made = d.api("POST", "/api/v1/tokens", world["token"], json={"user": world["user"], "label": "client"}).json()
    fresh, token_id = made["token"], made["token_record"]["id"]
    wait_for(lambda: call(world, fresh).status_code == 200, 10, 0.05, "a new token to be let in")
    session = requests.Session()
    assert d.api("DELETE", f"/api/v1/tokens/{token_id}", world["token"]).status_code == 200
    revoked_at = time.monotonic()
    wait_for(lambda: call(world, fresh, session=session).status_code == 401, 5, 0.02, "the revoked token to be refused")
    took = time.monotonic() - revoked_at
    print(f"revoked token refused after {took * 1000:.0f} ms")
    assert took < 1.0, took
    # and a rotated key: the old one is refused, the new one works
    new_key = d.api("POST", f"/api/v1/deployments/{world['deployment']}/key", world["token"]).json()["key"]
    rotated_at = time.monotonic()
    wait_for(lambda: call(world, world["key"], session=session).status_code == 401, 5, 0.02, "the old key to be refused")
    assert time.monotonic() - rotated_at < 1.0
    assert call(world, new_key).status_code == 200
    world["key"] = new_key


def test_a_canary_at_20_percent_gets_a_fifth_of_1000_requests(world):
    d, token = world["daemon"], world["token"]
    dep = as_json(d.cli("deployments", "update", world["deployment"], "--model", f"models:/{world['model']}/2", "--canary", "20", "--json",
                        token=token, timeout=600))["deployment"]
    assert dep["state"] == "canary" and dep["canary"]["version"] == "2", dep
    session = requests.Session()
    wait_for(lambda: any(call(world, token, session=session).headers.get("X-Mlpd-Model-Version") == "2" for _ in range(10)), 10, 0.05,
             "the proxy to send the canary its share")
    versions = []
    for _ in range(1000):
        r = call(world, token, session=session)
        assert r.status_code == 200, r.text
        versions.append((r.headers["X-Mlpd-Model-Version"], round(r.json()["predictions"][0], 6)))
    assert set(versions) == {("1", 2.0), ("2", 3.0)}
    canary = sum(1 for v, _ in versions if v == "2")
    print(f"canary at 20%: {canary} of 1000 requests")
    assert 150 <= canary <= 250, canary
    rolled = d.cli("deployments", "rollback", world["deployment"], token=token)
    assert rolled.returncode == 0, rolled.stderr
    wait_for(lambda: {call(world, token, session=session).headers["X-Mlpd-Model-Version"] for _ in range(20)} == {"1"}, 10, 0.1,
             "all traffic back on version 1")
    wait_for(lambda: len(show(world)["replica_list"]) == 1, 60, 0.5, "the canary's replica to stop")
    # an update to a pinned version stopped following the alias: follow it again (it still points at version 1)
    again = d.api("POST", f"/api/v1/deployments/{world['deployment']}/update", token, json={"model": f"models:/{world['model']}@prod"})
    assert again.status_code == 200 and again.json()["deployment"]["follow_alias"] is True, again.text
    wait_for(lambda: (x := show(world))["state"] == "serving" and len(x["replica_list"]) == 1, 300, 0.5, "the deployment to settle")


def test_serving_goes_on_while_the_daemon_is_killed_and_restarted_and_the_new_one_rolls_out(world):
    d, token = world["daemon"], world["token"]
    seen: list[tuple[int, object]] = []
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                r = call(world, world["key"], session=session)
                seen.append((r.status_code, round(r.json()["predictions"][0], 6) if r.status_code == 200 else r.text[:300]))
            except Exception as exc:  # a refused or broken connection counts as a failed request
                seen.append((0, repr(exc)))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: len(seen) > 20, 30, 0.05, "requests through the proxy")
        d.stop(signal.SIGKILL)
        killed_at = len(seen)
        stop.wait(5)  # the scenario: the daemon stays down for 5 s while clients go on
        during = seen[killed_at:]
        d.start()
        restarted_at = len(seen)
        wait_for(lambda: show(world)["state"] == "serving", 60, 0.5, "the restarted daemon to see the deployment")
        assert len(during) > 20, len(during)
        # The restarted daemon is in charge: an alias move rolls out, with no failed request either.
        moved = d.api("POST", MLFLOW + "registered-models/alias", token, json={"name": world["model"], "alias": "prod", "version": "2"})
        assert moved.status_code == 200, moved.text
        wait_for(lambda: seen and seen[-1] == (200, 3.0), 300, 0.2, "predictions from version 2")
        wait_for(lambda: (x := show(world))["serving"]["version"] == "2" and len(x["replica_list"]) == 1, 120, 0.5,
                 "the old version to stop while requests go on")
    finally:
        stop.set()
        thread.join()
    failures = [s for s in seen if s[0] != 200]
    assert not failures, failures[:5]
    values = [v for _, v in seen]
    first_v2 = values.index(3.0)
    assert set(values[:first_v2]) == {2.0} and set(values[first_v2:]) == {3.0}, "traffic went back and forth"
    print(f"{len(seen)} requests, none failed: {restarted_at - killed_at} while the daemon was down")


def test_a_version_that_fails_a_quality_gate_is_held_back_and_promote_refuses_it(world, tmp_path):
    d, token = world["daemon"], world["token"]
    (tmp_path / "weak.py").write_text(WEAK.replace("{model_name}", world["model"]))
    job_id = as_json(d.cli("run", "--json", "--", "python", "weak.py", token=token, cwd=str(tmp_path)))["job"]["id"]
    job = wait_for(lambda: (j := d.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"] in TERMINAL and j, 300, 0.5,
                   "the job that registers version 4")
    assert job["state"] == "succeeded", job["reason"]
    refused = d.cli("models", "promote", world["model"], "4", "--alias", "prod", token=token)
    assert refused.returncode == 1 and "version 4 held back: metrics.r2 0.52 < 0.9" in refused.stderr, refused.stderr
    assert d.api("GET", f"/api/v1/models/{world['model']}/versions/2/gates", token).json()["held_back"] == []
    # Moved behind promote's back, in MLflow itself: the deployment still never rolls it out.
    moved = d.api("POST", MLFLOW + "registered-models/alias", token, json={"name": world["model"], "alias": "prod", "version": "4"})
    assert moved.status_code == 200, moved.text
    dep = wait_for(lambda: "held back" in (x := show(world))["last_error"] and x, 60, 0.5, "the deployment to hold version 4 back")
    assert dep["last_error"] == "version 4 held back: metrics.r2 0.52 < 0.9", dep["last_error"]
    assert dep["serving"]["version"] == "2" and dep["rolling_out"] is None and dep["state"] == "serving"
    assert round(call(world, token).json()["predictions"][0], 6) == 3.0
    shown = d.cli("deployments", "show", world["deployment"], token=token)
    assert "version 4 held back: metrics.r2 0.52 < 0.9" in shown.stdout, shown.stdout
