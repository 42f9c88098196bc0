#!/usr/bin/env python3
"""Benchmark: datasets (issue 25) against the plain baseline, interleaved in one process.

    .venv/bin/python bench/bench_datasets.py [--rounds 5] [--size-mb 1024] [--start-rounds 8] [--keep]

A daemon of its own (temporary state directory, a free loopback port, built-in defaults), two member
users: `plain`, who may read no dataset, and `data`, who may read five (declared with `mlpd admin
dataset add ... --user data`, read-only, each a directory of this script's temporary directory).
Needs the image mlpd/train:latest. At the end (also on error) the daemon is stopped, its containers
removed and the temporary directory deleted (--keep keeps it).

1. Read: one file of --size-mb MiB of random bytes in the first dataset. Its page cache is made equal
   for both sides by reading it once on the host first (dropping caches needs privileges a CI
   container may not have; both sides then read from the same warm cache, which is what isolates
   the mount's cost). Each of --rounds rounds, in a shuffled order: `host` runs READER (python3,
   1 MiB reads into one buffer) on the file's host path in a subprocess; `job` submits a job as
   `data` running the same READER on /datasets/d0/blob and takes the seconds it prints (the read
   alone, not the job's start). Reported: the median throughput of each and job / host (goal: at
   least 0.95x).

2. Start: --start-rounds rounds, each submitting `true` as `plain` (no dataset) and as `data` (five
   datasets mounted), in a shuffled order, one at a time; the time from the job's submitted_at to
   its started_at (the daemon's record: admission, placement, the path checks of every dataset,
   Docker's create and start). Reported: medians and data / plain (goal: at most 1.05x).

The 1-minute load average is printed before and after: compare only numbers from a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib
from benchlib import BIN, Daemon, JobClient, log, median, print_table, times

READER = r"""
import os, sys, time
path = sys.argv[1]
buf = bytearray(1 << 20)
view = memoryview(buf)
start = time.perf_counter()
total = 0
with open(path, "rb", buffering=0) as fh:
    while (n := fh.readinto(view)):
        total += n
print(f"read {total} seconds {time.perf_counter() - start:.6f}", flush=True)
"""


def parse_read(text: str) -> tuple[int, float]:
    for line in text.splitlines():
        if line.startswith("read "):
            _, total, _, seconds = line.split()
            return int(total), float(seconds)
    raise RuntimeError(f"no read line in: {text[-500:]}")


def submit(d: Daemon, token: str, command: list[str]) -> str:
    r = d.session(token).post(f"{d.api}/jobs", json={"command": command}, timeout=30)
    r.raise_for_status()
    return r.json()["job"]["id"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--start-rounds", type=int, default=8)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if benchlib.image_missing():
        print("mlpd/train:latest is missing: run 'mlpd images build' first", file=sys.stderr)
        return 2
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    base = Path(tempfile.mkdtemp(prefix="mlpd-bench-datasets-"))
    data_root = base / "data"
    d = Daemon(base)  # its cleanup deletes base, the datasets with it
    with d.running(keep=args.keep):
        admin = d.add_user("root", admin=True)
        plain, data = d.add_user("plain"), d.add_user("data")
        for i in range(5):
            folder = data_root / f"d{i}"
            folder.mkdir(parents=True)
            folder.chmod(0o755)
            r = subprocess.run([BIN, "admin", "dataset", "add", f"d{i}", str(folder), "--user", "data"], capture_output=True, text=True,
                               env=d.env(admin), timeout=60)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
        blob = data_root / "d0" / "blob"
        log(f"writing {args.size_mb} MiB of random bytes to {blob}")
        with open(blob, "wb") as fh:
            for _ in range(args.size_mb):
                fh.write(os.urandom(1 << 20))
        blob.chmod(0o644)
        subprocess.run([sys.executable, "-c", READER, str(blob)], check=True, capture_output=True)  # warm the page cache once

        d.token = data
        client = JobClient(d)
        host, job = [], []
        for rnd in range(args.rounds):
            for side in random.sample(["host", "job"], 2):
                if side == "host":
                    out = subprocess.run(["python3", "-c", READER, str(blob)], capture_output=True, text=True, check=True).stdout
                    total, seconds = parse_read(out)
                    host.append(total / seconds)
                else:
                    job_id = submit(d, data, ["python3", "-c", READER, "/datasets/d0/blob"])
                    ended = client.wait_ended(job_id, 300, 0.2, 0.2)
                    if ended["state"] != "succeeded":
                        raise RuntimeError(f"read job {job_id}: {ended['state']} {ended.get('reason')}")
                    text = d.session(data).get(f"{d.api}/jobs/{job_id}/logs", timeout=30).text
                    total, seconds = parse_read(text)
                    job.append(total / seconds)
            log(f"round {rnd + 1}: host {host[-1] / 2**20:.0f} MiB/s, job {job[-1] / 2**20:.0f} MiB/s")

        starts: dict[str, list[float]] = {"plain": [], "data": []}
        for rnd in range(args.start_rounds):
            for who in random.sample(["plain", "data"], 2):
                token = plain if who == "plain" else data
                d.token = token
                job_id = submit(d, token, ["true"])
                ended = JobClient(d).wait_ended(job_id, 300, 0.1, 0.1)
                if ended["state"] != "succeeded" or not ended.get("started_at"):
                    raise RuntimeError(f"start job {job_id}: {ended['state']} {ended.get('reason')}")
                starts[who].append(ended["started_at"] - ended["submitted_at"])
            log(f"start round {rnd + 1}: plain {starts['plain'][-1] * 1000:.0f} ms, data {starts['data'][-1] * 1000:.0f} ms")

    read_ratio = median(job) / median(host)
    start_ratio = median(starts["data"]) / median(starts["plain"])
    print_table([
        (f"read {args.size_mb} MiB from /datasets in a job (median of {len(job)})", f"{median(job) / 2**20:.0f} MiB/s",
         f"{median(host) / 2**20:.0f} MiB/s on the host", times(read_ratio) + (" (goal >= 0.95x)")),
        (f"job start with 5 datasets (median of {len(starts['data'])})", benchlib.ms(median(starts["data"])),
         benchlib.ms(median(starts["plain"])) + " with none", times(start_ratio) + " (goal <= 1.05x)"),
    ])
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
