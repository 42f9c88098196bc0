"""The embedded MLflow end to end: a real daemon, the real MLflow server inside it, real job containers.

Users are created per test, so the tests share the session daemon; the restart test
starts its own. MLflow's REST API is driven with plain HTTP (what any client sends),
and, where it matters, with the real MLflow client in a subprocess or a container.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import uuid


from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker
API = "/mlflow/api/2.0/mlflow/"
AJAX = "/mlflow/ajax-api/2.0/mlflow/"
ARTIFACTS = "/mlflow/api/2.0/mlflow-artifacts/artifacts/"
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition



def mlflow(daemon, method, endpoint, token=None, prefix=API, **kwargs):
    return daemon.api(method, prefix + endpoint, token, **kwargs)


def ok(resp):
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    return resp.json()


def create_run(daemon, token, experiment_name):
    found = mlflow(daemon, "GET", "experiments/get-by-name", token, params={"experiment_name": experiment_name})
    if found.status_code == 200:
        experiment_id = found.json()["experiment"]["experiment_id"]
    else:
        experiment_id = ok(mlflow(daemon, "POST", "experiments/create", token, json={"name": experiment_name}))["experiment_id"]
    run = ok(mlflow(daemon, "POST", "runs/create", token, json={"experiment_id": experiment_id, "start_time": int(time.time() * 1000)}))["run"]
    return experiment_id, run["info"]["run_id"]


def register_model(daemon, token, name, run_id):
    ok(mlflow(daemon, "POST", "registered-models/create", token, json={"name": name}))
    version = ok(mlflow(daemon, "POST", "model-versions/create", token, json={"name": name, "source": f"runs:/{run_id}/model", "run_id": run_id}))
    return version["model_version"]["version"]


def run_job(daemon, token, tmp_path, script, *flags, timeout=120):
    (tmp_path / "train.py").write_text(script)
    result = as_json(daemon.cli("run", "--json", *flags, "--", "python3", "train.py", token=token, cwd=str(tmp_path)))
    job_id = result["job"]["id"]

    def ended():
        job = daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]
        return job if job["state"] in TERMINAL else None

    job = wait_for(ended, timeout, 0.2, f"job {job_id} to end")
    log = daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
    assert job["state"] == "succeeded", f"{job['state']}: {job['reason']}\n{log[-3000:]}"
    return job


def raw_get(daemon, path, token):
    """GET with the path sent exactly as written (requests/urllib3 would normalise '..' away)."""
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def raw_put(daemon, path, token, data):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request("PUT", path, body=data, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


# ---------------------------------------------------------------- 1. a job's plain mlflow.start_run()

TRAIN = """
import mlflow
with mlflow.start_run():
    mlflow.log_metric("loss", 0.5)
