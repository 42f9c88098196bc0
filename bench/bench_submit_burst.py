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
import sys
import tempfile
import time
from pathlib import Path

import requests

from benchlib import SHIPPED_CONFIG, Daemon, docker, image_missing, log, parallel, print_table, ratio

COMMAND = ["sh", "-c", "echo $MLPD_JOB_ID >> /outputs/ran; echo ok"]
ACTIVE = ("queued", "starting", "running")


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank; nan when empty."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


# ---------------------------------------------------------------- the daemon under test


def config_text(reconcile_interval: float | None) -> str:
    """The shipped mlpd.toml, with scheduler.reconcile_interval set when one is given."""
    text = SHIPPED_CONFIG.read_text()
    if reconcile_interval is not None:
        text, n = re.subn(r"(?m)^reconcile_interval\s*=.*$", f"reconcile_interval = {reconcile_interval}", text)
        if n != 1:
            raise SystemExit(f"{SHIPPED_CONFIG} has no reconcile_interval line to change")
    return text


# ---------------------------------------------------------------- the load


def ok(resp: requests.Response) -> requests.Response:
    """resp, or an error for an answer other than 2xx."""
    if not 200 <= resp.status_code < 300:
        raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    return resp


def wait_finished(d: Daemon, ids: set[str], t0: float, timeout: float) -> tuple[float | None, dict[str, int]]:
    """Poll the state database until every job in ids has ended; (seconds since t0, or None on timeout; states)."""
    deadline = time.monotonic() + timeout
    last_log = 0.0
    while True:
        counts = d.state_counts()
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
        left = docker("ps", "-aq", "--filter", f"label=mlpd.instance={d.instance}", check=False).stdout.split()
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

    if image_missing():
        return 2
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-burst-"))
    d = Daemon(base, config_text(args.reconcile_interval))
    t_start = time.monotonic()
    with d.running(keep=args.keep):
        tokens = [d.add_user(f"bench{i}") for i in range(args.users)]
        log(f"daemon ready, instance {d.instance}; baseline: {args.jobs} GET /whoami from {args.threads} threads")

        base_run = parallel(d, args.jobs, args.threads, lambda s: ok(s.get(f"{d.api}/whoami", timeout=60)), tokens, check=True)

        log(f"submitting {args.jobs} jobs from {args.threads} threads as {args.users} users")
        sub = parallel(d, args.jobs, args.threads, lambda s: ok(s.post(f"{d.api}/jobs", json={"command": COMMAND}, timeout=60)), tokens)
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
        print_table(table)
        print()
        print(f"(total benchmark time {time.monotonic() - t_start:.0f} s; states {states})")
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}))
        return 0


if __name__ == "__main__":
    sys.exit(main())
