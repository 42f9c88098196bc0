#!/usr/bin/env python3
"""Benchmark: from install to the first tracked run of the README's scikit-learn example, by phase,
against `docker run` of the same image and script with MLflow on a local file store.

    .venv/bin/python bench/bench_first_run.py [--rounds 3] [--install]

The user's path after install.sh, taken from README.md as written (the blocks marked
`<!-- example: train.py -->` and `<!-- example: first-run.sh -->`): in a new directory holding
train.py, `mlpd login URL` (the token on standard input, as pasted), then
`mlpd run -f -- python train.py --epochs 3`. The run is tracked once MLflow has it FINISHED with its
model version READY. Each round starts a daemon of its own (a fresh state directory, as after
install.sh: the first /mlflow request of a daemon loads MLflow into its web worker, which is part of
a first run) and creates the first admin on the host, as install.sh does.

Phases (the daemon's and MLflow's timestamps; one host clock):
  daemon start       `mlpd daemon` launched -> /healthz answers with its worker (install.sh's last step)
  first admin        `mlpd admin user add NAME --admin --state-dir` (install.sh prints its token)
  login              `mlpd login URL` wall time
  submit             `mlpd run` launched -> the job's submitted_at (CLI start, packing, upload, POST)
  scheduled+started  submitted_at -> started_at (the wake, placement, container create + start)
  to first MLflow    started_at -> the run's start_time (Python, imports, the first /mlflow calls)
  run                the run's start_time -> end_time (training, logging, log_model + registration)
  exit               end_time -> the job's ended_at;  CLI returns: ended_at -> `mlpd run -f` exits
Then the same `mlpd run` once more on the same daemon ("second run"): what is left once MLflow is
loaded in the daemon's web workers.
Baseline, interleaved: `docker run --rm` (launched -> the run's start_time is its
"submit -> first MLflow") of mlpd/train:latest with the same train.py mounted at /code,
uid 1000, MLFLOW_TRACKING_URI=file:///mlruns on a host directory (MLFLOW_ALLOW_FILE_STORE=true:
MLflow 3.17 refuses a file store otherwise; the image's mlflow-skinny has no SQL store), with the
same phases from the run's meta.yaml.

--install adds the phases of a fresh install that can be taken on a host whose engine and images
others use: a new venv with mlpd (`pip install --no-cache-dir` of this checkout, with this host's pip
configuration), then `mlpd images build --local` of a config naming bench-only tags (a new
debootstrap base `mlpd/base:bench-PID`, then `mlpd-bench/train` and `mlpd-bench/workspace` built from
it, so no layer comes from a cache), each line timed; those three tags are removed at the end.
Not measured: installing the Docker engine itself (apt's docker.io), present and shared here.
Nothing else is removed: not mlpd's images, not other containers, not the engine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


import benchlib
from benchlib import BIN, IMAGE, SHIPPED_CONFIG, Daemon, docker, log, median, ratio, times

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
README_URL = "http://127.0.0.1:8470"
MODEL = "iris-classifier"


def example(name: str) -> str:
    """The body of the README block marked <!-- example: NAME -->."""
    match = re.search(rf"^<!-- example: {re.escape(name)} -->\n```\w*\n(.*?)^```", README, re.S | re.M)
    if not match:
        raise SystemExit(f"error: README.md has no block marked <!-- example: {name} -->")
    return match.group(1)


def first_run_lines() -> tuple[str, str]:
    """The README's login and run lines (first-run.sh), without their comments."""
    lines = [line.split("  #", 1)[0].strip() for line in example("first-run.sh").splitlines() if line.startswith("mlpd ")]
    login = next(line for line in lines if line.split()[1] == "login")
    run = next(line for line in lines if line.split()[1] == "run")
    return login, run


def argv_of(line: str, url: str) -> list[str]:
    words = line.replace(README_URL, url).split()
    return [BIN, *words[1:]]


def mlflow_run_of(d: Daemon, token: str, job_id: str) -> dict | None:
    s = d.session(token)
    api = d.url + "/mlflow/api/2.0/mlflow/"
    experiments = s.get(api + "experiments/search", params={"max_results": 1000}, timeout=30).json().get("experiments", [])
    body = {"experiment_ids": [e["experiment_id"] for e in experiments], "filter": f"tags.`mlpd.job_id` = '{job_id}'"}
    runs = s.post(api + "runs/search", json=body, timeout=30).json().get("runs", [])
    return runs[0] if runs else None


