#!/usr/bin/env python3
"""Benchmark: a burst of job submissions from 16 client threads, until every job has finished.

    .venv/bin/python bench/bench_submit_burst.py [--jobs 300] [--threads 16] [--users 4] [--reconcile-interval S]

Everything runs in this one process against a daemon of its own (temporary state
directory, a free loopback port, the shipped mlpd.toml, optionally with another
scheduler.reconcile_interval); only loopback traffic. At the end (also on error) the
daemon is stopped, every container labelled with its instance id removed, and the
temporary directory deleted (--keep keeps it).

Baseline: the same threads (a warmed requests.Session each, as --users users) first do
authenticated GET /api/v1/whoami --jobs times in all: a request that passes the same
token check and writes nothing. Then they POST --jobs short jobs
(`sh -c 'echo $MLPD_JOB_ID >> /outputs/ran; echo ok'`, no GPUs) as fast as the daemon
answers, and the script polls the state database (read-only) until every accepted job
has ended.

Reported: jobs accepted (2xx) per second and the client-side p50/p99 submit latency, as
ratios to the whoami baseline; time from the first submission until every job has ended
(seen by the poll, and by the daemon's own ended_at); lost and failed jobs; and jobs
that ran twice or never (each job's /outputs/ran must have exactly one line). A JSON
line with every figure ends the output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

BIN = os.path.join(os.path.dirname(sys.executable), "mlpd")
IMAGE = "mlpd/train:latest"
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "mlpd.toml"
COMMAND = ["sh", "-c", "echo $MLPD_JOB_ID >> /outputs/ran; echo ok"]
ACTIVE = ("queued", "starting", "running")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank; nan when empty."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def ratio(a: float, b: float) -> float:
    return a / b if b and a == a and b == b else float("nan")


# ---------------------------------------------------------------- the daemon under test


class Daemon:
    def __init__(self, base: Path, reconcile_interval: float | None):
        self.base = base
        self.state_dir = base / "state"
        self.home = base / "home"
        self.home.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/api/v1"
        self.log_path = base / "daemon.log"
        self.config = base / "mlpd.toml"
        text = SHIPPED_CONFIG.read_text()
        if reconcile_interval is not None:
            text, n = re.subn(r"(?m)^reconcile_interval\s*=.*$", f"reconcile_interval = {reconcile_interval}", text)
            if n != 1:
                raise SystemExit(f"{SHIPPED_CONFIG} has no reconcile_interval line to change")
        self.config.write_text(text)
        self.proc: subprocess.Popen | None = None
        self.instance = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
        env["HOME"] = str(self.home)
        env["XDG_CONFIG_HOME"] = str(self.home / ".config")
        return env

    def start(self, timeout: float = 90) -> None:
        argv = [BIN, "daemon", "--config", str(self.config), "--state-dir", str(self.state_dir), "--listen", f"127.0.0.1:{self.port}"]
        self.log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log_fh, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).json().get("worker") == "ok":
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"daemon did not become healthy:\n{self.log_tail()}")
        self.instance = (self.state_dir / "instance_id").read_text().strip()

    def add_user(self, name: str) -> str:
        result = subprocess.run([BIN, "admin", "user", "add", name, "--state-dir", str(self.state_dir)],
                                capture_output=True, text=True, env=self.env(), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"admin user add {name} failed: {result.stderr}")
        return result.stdout.strip().splitlines()[-1]

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def query(self, sql: str, params=()) -> list[tuple]:
        """Read the state database (read-only; the API lists at most 10,000 rows and costs the daemon)."""
        con = sqlite3.connect(f"file:{self.state_dir / 'mlpd.db'}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()


# ---------------------------------------------------------------- the load


def burst(d: Daemon, tokens: list[str], n: int, threads: int, request) -> dict:
    """n requests from `threads` threads (a warmed Session each, tokens round-robin); latencies and outcomes."""
    sessions = []
    for i in range(threads):
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {tokens[i % len(tokens)]}"
        s.get(f"{d.api}/whoami", timeout=30).raise_for_status()  # connect before the clock starts
        sessions.append(s)
    lock = threading.Lock()
    counter = iter(range(n))
    barrier = threading.Barrier(threads + 1)
    latencies: list[float] = []
    results: list = []
    errors: list[str] = []

    def client(s: requests.Session) -> None:
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                resp = request(s)
            except requests.RequestException as exc:
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t
            with lock:
                if 200 <= resp.status_code < 300:
                    latencies.append(dt)
                    results.append(resp)
                else:
                    errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")

    pool = [threading.Thread(target=client, args=(s,)) for s in sessions]
    for t in pool:
        t.start()
    started_wall = time.time()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in sessions:
        s.close()
    return {"elapsed": elapsed, "started_wall": started_wall, "t0": t0, "latencies": latencies, "results": results, "errors": errors}


def wait_finished(d: Daemon, ids: set[str], t0: float, timeout: float) -> tuple[float | None, dict[str, int]]:
    """Poll the state database until every job in ids has ended; (seconds since t0, or None on timeout; states)."""
    deadline = time.monotonic() + timeout
    last_log = 0.0
    while True:
        counts = dict(d.query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        done = sum(v for k, v in counts.items() if k not in ACTIVE)
        if done >= len(ids) and not any(counts.get(k) for k in ACTIVE):
            return time.perf_counter() - t0, counts
        if time.monotonic() > deadline:
            return None, counts
        if time.monotonic() - last_log > 10:
            log(f"waiting for jobs to end: {counts}")
            last_log = time.monotonic()
        time.sleep(0.25)


def settle(d: Daemon, timeout: float = 30) -> int:
    """Wait until the daemon's job containers are gone (a second container of an ended job may still
    be about to write its ran file); return how many are left."""
    deadline = time.monotonic() + timeout
    while True:
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.instance={d.instance}"], capture_output=True, text=True).stdout.split()
        if not left or time.monotonic() > deadline:
            return len(left)
        time.sleep(0.5)


def ran_counts(d: Daemon, ids: set[str]) -> dict[str, int]:
    """How many jobs ran never (no ran file), once and more than once, from their /outputs/ran files."""
    out = {"never": 0, "once": 0, "twice_or_more": 0}
    for job_id in ids:
        try:
            lines = (d.state_dir / "jobs" / job_id / "outputs" / "ran").read_text().splitlines()
        except FileNotFoundError:
            out["never"] += 1
            continue
        out["once" if len(lines) == 1 else "twice_or_more" if len(lines) > 1 else "never"] += 1
    return out


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=300, help="jobs submitted in the burst (and whoami requests in the baseline)")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--users", type=int, default=4, help="the threads submit as this many users")
    ap.add_argument("--reconcile-interval", type=float, default=None, help="scheduler.reconcile_interval (default: the shipped mlpd.toml's)")
    ap.add_argument("--finish-timeout", type=float, default=900, help="seconds to wait for every job to end")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (state and daemon log)")
    args = ap.parse_args()

    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        print(f"error: image {IMAGE} is missing (mlpd images build --local)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-burst-"))
    d = Daemon(base, args.reconcile_interval)
    t_start = time.monotonic()
    try:
        log(f"starting daemon on {d.url} (state {d.state_dir})")
        d.start()
        tokens = [d.add_user(f"bench{i}") for i in range(args.users)]
        log(f"daemon ready, instance {d.instance}; baseline: {args.jobs} GET /whoami from {args.threads} threads")

        base_run = burst(d, tokens, args.jobs, args.threads, lambda s: s.get(f"{d.api}/whoami", timeout=60))
        if base_run["errors"]:
            raise RuntimeError(f"{len(base_run['errors'])} whoami requests failed, e.g. {base_run['errors'][0]}")

        log(f"submitting {args.jobs} jobs from {args.threads} threads as {args.users} users")
        sub = burst(d, tokens, args.jobs, args.threads, lambda s: s.post(f"{d.api}/jobs", json={"command": COMMAND}, timeout=60))
        ids = {r.json()["job"]["id"] for r in sub["results"]}
        log(f"{len(ids)} accepted in {sub['elapsed']:.1f}s ({len(sub['errors'])} errors); waiting for them to end")
        finished, counts = wait_finished(d, ids, sub["t0"], args.finish_timeout)

        rows = d.query(f"SELECT id, state, submitted_at, ended_at FROM jobs WHERE id IN ({','.join('?' * len(ids))})", sorted(ids)) if ids else []
        states: dict[str, int] = {}
        for _, state, _, _ in rows:
            states[state] = states.get(state, 0) + 1
        ended = [r[3] for r in rows if r[3] is not None]
        daemon_span = (max(ended) - sub["started_wall"]) if ended else float("nan")
        left = settle(d)
        ran = ran_counts(d, ids)
        sub_lat, base_lat = sub["latencies"], base_run["latencies"]
        figures = {
            "jobs": args.jobs, "threads": args.threads, "users": args.users, "cpus": os.cpu_count(),
            "reconcile_interval": args.reconcile_interval,
            "accepted": len(ids), "submit_errors": len(sub["errors"]),
            "accepted_per_s": len(ids) / sub["elapsed"], "whoami_per_s": len(base_lat) / base_run["elapsed"],
            "submit_p50_ms": pct(sub_lat, 0.5) * 1000, "submit_p99_ms": pct(sub_lat, 0.99) * 1000,
            "whoami_p50_ms": pct(base_lat, 0.5) * 1000, "whoami_p99_ms": pct(base_lat, 0.99) * 1000,
            "all_finished_s": finished, "all_ended_at_s": daemon_span,
            "states": states, "lost": states.get("lost", 0), "failed": states.get("failed", 0),
            "not_ended": sum(states.get(k, 0) for k in ACTIVE),
            "ran_never": ran["never"], "ran_twice_or_more": ran["twice_or_more"], "containers_left": left,
        }
        figures["rate_ratio"] = ratio(figures["accepted_per_s"], figures["whoami_per_s"])
        figures["p50_ratio"] = ratio(figures["submit_p50_ms"], figures["whoami_p50_ms"])
        figures["p99_ratio"] = ratio(figures["submit_p99_ms"], figures["whoami_p99_ms"])
        if sub["errors"]:
            log(f"submit errors, e.g. {sub['errors'][:3]}")

        f = figures
        fin = "did not finish" if finished is None else f"{finished:.1f} s"
        table = [
            (f"jobs accepted per second ({f['accepted']}/{args.jobs} got 2xx, {args.threads} threads)", f"{f['accepted_per_s']:.1f} jobs/s",
             f"GET /whoami: {f['whoami_per_s']:.1f} req/s", f"{f['rate_ratio']:.2f}x"),
            ("POST /jobs latency p50", f"{f['submit_p50_ms']:.1f} ms", f"GET /whoami: {f['whoami_p50_ms']:.1f} ms", f"{f['p50_ratio']:.2f}x"),
            ("POST /jobs latency p99", f"{f['submit_p99_ms']:.1f} ms", f"GET /whoami: {f['whoami_p99_ms']:.1f} ms", f"{f['p99_ratio']:.2f}x"),
            ("first submit → every job ended (poll / daemon's last ended_at)", f"{fin} / {f['all_ended_at_s']:.1f} s", "—", "—"),
            ("jobs lost / failed / not ended", f"{f['lost']} / {f['failed']} / {f['not_ended']}", "0 / 0 / 0", "—"),
            ("jobs that ran twice or more / never (their /outputs/ran)", f"{f['ran_twice_or_more']} / {f['ran_never']}", "0 / 0", "—"),
            ("job containers left 30 s after the last job ended", f"{f['containers_left']}", "0", "—"),
        ]
        print(f"mlpd submit-burst bench: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, daemon on {d.url}, "
              f"reconcile_interval {args.reconcile_interval if args.reconcile_interval is not None else 'as shipped'}"
              + (f", kept {base}" if args.keep else ""))
        print()
        print("| metric | value | baseline | ratio |")
        print("|---|---|---|---|")
        for row in table:
            print("| " + " | ".join(row) + " |")
        print()
        print(f"(total benchmark time {time.monotonic() - t_start:.0f} s; states {states})")
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}))
        return 0
    except BaseException:
        log("benchmark failed; daemon log tail:\n" + d.log_tail())
        raise
    finally:
        code = d.stop()
        if code not in (0, None):
            log(f"warning: the daemon exited {code} on SIGTERM")
        if not d.instance:
            try:
                d.instance = (d.state_dir / "instance_id").read_text().strip()
            except OSError:
                pass
        if d.instance:
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.instance={d.instance}"], capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
                log(f"removed {len(ids)} leftover containers")
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
