"""The README's examples run as written. Every fenced block marked ``<!-- example: NAME -->`` in
README.md is taken from it: files (train.py, requirements.txt, job.toml) are written into a project
directory as they stand, and command blocks (first-run.sh) are run line by line, with the same flags,
against a real daemon, real Docker and the real embedded MLflow; so are the CLI tour's `mlpd run` and
`mlpd submit` lines. The only thing changed in a command is the daemon's address (the README's
127.0.0.1:8470 becomes the test daemon's free port). The daemon declares two GPUs of the model the
job file asks for (declared GPUs, as the other tests use on a host without NVIDIA GPUs).
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import BIN, RunningDaemon, docker_available, remove_containers
from helpers import needs_docker, wait_for

pytestmark = needs_docker

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
README_URL = "http://127.0.0.1:8470"
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition
MODEL = "iris-classifier"


def examples(text: str) -> dict[str, tuple[str, str]]:
    """NAME -> (language, body) for every fenced block right after a `<!-- example: NAME -->` line."""
    found: dict[str, tuple[str, str]] = {}
    for match in re.finditer(r"^<!-- example: (\S+) -->\n```(\w*)\n(.*?)^```", text, re.S | re.M):
        name, lang, body = match.groups()
        assert name not in found, f"two README examples are named {name}"
        found[name] = (lang, body)
    return found


EXAMPLES = examples(README)


def commands(body: str) -> list[str]:
    """The `mlpd ...` lines of a shell block, each without its trailing comment."""
    return [line.split("  #", 1)[0].strip() for line in body.splitlines() if line.strip().startswith("mlpd ")]


def tour_job_lines() -> list[str]:
    """The CLI tour's `mlpd run` and `mlpd submit` lines (notebooks aside: they run in the workspace image)."""
    tour = re.search(r"## CLI tour\n\n```sh\n(.*?)```", README, re.S).group(1)
    return [line for line in commands(tour) if line.split()[1] in ("run", "submit") and ".ipynb" not in line]


