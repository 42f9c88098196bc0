"""Serving end to end: a model trained and registered in a job, served by MLflow's own scoring server in a
real container, reached through the daemon's stable endpoint, rolled over when its alias moves (with a
client sending requests all along), rolled back when a version cannot load, restarted when killed.

One daemon and one trained model for the module (the serving environment is built once); the tests run
in order, each leaving the deployment as the next one expects.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import json
import subprocess
import threading
import time

import pytest
import requests

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition
MLFLOW = "/mlflow/api/2.0/mlflow/"
INPUT = {"dataframe_split": {"columns": ["x"], "data": [[1.0], [2.0]]}}

# Version 1 predicts 2x, version 2 predicts 3x (real scikit-learn fits); version 3 cannot be loaded.
TRAIN = """
import mlflow, mlflow.pyfunc, mlflow.sklearn, numpy as np, pandas as pd
from mlflow import MlflowClient
from sklearn.linear_model import LinearRegression

NAME = "{model_name}"
X = pd.DataFrame({"x": np.arange(10, dtype=float)})
for slope in (2.0, 3.0):
    with mlflow.start_run() as run:
        model = LinearRegression().fit(X, slope * X["x"])
        mlflow.log_metric("r2", model.score(X, slope * X["x"]))
        mlflow.sklearn.log_model(model, name="model", registered_model_name=NAME, input_example=X[:2])
        print("RUN", run.info.run_id)


