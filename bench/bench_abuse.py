#!/usr/bin/env python3
"""Benchmark: the daemon keeps serving one user while others abuse its connections (issue 22).

    .venv/bin/python bench/bench_abuse.py [--followers 200] [--slow 500] [--attackers 10] [--seconds 5] [--front none] [--keep]

A daemon of its own (temporary state directory, a free loopback port, the shipped mlpd.toml).
--attackers users each run a silent job (`sleep 600`) and together open --followers log
streams (GET /jobs/ID/logs?follow=1, read nothing), while --slow more connections send one
byte of a request and then nothing. Meanwhile another user calls GET /api/v1/whoami back to
back for --seconds. Then every abusive client goes away at once.

Baseline: the same whoami loop on the same daemon before any abuse.

Reported: whoami p50/p99 under abuse against the baseline; how the followers were answered
(200 streams, 429 refusals, or nothing within 5 s); after the clients have gone, the latency of
the first whoami and /healthz, the slowest of a burst of concurrent whoami calls (as many as the
daemon has web threads) started one second later, and how many of 8 new log streams open then
(their slots and threads are back); the load average (1, 5, 15 min) at each phase. A JSON line with every figure ends the output.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from benchlib import SHIPPED_CONFIG, Daemon, image_missing, log, print_table, ratio

SERVER_THREADS = 2 * 16  # server.workers x server.threads in the shipped mlpd.toml


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (0..1) of xs by nearest rank; nan when empty."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def load() -> str:
    """The load average as "1.23 0.98 0.50"."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def whoami_loop(url: str, token: str, seconds: float) -> tuple[list[float], int]:
    """Back-to-back GET /api/v1/whoami for seconds: (latencies of those answered 200, failures)."""
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    lat, failed = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        try:
            ok = s.get(url + "/api/v1/whoami", timeout=5).status_code == 200
        except requests.RequestException:
            ok = False
        if ok:
            lat.append(time.monotonic() - t)
        else:
            failed += 1
    return lat, failed


def timed_get(url: str, token: str | None = None) -> float:
    """Seconds one GET took (inf when it failed or did not answer 200 within 5 s)."""
    t = time.monotonic()
    try:
        r = requests.get(url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=5)
        return time.monotonic() - t if r.status_code == 200 else math.inf
    except requests.RequestException:
        return math.inf


