"""Benchmark: how fast the `mlpd` CLI answers and how many authenticated API calls the daemon serves.

    .venv/bin/python bench/bench_cli_api.py [--threads 16] [--requests 3000] [--seconds 15] [--runs 20]

Starts its own daemon (temporary state directory, a free loopback port), creates a user on
the host, measures, stops the daemon, and prints one Markdown table:

- CLI start-up: median wall time and CPU time (user + system, steadier than wall time on a
  loaded machine) of `mlpd --help`, `mlpd -V`, `mlpd whoami`, `mlpd run --no-code` (a submit;
  the daemon declares one GPU and drains it, so the jobs queue and no container starts) and a
  host-side `mlpd admin user list --state-dir`, against `python -c pass` on the same interpreter.
- API: requests/s and p50/p99 latency of an authenticated GET /api/v1/whoami from N client
  threads (one requests.Session each), against GET /healthz (no token) with the same load.

Only loopback traffic.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

BIN = os.path.join(os.path.dirname(sys.executable), "mlpd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_cpu() -> float:
    """CPU seconds (user + system) used so far by this process's waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_wall(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of `argv` over runs (after one warm-up run), failing loudly if it fails."""
    times, cpu = [], []
    for i in range(runs + 1):
        started, cpu_before = time.perf_counter(), children_cpu()
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
        took, used = time.perf_counter() - started, children_cpu() - cpu_before
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {result.returncode}: {result.stderr}")
        if i:
            times.append(took)
            cpu.append(used)
    return statistics.median(times), statistics.median(cpu)


def load(url: str, headers: dict[str, str], threads: int, max_requests: int, max_seconds: float) -> dict[str, float]:
    """GET url from `threads` sessions until max_requests are done or max_seconds pass."""
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    def client() -> None:
        nonlocal issued
        session = requests.Session()
        session.headers.update(headers)
        mine = []
        while True:
            with lock:
                if issued >= max_requests or time.perf_counter() >= deadline:
                    break
                issued += 1
            started = time.perf_counter()
            resp = session.get(url, timeout=30)
            mine.append(time.perf_counter() - started)
            if resp.status_code != 200:
                errors.append(f"{resp.status_code} {resp.text[:200]}")
        session.close()
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} failed requests to {url}, e.g. {errors[0]}")
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def start_daemon(state: str, port: int, env: dict[str, str], log_path: str) -> subprocess.Popen:
    log = open(log_path, "wb")
    proc = subprocess.Popen([BIN, "daemon", "--state-dir", state, "--listen", f"127.0.0.1:{port}", "--declare-gpus", "1"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited {proc.returncode}; see {log_path}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json().get("worker") == "ok":
                return proc
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"the daemon did not become healthy in 60 s; see {log_path}")


def stop_daemon(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory (state and daemon log).")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="mlpd-bench-")
    home = os.path.join(tmp, "home")
    os.makedirs(home)
    state = os.path.join(tmp, "state")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
    env.update(HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    added = subprocess.run([BIN, "admin", "user", "add", "bench", "--admin", "--state-dir", state], env=env, capture_output=True, text=True, timeout=120)
    if added.returncode != 0:
        raise SystemExit(f"could not create the bench user: {added.stderr}")
    token = added.stdout.strip().splitlines()[-1]
    proc = start_daemon(state, port, env, os.path.join(tmp, "daemon.log"))
    rows: list[tuple[str, str, str, str]] = []
    try:
        user_env = {**env, "MLPD_URL": url, "MLPD_TOKEN": token}
        # the one declared GPU drained: `mlpd run --gpus 1` is a real submit that queues, and no container starts
        drained = subprocess.run([BIN, "admin", "gpus", "drain", "0", "--reason", "bench"], env=user_env, capture_output=True, text=True, timeout=60)
        if drained.returncode != 0:
            raise SystemExit(f"could not drain the declared GPU: {drained.stderr}")
        baseline, baseline_cpu = median_wall([sys.executable, "-c", "pass"], env, args.runs)
        for label, argv, run_env in (
            ("`mlpd --help`", [BIN, "--help"], env),
            ("`mlpd -V`", [BIN, "-V"], env),
            ("`mlpd whoami`", [BIN, "whoami"], user_env),
            ("`mlpd run --no-code --gpus 1 -- true` (submit; queued)", [BIN, "run", "--no-code", "--gpus", "1", "--", "true"], user_env),
            ("`mlpd admin user list --state-dir`", [BIN, "admin", "user", "list", "--state-dir", state], env),
        ):
            value, cpu = median_wall(argv, run_env, args.runs)
            rows.append((f"{label} wall time (median of {args.runs})", f"{value * 1000:.0f} ms", f"{baseline * 1000:.0f} ms (`python -c pass`)", f"{value / baseline:.1f}x"))
            rows.append((f"{label} CPU time (median of {args.runs})", f"{cpu * 1000:.0f} ms", f"{baseline_cpu * 1000:.0f} ms (`python -c pass`)", f"{cpu / baseline_cpu:.1f}x"))

        health = load(f"{url}/healthz", {}, args.threads, args.requests, args.seconds)
        whoami = load(f"{url}/api/v1/whoami", {"Authorization": f"Bearer {token}"}, args.threads, args.requests, args.seconds)
        base = f"GET /healthz, no token ({health['requests']} req)"
        rows.append((f"GET /api/v1/whoami req/s ({args.threads} threads, {whoami['requests']} req in {whoami['seconds']:.1f} s)",
                     f"{whoami['rps']:.0f}", f"{health['rps']:.0f} ({base})", f"{whoami['rps'] / health['rps']:.2f}x"))
        for q in ("p50", "p99"):
            rows.append((f"GET /api/v1/whoami latency {q}", f"{whoami[q] * 1000:.1f} ms", f"{health[q] * 1000:.1f} ms (/healthz)", f"{whoami[q] / health[q]:.2f}x"))
    finally:
        code = stop_daemon(proc)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    if code != 0:
        print(f"warning: the daemon exited {code} on SIGTERM", file=sys.stderr)

    print(f"mlpd bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, daemon on {url}"
          + (f", kept {tmp}" if args.keep else ""))
    print()
    print("| metric | value | baseline | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