def tracked_run(d: Daemon, token: str, env: dict, workdir: Path, run_line: str) -> dict[str, float]:
    """`mlpd run -f` of the README's line, waited for until its MLflow run is FINISHED and its model version READY."""
    launched = time.time()
    run = subprocess.run(argv_of(run_line, d.url), capture_output=True, text=True, env=env, cwd=workdir, timeout=900)
    returned = time.time()
    if run.returncode != 0:
        raise RuntimeError(f"{run_line}: {run.stderr}")
    job_id = re.search(r"submitted job (\S+) ", run.stderr).group(1)
    job = d.session(token).get(f"{d.api}/jobs/{job_id}", timeout=30).json()["job"]
    if job["state"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['state']}: {job['reason']}\n{run.stdout[-2000:]}")
    mlflow_run = mlflow_run_of(d, token, job_id)
    if not mlflow_run or mlflow_run["info"]["status"] != "FINISHED":
        raise RuntimeError(f"job {job_id}: no finished MLflow run ({mlflow_run})")
    versions = d.session(token).get(d.url + "/mlflow/api/2.0/mlflow/model-versions/search",
                                    params={"filter": f"name = '{MODEL}'"}, timeout=30).json().get("model_versions", [])
    if not any(v["run_id"] == mlflow_run["info"]["run_id"] and v["status"] == "READY" for v in versions):
        raise RuntimeError(f"job {job_id}: no READY version of {MODEL} ({versions})")
    run_start, run_end = mlflow_run["info"]["start_time"] / 1000, mlflow_run["info"]["end_time"] / 1000
    return {"launched": launched, "submit": job["submitted_at"] - launched, "scheduled+started": job["started_at"] - job["submitted_at"],
            "to first MLflow": run_start - job["started_at"], "submit -> first MLflow": run_start - launched,
            "run": run_end - run_start, "exit": job["ended_at"] - run_end, "CLI returns": returned - job["ended_at"],
            "submit -> run tracked": run_end - launched, "submit -> CLI returns": returned - launched}


def mlpd_round(workdir: Path) -> dict[str, float]:
    """One new user's first tracked run on a freshly started daemon; phases in seconds."""
    login_line, run_line = first_run_lines()
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-first-"))
    d = Daemon(base, config_text=SHIPPED_CONFIG.read_text())
    out: dict[str, float] = {}
    t0 = time.time()
    with d.running():
        out["daemon start"] = time.time() - t0
        t = time.time()
        token = d.add_user("admin", admin=True)
        out["first admin"] = time.time() - t
        env = d.env()  # a stored login, as a user has: no MLPD_URL/MLPD_TOKEN
        start = time.time()
        login = subprocess.run(argv_of(login_line, d.url), input=token + "\n", capture_output=True, text=True, env=env, cwd=workdir, timeout=120)
        if login.returncode != 0:
            raise RuntimeError(f"{login_line}: {login.stderr}")
        out["login"] = time.time() - start
        first = tracked_run(d, token, env, workdir, run_line)
        out.update(first)
        out["login -> run tracked"] = first["submit -> run tracked"] + (first["launched"] - start)
        # the same again on the same daemon: MLflow is loaded in its web worker now
        second = tracked_run(d, token, env, workdir, run_line)
        for key in ("to first MLflow", "submit -> first MLflow", "run", "submit -> run tracked"):
            out[f"{key}, second run"] = second[key]
    return out


def baseline_round(workdir: Path) -> dict[str, float]:
    """`docker run` of the same image and script, MLflow on a local file store; phases in seconds."""
    store = Path(tempfile.mkdtemp(prefix="mlpd-bench-mlruns-"))
    store.chmod(0o777)
    name = f"mlpd-bench-first-{os.getpid()}-{time.monotonic_ns()}"
    try:
        _, run_line = first_run_lines()
        command = run_line.split(" -- ", 1)[1].split()
        launched = time.time()
        result = docker("run", "--rm", "--name", name, "--user", "1000:1000", "-v", f"{workdir}:/code:ro", "-w", "/code",
                        "-v", f"{store}:/mlruns", "-e", "MLFLOW_TRACKING_URI=file:///mlruns", "-e", "MLFLOW_ALLOW_FILE_STORE=true",
                        "-e", "MLFLOW_EXPERIMENT_NAME=first-run", IMAGE, *command, check=False, timeout=900)
        returned = time.time()
        if result.returncode != 0:
            raise RuntimeError(f"baseline docker run failed: {result.stderr[-2000:]}")
        metas = [p for p in store.glob("*/*/meta.yaml") if p.parent.name not in ("models", ".trash") and p.parent.parent.name != "models"]
        meta = next(p.read_text() for p in metas if "run_id:" in p.read_text())
        start = int(re.search(r"^start_time: (\d+)", meta, re.M).group(1)) / 1000
        end = int(re.search(r"^end_time: (\d+)", meta, re.M).group(1)) / 1000
        if not (store / "models" / MODEL / "version-1" / "meta.yaml").exists():
            raise RuntimeError("baseline: no registered model version in the file store")
        return {"submit -> first MLflow": start - launched, "run": end - start, "exit": returned - end,
                "submit -> run tracked": end - launched, "submit -> CLI returns": returned - launched}
    finally:
        docker("rm", "-f", name, check=False)
        shutil.rmtree(store, ignore_errors=True)


