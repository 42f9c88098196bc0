"""GPU sharing: what it costs whole-GPU scheduling, and what it gives small work.

1. schedule() on whole-GPU queues (bench_scheduler's micro states: 8 busy GPUs, 30 and 400 jobs
   queued, 0 and 2 free), this branch against the scheduler at git ref --before (default main),
   interleaved call by call on the same inputs; ratio = now / before (1.00x = no cost).
2. Small work on 8 GPUs: N half-GPU jobs (each 1 h) arriving at once, placed pass by pass as jobs end,
   with shares (gpus.share_max 4, halves: 2 per GPU) and without (each small job takes a whole GPU):
   the makespan and the mean wait, from the pure scheduler (simulated clock). It assumes that sharing
   does not slow the work down, which holds for work that leaves its GPU mostly idle (notebooks,
   small evaluations); two GPU-bound jobs time-sliced on one GPU each run about half as fast, and
   then sharing gains nothing. This part shows the placement, not a speed-up of GPU-bound work.

    .venv/bin/python bench/bench_gpu_sharing.py [--before main] [--repeat 200] [--small 32]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_scheduler import GPUS, load_scheduler_at, micro_state  # noqa: E402

from mlpd.scheduling.scheduler import Holding, Policy, QueuedJob, schedule  # noqa: E402


def as_module(mod, obj):
    cls = getattr(mod, type(obj).__name__)
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})


def cost(before_ref: str, repeat: int) -> None:
    before = load_scheduler_at(before_ref)
    if before is None:
        print("no git: skipping the before/after cost")
        return
    print(f"schedule() on 8 GPUs, whole-GPU work only; median of {repeat} interleaved calls each")
    print("| queued | free GPUs | this branch (ms) | before ({}) (ms) | ratio now / before |".format(before_ref))
    print("|---|---|---|---|---|")
    for n, free in ((30, 0), (30, 2), (400, 0), (400, 2)):
        holdings, queue, now, usage, slowdown = micro_state(n, 1, free)
        b_gpus = [as_module(before, g) for g in GPUS]
        b_hold = [as_module(before, h) for h in holdings]
        b_queue = [as_module(before, q) for q in queue]
        b_policy = before.Policy()
        mine, theirs = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            schedule(GPUS, holdings, queue, now, Policy(), usage=usage, slowdown=slowdown)
            t1 = time.perf_counter()
            before.schedule(b_gpus, b_hold, b_queue, now, b_policy, usage=usage, slowdown=slowdown)
            t2 = time.perf_counter()
            mine.append(t1 - t0)
            theirs.append(t2 - t1)
        m, t = statistics.median(mine), statistics.median(theirs)
        print(f"| {n} | {free} | {m * 1e3:.3f} | {t * 1e3:.3f} | {m / t:.2f}x |")


def small_work(n: int, shared: bool) -> tuple[float, float]:
    """(makespan h, mean wait h) of n one-hour small jobs arriving at t=0 on 8 GPUs."""
    hour = 3600.0
    queue = {f"s{i}": QueuedJob(f"s{i}", f"u{i % 4}", 1, None, 0, float(i) * 1e-3, hour, share=0.5 if shared else 1.0)
             for i in range(n)}
    running: dict[str, tuple[str, float]] = {}  # id -> (gpu, ends)
    waits, now, end = [], 0.0, 0.0
    while queue or running:
        holdings = [Holding(g, j, "someone", e, share=0.5 if shared else 1.0) for j, (g, e) in running.items()]
        plan = schedule(GPUS, holdings, list(queue.values()), now, Policy(fair_share=False, share_max=4))
        for p in plan.placements:
            q = queue.pop(p.job_id)
            waits.append(now - q.submitted_at)
            running[p.job_id] = (p.gpu_uuids[0], now + hour)
        now = min(e for _, e in running.values())
        end = max(end, now)
        running = {j: v for j, v in running.items() if v[1] > now}
    return end / hour, statistics.mean(waits) / hour


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="main")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--small", type=int, default=32)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()}")
    cost(args.before, args.repeat)
    print()
    print(f"{args.small} one-hour small jobs arriving at once on 8 GPUs (pure scheduler, simulated clock)")
    print("| placement | makespan (h) | mean wait (h) |")
    print("|---|---|---|")
    for shared in (False, True):
        span, wait = small_work(args.small, shared)
        print(f"| {'half a GPU each (shares)' if shared else 'a whole GPU each'} | {span:.1f} | {wait:.2f} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