"""


def test_a_jobs_plain_mlflow_run_is_recorded_with_metric_mlpd_tags_and_user(daemon, tmp_path):
    name, token = new_user(daemon)
    # what a user sets for these is overridden: the job still logs to the daemon, as its owner
    job = run_job(daemon, token, tmp_path, TRAIN, "--gpus", "1", "--env", "MLFLOW_TRACKING_URI=http://nowhere.invalid",
                  "--env", "MLFLOW_TRACKING_TOKEN=forged", "--env", "MLPD_URL=http://nowhere.invalid")
    # the job named no experiment: it logged to its owner's default one
    experiment = ok(mlflow(daemon, "GET", "experiments/get-by-name", token, params={"experiment_name": f"jobs-{name}"}))["experiment"]
    assert {t["key"]: t["value"] for t in experiment.get("tags", [])}.get("mlpd.owner") == name
    runs = ok(mlflow(daemon, "POST", "runs/search", token, json={"experiment_ids": [experiment["experiment_id"]],
                                                                "filter": f"tags.`mlpd.job_id` = '{job['id']}'"}))
    assert len(runs["runs"]) == 1
    run = runs["runs"][0]
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert run["info"]["user_id"] == name and tags["mlflow.user"] == name and tags["mlpd.user"] == name
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"loss": 0.5}
    assert tags["mlpd.job_id"] == job["id"]
    assert tags["mlpd.gpu_uuids"] == ",".join(job["gpus"]["uuids"]) and tags["mlpd.gpu_indices"] == ",".join(map(str, job["gpus"]["indices"]))
    assert tags["mlpd.image"] == job["image"] and tags["mlpd.code_digest"] == job["spec"]["code"]

    # the run links, in the API and on `mlpd jobs show`
    shown = daemon.api("GET", f"/api/v1/jobs/{job['id']}", token).json()["job"]["mlflow_runs"]
    assert [r["run_id"] for r in shown] == [run["info"]["run_id"]]
    assert shown[0]["url"] == f"{daemon.url}/mlflow/#/experiments/{run['info']['experiment_id']}/runs/{run['info']['run_id']}"
    text = daemon.cli("jobs", "show", job["id"], token=token)
    assert text.returncode == 0 and shown[0]["url"] in text.stdout

    # the CLI lists it; the job's own token died with the job
    listed = as_json(daemon.cli("runs", "--experiment", f"jobs-{name}", "--json", token=token))["runs"]
    assert [(r["run_id"], r["user"], r["job_id"], r["metrics"]) for r in listed] == [(run["info"]["run_id"], name, job["id"], {"loss": 0.5})]
    assert listed[0]["experiment"] == f"jobs-{name}"  # issue 23 item 11: runs named their experiment by id only
    assert f"jobs-{name}" in daemon.cli("runs", token=token).stdout
    assert f"jobs-{name}" in {e["name"] for e in as_json(daemon.cli("experiments", "--json", token=token))["experiments"]}
    tokens = as_json(daemon.cli("admin", "token", "list", "--json", token=token))["tokens"]
    job_tokens = [t for t in tokens if t["label"] == f"job:{job['id']}"]
    assert job_tokens and all(t["revoked_at"] for t in job_tokens)


# ---------------------------------------------------------------- 2. a job's model, registered and aliased

LOG_MODEL = """
import mlflow
with mlflow.start_run() as run:
    mlflow.log_text("artifact_path: model\\nflavors: {}\\n", "model/MLmodel")
    mlflow.log_dict({"weights": [1, 2, 3]}, "model/weights.json")
