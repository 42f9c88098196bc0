"""Benchmark: what the state store pays for sqlite-utils, and what keeping pandas from it saves.

    .venv/bin/python bench/bench_store.py [--runs 10] [--daemon-rounds 3] [--events 2000]

Prints one Markdown table, each figure against a baseline measured in this run:

- mlpd.store imports sqlite-utils with pandas and numpy hidden (see its _import_sqlite_utils).
  Baseline: sqlite-utils imported as it comes, pandas and numpy with it, reproduced by a
  sitecustomize (on PYTHONPATH, so in every process the daemon starts too) that imports
  sqlite-utils before mlpd does. Measured on `mlpd admin user list --state-dir` and on a daemon
  start (launch to /healthz answering with the worker up; its MLflow store made beforehand).
- An audit event written with the table API (`db["events"].insert`) against the INSERT statement
  it replaced, in write transactions of one event each (how the daemon writes them).

Needs no Docker and no network: a temporary state directory, loopback ports and subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
import urllib.request

from benchlib import BIN, free_port, log, median, ms, print_table, ratio, times

SITECUSTOMIZE = "import sqlite_utils  # as it comes: with pandas and numpy, when installed\n"


def wall(argv: list[str], env: dict, runs: int) -> float:
    """Median wall time of argv over runs (after one warm-up run), in seconds."""
    out = []
    for i in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=120, env=env)
        if i:
            out.append(time.perf_counter() - start)
    return median(out)


def daemon_start(state: str, env: dict) -> float:
    """Seconds from launching `mlpd daemon` to /healthz answering with the worker up; then stops it."""
    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen([BIN, "daemon", "--state-dir", state, "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while time.perf_counter() - start < 300:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    if json.load(resp).get("worker") == "ok":
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("the daemon did not come up within 300 s")
    finally:
        subprocess.run([BIN, "daemon", "--stop", "--state-dir", state], capture_output=True, env=env, timeout=120)
        proc.wait(timeout=60)


def event_writes(path: str, n: int) -> tuple[float, float]:
    """Seconds per write transaction holding one event: (table API, INSERT statement), in alternating rounds."""
    from mlpd.store import Store, record_event

    store = Store(path)

    def insert_statement(db, actor, action, kind, object_id, **detail):
        db.execute("INSERT INTO events (at, actor, action, object_kind, object_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
                   [time.time(), actor, action, kind, str(object_id), json.dumps(detail, sort_keys=True)])

    spent = {"table": 0.0, "statement": 0.0}
    for round_ in range(10):
        for name, write in (("table", record_event), ("statement", insert_statement)):
            start = time.perf_counter()
            for i in range(n // 10):
                with store.write() as db:
                    write(db, "bench", "bench.event", "job", f"{round_}-{i}", seq=i)
            spent[name] += time.perf_counter() - start
    return spent["table"] / n, spent["statement"] / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--daemon-rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        site = os.path.join(tmp, "site")
        os.makedirs(site)
        with open(os.path.join(site, "sitecustomize.py"), "w") as fh:
            fh.write(SITECUSTOMIZE)
        hidden = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        as_it_comes = {**hidden, "PYTHONPATH": site}
        state = os.path.join(tmp, "state")
        subprocess.run([BIN, "admin", "user", "add", "bench", "--state-dir", state], capture_output=True, check=True, timeout=120)
        user_list = [BIN, "admin", "user", "list", "--state-dir", state]
        log("mlpd admin user list, both ways")
        admin_hidden, admin_full = wall(user_list, hidden, args.runs), wall(user_list, as_it_comes, args.runs)
        log("first daemon start (makes MLflow's store; not counted)")
        daemon_start(state, hidden)
        starts: dict[str, list[float]] = {"hidden": [], "full": []}
        for round_ in range(args.daemon_rounds):
            log(f"daemon starts, round {round_ + 1} of {args.daemon_rounds}")
            starts["hidden"].append(daemon_start(state, hidden))
            starts["full"].append(daemon_start(state, as_it_comes))
        log("event writes")
        table_api, statement = event_writes(os.path.join(state, "mlpd.db"), args.events)
    start_hidden, start_full = median(starts["hidden"]), median(starts["full"])
    print_table([
        (f"`mlpd admin user list --state-dir` wall time (median of {args.runs}), pandas hidden", ms(admin_hidden),
         f"{ms(admin_full)} (sqlite-utils with pandas)", times(ratio(admin_hidden, admin_full))),
        (f"daemon start to /healthz with worker up (median of {args.daemon_rounds}), pandas hidden", ms(start_hidden),
         f"{ms(start_full)} (sqlite-utils with pandas)", times(ratio(start_hidden, start_full))),
        ("write transaction with one audit event, table API", f"{table_api * 1e6:.0f} us",
         f"{statement * 1e6:.0f} us (INSERT statement)", times(ratio(table_api, statement))),
    ])


if __name__ == "__main__":
    main()