def install_phases() -> list[tuple[str, float]]:
    """The measurable phases of a fresh install: a venv with mlpd, then mlpd's images from a new base."""
    tmp = Path(tempfile.mkdtemp(prefix="mlpd-bench-install-"))
    tag = f"bench-{os.getpid()}"
    images = [f"mlpd/base:{tag}", f"mlpd-bench/train:{tag}", f"mlpd-bench/workspace:{tag}"]
    phases: list[tuple[str, float]] = []
    try:
        start = time.time()
        subprocess.run([sys.executable, "-m", "venv", str(tmp / "venv")], check=True)
        log("pip install of this checkout into a new venv (no pip cache)")
        pip = subprocess.run([str(tmp / "venv/bin/pip"), "install", "-q", "--no-cache-dir", str(ROOT)], capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError(f"pip install failed: {pip.stderr[-2000:]}")
        phases.append(("venv + `pip install` of mlpd", time.time() - start))
        config = tmp / "mlpd.toml"
        text = SHIPPED_CONFIG.read_text()
        for shipped, ours in (('base = "mlpd/base:bookworm"', images[0]), ('default_image = "mlpd/train:latest"', images[1]),
                              ('image = "mlpd/workspace:latest"', images[2])):
            assert text.count("\n" + shipped) == 1, shipped
            text = text.replace("\n" + shipped, "\n" + shipped.split(" = ")[0] + f' = "{ours}"')
        config.write_text(text)
        log(f"mlpd images build --local with bench tags {', '.join(images)}")
        proc = subprocess.Popen([str(tmp / "venv/bin/mlpd"), "images", "build", "--local", "--config", str(config)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        mark, current = time.time(), "base image: debootstrap + docker import"
        for line in proc.stdout:
            line = line.rstrip()
            for image, label in ((images[1], "training image build (pip: numpy, pandas, scikit-learn, scipy, matplotlib, MLflow client)"),
                                 (images[2], "workspace image build (JupyterLab, papermill, openssh-server)")):
                if line.startswith(f"{image}: building"):
                    phases.append((current, time.time() - mark))
                    mark, current = time.time(), label
        if proc.wait() != 0:
            raise RuntimeError("mlpd images build failed")
        phases.append((current, time.time() - mark))
        phases.append(("total of the above", time.time() - start))
        return phases
    finally:
        present = [i for i in images if docker("image", "inspect", i, check=False).returncode == 0]
        if present:
            docker("image", "rm", *reversed(present), check=False, timeout=300)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of mlpd and the baseline (default 3)")
    parser.add_argument("--install", action="store_true", help="also time a venv install and mlpd's image builds from a new base (many minutes)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if benchlib.image_missing():
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="mlpd-bench-project-"))
    workdir.chmod(0o755)
    (workdir / "train.py").write_text(example("train.py"))
    (workdir / "train.py").chmod(0o644)
    mlpd_rounds: list[dict[str, float]] = []
    base_rounds: list[dict[str, float]] = []
    try:
        for i in range(args.rounds):
            order = (mlpd_round, baseline_round) if i % 2 == 0 else (baseline_round, mlpd_round)
            for fn in order:
                log(f"round {i + 1}: {fn.__name__}")
                (mlpd_rounds if fn is mlpd_round else base_rounds).append(fn(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(rounds: list[dict[str, float]], key: str) -> float:
        return median([r[key] for r in rounds if key in r])

    def sec(x: float) -> str:
        return "—" if x != x else f"{x:.2f} s"

    print(f"\nFirst tracked run of the README's scikit-learn example (median of {args.rounds} rounds, a fresh daemon each):\n")
    print("| phase | mlpd | baseline (`docker run`, MLflow file store) | ratio |")
    print("|---|---|---|---|")
    for key in ("daemon start", "first admin", "login", "submit", "scheduled+started", "to first MLflow", "submit -> first MLflow", "run", "exit", "CLI returns",
                "submit -> run tracked", "submit -> CLI returns", "login -> run tracked",
                "to first MLflow, second run", "submit -> first MLflow, second run", "run, second run", "submit -> run tracked, second run"):
        m, b = med(mlpd_rounds, key), med(base_rounds, key.replace(", second run", ""))
        print(f"| {key} | {sec(m)} | {sec(b)} | {times(ratio(m, b)) if b == b else '—'} |")
    print("\nper round (mlpd submit -> run tracked / baseline):",
          ", ".join(f"{r['submit -> run tracked']:.2f}/{b['submit -> run tracked']:.2f} s" for r, b in zip(mlpd_rounds, base_rounds, strict=True)))
    if args.install:
        phases = install_phases()
        print("\nFresh-install phases on this host (one run; the Docker engine's own install not included):\n")
        print("| phase | time |")
        print("|---|---|")
        for label, seconds in phases:
            print(f"| {label} | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
