"""Benchmark: MLflow logging through mlpd's embedded server against a stock `mlflow server`.

    .venv/bin/python bench/bench_mlflow.py [--rounds 3] [--seconds 8] [--batch 1000] [--with-job-runner]

Starts, on loopback ports with temporary directories:

- an mlpd daemon (the shipped mlpd.toml; MLflow mounted in its gunicorn workers, behind a token), and
- a stock `mlflow server --backend-store-uri sqlite:///... --host 127.0.0.1 --port P` as a user would
  start it (MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false; with --with-job-runner a second stock server with
  the job runner on is started for the memory comparison only).

Then, alternating between the two servers for --rounds rounds, with the real MLflow client
(one thread, as a training loop logs):

- single `log_metric` calls per second (for --seconds, at most 2,000 calls), and
- metrics per second with `log_batch` (batches of --batch metrics, for --seconds, at most 50 batches).

Memory is the resident set (RSS) summed over each server's whole process tree (mlpd: the
daemon, gunicorn's master and workers, and the worker process), at idle and after the runs.
Prints one Markdown table with medians and ratios. Only loopback traffic; bounded loops.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_DIR = os.path.dirname(sys.executable)
MAX_SINGLE = 2000
MAX_BATCHES = 50


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_rss(pid: int) -> int:
    """Bytes resident in pid and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    page = os.sysconf("SC_PAGE_SIZE")
    while todo:
        current = todo.pop()
        try:
            with open(f"/proc/{current}/statm") as fh:
                total += int(fh.read().split()[1]) * page
        except OSError:
            pass
        todo += children.get(current, [])
    return total


