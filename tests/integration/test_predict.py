"""Batch scoring end to end: a model trained and registered in a job, `mlpd predict` over 100,000 rows
of CSV as a job on the queue (real container, the model's serving environment), its predictions
compared with what the deployment's endpoint (MLflow's own scoring server) answers for a sample of
the same rows; and the refusals (unknown model, unreadable input, unknown format) that store nothing.
"""

from __future__ import annotations

import random

import pytest
import requests

from helpers import as_json, needs_docker, new_user, wait_for
from mlpd.jobs import TERMINAL_STATES

pytestmark = needs_docker
ROWS = 100_000
SAMPLE = 200

TRAIN = """
import mlflow, mlflow.sklearn, numpy as np, pandas as pd
from mlflow import MlflowClient
from sklearn.linear_model import LinearRegression

NAME = "{model_name}"
rng = np.random.default_rng(7)
X = pd.DataFrame({"a": rng.normal(size=500), "b": rng.normal(size=500)})
y = 2.0 * X["a"] - 3.0 * X["b"] + 0.1 * rng.normal(size=500)
with mlflow.start_run():
    mlflow.sklearn.log_model(LinearRegression().fit(X, y), name="model", registered_model_name=NAME, input_example=X[:2])
MlflowClient().set_registered_model_alias(NAME, "prod", "1")
print("REGISTERED", NAME)
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, request):
    from conftest import RunningDaemon, docker_available, remove_containers

    base = tmp_path_factory.mktemp("predict")
    (base / "home").mkdir()
    config = base / "mlpd.toml"
    config.write_text('[serving]\nstart_timeout = "90s"\n')
    daemon = RunningDaemon(base / "state", base / "home", config_file=config)
    daemon.start()
    daemon.admin_token = daemon.add_user("root", admin=True)
    name, token = new_user(daemon, "scorer")
    model = f"lin-{name}"
    work = base / "train"
    work.mkdir()
    (work / "train.py").write_text(TRAIN.replace("{model_name}", model))
    job_id = as_json(daemon.cli("run", "--json", "--", "python", "train.py", token=token, cwd=str(work)))["job"]["id"]
    job = wait_for(lambda: (j := daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"] in TERMINAL_STATES and j,
                   300, 0.5, "the training job")
    assert job["state"] == "succeeded", f"{job['reason']}\n{daemon.api('GET', f'/api/v1/jobs/{job_id}/logs', token).text[-3000:]}"
    yield {"daemon": daemon, "token": token, "model": model, "base": base}
    failed = any(getattr(item, "rep_call", None) and item.rep_call.failed for item in request.session.items if item.module is request.module)
    if failed:
        print(f"\n--- daemon log ---\n{daemon.log_text()}")
    daemon.stop()
    if docker_available():
        remove_containers(daemon)


def jobs_of(world) -> list[dict]:
    return world["daemon"].api("GET", "/api/v1/jobs", world["token"]).json()["jobs"]


def test_predict_over_100k_rows_gives_the_endpoints_predictions(world):
    d, token, base = world["daemon"], world["token"], world["base"]
    rng = random.Random(11)
    rows = [(rng.gauss(0, 1), rng.gauss(0, 1)) for _ in range(ROWS)]
    src = base / "customers.csv"
    src.write_text("a,b\n" + "".join(f"{a!r},{b!r}\n" for a, b in rows))

    submitted = d.cli("predict", f"models:/{world['model']}@prod", str(src), "--json", token=token, timeout=300)
    out = as_json(submitted)
    assert out["model"] == f"models:/{world['model']}/1" and out["output"] == "/outputs/predictions.csv"
    job_id = out["job"]["id"]
    job = wait_for(lambda: (j := d.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"] in TERMINAL_STATES and j,
                   600, 1, "the predict job")
    logs = d.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
    assert job["state"] == "succeeded", f"{job['reason']}\n{logs[-3000:]}"
    assert f"scored {ROWS} rows with models:/{world['model']}/1" in logs
    # an ordinary job of its owner, listed with their jobs
    assert job["name"] == f"predict-{world['model']}-1"[:64] and job_id in {j["id"] for j in jobs_of(world)}

    dest = base / "outputs"
    fetched = d.cli("jobs", "outputs", job_id, "-o", str(dest), token=token, timeout=300)
    assert fetched.returncode == 0, fetched.stderr
    lines = (dest / "predictions.csv").read_text().splitlines()
    assert lines[0] == "prediction" and len(lines) == ROWS + 1
    batch = [float(x) for x in lines[1:]]

    served = as_json(d.cli("serve", f"models:/{world['model']}@prod", "--json", token=token, timeout=600))["deployment"]
    assert served["state"] == "serving", served
    picks = sorted(rng.sample(range(ROWS), SAMPLE))
    answer = requests.post(f"{d.url}/serve/{served['name']}/invocations", timeout=60, headers={"Authorization": f"Bearer {token}"},
                           json={"dataframe_split": {"columns": ["a", "b"], "data": [list(rows[i]) for i in picks]}})
    assert answer.status_code == 200, answer.text
    endpoint = answer.json()["predictions"]
    assert len(endpoint) == SAMPLE
    assert [batch[i] for i in picks] == pytest.approx(endpoint, rel=1e-12, abs=1e-12)
    assert len({round(p, 6) for p in endpoint}) > SAMPLE // 2  # real, varied predictions, not a constant


def test_predict_refuses_an_unknown_model_an_unreadable_input_and_an_unknown_format_and_queues_nothing(world):
    d, token, base = world["daemon"], world["token"], world["base"]
    before = {j["id"] for j in jobs_of(world)}
    good = base / "few.csv"
    good.write_text("a,b\n1.0,2.0\n")

    unknown = d.cli("predict", f"models:/{world['model']}-nosuch@prod", str(good), token=token)
    assert unknown.returncode != 0 and "has no alias 'prod' (or no such model)" in unknown.stderr, unknown.stderr
    missing = d.cli("predict", f"models:/{world['model']}@prod", str(base / "absent.csv"), token=token)
    assert missing.returncode != 0 and "cannot read it" in missing.stderr, missing.stderr
    fake = base / "fake.parquet"
    fake.write_text("a,b\n1,2\n")
    not_parquet = d.cli("predict", f"models:/{world['model']}@prod", str(fake), token=token)
    assert not_parquet.returncode != 0 and "not a Parquet file" in not_parquet.stderr, not_parquet.stderr
    other = base / "rows.json"
    other.write_text("[]")
    unknown_format = d.cli("predict", f"models:/{world['model']}@prod", str(other), token=token)
    assert unknown_format.returncode != 0 and "unknown format" in unknown_format.stderr, unknown_format.stderr
    mismatched = d.cli("predict", f"models:/{world['model']}@prod", str(good), "--output", "out.parquet", token=token)
    assert mismatched.returncode != 0 and "the input's format" in mismatched.stderr, mismatched.stderr
    assert {j["id"] for j in jobs_of(world)} == before