print("RUN", run.info.run_id)
"""


def test_a_model_logged_by_a_job_is_registered_aliased_and_listed(daemon, tmp_path):
    name, token = new_user(daemon)
    job = run_job(daemon, token, tmp_path, LOG_MODEL, "--experiment", f"models-{name}")
    run_id = next(line.split()[1] for line in daemon.api("GET", f"/api/v1/jobs/{job['id']}/logs", token).text.splitlines() if line.startswith("RUN "))
    listed = ok(mlflow(daemon, "GET", "artifacts/list", token, params={"run_id": run_id, "path": "model"}))
    assert {f["path"] for f in listed["files"]} == {"model/MLmodel", "model/weights.json"}

    model = f"churn-{name}"
    version = register_model(daemon, token, model, run_id)
    assert version == "1"
    ok(mlflow(daemon, "POST", "registered-models/alias", token, json={"name": model, "alias": "prod", "version": "1"}))
    models = {m["name"]: m for m in as_json(daemon.cli("models", "--json", token=token))["models"]}
    assert models[model]["aliases"] == {"prod": "1"} and models[model]["owner"] == name
    assert models[model]["versions"][0]["run_id"] == run_id and models[model]["versions"][0]["aliases"] == ["prod"]
    table = daemon.cli("models", token=token)
    assert table.returncode == 0 and model in table.stdout and "@prod" in table.stdout

    moved = daemon.cli("models", "alias", model, "1", "staging", token=token)
    assert moved.returncode == 0 and f"models:/{model}@staging -> version 1" in moved.stdout, moved.stderr
    _, other = new_user(daemon, "o")
    refused = daemon.cli("models", "alias", model, "1", "hijack", token=other)
    assert refused.returncode == 1 and "belongs to" in refused.stderr and "Traceback" not in refused.stderr


# ---------------------------------------------------------------- 3. no token: 401, nothing leaks; bob vs alice


def test_without_a_token_mlflow_answers_401_and_leaks_nothing(daemon):
    name, token = new_user(daemon)
    experiment_id, run_id = create_run(daemon, token, f"secret-exp-{name}")
    secret = f"secret-{uuid.uuid4().hex}".encode()
    assert raw_put(daemon, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/s.txt", token, secret)[0] == 200
    requests_to_try = [
        ("POST", API + "experiments/search", {"json": {"max_results": 100}}),
        ("GET", API + "runs/get", {"params": {"run_id": run_id}}),
        ("POST", AJAX + "runs/search", {"json": {"experiment_ids": [experiment_id]}}),
        ("GET", f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/s.txt", {}),
        ("GET", "/mlflow/get-artifact", {"params": {"run_uuid": run_id, "path": "s.txt"}}),
        ("GET", "/mlflow/", {}), ("GET", "/mlflow", {}), ("GET", "/mlflow/static-files/static/js/main.js", {}),
        ("POST", API + "runs/delete", {"json": {"run_id": run_id}}),
    ]
    for bad in (None, "mlpd_000000000000_" + "x" * 43, "not-a-token"):
        for method, path, kwargs in requests_to_try:
            headers = {"Authorization": f"Bearer {bad}"} if bad else {}
            resp = daemon.api(method, path, headers=headers, **kwargs)
            assert resp.status_code == 401, (path, resp.status_code, resp.text[:200])
            assert resp.headers["WWW-Authenticate"] == 'Basic realm="mlpd"'
            assert resp.json()["error"]["code"] == "unauthorized"
            assert secret not in resp.content and run_id.encode() not in resp.content and b"secret-exp" not in resp.content
    # a browser logs in with the token as the Basic password and gets the UI
    ui = daemon.api("GET", "/mlflow/", auth=("anyone", token))
    assert ui.status_code == 200 and b"<html" in ui.content.lower()
    assert ok(mlflow(daemon, "GET", "runs/get", params={"run_id": run_id}, auth=("x", token)))["run"]["info"]["run_id"] == run_id


def test_a_member_reads_but_cannot_change_or_delete_someone_elses_run_or_model(daemon):
    alice, a = new_user(daemon, "alice")
    bob, b = new_user(daemon, "bob")
    experiment_id, run_id = create_run(daemon, a, f"shared-{alice}")
    ok(mlflow(daemon, "POST", "runs/log-metric", a, json={"run_id": run_id, "key": "acc", "value": 0.9, "timestamp": 1}))
    assert raw_put(daemon, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/w.bin", a, b"weights")[0] == 200
    model = f"model-{alice}"
    register_model(daemon, a, model, run_id)

    # bob reads everything
    assert ok(mlflow(daemon, "GET", "runs/get", b, params={"run_id": run_id}))["run"]["info"]["user_id"] == alice
    assert ok(mlflow(daemon, "GET", "registered-models/get", b, params={"name": model}))["registered_model"]["name"] == model
    assert raw_get(daemon, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/w.bin", b) == (200, b"weights")

    # and changes nothing of alice's, under either API prefix, nor through the artifact routes
    refusals = [
        ("POST", API + "runs/delete", {"run_id": run_id}), ("POST", AJAX + "runs/delete", {"run_id": run_id}),
        ("POST", API + "runs/log-metric", {"run_id": run_id, "key": "acc", "value": 0.1, "timestamp": 2}),
        ("POST", AJAX + "runs/set-tag", {"run_id": run_id, "key": "x", "value": "y"}),
        ("POST", API + "runs/update", {"run_id": run_id, "status": "FAILED"}),
        ("DELETE", API + "registered-models/delete", {"name": model}), ("DELETE", AJAX + "registered-models/delete", {"name": model}),
        ("POST", API + "registered-models/rename", {"name": model, "new_name": "mine"}),
        ("POST", API + "registered-models/alias", {"name": model, "alias": "prod", "version": "1"}),
        ("DELETE", API + "model-versions/delete", {"name": model, "version": "1"}),
        ("POST", API + "model-versions/create", {"name": model, "source": f"runs:/{run_id}/model"}),
        ("POST", API + "experiments/delete", {"experiment_id": experiment_id}),
        ("POST", AJAX + "experiments/update", {"experiment_id": experiment_id, "new_name": "taken"}),
    ]
    for method, path, body in refusals:
        resp = daemon.api(method, path, b, json=body)
        assert resp.status_code == 403, (path, resp.status_code, resp.text[:300])
        assert resp.json()["error"]["code"] == "forbidden" and alice in resp.json()["error"]["message"]
    assert raw_put(daemon, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/w.bin", b, b"evil")[0] == 403
    assert daemon.api("DELETE", f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/w.bin", b).status_code == 403
    # nothing changed
    run = ok(mlflow(daemon, "GET", "runs/get", a, params={"run_id": run_id}))["run"]
    assert run["info"]["lifecycle_stage"] == "active" and run["info"]["status"] == "RUNNING"
    assert {m["key"]: m["value"] for m in run["data"]["metrics"]} == {"acc": 0.9}
    assert raw_get(daemon, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/w.bin", a) == (200, b"weights")
    # mlpd's own tags cannot be forged by members, not even on their own runs
    assert mlflow(daemon, "POST", "runs/set-tag", a, json={"run_id": run_id, "key": "mlpd.job_id", "value": "x"}).status_code == 403
    # bob's own run is bob's, whatever user he claims
    _, bob_run = create_run(daemon, b, f"shared-{alice}")
    claimed = ok(mlflow(daemon, "POST", "runs/create", b, json={"experiment_id": experiment_id, "user_id": alice}))["run"]
    assert claimed["info"]["user_id"] == bob
    # owners and admins may
    ok(mlflow(daemon, "POST", "runs/delete", b, json={"run_id": bob_run}))
    ok(mlflow(daemon, "POST", "runs/delete", a, json={"run_id": run_id}))
    ok(daemon.api("DELETE", API + "registered-models/delete", daemon.admin_token, json={"name": model}))


# ---------------------------------------------------------------- 4. artifacts byte for byte; traversal refused


def test_an_artifact_round_trips_byte_for_byte_and_traversal_is_refused(daemon):
    name, token = new_user(daemon)
    experiment_id, run_id = create_run(daemon, token, f"art-{name}")
    data = os.urandom(700_000) + bytes(range(256))
    base = f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts"
    assert raw_put(daemon, f"{base}/data/blob.bin", token, data)[0] == 200
    assert raw_get(daemon, f"{base}/data/blob.bin", token) == (200, data)
    via_ui_route = daemon.api("GET", "/mlflow/get-artifact", token, params={"run_uuid": run_id, "path": "data/blob.bin"})
    assert via_ui_route.status_code == 200 and via_ui_route.content == data
    listed = ok(mlflow(daemon, "GET", "artifacts/list", token, params={"run_id": run_id, "path": "data"}))
    assert listed["files"] == [{"path": "data/blob.bin", "is_dir": False, "file_size": len(data)}]

    state = daemon.state_dir
    for path in (f"{base}/../../../../mlflow.db", f"{base}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/mlflow.db",
                 f"{base}/..%2f..%2f..%2f..%2fmlflow.db", f"{base}/%252e%252e/%252e%252e/mlflow.db",
                 f"{ARTIFACTS}..%2f..%2fmlpd.db", f"/mlflow/get-artifact?run_uuid={run_id}&path=../../../../mlflow.db",
                 f"/mlflow/get-artifact?run_uuid={run_id}&path=%2e%2e%2f%2e%2e%2fmlflow.db",
                 "/mlflow/api/2.0/mlflow-artifacts/artifacts?path=..%2F..%2F"):
        status, body = raw_get(daemon, path, token)
        assert status == 400, (path, status, body[:200])
        assert json.loads(body)["error"]["code"] == "invalid_path" and b"SQLite" not in body
        status, body = raw_put(daemon, path.split("?")[0] + "-evil", token, b"evil")
        assert status in (400, 403), (path, status, body[:200])
    escaped = [p for p in state.rglob("*-evil")]
    assert not escaped, escaped


# ---------------------------------------------------------------- eval "$(mlpd env)" on the host


def test_mlpd_env_lets_a_plain_mlflow_client_log_as_the_logged_in_user(daemon, tmp_path):
    name, token = new_user(daemon)
    mlpd = os.path.join(os.path.dirname(sys.executable), "mlpd")
    # a laptop: logged in once, nothing about MLflow in the environment
    env = {k: v for k, v in daemon.env().items() if not k.startswith("MLFLOW_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    login = subprocess.run([mlpd, "login", daemon.url, "--token", token], env=env, capture_output=True, text=True)
    assert login.returncode == 0, login.stderr
    (tmp_path / "notebook.py").write_text(
        f"import mlflow, os\nmlflow.set_experiment('laptop-{name}')\n"
        "with mlflow.start_run() as r:\n    mlflow.log_metric('x', 1.0)\nprint(r.info.run_id, os.environ['MLPD_URL'])\n")
    script = f'eval "$({mlpd} env)" && {sys.executable} notebook.py'
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    run_id, url = result.stdout.split()[-2:]
    assert url == daemon.url
    run = ok(mlflow(daemon, "GET", "runs/get", token, params={"run_id": run_id}))["run"]
    assert run["info"]["user_id"] == name and {m["key"] for m in run["data"]["metrics"]} == {"x"}
    exported = subprocess.run([mlpd, "env"], env=env, capture_output=True, text=True).stdout
    assert f"export MLFLOW_TRACKING_URI={daemon.url}/mlflow" in exported and f"export MLFLOW_TRACKING_TOKEN={token}" in exported


# ---------------------------------------------------------------- 5. a restart keeps everything


def test_runs_models_and_artifacts_survive_a_daemon_restart(make_daemon):
    d = make_daemon()
    name, token = new_user(d)
    experiment_id, run_id = create_run(d, token, f"durable-{name}")
    ok(mlflow(d, "POST", "runs/log-batch", token, json={"run_id": run_id, "metrics": [
        {"key": "loss", "value": 1.0 / (i + 1), "timestamp": i, "step": i} for i in range(50)]}))
    data = os.urandom(100_000)
    assert raw_put(d, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/model/w.bin", token, data)[0] == 200
    register_model(d, token, f"durable-{name}", run_id)
    ok(mlflow(d, "POST", "registered-models/alias", token, json={"name": f"durable-{name}", "alias": "prod", "version": "1"}))

    assert d.stop(signal.SIGTERM) == 0
    d.start()

    run = ok(mlflow(d, "GET", "runs/get", token, params={"run_id": run_id}))["run"]
    assert run["info"]["user_id"] == name
    history = ok(mlflow(d, "GET", "metrics/get-history", token, params={"run_id": run_id, "metric_key": "loss"}))["metrics"]
    assert len(history) == 50
    assert raw_get(d, f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/model/w.bin", token) == (200, data)
    version = ok(mlflow(d, "GET", "registered-models/alias", token, params={"name": f"durable-{name}", "alias": "prod"}))
    assert version["model_version"]["version"] == "1" and version["model_version"]["run_id"] == run_id
    # the owner survives too: still only hers to change
    _, other = new_user(d, "o")
    assert mlflow(d, "POST", "runs/delete", other, json={"run_id": run_id}).status_code == 403