def write_files(directory: Path, *names: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text(EXAMPLES[name][1])


def run_line(daemon: RunningDaemon, line: str, cwd: Path, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one README line as a user types it: the stored login (no MLPD_URL/MLPD_TOKEN), in cwd."""
    argv = shlex.split(line.replace(README_URL, daemon.url))
    assert argv[0] == "mlpd", line
    result = subprocess.run([BIN, *argv[1:]], cwd=str(cwd), env=daemon.env(), input=stdin, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{line!r} exited {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def submitted_id(result: subprocess.CompletedProcess) -> str:
    match = re.search(r"submitted job (\S+) ", result.stderr)
    assert match, result.stderr
    return match.group(1)


def wait_ended(daemon: RunningDaemon, job_id: str, timeout: float = 600) -> dict:
    def ended():
        job = daemon.api("GET", f"/api/v1/jobs/{job_id}", daemon.admin_token).json()["job"]
        return job if job["state"] in TERMINAL else None

    job = wait_for(ended, timeout, 0.5, f"job {job_id} to end")
    log = daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", daemon.admin_token).text
    assert job["state"] == "succeeded", f"{job['id']} {job['state']}: {job['reason']}\n{log[-3000:]}"
    return job


def mlflow_runs_of(daemon: RunningDaemon, job_id: str) -> list[dict]:
    """The MLflow runs a job created, with their params and metrics (MLflow's own REST API)."""
    api = "/mlflow/api/2.0/mlflow/"
    experiments = daemon.api("GET", api + "experiments/search", daemon.admin_token, params={"max_results": 1000}).json()["experiments"]
    body = {"experiment_ids": [e["experiment_id"] for e in experiments], "filter": f"tags.`mlpd.job_id` = '{job_id}'"}
    return daemon.api("POST", api + "runs/search", daemon.admin_token, json=body).json().get("runs", [])


def versions(daemon: RunningDaemon, cwd: Path) -> list[dict]:
    models = {m["name"]: m for m in json.loads(run_line(daemon, "mlpd models --json", cwd).stdout)["models"]}
    return models[MODEL]["versions"] if MODEL in models else []


@pytest.fixture(scope="module")
def readme_daemon(tmp_path_factory):
    """One daemon for the module, with two declared GPUs of the model the README's job file names."""
    base = tmp_path_factory.mktemp("readme")
    (base / "home").mkdir()
    d = RunningDaemon(base / "state", base / "home")
    d.start()
    d.admin_token = d.add_user("root", admin=True)  # the first admin, whose token install.sh prints
    gpu_model = tomllib.loads(EXAMPLES["job.toml"][1])["gpu_model"]
    declared = d.cli("admin", "gpus", "declare", "2", "--model", gpu_model)
    assert declared.returncode == 0, declared.stderr
    yield d
    d.stop()
    if docker_available():
        remove_containers(d)


def test_the_readme_marks_its_examples():
    assert {"train.py", "first-run.sh", "requirements.txt", "job.toml"} <= set(EXAMPLES), sorted(EXAMPLES)
    assert EXAMPLES["train.py"][0] == "python" and EXAMPLES["first-run.sh"][0] == "sh"
    assert "mlflow.sklearn.log_model" in EXAMPLES["train.py"][1] and f'registered_model_name="{MODEL}"' in EXAMPLES["train.py"][1]
    assert [line.split()[1] for line in commands(EXAMPLES["first-run.sh"][1])] == ["login", "run", "runs", "models"]
    assert len(tour_job_lines()) >= 5, tour_job_lines()


def test_the_first_tracked_run_runs_as_written(readme_daemon, tmp_path):
    d = readme_daemon
    project = tmp_path / "first"
    write_files(project, "train.py")
    login, run, runs, models = commands(EXAMPLES["first-run.sh"][1])

    logged_in = run_line(d, login, project, stdin=d.admin_token + "\n")  # "paste the token install.sh printed"
    assert f"Logged in to {d.url} as root" in logged_in.stdout

    followed = run_line(d, run, project)
    job_id = submitted_id(followed)
    assert "epoch 2: accuracy" in followed.stdout, followed.stdout[-3000:]  # -f streamed the job's output
    assert "Warning" not in followed.stdout + followed.stderr, followed.stdout[-3000:]  # issue 23 item 11: MLflow's schema hint on every run
    job = wait_ended(d, job_id)
    assert job["image"] == "mlpd/train:latest" and job["command"] == ["python", "train.py", "--epochs", "3"]

    # the MLflow run: the job's, with the README's params and one accuracy per epoch
    (mlflow_run,) = mlflow_runs_of(d, job_id)
    params = {p["key"]: p["value"] for p in mlflow_run["data"].get("params", [])}
    assert params == {"epochs": "3", "lr": "0.1"}
    run_id = mlflow_run["info"]["run_id"]
    history = d.api("GET", "/mlflow/api/2.0/mlflow/metrics/get-history", d.admin_token,
                    params={"run_id": run_id, "metric_key": "accuracy"}).json()["metrics"]
    assert sorted(m["step"] for m in history) == [0, 1, 2] and all(0 <= m["value"] <= 1 for m in history)

    listed = run_line(d, runs, project)
    assert run_id in listed.stdout and job_id[:8] in listed.stdout and "accuracy=" in listed.stdout, listed.stdout

    shown = run_line(d, models, project)
    assert MODEL in shown.stdout, shown.stdout
    (version,) = versions(d, project)
    assert version["version"] == "1" and version["run_id"] == run_id and version["status"] == "READY"


def test_the_tour_and_the_job_file_run_as_written(readme_daemon, tmp_path):
    """Every `mlpd run`/`mlpd submit` line of the CLI tour, in a project with the README's train.py,
    requirements.txt and job.toml: each job succeeds with what its flags asked for, and each
    training run registers one more version of the model."""
    d = readme_daemon
    project = tmp_path / "project"
    write_files(project, "train.py", "requirements.txt", "job.toml")
    run_line(d, commands(EXAMPLES["first-run.sh"][1])[0], project, stdin=d.admin_token + "\n")
    before = len(versions(d, project))

    submitted: dict[str, str] = {}
    for line in tour_job_lines():
        submitted[line] = submitted_id(run_line(d, line, project))
    jobs = {line: wait_ended(d, job_id) for line, job_id in submitted.items()}

    job_file = tomllib.loads(EXAMPLES["job.toml"][1])
    for line, job in jobs.items():
        spec = job["spec"]
        history = [e["action"] for e in d.api("GET", f"/api/v1/jobs/{job['id']}", d.admin_token).json()["job"]["history"]]
        # requirements.txt is in the code directory (used by default) or named: its environment serves every job
        assert {"job.environment_built", "job.environment_reused"} & set(history), (line, history)
        assert job["image"].startswith("mlpd/train"), (line, job["image"])
        if "--gpus 1" in line:
            assert job["gpus"]["count"] == 1 and len(job["gpus"]["uuids"]) == 1, (line, job["gpus"])
        if "--memory 16g" in line:
            assert spec["memory"] in ("16g", 16 * 2**30), (line, spec)
        if "--priority-class" in line:
            assert job["priority_class"] == line.split("--priority-class ")[1].split()[0], (line, job["priority_class"])
        if line.startswith("mlpd submit job.toml"):
            assert job["name"] == job_file["name"] and job["command"] == job_file["command"]
            assert job["gpus"]["count"] == job_file["gpus"] == 2 and len(set(job["gpus"]["uuids"])) == 2
            assert job["priority"] == job_file["priority"] and spec["env"].get("LR") == job_file["env"]["LR"]
        (mlflow_run,) = mlflow_runs_of(d, job["id"])
        params = {p["key"]: p["value"] for p in mlflow_run["data"].get("params", [])}
        expected = ({"epochs": "3", "lr": job_file["env"]["LR"]} if line.startswith("mlpd submit job.toml")
                    else {"epochs": "5", "lr": "0.1"})
        assert params == expected, (line, params)

    after = versions(d, project)
    assert len(after) == before + len(jobs), (len(after), before, len(jobs))
    assert {v["run_id"] for v in after} >= {mlflow_runs_of(d, j["id"])[0]["info"]["run_id"] for j in jobs.values()}


def test_an_optional_image_the_daemon_does_not_know_is_refused_before_any_build(readme_daemon):
    """`mlpd images build --with NAME` (the tour's `images` line) goes through the daemon: a name it does
    not know is a 400 with the known names, not a build that fails later."""
    d = readme_daemon
    refused = d.api("POST", "/api/v1/images/build", d.admin_token, params={"with": "pytorch,tensorflow"})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == {"code": "invalid_field", "message": "with: unknown optional image 'tensorflow': known are pytorch"}
    cli = subprocess.run([BIN, "images", "build", "--with", "tensorflow"], env=d.env(d.admin_token), capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and "'tensorflow'" in cli.stderr and "Traceback" not in cli.stderr