class Broken(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        raise RuntimeError("weights are corrupt: refusing to load")

    def predict(self, context, model_input):
        return model_input


with mlflow.start_run():
    mlflow.pyfunc.log_model(name="model", python_model=Broken(), registered_model_name=NAME, pip_requirements=["cloudpickle"])
MlflowClient().set_registered_model_alias(NAME, "prod", "1")
print("REGISTERED", NAME)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    """A daemon (a short drain, so that old versions stop soon), a member who trained three versions of a model."""
    from conftest import RunningDaemon, docker_available, remove_containers

    base = tmp_path_factory.mktemp("serving")
    (base / "home").mkdir()
    config = base / "mlpd.toml"
    config.write_text('[serving]\ndrain = "3s"\nstart_timeout = "90s"\n')
    daemon = RunningDaemon(base / "state", base / "home", config_file=config)
    daemon.start()
    daemon.admin_token = daemon.add_user("root", admin=True)
    name, token = new_user(daemon, "ds")
    model_name = f"churn-{name}"
    work = base / "train"
    work.mkdir()
    (work / "train.py").write_text(TRAIN.replace("{model_name}", model_name))
    for attempt in (1, 2):
        job_id = as_json(daemon.cli("run", "--json", "--", "python", "train.py", token=token, cwd=str(work)))["job"]["id"]
        job = wait_for(lambda: (j := daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"] in TERMINAL and j,
                       300, 0.5, "the training job")
        logs = daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
        # Known flake (session 8, 1 of 3 full runs): MLflow's model-versions/create answered 500 three times
        # in a row to the training job. Trained once more, with the daemon's log kept for the diagnosis; a
        # second failure fails the module.
        if job["state"] == "succeeded" or attempt == 2 or "model-versions/create" not in logs:
            break
        print(f"\n--- training failed on model-versions/create (500); daemon log ---\n{daemon.log_text()[-6000:]}")
    assert job["state"] == "succeeded", f"{job['reason']}\n{logs[-3000:]}\n--- daemon log ---\n{daemon.log_text()[-4000:]}"
    runs = [line.split()[1] for line in logs.splitlines() if line.startswith("RUN ")]
    yield {"daemon": daemon, "user": name, "token": token, "model": model_name, "deployment": model_name[:40].rstrip("-"), "runs": runs}
    failed = any(getattr(item, "rep_call", None) and item.rep_call.failed for item in request.session.items if item.module is request.module)
    if failed:
        print(f"\n--- daemon log ---\n{daemon.log_text()}")
    daemon.stop()
    if docker_available():
        remove_containers(daemon)


def predict(world, token=None, **kwargs):
    d = world["daemon"]
    return requests.post(f"{d.url}/serve/{world['deployment']}/invocations", json=INPUT, timeout=30,
                         headers={"Authorization": f"Bearer {token or world['token']}"}, **kwargs)


def show(world, token=None):
    return world["daemon"].api("GET", f"/api/v1/deployments/{world['deployment']}", token or world["token"]).json()["deployment"]


def test_serve_a_registered_model_and_get_predictions_from_the_stable_endpoint(world):
    d, token = world["daemon"], world["token"]
    started = time.monotonic()
    result = d.cli("serve", f"models:/{world['model']}@prod", "--json", token=token, timeout=600)
    out = as_json(result)
    dep = out["deployment"]
    assert dep["name"] == world["deployment"] and dep["state"] == "serving", (dep, result.stderr)
    assert dep["serving"]["version"] == "1" and dep["follow_alias"] is True and dep["health"] == "1/1"
    assert dep["endpoint"].endswith(f"/serve/{world['deployment']}/invocations")
    world["key"] = out["key"]
    answer = predict(world)
    assert answer.status_code == 200, answer.text
    assert [round(p, 6) for p in answer.json()["predictions"]] == [2.0, 4.0]
    assert answer.headers["X-Mlpd-Model-Version"] == "1"
    print(f"mlpd serve to the first prediction: {time.monotonic() - started:.1f}s")

    # who may call: the owner's token, the deployment's key; nobody without one
    assert predict(world, token=world["key"]).status_code == 200
    anonymous = requests.post(f"{d.url}/serve/{world['deployment']}/invocations", json=INPUT, timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    ping = requests.get(f"{d.url}/serve/{world['deployment']}/ping", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ping.status_code == 200
    bad = requests.post(f"{d.url}/serve/{world['deployment']}/invocations", data=b'{"nope": 1}', timeout=30,
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert bad.status_code == 400 and "error_code" in bad.json()  # MLflow's own answer to a malformed input, passed through

    # the web UI's pages show it to its owner (a token login)
    import re as _re

    web = requests.Session()
    form = web.get(f"{d.url}/ui/login", timeout=30).text
    csrf = _re.findall(r'name="csrf" value="([^"]+)"', form)[-1]
    assert web.post(f"{d.url}/ui/login/token", data={"csrf": csrf, "token": token, "next": ""}, timeout=30).ok
    page = web.get(f"{d.url}/ui/deployments/{world['deployment']}", timeout=30)
    assert page.status_code == 200 and "version 1" in page.text and dep["endpoint"] in page.text, page.text[:2000]
    assert world["deployment"] in web.get(f"{d.url}/ui/deployments", timeout=30).text

    # the replica: MLflow's scoring server on a loopback port, labelled, non-root, with no credentials
    replica = dep["replica_list"][0]
    direct = requests.post(f"http://127.0.0.1:{replica['port']}/invocations", json=INPUT, timeout=30)
    assert direct.status_code == 200 and direct.json() == answer.json()
    inspect = json.loads(subprocess.run(["docker", "inspect", f"mlpd-job-{replica['job_id']}"], capture_output=True, text=True).stdout)[0]
    assert inspect["Config"]["Labels"]["mlpd.kind"] == "deployment" and inspect["Config"]["User"] == "65200:65200"
    env = dict(e.split("=", 1) for e in inspect["Config"]["Env"])
    assert not [k for k in env if k.startswith(("MLFLOW_TRACKING", "MLPD_TOKEN"))], env
    assert inspect["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"] == "127.0.0.1"
    assert any(m["Destination"] == "/model" and not m["RW"] for m in inspect["Mounts"])

    listed = d.cli("deployments", token=token)
    assert listed.returncode == 0 and world["deployment"] in listed.stdout and "serving" in listed.stdout

    # what the model takes, and a request that runs as written once MLPD_TOKEN is set (the token or the key)
    shown = d.cli("deployments", "show", world["deployment"], token=token)
    assert "input     x (double)" in shown.stdout and "MLPD_TOKEN" in shown.stdout, shown.stdout
    taken = show(world)["input"]
    assert taken["inputs"] == [{"name": "x", "type": "double", "required": True}] and taken["version"] == "1", taken
    assert taken["example"] == {"dataframe_split": {"columns": ["x"], "data": [[0.0], [1.0]]}}, taken
    for secret in (token, world["key"]):
        ran = subprocess.run(["sh", "-c", taken["curl"]], env={"PATH": "/usr/bin:/bin", "MLPD_TOKEN": secret},
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0 and [round(p, 6) for p in json.loads(ran.stdout)["predictions"]] == [0.0, 2.0], (ran.stdout, ran.stderr)
    assert "x" in web.get(f"{d.url}/ui/deployments/{world['deployment']}", timeout=30).text.split('id="dep-input"', 1)[1]


def test_moving_the_alias_rolls_over_with_no_failed_request(world):
    d, token = world["daemon"], world["token"]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{d.url}/serve/{world['deployment']}/invocations", json=INPUT, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})
                seen.append((r.status_code, round(r.json()["predictions"][0], 6) if r.status_code == 200 else r.text[:300]))
            except Exception as exc:  # a refused or broken connection counts as a failed request
                seen.append((0, repr(exc)))
            time.sleep(0.01)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        wait_for(lambda: seen and seen[-1] == (200, 2.0), 60, 0.05, "predictions from version 1")
        moved = d.api("POST", MLFLOW + "registered-models/alias", token, json={"name": world["model"], "alias": "prod", "version": "2"})
        assert moved.status_code == 200, moved.text
        moved_at = time.monotonic()
        wait_for(lambda: seen and seen[-1] == (200, 3.0), 300, 0.2, "predictions from version 2")
        switched = time.monotonic() - moved_at
        # Past the drain: the old version stops while requests go on.
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
    print(f"alias moved to the switch of traffic: {switched:.1f}s; {len(seen)} requests, none failed")
    dep = wait_for(lambda: (x := show(world))["serving"]["version"] == "2" and len(x["replica_list"]) == 1 and x, 60, 0.5, "the old version to stop")
    assert dep["state"] == "serving" and dep["replica_list"][0]["version"] == "2"
    assert [r["state"] for r in dep["revisions"]] == ["retired", "serving"]


def test_a_version_that_cannot_load_is_rolled_back_and_says_why(world):
    d, token = world["daemon"], world["token"]
    result = d.cli("deployments", "update", world["deployment"], "--model", f"models:/{world['model']}/3", token=token, timeout=600)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "rolled back" in result.stderr and "weights are corrupt" in result.stderr, result.stderr
    dep = show(world)
    assert dep["serving"]["version"] == "2" and dep["state"] == "serving"
    assert "version 3 rolled back" in dep["last_error"] and "weights are corrupt" in dep["last_error"], dep["last_error"]
    assert dep["revisions"][-1]["state"] == "failed"
    answer = predict(world)
    assert answer.status_code == 200 and round(answer.json()["predictions"][0], 6) == 3.0
    shown = d.cli("deployments", "show", world["deployment"], token=token)
    assert shown.returncode == 0 and "weights are corrupt" in shown.stdout
    logs = d.cli("deployments", "logs", world["deployment"], "--job", dep["history"][-1]["job_id"], token=token)
    assert "weights are corrupt" in logs.stdout
    # the deployment no longer follows the alias after an update to a pinned version; follow it again
    again = d.api("POST", f"/api/v1/deployments/{world['deployment']}/update", token, json={"model": f"models:/{world['model']}@prod"})
    assert again.status_code == 200 and again.json()["deployment"]["follow_alias"] is True


def test_a_killed_replica_is_restarted_and_the_restart_reported(world):
    d = world["daemon"]
    dep = wait_for(lambda: (x := show(world))["state"] == "serving" and len(x["replica_list"]) == 1 and x, 120, 0.5, "a settled deployment")
    old = dep["replica_list"][0]["job_id"]
    subprocess.run(["docker", "kill", f"mlpd-job-{old}"], check=True, capture_output=True)
    dep = wait_for(lambda: (x := show(world))["restarts"] == 1 and x["state"] == "serving" and x, 120, 0.5, "the replica to be restarted")
    assert dep["replica_list"][0]["job_id"] != old
    assert "replica 0 failed" in dep["last_error"] and "137" in dep["last_error"], dep["last_error"]
    assert predict(world).status_code == 200
    shown = d.cli("deployments", "show", world["deployment"], token=world["token"])
    assert "restarts  1" in shown.stdout


def test_a_daemon_killed_and_restarted_adopts_its_replicas_which_serve_throughout(world):
    import signal

    d = world["daemon"]
    before = show(world)
    replica = before["replica_list"][0]
    d.stop(signal.SIGKILL)
    direct = requests.post(f"http://127.0.0.1:{replica['port']}/invocations", json=INPUT, timeout=30)
    assert direct.status_code == 200  # the replica does not depend on the daemon
    d.start()
    after = wait_for(lambda: (x := show(world))["state"] == "serving" and x, 60, 0.5, "the deployment after the restart")
    assert after["replica_list"][0]["job_id"] == replica["job_id"] and after["restarts"] == before["restarts"]
    assert predict(world).status_code == 200


def test_the_endpoint_counts_requests_and_errors_per_version_with_no_work_from_the_user(world):
    d = world["daemon"]

    def counts():
        dep = show(world)
        mine = [m for m in dep["requests"] if m["version"] == dep["serving"]["version"]]
        return (sum(m["requests"] for m in mine), sum(m["errors"] for m in mine))

    # The web workers add their counts every 2 s: let the earlier tests' requests land first (the
    # counts stay the same over a flush interval).
    last: list = []

    def settled():
        now = counts()
        same = last == [now]
        last[:] = [now]
        return same and now

    requests_before, errors_before = wait_for(settled, 30, 2.5, "the counts of earlier requests to settle")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {world['token']}"
    url = f"{d.url}/serve/{world['deployment']}/invocations"
    statuses = [session.post(url, json=INPUT, timeout=30).status_code for _ in range(90)]
    statuses += [session.post(url, data=b'{"not": "an input"}', headers={"Content-Type": "application/json"}, timeout=30).status_code
                 for _ in range(10)]
    assert statuses.count(200) == 90 and statuses.count(400) == 10
    wait_for(lambda: counts() == (requests_before + 100, errors_before + 10), 15, 0.5, "the counts of 100 requests, 10 of them errors")
    dep = show(world)
    current = next(m for m in dep["requests"] if m["revision"] == dep["serving"]["seq"])
    assert current["mean_ms"] > 0 and current["p99_ms_at_most"] >= current["p50_ms_at_most"] > 0
    shown = d.cli("deployments", "show", world["deployment"], token=world["token"])
    assert f"v2: {current['requests']} requests, {current['errors']} errors" in shown.stdout, shown.stdout
    scraped = d.api("GET", "/metrics", d.admin_token).text
    lines = [x for x in scraped.splitlines() if x.startswith("mlpd_serving_requests_total{") and f'deployment="{world["deployment"]}"' in x
             and 'version="2"' in x]  # one per revision that served version 2
    assert sum(float(x.rsplit(" ", 1)[1]) for x in lines) == requests_before + 100
    assert "mlpd_serving_request_seconds_bucket{" in scraped


def test_a_canary_at_20_percent_takes_about_a_fifth_of_the_requests_until_promoted(world):
    d, token = world["daemon"], world["token"]
    result = d.cli("deployments", "update", world["deployment"], "--model", f"models:/{world['model']}/1", "--canary", "20", "--json",
                   token=token, timeout=600)
    dep = as_json(result)["deployment"]
    assert dep["state"] == "canary" and dep["canary"]["version"] == "1" and dep["canary"]["percent"] == 20, dep
    assert dep["serving"]["version"] == "2"
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    versions = []
    for _ in range(500):
        r = session.post(f"{d.url}/serve/{world['deployment']}/invocations", json=INPUT, timeout=30)
        assert r.status_code == 200
        versions.append((r.headers["X-Mlpd-Model-Version"], round(r.json()["predictions"][0], 6)))
    assert {v for v in versions} == {("1", 2.0), ("2", 3.0)}
    canary = sum(1 for v, _ in versions if v == "1")
    print(f"canary at 20%: {canary} of 500 requests")
    assert 60 <= canary <= 140, canary  # 100 expected; the binomial's standard deviation is about 9
    shown = d.cli("deployments", "show", world["deployment"], token=token)
    assert "canary    churn" in shown.stdout and "takes 20% of the requests" in shown.stdout, shown.stdout
    promoted = as_json(d.cli("deployments", "promote", world["deployment"], "--json", token=token))["deployment"]
    assert promoted["serving"]["version"] == "1" and promoted["canary"] is None
    assert {session.post(f"{d.url}/serve/{world['deployment']}/invocations", json=INPUT, timeout=30).headers["X-Mlpd-Model-Version"]
            for _ in range(20)} == {"1"}
    nothing = d.cli("deployments", "rollback", world["deployment"], token=token)
    assert nothing.returncode == 1 and "no canary and no rollout in progress" in nothing.stderr
    wait_for(lambda: len(show(world)["replica_list"]) == 1, 60, 0.5, "the version the canary replaced to stop")


def test_other_members_see_nothing_and_serve_only_what_exists(world):
    d = world["daemon"]
    _, other = new_user(d, "bob")
    name = world["deployment"]
    for method, path in [("GET", f"/deployments/{name}"), ("GET", f"/deployments/{name}/logs"), ("DELETE", f"/deployments/{name}"),
                         ("POST", f"/deployments/{name}/update"), ("POST", f"/deployments/{name}/key")]:
        resp = d.api(method, "/api/v1" + path, other, json={} if method == "POST" else None)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found", (path, resp.text)
    assert predict(world, token=other).status_code == 404
    for args in (("deployments", "show", name), ("deployments", "logs", name), ("deployments", "rm", name)):
        result = d.cli(*args, token=other)
        assert result.returncode == 1 and "no such deployment" in result.stderr and "Traceback" not in result.stderr
    assert name not in d.cli("deployments", token=other).stdout
    absent = d.cli("serve", "models:/no-such-model@prod", "--no-wait", token=other)
    assert absent.returncode == 1 and "no alias 'prod'" in absent.stderr, absent.stderr
    sneaky = d.api("POST", "/api/v1/deployments", other, json={"model": f"runs:/{world['runs'][0]}/../../x", "name": "sneaky"})
    assert sneaky.status_code == 400, sneaky.text
    taken = d.api("POST", "/api/v1/deployments", other, json={"model": f"models:/{world['model']}/1", "name": name})
    assert taken.status_code == 409
    assert show(world)["state"] == "serving"  # untouched


def test_following_another_members_alias_is_refused_unless_asked_for_by_name(world):
    """Issue 22, break 12: a deployment following another member's alias ran whatever that member registered next."""
    d = world["daemon"]
    _, other = new_user(d, "carol")
    refused = d.cli("serve", f"models:/{world['model']}@prod", "--name", "carols", "--no-wait", token=other)
    assert refused.returncode == 1 and f"{world['user']}'s model" in refused.stderr and "--follow-foreign" in refused.stderr, refused.stderr
    assert d.api("GET", "/api/v1/deployments/carols", other).status_code == 404  # nothing half-made
    pinned = d.api("POST", "/api/v1/deployments", other, json={"model": f"models:/{world['model']}/1", "name": "carols", "replicas": 1})
    assert pinned.status_code == 201, pinned.text  # a pinned version is theirs to serve: it never changes under them
    assert d.api("DELETE", "/api/v1/deployments/carols", other).status_code == 200
    accepted = d.api("POST", "/api/v1/deployments", other, json={"model": f"models:/{world['model']}@prod", "name": "carols2",
                                                                 "follow_foreign": True})
    assert accepted.status_code == 201 and accepted.json()["deployment"]["follow_alias"] is True, accepted.text
    events = d.api("GET", "/api/v1/events?limit=50", d.admin_token).json()["events"]
    assert any(e["action"] == "deployment.created" and e["detail"].get("follows_versions_of") == world["user"] for e in events)
    assert d.api("DELETE", "/api/v1/deployments/carols2", other).status_code == 200
    assert show(world)["state"] == "serving"  # the owner's own deployment follows their own alias, untouched


def test_removing_a_deployment_stops_it_and_frees_its_endpoint(world):
    d, token = world["daemon"], world["token"]
    dep = show(world)
    assert d.cli("deployments", "rm", world["deployment"], token=token).returncode == 0
    assert predict(world).status_code == 404
    job = next(r["job_id"] for r in dep["replica_list"] if r["version"] == dep["serving"]["version"])
    wait_for(lambda: subprocess.run(["docker", "inspect", f"mlpd-job-{job}"], capture_output=True).returncode != 0, 60, 0.5,
             "the replica's container to go")
    state = d.api("GET", f"/api/v1/jobs/{job}", token).json()["job"]
    assert state["state"] == "cancelled" and "removed" in state["reason"]
