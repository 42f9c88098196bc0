"""Backup while a job logs metrics, restore onto a stopped daemon's state directory, and find everything."""

from __future__ import annotations

import http.client
import signal
import subprocess
import uuid

from helpers import as_json, needs_docker, wait_for

pytestmark = needs_docker
API = "/mlflow/api/2.0/mlflow/"
ARTIFACTS = "/mlflow/api/2.0/mlflow-artifacts/artifacts/"

LOGGER = """
import time, mlflow
with mlflow.start_run() as run:
    print("RUN", run.info.run_id, flush=True)
    for step in range(400):
        mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        time.sleep(0.02)
"""


def ok(resp):
    assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:300]}"
    return resp.json()


def put(d, path, token, data):
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)
    conn.request("PUT", path, body=data, headers={"Authorization": f"Bearer {token}"})
    status = conn.getresponse().status
    conn.close()
    return status


def test_a_backup_taken_while_a_job_logs_restores_everything(make_daemon, tmp_path):
    import os

    d = make_daemon()
    name = f"b{uuid.uuid4().hex[:6]}"
    token = d.add_user(name)
    experiment = ok(d.api("POST", API + "experiments/create", token, json={"name": f"exp-{name}"}))["experiment_id"]
    run_id = ok(d.api("POST", API + "runs/create", token, json={"experiment_id": experiment}))["run"]["info"]["run_id"]
    data = os.urandom(300_000)
    assert put(d, f"{ARTIFACTS}{experiment}/{run_id}/artifacts/model/w.bin", token, data) == 200
    ok(d.api("POST", API + "registered-models/create", token, json={"name": f"m-{name}"}))
    ok(d.api("POST", API + "model-versions/create", token, json={"name": f"m-{name}", "source": f"runs:/{run_id}/model", "run_id": run_id}))
    done_job = d.api("POST", "/api/v1/jobs", token, json={"command": ["true"]}).json()["job"]["id"]
    wait_for(lambda: d.api("GET", f"/api/v1/jobs/{done_job}", token).json()["job"]["state"] == "succeeded", 60, 0.2, "a first job")
    (tmp_path / "log.py").write_text(LOGGER)
    logging_job = as_json(d.cli("run", "--json", "--", "python", "log.py", token=token, cwd=str(tmp_path)))["job"]["id"]
    wait_for(lambda: "RUN " in d.api("GET", f"/api/v1/jobs/{logging_job}/logs", token).text, 120, 0.2, "the job to log")

    dest = tmp_path / "backup"
    taken = d.host_cli("admin", "backup", str(dest))  # while the job logs metrics
    assert taken.returncode == 0, taken.stderr
    assert "mlpd.db: copied" in taken.stdout and "mlflow/mlflow.db: copied" in taken.stdout
    refused = d.host_cli("admin", "restore", str(dest))  # onto the running daemon's state: refused
    assert refused.returncode != 0 and "stop it first" in refused.stderr

    d.stop(signal.SIGTERM)
    restored_dir = tmp_path / "restored"
    back = subprocess.run([d.argv()[0], "admin", "restore", str(dest), "--state-dir", str(restored_dir)], capture_output=True,
                          text=True, env=d.env(), timeout=120)
    assert back.returncode == 0 and "restored the backup" in back.stdout, back.stderr
    over = d.host_cli("admin", "restore", str(dest))  # the old state directory holds state: not without --force
    assert over.returncode != 0 and "--force" in over.stderr
    d2 = make_daemon(state_dir=restored_dir, start=False)
    d2.start()
    d2.admin_token = d.admin_token  # tokens come back with the users
    users = {u["name"] for u in d2.api("GET", "/api/v1/users", d2.admin_token).json()["users"]}
    assert name in users
    jobs = {j["id"]: j for j in d2.api("GET", "/api/v1/jobs?all=1", d2.admin_token).json()["jobs"]}
    assert jobs[done_job]["state"] == "succeeded" and logging_job in jobs
    assert ok(d2.api("GET", API + "runs/get", token, params={"run_id": run_id}))["run"]["info"]["user_id"] == name
    model = ok(d2.api("GET", API + "registered-models/get", token, params={"name": f"m-{name}"}))["registered_model"]
    assert model["latest_versions"][0]["version"] == "1"
    got = d2.api("GET", f"{ARTIFACTS}{experiment}/{run_id}/artifacts/model/w.bin", token)
    assert got.status_code == 200 and got.content == data  # byte for byte
    usage = d2.api("GET", "/api/v1/usage?by=user", d2.admin_token)
    assert usage.status_code == 200