def open_follower(port: int, path: str, token: str) -> socket.socket:
    """A client that asks to follow a log and then reads nothing (until it goes away)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return s


def status_of(s: socket.socket) -> str:
    """The status code a follower got ("200", "429", ...), or "none" within 5 s."""
    s.settimeout(5)
    try:
        head = s.recv(64)
    except OSError:
        return "none"
    parts = head.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and head.startswith(b"HTTP/") else "none"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--followers", type=int, default=200)
    ap.add_argument("--slow", type=int, default=500)
    ap.add_argument("--attackers", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--front", choices=("auto", "nginx", "none"), default="auto",
                    help="server.front of the daemon under test ('none' shows the breaks of issue 22)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    if image_missing():
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * (args.followers + args.slow) + 256)), hard))
    log(f"load average at start: {load()}")
    config = SHIPPED_CONFIG.read_text().replace('front = "auto"', f'front = "{args.front}"')
    d = Daemon(Path(tempfile.mkdtemp(prefix="mlpd-bench-abuse-")), config)
    figures: dict = {}
    with d.running(keep=args.keep):
        victim = d.add_user("victim")
        attackers = [(f"attacker{i}", d.add_user(f"attacker{i}")) for i in range(args.attackers)]
        jobs = []
        for _, token in attackers:
            r = requests.post(d.api + "/jobs", json={"command": ["sleep", "600"]}, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            r.raise_for_status()
            jobs.append(r.json()["job"]["id"])
        deadline = time.monotonic() + 120
        while any(n for (n,) in d.query("SELECT COUNT(*) FROM jobs WHERE state != 'running'")):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the attackers' jobs did not all start: {d.state_counts()}")
            time.sleep(0.3)

        log(f"baseline: whoami for {args.seconds:g}s; load {load()}")
        figures["load_baseline"] = load()
        base_lat, base_failed = whoami_loop(d.url, victim, args.seconds)

        log(f"abuse: {args.followers} log followers, {args.slow} one-byte connections; load {load()}")
        followers = [open_follower(d.port, f"/api/v1/jobs/{jobs[i % len(jobs)]}/logs?follow=1", attackers[i % len(attackers)][1])
                     for i in range(args.followers)]
        slow = []
        for _ in range(args.slow):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
            s.sendall(b"G")
            slow.append(s)
        answered: dict[str, int] = {}
        statuses: list[str] = [""] * len(followers)

        def read_statuses() -> None:
            for i, s in enumerate(followers):
                statuses[i] = status_of(s)

        reader = threading.Thread(target=read_statuses)
        reader.start()
        abuse_lat, abuse_failed = whoami_loop(d.url, victim, args.seconds)
        reader.join()
        for st in statuses:
            answered[st] = answered.get(st, 0) + 1
        figures["load_abuse"] = load()

        log("the abusive clients go away")
        for s in followers + slow:
            s.close()
        gone_at = time.monotonic()
        first_whoami = timed_get(d.url + "/api/v1/whoami", victim)
        first_health = timed_get(d.url + "/healthz")
        time.sleep(max(0.0, gone_at + 1.0 - time.monotonic()))
        burst: list[float] = [math.inf] * SERVER_THREADS

        def one(i: int) -> None:
            burst[i] = timed_get(d.url + "/api/v1/whoami", victim)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(SERVER_THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # the streams' threads are back: two attackers open 4 streams each (8 fit one web process's share)
        again = []
        try:
            for i in range(8):
                user = attackers[i // 4 % len(attackers)]
                again.append(requests.get(f"{d.api}/jobs/{jobs[attackers.index(user)]}/logs?follow=1",
                                          headers={"Authorization": f"Bearer {user[1]}"}, stream=True, timeout=5))
        except requests.RequestException:
            pass
        follow_again = sum(r.status_code == 200 for r in again)
        for r in again:
            r.close()
        figures["load_after"] = load()

    p50b, p99b, p50a, p99a = pct(base_lat, 0.5), pct(base_lat, 0.99), pct(abuse_lat, 0.5), pct(abuse_lat, 0.99)
    fmt = lambda x: "failed" if x == math.inf else f"{x * 1000:.1f} ms"  # noqa: E731
    rows = [
        ("whoami p50 under abuse", fmt(p50a), fmt(p50b), f"{ratio(p50a, p50b):.2f}x"),
        ("whoami p99 under abuse (goal < 100 ms)", fmt(p99a), fmt(p99b), f"{ratio(p99a, p99b):.2f}x"),
        ("whoami calls answered / failed", f"{len(abuse_lat)} / {abuse_failed}", f"{len(base_lat)} / {base_failed}", ""),
        ("followers answered", ", ".join(f"{k}: {v}" for k, v in sorted(answered.items())), "", ""),
        ("first whoami after the clients left", fmt(first_whoami), fmt(p50b), ""),
        ("first /healthz after the clients left", fmt(first_health), "", ""),
        (f"slowest of {SERVER_THREADS} concurrent whoami 1 s later", fmt(max(burst)), fmt(p99b), ""),
        ("log streams opened again 1 s later (of 8)", str(follow_again), "8", ""),
        ("load average (1 5 15 min): baseline, abuse, after", f"{figures['load_baseline']}; {figures['load_abuse']}; {figures['load_after']}", "", ""),
    ]
    print_table(rows)
    figures.update({"followers": args.followers, "slow": args.slow, "attackers": args.attackers, "seconds": args.seconds,
                    "whoami_p50_ms": p50a * 1000, "whoami_p99_ms": p99a * 1000, "whoami_failed": abuse_failed,
                    "baseline_p50_ms": p50b * 1000, "baseline_p99_ms": p99b * 1000, "followers_answered": answered,
                    "first_whoami_after_ms": first_whoami * 1000, "first_healthz_after_ms": first_health * 1000,
                    "burst_max_ms": max(burst) * 1000, "follow_again": follow_again})
    print(json.dumps(figures, default=str))
    ok = p99a < 0.1 and abuse_failed == 0 and max(burst) < 1.0 and follow_again == 8
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