def wait_http(url: str, proc: subprocess.Popen, log_path: str, timeout: float = 120, check=lambda r: r.status_code == 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited {proc.returncode}; see {log_path}")
        try:
            if check(requests.get(url, timeout=2)):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.3)
    raise SystemExit(f"{url} did not answer in {timeout:.0f} s; see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_mlpd(tmp: str, env: dict[str, str]) -> tuple[subprocess.Popen, str, str]:
    state = os.path.join(tmp, "mlpd-state")
    added = subprocess.run([os.path.join(BIN_DIR, "mlpd"), "admin", "user", "add", "bench", "--state-dir", state],
                           env=env, capture_output=True, text=True, timeout=120)
    if added.returncode != 0:
        raise SystemExit(f"could not create the bench user: {added.stderr}")
    token = added.stdout.strip().splitlines()[-1]
    port = free_port()
    log_path = os.path.join(tmp, "mlpd.log")
    proc = subprocess.Popen([os.path.join(BIN_DIR, "mlpd"), "daemon", "--state-dir", state, "--listen", f"127.0.0.1:{port}",
                             "--config", os.path.join(ROOT, "mlpd.toml")],
                            env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", proc, log_path, check=lambda r: r.json().get("worker") == "ok")
    return proc, url, token


def start_stock(tmp: str, env: dict[str, str], name: str, job_runner: bool) -> tuple[subprocess.Popen, str]:
    directory = os.path.join(tmp, name)
    os.makedirs(directory)
    port = free_port()
    log_path = os.path.join(tmp, f"{name}.log")
    proc = subprocess.Popen([os.path.join(BIN_DIR, "mlflow"), "server", "--backend-store-uri", f"sqlite:///{directory}/mlflow.db",
                             "--host", "127.0.0.1", "--port", str(port)],
                            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if job_runner else "false"}, cwd=directory,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", proc, log_path, timeout=180)
    return proc, url


def new_run(client, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return client.create_run(experiment_id).info.run_id


def single_calls(client, run_id: str, seconds: float) -> float:
    """log_metric calls per second, one at a time."""
    calls, started = 0, time.perf_counter()
    while calls < MAX_SINGLE and time.perf_counter() - started < seconds:
        client.log_metric(run_id, "loss", 1.0 / (calls + 1), step=calls)
        calls += 1
    return calls / (time.perf_counter() - started)


def batched(client, run_id: str, seconds: float, size: int) -> float:
    """Metrics per second through log_batch."""
    from mlflow.entities import Metric

    batches, started = 0, time.perf_counter()
    now = int(time.time() * 1000)
    while batches < MAX_BATCHES and time.perf_counter() - started < seconds:
        metrics = [Metric(f"m{i % 10}", float(i), now, batches * size + i) for i in range(size)]
        client.log_batch(run_id, metrics=metrics)
        batches += 1
    return batches * size / (time.perf_counter() - started)


def warm(client, run_id: str, calls: int = 20) -> None:
    """First requests load MLflow in each mlpd worker (seconds); keep them out of the numbers."""
    for i in range(calls):
        client.log_metric(run_id, "warmup", float(i))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--with-job-runner", action="store_true", help="Also measure the memory of a stock server with its job runner on.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (state and logs).")
    args = parser.parse_args()

    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    tmp = tempfile.mkdtemp(prefix="mlpd-bench-mlflow-")
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLPD_", "MLFLOW_"))}
    env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"), MLFLOW_DISABLE_TELEMETRY="true")
    procs: list[subprocess.Popen] = []
    rows: list[tuple[str, str, str, str]] = []
    try:
        mlpd_proc, mlpd_url, token = start_mlpd(tmp, env)
        procs.append(mlpd_proc)
        stock_proc, stock_url = start_stock(tmp, env, "stock", job_runner=False)
        procs.append(stock_proc)
        time.sleep(3)
        idle = {"mlpd": tree_rss(mlpd_proc.pid), "stock": tree_rss(stock_proc.pid)}

        os.environ.update(MLFLOW_TRACKING_TOKEN=token, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_DISABLE_TELEMETRY="true")
        from mlflow import MlflowClient

        clients = {"mlpd": MlflowClient(f"{mlpd_url}/mlflow"), "stock": MlflowClient(stock_url)}
        runs = {name: new_run(c, "bench") for name, c in clients.items()}
        for name, c in clients.items():
            warm(c, runs[name])
        single: dict[str, list[float]] = {"mlpd": [], "stock": []}
        batch: dict[str, list[float]] = {"mlpd": [], "stock": []}
        for r in range(args.rounds):
            order = ("stock", "mlpd") if r % 2 == 0 else ("mlpd", "stock")
            for name in order:
                single[name].append(single_calls(clients[name], runs[name], args.seconds))
            for name in order:
                batch[name].append(batched(clients[name], runs[name], args.seconds, args.batch))
            print(f"round {r + 1}: single {single['mlpd'][-1]:.0f} vs {single['stock'][-1]:.0f} calls/s; "
                  f"batch {batch['mlpd'][-1]:.0f} vs {batch['stock'][-1]:.0f} metrics/s", file=sys.stderr)
        after = {"mlpd": tree_rss(mlpd_proc.pid), "stock": tree_rss(stock_proc.pid)}

        s_m, s_s = statistics.median(single["mlpd"]), statistics.median(single["stock"])
        b_m, b_s = statistics.median(batch["mlpd"]), statistics.median(batch["stock"])
        rows.append((f"single `log_metric` calls/s (1 thread, median of {args.rounds})", f"{s_m:.0f}", f"{s_s:.0f}", f"{s_m / s_s:.1f}x"))
        rows.append((f"metrics/s with `log_batch` ({args.batch} per batch, median of {args.rounds})", f"{b_m:,.0f}", f"{b_s:,.0f}", f"{b_m / b_s:.2f}x"))
        mib = 1024 * 1024
        rows.append(("RSS of the whole process tree, idle", f"{idle['mlpd'] / mib:.0f} MiB (whole mlpd daemon)",
                     f"{idle['stock'] / mib:.0f} MiB", f"{idle['mlpd'] / idle['stock']:.2f}x"))
        rows.append(("RSS of the whole process tree, after the runs", f"{after['mlpd'] / mib:.0f} MiB (whole mlpd daemon)",
                     f"{after['stock'] / mib:.0f} MiB", f"{after['mlpd'] / after['stock']:.2f}x"))
        if args.with_job_runner:
            stop(stock_proc)
            runner_proc, runner_url = start_stock(tmp, env, "stock-job-runner", job_runner=True)
            procs.append(runner_proc)
            time.sleep(5)
            runner = tree_rss(runner_proc.pid)
            rows.append(("RSS, stock server with its job runner on (idle)", f"{after['mlpd'] / mib:.0f} MiB (mlpd after the runs)",
                         f"{runner / mib:.0f} MiB", f"{after['mlpd'] / runner:.2f}x"))
    finally:
        for proc in procs:
            stop(proc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"mlflow bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, load average at the start {load_start}, "
          f"at the end {load}" + (f", kept {tmp}" if args.keep else ""))
    print()
    print("| metric | mlpd (embedded, behind a token) | stock `mlflow server` (SQLite) | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
