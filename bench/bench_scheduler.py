"""Replay a synthetic multi-user GPU job trace through mlpd's real scheduler on a simulated 8-GPU host.

The trace is shaped after published GPU cluster traces (Microsoft Philly, Alibaba PAI): mostly
1-GPU jobs with some 2/4/8-GPU ones, heavy-tailed (lognormal) runtimes from minutes to many hours,
time limits that overestimate the runtime by 1.2-3x, Poisson arrivals with bursts, and a few heavy
users submitting most jobs. A discrete-event simulation (arrivals and completions) calls
mlpd.scheduler.schedule at every event with a simulated clock; three policies run on the same trace:

  fifo       Policy(backfill=False, fair_share=False)
  backfill   Policy(backfill=True,  fair_share=False)
  mlpd       Policy(backfill=True,  fair_share=True) with Slurm-like decayed usage (half-life 1 day,
             scaled to the ~1-2 week trace)

Reported: GPU allocation while work is queued (busy GPU-time / available GPU-time, over the
intervals when the queue is not empty), mean and p95 queueing delay, Jain's fairness index over
users' mean bounded slowdown ((wait + run) / max(run, 10 min)), the mean wait of the two heavy
users against the other eight, makespan, and the wall time of one schedule() call. Ratios are
against plain FIFO in the same run. Fair share deliberately makes heavy users wait longer so that
light users are not starved by them; Jain's index over slowdown measures equal treatment per user
and so goes down under it: read the two together.

    .venv/bin/python bench/bench_scheduler.py [--seed 1] [--jobs 1500]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import time

from mlpd.accounting import Allocation, decayed_usage
from mlpd.scheduler import Gpu, Holding, Policy, QueuedJob, schedule

GPUS = [Gpu(f"GPU-{i}", i, "A100") for i in range(8)]
HALF_LIFE = 24 * 3600.0
HEAVY = ("user00", "user01")  # the two users who submit most of the work


def make_trace(n: int, seed: int, load: float = 0.8):
    rng = random.Random(seed)
    users = [f"user{i:02d}" for i in range(10)]
    weights = [30, 20] + [6] * 8  # two heavy users submit most of the work
    sizes, size_p = [1, 2, 4, 8], [0.70, 0.15, 0.10, 0.05]
    jobs = []
    for i in range(n):
        gpus = rng.choices(sizes, size_p)[0]
        run = min(max(rng.lognormvariate(math.log(45 * 60), 1.3), 60), 48 * 3600)
        limit = run * rng.uniform(1.2, 3.0)
        jobs.append({"id": f"j{i:05d}", "owner": rng.choices(users, weights)[0], "gpus": gpus, "run": run, "limit": limit,
                     "priority": 0})
    mean_work = statistics.fmean(j["gpus"] * j["run"] for j in jobs)
    rate = load * len(GPUS) / mean_work  # arrivals per second for the offered load
    t = 0.0
    for j in jobs:
        burst = rng.random() < 0.15  # bursts: several submissions within seconds
        t += rng.uniform(1, 30) if burst else rng.expovariate(rate)
        j["submit"] = t
    return jobs


def simulate(trace, policy: Policy, fair: bool):
    events = [(j["submit"], 1, j["id"]) for j in trace]  # (time, kind 1=arrive 0=finish, id)
    heapq.heapify(events)
    by_id = {j["id"]: j for j in trace}
    queue: dict[str, QueuedJob] = {}
    running: dict[str, tuple[float, tuple[str, ...]]] = {}
    allocations: list[Allocation] = []
    start_of: dict[str, float] = {}
    busy_queued = avail_queued = 0.0
    last = 0.0
    calls, call_time = 0, 0.0
    while events:
        now, kind, job_id = heapq.heappop(events)
        if queue:  # account the interval [last, now] in which work was queued
            held = sum(len(g) for _, g in running.values())
            busy_queued += held * (now - last)
            avail_queued += len(GPUS) * (now - last)
        last = now
        if kind == 1:
            j = by_id[job_id]
            queue[job_id] = QueuedJob(job_id, j["owner"], j["gpus"], None, j["priority"], j["submit"], j["limit"])
        else:
            running.pop(job_id)
        while events and events[0][0] == now:  # handle simultaneous events in one pass
            _, k2, id2 = heapq.heappop(events)
            if k2 == 1:
                j = by_id[id2]
                queue[id2] = QueuedJob(id2, j["owner"], j["gpus"], None, j["priority"], j["submit"], j["limit"])
            else:
                running.pop(id2)
        holdings = [Holding(u, jid, by_id[jid]["owner"], st + by_id[jid]["limit"]) for jid, (st, gs) in running.items() for u in gs]
        usage = decayed_usage(allocations, now, HALF_LIFE) if fair else None
        t0 = time.perf_counter()
        plan = schedule(GPUS, holdings, list(queue.values()), now, policy, usage=usage)
        call_time += time.perf_counter() - t0
        calls += 1
        for p in plan.placements:
            j = by_id[p.job_id]
            del queue[p.job_id]
            running[p.job_id] = (now, p.gpu_uuids)
            start_of[p.job_id] = now
            end = now + j["run"]
            heapq.heappush(events, (end, 0, p.job_id))
            allocations.extend(Allocation(j["owner"], "job", p.job_id, u, 0, "A100", now, end) for u in p.gpu_uuids)
    waits = [start_of[j["id"]] - j["submit"] for j in trace]
    slow: dict[str, list[float]] = {}
    for j in trace:
        slow.setdefault(j["owner"], []).append((start_of[j["id"]] - j["submit"] + j["run"]) / max(j["run"], 600))
    per_user = [statistics.fmean(v) for v in slow.values()]
    jain = sum(per_user) ** 2 / (len(per_user) * sum(x * x for x in per_user))
    makespan = max(start_of[j["id"]] + j["run"] for j in trace)
    heavy = [w for j, w in zip(trace, waits) if j["owner"] in HEAVY]
    light = [w for j, w in zip(trace, waits) if j["owner"] not in HEAVY]
    return {
        "allocation": busy_queued / avail_queued if avail_queued else float("nan"),
        "mean_wait_h": statistics.fmean(waits) / 3600,
        "p95_wait_h": sorted(waits)[int(0.95 * (len(waits) - 1))] / 3600,
        "jain": jain,
        "heavy_wait_h": statistics.fmean(heavy) / 3600,
        "light_wait_h": statistics.fmean(light) / 3600,
        "makespan_d": makespan / 86400,
        "us_per_call": call_time / calls * 1e6,
        "calls": calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1500)
    args = ap.parse_args()
    trace = make_trace(args.jobs, args.seed)
    print(f"trace: {len(trace)} jobs, {len({j['owner'] for j in trace})} users, 8 GPUs, seed {args.seed}, "
          f"{trace[-1]['submit'] / 86400:.1f} days of arrivals")
    results = {}
    for name, policy, fair in (("fifo", Policy(backfill=False, fair_share=False), False),
                               ("backfill", Policy(backfill=True, fair_share=False), False),
                               ("mlpd", Policy(backfill=True, fair_share=True), True)):
        t0 = time.perf_counter()
        results[name] = simulate(trace, policy, fair)
        print(f"  {name}: simulated in {time.perf_counter() - t0:.1f} s")
    base = results["fifo"]
    print()
    print("| policy | GPU allocation while queued | mean wait (h) | p95 wait (h) | Jain's fairness (slowdown) | mean wait heavy / light users (h) | makespan (days) | schedule() µs/call |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['allocation']:.3f} | {r['mean_wait_h']:.2f} | {r['p95_wait_h']:.2f} | {r['jain']:.3f} | "
              f"{r['heavy_wait_h']:.2f} / {r['light_wait_h']:.2f} | {r['makespan_d']:.2f} | {r['us_per_call']:.0f} |")
    print()
    print("| ratio vs fifo | allocation | mean wait | p95 wait | Jain | makespan |")
    print("|---|---|---|---|---|---|")
    for name in ("backfill", "mlpd"):
        r = results[name]
        print(f"| {name} | {r['allocation'] / base['allocation']:.2f}x | {r['mean_wait_h'] / base['mean_wait_h']:.2f}x | "
              f"{r['p95_wait_h'] / base['p95_wait_h']:.2f}x | {r['jain'] / base['jain']:.2f}x | {r['makespan_d'] / base['makespan_d']:.2f}x |")


if __name__ == "__main__":
    main()
