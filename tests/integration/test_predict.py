"""Batch scoring and monitoring end to end: a model trained and registered in a job, `mlpd predict` over
100,000 rows of CSV as a job on the queue (real container, the model's serving environment), its
predictions compared with what the deployment's endpoint (MLflow's own scoring server) answers for a
sample of the same rows; the refusals (unknown model, unreadable input, unknown format) that store
nothing; and drift seen through a real replica: of two features, the one whose mean moved by two
standard deviations shows a PSI above 0.25, the other stays below 0.1.
"""

from __future__ import annotations

import random
import re

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
    world["deployment"] = served["name"]
    world["monitored"] = SAMPLE  # rows the endpoint saw (tests below count them)
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


def test_a_shifted_feature_drifts_and_an_unshifted_one_does_not_with_the_predictions_summarised(world):
    d, token = world["daemon"], world["token"]
    name = world.get("deployment") or as_json(d.cli("serve", f"models:/{world['model']}@prod", "--json", token=token, timeout=600))[
        "deployment"]["name"]
    rng = random.Random(23)

    def send(rows: list[list[float]]) -> None:
        answer = requests.post(f"{d.url}/serve/{name}/invocations", timeout=60, headers={"Authorization": f"Bearer {token}"},
                               json={"dataframe_split": {"columns": ["a", "b"], "data": rows}})
        assert answer.status_code == 200, answer.text

    # the reference: the version's first 1,000 values of each feature (serving.monitor_reference), both N(0, 1)
    for _ in range(2):
        send([[rng.gauss(0, 1), rng.gauss(0, 1)] for _ in range(500)])
    # then a stays where it was and b moves by two standard deviations
    for _ in range(10):
        send([[rng.gauss(0, 1), rng.gauss(2, 1)] for _ in range(500)])

    last: list = []

    def drift():
        shown = d.api("GET", f"/api/v1/deployments/{name}", token).json()["deployment"]
        last[:] = [shown["monitoring"]]
        found = [m for m in shown["monitoring"] if m["version"] == "1"]
        if not found:
            return False
        m = found[0]
        features = {f["feature"]: f for f in m["features"]}
        done = all(f.get("reference", 0) + f.get("since", 0) == total for f in (features.get("a") or {}, features.get("b") or {}))
        return done and (m, features)

    total = world.get("monitored", 0) + 6000
    try:
        m, features = wait_for(drift, 30, 0.5, f"the monitoring counts of all {total} values of each feature")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen: {last}") from None
    print(f"PSI through a replica: a (unshifted) {features['a']['psi']}, b (mean + 2 sd) {features['b']['psi']}")
    assert features["a"]["psi"] < 0.1 and features["a"]["level"] == "stable" and features["a"]["reference"] == 1000
    assert features["b"]["psi"] > 0.25 and features["b"]["level"] == "drift"
    assert m["requests"] >= 12 and m["predictions"]["count"] >= 6000
    # the model is 2a - 3b: with b moved to mean 2 most predictions are negative
    assert m["predictions"]["quantiles"]["p50"] < -2

    shown = d.cli("deployments", "show", name, token=token)
    assert shown.returncode == 0, shown.stderr
    line_b = next(line for line in shown.stdout.splitlines() if line.strip().startswith("b ") and "PSI" in line)
    assert "drift" in line_b, shown.stdout
    scraped = d.api("GET", "/metrics", d.admin_token).text
    psi_b = [line for line in scraped.splitlines() if line.startswith("mlpd_serving_feature_psi{") and 'feature="b"' in line
             and f'deployment="{name}"' in line]
    assert psi_b and float(psi_b[0].rsplit(" ", 1)[1]) > 0.25, scraped[-2000:]

    web = requests.Session()
    form = web.get(f"{d.url}/ui/login", timeout=30).text
    csrf = re.findall(r'name="csrf" value="([^"]+)"', form)[-1]
    assert web.post(f"{d.url}/ui/login/token", data={"csrf": csrf, "token": token, "next": ""}, timeout=30).ok
    page = web.get(f"{d.url}/ui/deployments/{name}", timeout=30)
    assert page.status_code == 200 and "Input drift of version 1 (PSI per feature)" in page.text and "<svg" in page.text, page.text[:2000]
    assert ">drift<" in page.text and ">stable<" in page.text
