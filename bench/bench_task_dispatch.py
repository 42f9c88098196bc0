#!/usr/bin/env python3
"""Benchmark: from enqueueing a huey task to its start on a consumer thread, mlpd's storage against huey's own.

    .venv/bin/python bench/bench_task_dispatch.py [--samples 200]

The worker hands each launch and stop to huey (mlpd.workers.tasks). This measures what that hand-off
costs: a no-op task is enqueued in the same process (as the reconcile loop does), and the time until a
consumer thread runs it is recorded. Two queues on SQLite files in a temporary directory, each with
the worker's consumer settings (8 threads, huey's back-off capped at POLL_FALLBACK):

  mlpd   WakingSqliteStorage: an in-process enqueue wakes a waiting consumer thread at once
  huey   huey's SqliteStorage: consumer threads poll the file, sleeping 0.05 s growing x1.5 up to
         POLL_FALLBACK between empty reads (the baseline)

Tasks are enqueued one at a time after a random pause of 0-300 ms (the consumer is idle in between,
as it is between submits). Reported: median and p90 of the latency, and the ratio mlpd/huey.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from huey import Huey  # noqa: E402
from huey.storage import SqliteStorage  # noqa: E402

from mlpd.workers.tasks import POLL_FALLBACK, WORKER_THREADS, WakingSqliteStorage  # noqa: E402


def measure(storage_class, path: str, samples: int, rng: random.Random) -> list[float]:
    huey = Huey("bench", storage_class=storage_class, filename=path, results=False)
    started: dict[int, float] = {}
    done = threading.Event()

    @huey.task()
    def noop(i: int) -> None:
        started[i] = time.perf_counter()
        done.set()

    consumer = huey.create_consumer(workers=WORKER_THREADS, worker_type="thread", periodic=False, initial_delay=0.05,
                                    backoff=1.5, max_delay=POLL_FALLBACK)
    consumer.start()
    out = []
    try:
        for i in range(samples):
            time.sleep(rng.uniform(0, 0.3))
            done.clear()
            t0 = time.perf_counter()
            noop(i)
            if not done.wait(10):
                raise SystemExit(f"task {i} never ran")
            out.append((started[i] - t0) * 1000)
    finally:
        consumer.stop(graceful=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        mlpd = measure(WakingSqliteStorage, os.path.join(tmp, "mlpd.db"), args.samples, rng)
        plain = measure(SqliteStorage, os.path.join(tmp, "huey.db"), args.samples, rng)

    def p90(xs):
        return statistics.quantiles(xs, n=10)[-1]

    print(f"\n## huey task dispatch ({args.samples} tasks each, {WORKER_THREADS} consumer threads, {os.cpu_count()} CPUs)\n")
    print("| metric | mlpd (wakes on enqueue) | huey's SqliteStorage (polls) | ratio |")
    print("|---|---|---|---|")
    for name, f in (("enqueue → task starts, median", statistics.median), ("enqueue → task starts, p90", p90)):
        a, b = f(mlpd), f(plain)
        print(f"| {name} | {a:.2f} ms | {b:.2f} ms | {a / b:.3f}x |")
    print(f"| worst | {max(mlpd):.2f} ms | {max(plain):.2f} ms | {max(mlpd) / max(plain):.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
