"""Replay a synthetic multi-user GPU job trace through mlpd's real scheduler on a simulated 8-GPU host.

Trace (seeded, deterministic), shaped after published GPU cluster traces (Microsoft Philly,
Alibaba PAI):
  - job sizes 1/2/4/8 GPUs with probability 70/15/10/5 %;
  - runtimes lognormal (median 40 min, sigma 1.6), clipped to [2 min, 72 h]: minutes to many hours;
  - time limits = runtime x U(1.2, 3.0): users overestimate, jobs always end before their limit;
  - 10 users with skewed activity: the two heavy users (user00, user01) submit ~60 % of the jobs;
  - arrivals: Poisson submission events, each a single job (75 %) or a burst (a sweep of 2-12
    jobs of one user and one size, seconds apart); the Poisson rate is scaled so that the offered
    load (GPU-seconds of work / (8 GPUs x arrival span)) equals --load (default 0.90).

Discrete-event simulation on a simulated clock: events are arrivals and completions; after all
events of one instant are applied, the REAL mlpd.scheduling.scheduler.schedule() is called with the current
holdings (ends_by = start + time limit) and queue, and every placement starts at once and runs
for its actual runtime. schedule() is only called while the queue is non-empty (with an empty
queue there is nothing to decide); the job holding the reservation is kept between calls as the
daemon keeps it (jobs.reserved_at). Three policies replay the same trace:

  fifo      Policy(backfill=False, fair_share=False, weight_expansion=0): priority, then submit order
  backfill  Policy(backfill=True,  fair_share=False, weight_expansion=0): EASY backfill
  mlpd      Policy(): mlpd's defaults (mlpd.toml): EASY backfill over the multifactor order, fair share
            on; usage = accounting.decayed_usage over the simulated ledger (one Allocation per GPU per
            job, open while running), half-life 7 days (mlpd's default scheduler.fair_share_half_life,
            not scaled: the trace spans several weeks), over the allocations of the last 4
            half-lives, as mlpd.scheduling.quotas.fair_share_usage does; and each owner's mean bounded slowdown
            = scheduler.owner_slowdowns over the jobs started in the last 4 half-lives (half-life:
            mlpd's scheduler.slowdown_half_life; --slowdown-half-life) and the queued ones, as
            mlpd.scheduling.quotas.fair_share_slowdown does.

Metrics:
  - GPU allocation while queued: held GPU-time / (8 x time), integrated only over the intervals in
    which at least one job is queued (when nothing waits, idle GPUs are no fault of the policy);
  - queueing delay = start - submit: mean and p95 (nearest rank), in hours;
  - Jain's fairness index over users, J = (sum x)^2 / (n sum x^2), of x = the user's mean bounded
    slowdown, slowdown = (wait + run) / max(run, 10 min); 1.0 = every user is slowed down alike;
  - makespan = last completion - first arrival, in days;
  - schedule() cost: mean (and max) wall time of one call, measured around the call only; for
    mlpd also the decayed_usage() and owner_slowdowns() calls that the daemon makes before every pass.
Sanity checks run on every plan (placed GPUs free and distinct, one decision per queued job, FIFO
never overtakes its head, no head starts after the start it was promised when it became the head)
and violations are printed. The issue-15 targets for mlpd against EASY are printed as met or not.

--policy FIELD=VALUE,... replays the mlpd row with those Policy fields changed (e.g. weight_size=5000);
the other rows stay as they are.

Before the replay, schedule() is timed (with the mlpd row's policy) on a busy 8-GPU host with 30 and 400 queued jobs: as the
daemon's pass calls it (no explanations), with every job explained, explain() of the last job, and
the scheduler at git ref --before (default: before issue 15), as a ratio.

    .venv/bin/python bench/bench_scheduler.py [--seed 1] [--seeds 1] [--jobs 2000] [--load 0.9] [--micro-only]
                                              [--policy weight_size=0,...]   (override mlpd's Policy fields)
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import math
import random
import statistics
import sys
import time
from collections import deque

from mlpd.scheduling.accounting import Allocation, decayed_usage
from mlpd.config import SETTINGS_BY_KEY
from mlpd.units import parse_duration
from mlpd.scheduling.scheduler import Gpu, Holding, Policy, QueuedJob, explain, owner_slowdowns, schedule

N_GPUS = 8
GPUS = [Gpu(f"GPU-{i:02d}", i, "A100") for i in range(N_GPUS)]
USERS = [f"user{i:02d}" for i in range(10)]
USER_WEIGHTS = [36, 24, 8, 7, 6, 5, 5, 4, 3, 2]  # two heavy users: ~60 % of submissions
HEAVY = set(USERS[:2])
SIZES, SIZE_P = (1, 2, 4, 8), (0.70, 0.15, 0.10, 0.05)
HALF_LIFE = 7 * 86400.0
SLOWDOWN_HALF_LIFE_DEFAULT = SETTINGS_BY_KEY["scheduler.slowdown_half_life"].default  # mlpd's (--slowdown-half-life)
SLOWDOWN_HALF_LIFE = parse_duration(SLOWDOWN_HALF_LIFE_DEFAULT)
SLOWDOWN_FLOOR = 600.0  # bounded slowdown: runs shorter than 10 min count as 10 min
POLICIES = (
    ("fifo", "plain FIFO", Policy(backfill=False, fair_share=False, weight_expansion=0)),
    ("backfill", "FIFO + EASY backfill", Policy(backfill=True, fair_share=False, weight_expansion=0)),
    ("mlpd", "mlpd (EASY backfill + multifactor with fair share)", Policy()),
)


# --------------------------------------------------------------------------- trace

def make_trace(n: int, seed: int, load: float) -> list[dict]:
    rng = random.Random(seed)
    jobs: list[dict] = []
    batches: list[tuple[float, list[dict]]] = []  # (unit-rate Poisson time, jobs with offsets)
    t_unit = 0.0
    while len(jobs) < n:
        t_unit += rng.expovariate(1.0)
        owner = rng.choices(USERS, USER_WEIGHTS)[0]
        gpus = rng.choices(SIZES, SIZE_P)[0]
        k = 1 if rng.random() < 0.75 else rng.randint(2, 12)  # a burst: a sweep of one user, one size
        offset, batch = 0.0, []
        for _ in range(min(k, n - len(jobs))):
            run = min(max(rng.lognormvariate(math.log(40 * 60), 1.6), 120.0), 72 * 3600.0)
            job = {"id": f"j{len(jobs):05d}", "owner": owner, "gpus": gpus, "run": run,
                   "limit": run * rng.uniform(1.2, 3.0), "offset": offset}
            offset += rng.uniform(1.0, 60.0)
            jobs.append(job)
            batch.append(job)
        batches.append((t_unit, batch))
    # Scale the Poisson clock so that work / (GPUs x span) = load; burst offsets stay in seconds.
    work = sum(j["gpus"] * j["run"] for j in jobs)
    last_t, last_batch = batches[-1]
    scale = (work / (N_GPUS * load) - last_batch[-1]["offset"]) / last_t
    for t, batch in batches:
        for j in batch:
            j["submit"] = t * scale + j.pop("offset")
    jobs.sort(key=lambda j: (j["submit"], j["id"]))
    return jobs


def describe_trace(trace: list[dict]) -> list[str]:
    runs = sorted(j["run"] for j in trace)
    span = trace[-1]["submit"] - trace[0]["submit"]
    work = sum(j["gpus"] * j["run"] for j in trace)

    def q(p: float) -> float:
        return runs[max(0, math.ceil(p * len(runs)) - 1)]

    sizes = {s: sum(j["gpus"] == s for j in trace) / len(trace) for s in SIZES}
    by_user = {u: sum(j["owner"] == u for j in trace) for u in USERS}
    heavy_jobs = sum(by_user[u] for u in HEAVY) / len(trace)
    heavy_work = sum(j["gpus"] * j["run"] for j in trace if j["owner"] in HEAVY) / work
    return [
        f"trace: {len(trace)} jobs, {sum(1 for v in by_user.values() if v)} users, {N_GPUS} GPUs, "
        f"{span / 86400:.1f} days of arrivals, offered load {work / (N_GPUS * span):.2f}",
        "  sizes 1/2/4/8 GPUs: " + " / ".join(f"{100 * sizes[s]:.0f}%" for s in SIZES)
        + f"; runtime p50 {q(.5) / 60:.0f} min, p90 {q(.9) / 3600:.1f} h, p99 {q(.99) / 3600:.1f} h, "
        f"max {runs[-1] / 3600:.1f} h; time limit / runtime mean "
        f"{statistics.fmean(j['limit'] / j['run'] for j in trace):.2f}",
        f"  heavy users {'+'.join(sorted(HEAVY))}: {100 * heavy_jobs:.0f}% of jobs, {100 * heavy_work:.0f}% of GPU-time; "
        "jobs per user: " + " ".join(str(by_user[u]) for u in USERS),
    ]


# --------------------------------------------------------------------------- simulation

def simulate(trace: list[dict], policy: Policy) -> dict:
    by_id = {j["id"]: j for j in trace}
    events = [(j["submit"], 1, j["id"]) for j in trace]  # kind 0 = completion, 1 = arrival
    heapq.heapify(events)
    queue: dict[str, QueuedJob] = {}
    running: dict[str, tuple[float, tuple[str, ...]]] = {}
    held = 0
    finished: deque[Allocation] = deque()  # closed ledger rows, in order of end time
    start_of: dict[str, float] = {}
    promised: dict[str, float] = {}  # the start time a job was promised when it became the head
    reserved: dict[str, float] = {}  # the job holding the reservation -> since when (the daemon keeps it in jobs.reserved_at)
    violations: list[str] = []
    busy_q = avail_q = 0.0
    q_len_time = 0.0
    max_q = 0
    calls, sched_s, sched_max, usage_s = 0, 0.0, 0.0, 0.0
    last = trace[0]["submit"]
    first = last

    while events:
        now = events[0][0]
        if queue:  # the state after the previous pass held over [last, now]
            busy_q += held * (now - last)
            avail_q += N_GPUS * (now - last)
            q_len_time += len(queue) * (now - last)
        last = now
        while events and events[0][0] == now:
            _, kind, job_id = heapq.heappop(events)
            j = by_id[job_id]
            if kind == 1:
                queue[job_id] = QueuedJob(job_id, j["owner"], j["gpus"], None, 0, j["submit"], j["limit"])
            else:
                start, uuids = running.pop(job_id)
                held -= len(uuids)
                finished.extend(Allocation(j["owner"], "job", job_id, u, int(u[-2:]), "A100", start, now)
                                for u in uuids)
        if not queue:
            continue
        max_q = max(max_q, len(queue))
        holdings = [Holding(u, jid, by_id[jid]["owner"], st + by_id[jid]["limit"])
                    for jid, (st, uuids) in running.items() for u in uuids]
        usage = None
        if policy.fair_share:
            t0 = time.perf_counter()
            while finished and finished[0].end < now - 4 * HALF_LIFE:
                finished.popleft()
            ledger = list(finished) + [Allocation(by_id[jid]["owner"], "job", jid, u, int(u[-2:]), "A100", st, None)
                                       for jid, (st, uuids) in running.items() for u in uuids]
            usage = decayed_usage(ledger, now, HALF_LIFE)
            usage_s += time.perf_counter() - t0
        queued = list(queue.values())
        slowdown = None
        if policy.fair_share and policy.weight_slowdown:  # as mlpd.scheduling.quotas.fair_share_slowdown reads it
            t0 = time.perf_counter()
            history = [(by_id[jid]["owner"], by_id[jid]["submit"], st,
                        None if jid in running else st + by_id[jid]["run"])
                       for jid, st in start_of.items() if st >= now - 4 * SLOWDOWN_HALF_LIFE]
            slowdown = owner_slowdowns(history, queued, now, SLOWDOWN_HALF_LIFE, policy.max_age)
            usage_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        plan = schedule(GPUS, holdings, queued, now, policy, usage=usage, reserved=reserved, slowdown=slowdown)
        dt = time.perf_counter() - t0
        sched_s += dt
        sched_max = max(sched_max, dt)
        calls += 1

        # ---- sanity checks on the plan
        decided = [p.job_id for p in plan.placements] + list(plan.waiting)
        if sorted(decided) != sorted(queue):
            violations.append(f"t={now:.0f}: plan does not decide every queued job exactly once")
        busy = {u for _, uuids in running.values() for u in uuids}
        for p in plan.placements:
            if len(p.gpu_uuids) != queue[p.job_id].gpus or len(set(p.gpu_uuids)) != len(p.gpu_uuids) \
                    or busy & set(p.gpu_uuids):
                violations.append(f"t={now:.0f}: bad placement {p}")
            busy |= set(p.gpu_uuids)
        if plan.waiting and not policy.backfill:
            # plain FIFO (one priority, no fair share: submit order) places nothing behind its first waiting job
            top = queue[plan.waiting[0]]
            if any((queue[p.job_id].submitted_at, p.job_id) > (top.submitted_at, top.id) for p in plan.placements):
                violations.append(f"t={now:.0f}: FIFO placed a job behind head {top.id}")
        # As the controller does: the head keeps its reservation; no other job holds one.
        reserved = {plan.head.job_id: reserved.get(plan.head.job_id, now)} if plan.head else {}
        if plan.head is not None and plan.head.start is not None:
            promised.setdefault(plan.head.job_id, plan.head.start)

        for p in plan.placements:
            j = by_id[p.job_id]
            del queue[p.job_id]
            running[p.job_id] = (now, p.gpu_uuids)
            held += len(p.gpu_uuids)
            start_of[p.job_id] = now
            heapq.heappush(events, (now + j["run"], 0, p.job_id))
            est = promised.get(p.job_id)
            if est is not None and now > est + 1e-6:
                violations.append(f"job {p.job_id} ({j['gpus']} GPUs) started {now - est:.0f} s after the "
                                  f"start it was promised as head")

    waits = sorted(start_of[j["id"]] - j["submit"] for j in trace)
    slow: dict[str, list[float]] = {}
    for j in trace:
        w = start_of[j["id"]] - j["submit"]
        slow.setdefault(j["owner"], []).append((w + j["run"]) / max(j["run"], SLOWDOWN_FLOOR))
    per_user = [statistics.fmean(v) for _, v in sorted(slow.items())]
    jain = sum(per_user) ** 2 / (len(per_user) * sum(x * x for x in per_user))
    heavy = [start_of[j["id"]] - j["submit"] for j in trace if j["owner"] in HEAVY]
    light = [start_of[j["id"]] - j["submit"] for j in trace if j["owner"] not in HEAVY]
    big = [start_of[j["id"]] - j["submit"] for j in trace if j["gpus"] == 8]
    return {
        "allocation": busy_q / avail_q if avail_q else float("nan"),
        "mean_wait_h": statistics.fmean(waits) / 3600,
        "p95_wait_h": waits[math.ceil(0.95 * len(waits)) - 1] / 3600,
        "max_wait_h": waits[-1] / 3600,
        "jain": jain,
        "per_user": per_user,
        "heavy_h": statistics.fmean(heavy) / 3600,
        "light_h": statistics.fmean(light) / 3600,
        "big_h": statistics.fmean(big) / 3600 if big else float("nan"),
        "makespan_d": (max(start_of[j["id"]] + j["run"] for j in trace) - first) / 86400,
        "us_call": sched_s / calls * 1e6 if calls else 0.0,
        "ms_max": sched_max * 1e3,
        "usage_us": usage_s / calls * 1e6 if calls and policy.fair_share else None,
        "calls": calls,
        "mean_q": q_len_time / (avail_q / N_GPUS) if avail_q else 0.0,
        "max_q": max_q,
        "violations": violations,
    }


# --------------------------------------------------------------------------- schedule() cost

def load_scheduler_at(ref: str):
    """mlpd.scheduling.scheduler as it was at git ref `ref` (for a before/after ratio), or None without git."""
    import importlib.util
    import os
    import subprocess
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        src = subprocess.run(["git", "-C", root, "show", f"{ref}:mlpd/scheduling/scheduler.py"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = os.path.join(tempfile.mkdtemp(), "scheduler_before.py")
    with open(path, "w") as fh:
        fh.write(src)
    spec = importlib.util.spec_from_file_location("scheduler_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scheduler_before"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def micro_state(n_queued: int, seed: int, free: int):
    """A busy 8-GPU host (all but `free` GPUs held, ends spread over the next day) and n_queued jobs
    drawn from the trace's distribution (sizes, time limits, 10 users), with fair-share usage and slowdowns."""
    rng = random.Random(seed)
    trace = make_trace(max(n_queued, 50), seed, 0.9)[:n_queued]
    now = 30 * 86400.0
    holdings = [Holding(g.uuid, f"run{g.index}", rng.choice(USERS), now + rng.uniform(60, 86400))
                for g in GPUS[free:]]
    queue = [QueuedJob(j["id"], j["owner"], j["gpus"], None, 0, now - rng.uniform(0, 86400), j["limit"]) for j in trace]
    usage = {u: rng.uniform(0, 5e6) * w for u, w in zip(USERS, USER_WEIGHTS, strict=True)}
    slowdown = {u: rng.uniform(1, 40) for u in USERS}
    return holdings, queue, now, usage, slowdown


def as_before(cls, obj):
    """obj as the older scheduler's dataclass cls: the fields it has (later ones, e.g. rank, left out)."""
    return cls(**{f.name: getattr(obj, f.name) for f in dataclasses.fields(cls)})


def time_call(fn, repeat: int) -> float:
    """Median wall time of fn() in seconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def inputs_cost(repeat: int) -> None:
    """What the daemon pays before each pass for fair share's slowdown factor: quotas.fair_share_slowdown
    (one aggregate query on the index of jobs.started_at) on a real SQLite state database holding N GPU
    jobs started over the window (4 half-lives), against reading those rows and summing them in Python
    (what it does on an SQLite without math functions)."""
    import json
    import tempfile

    from mlpd.scheduling import quotas
    from mlpd.config import load_config
    from mlpd.store import Store

    print(f"fair share's inputs per pass, real SQLite, median of {repeat} calls, 30 jobs queued by 10 users")
    print()
    print("| GPU jobs started in the window | fair_share_slowdown (ms) | rows summed in Python (ms) | ratio |")
    print("|---|---|---|---|")
    for n in (2000, 20000):
        state = tempfile.mkdtemp(prefix="mlpd-bench-")
        cfg = load_config(None, {"server.state_dir": state})
        store = Store(cfg.db_path)
        store.migrate()
        rng = random.Random(n)
        now = 1_800_000_000.0
        window = 4 * SLOWDOWN_HALF_LIFE
        with store.write() as db:
            for i in range(n):
                start = now - rng.uniform(0, window)
                db.execute("INSERT INTO jobs (id, owner, spec, state, submitted_at, started_at, ended_at, updated_at, kind, "
                           "gpu_uuids) VALUES (?, ?, ?, 'succeeded', ?, ?, ?, ?, 'job', ?)",
                           [f"j{i:06d}", rng.choice(USERS), json.dumps({"command": ["python", "train.py"], "gpus": 1}),
                            start - rng.expovariate(1 / 3600), start, start + rng.expovariate(1 / 2400), start, '["GPU-00"]'])
        queue = [QueuedJob(f"q{i}", USERS[i % 10], 1, None, 0, now - 600, 3600.0) for i in range(30)]
        max_age = POLICIES[2][2].max_age
        sql = time_call(lambda: quotas.fair_share_slowdown(store, cfg, now, queue, max_age), repeat)
        real = quotas.FAIR_SHARE_SLOWDOWN_SQL
        quotas.FAIR_SHARE_SLOWDOWN_SQL = real.replace("exp(", "no_exp(")  # as an SQLite without math functions
        try:
            py = time_call(lambda: quotas.fair_share_slowdown(store, cfg, now, queue, max_age), max(3, repeat // 10))
        finally:
            quotas.FAIR_SHARE_SLOWDOWN_SQL = real
        print(f"| {n} | {sql * 1e3:.2f} | {py * 1e3:.2f} | {sql / py:.2f}x |")
    print()


def micro(before_ref: str, repeat: int) -> None:
    """schedule() with 30 and 400 queued jobs on 8 GPUs: this version (no explanations, as the daemon's
    pass runs it; every job explained, as before), against the scheduler at before_ref."""
    before = load_scheduler_at(before_ref) if before_ref else None
    slow_repeat = max(5, repeat // 10)
    print(f"schedule() on 8 GPUs, median of {repeat} calls ({slow_repeat} for the slow columns), {POLICIES[2][1]}, 10 users")
    print()
    cols = ["queued", "free GPUs", "schedule() (ms)", "schedule(explain=True) (ms)", "explain() one job (ms)"]
    if before:
        cols += [f"before ({before_ref}) (ms)", "ratio now / before"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    policy = POLICIES[2][2]  # mlpd's row: the defaults, or as --policy sets them
    for n in (30, 400):
        for free in (0, 2):
            holdings, queue, now, usage, slowdown = micro_state(n, 7, free)
            fast = time_call(lambda: schedule(GPUS, holdings, queue, now, policy, usage=usage, slowdown=slowdown), repeat)
            full = time_call(lambda: schedule(GPUS, holdings, queue, now, policy, usage=usage, slowdown=slowdown,
                                              explain=True), slow_repeat)
            plan = schedule(GPUS, holdings, queue, now, policy, usage=usage, slowdown=slowdown)
            last = plan.waiting[-1] if plan.waiting else queue[-1].id  # the worst case: the last in the queue
            one = time_call(lambda: explain(GPUS, holdings, queue, now, last, policy, usage=usage, slowdown=slowdown), repeat)
            row = [str(n), str(free), f"{fast * 1e3:.2f}", f"{full * 1e3:.2f}", f"{one * 1e3:.2f}"]
            if before:
                old_policy = before.Policy(backfill=True, fair_share=True)
                old = time_call(lambda: before.schedule(before.GPUS if hasattr(before, "GPUS") else
                                                        [before.Gpu(g.uuid, g.index, g.model) for g in GPUS],
                                                        [as_before(before.Holding, h) for h in holdings],
                                                        [as_before(before.QueuedJob, q) for q in queue],
                                                        now, old_policy, usage=usage), slow_repeat)
                row += [f"{old * 1e3:.2f}", f"{fast / old:.2f}x"]
            print("| " + " | ".join(row) + " |")
    print()


# --------------------------------------------------------------------------- report

TARGETS = (  # the bar for mlpd (fair share on) against EASY backfill on the same trace
    ("GPU allocation while queued >= EASY's", lambda r, e: r["allocation"] >= e["allocation"] - 1e-9),
    ("p95 wait <= EASY's", lambda r, e: r["p95_wait_h"] <= e["p95_wait_h"] + 1e-9),
    ("max wait <= 1.5x EASY's", lambda r, e: r["max_wait_h"] <= 1.5 * e["max_wait_h"] + 1e-9),
    ("Jain over per-user slowdown >= 0.95", lambda r, e: r["jain"] >= 0.95),
)


def parse_policy(text: str) -> dict[str, float | bool]:
    """"weight_size=0,fair_share=false" -> {"weight_size": 0.0, "fair_share": False}; ValueError on a bad item."""
    fields = {f.name: f.type for f in dataclasses.fields(Policy)}
    out: dict[str, float | bool] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"--policy: {item!r} is not FIELD=VALUE with FIELD one of {', '.join(fields)}")
        if fields[name] == "bool":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"--policy: {name} takes true or false, not {value!r}")
            out[name] = value.lower() == "true"
        else:
            try:
                out[name] = float(value)
            except ValueError:
                raise ValueError(f"--policy: {name} takes a number, not {value!r}") from None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="also replay this many traces (seed, seed+1, ...) and "
                                                          "summarize the targets over them (default 1)")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--load", type=float, default=0.90, help="offered load (default 0.90)")
    ap.add_argument("--before", default="4ac6dba", help="git ref of the scheduler to compare schedule() time with "
                                                        "('' = none; default: before issue 15)")
    ap.add_argument("--repeat", type=int, default=200, help="calls per schedule() timing (default 200)")
    ap.add_argument("--micro-only", action="store_true", help="only time schedule(); no trace replay")
    ap.add_argument("--policy", default="", metavar="FIELD=VALUE,...",
                    help="override fields of mlpd's Policy for the mlpd row, e.g. weight_size=0 (default: none)")
    ap.add_argument("--slowdown-half-life", default=SLOWDOWN_HALF_LIFE_DEFAULT, metavar="DURATION",
                    help=f"scheduler.slowdown_half_life for the mlpd row (default: mlpd's, {SLOWDOWN_HALF_LIFE_DEFAULT})")
    args = ap.parse_args()
    global POLICIES, SLOWDOWN_HALF_LIFE
    SLOWDOWN_HALF_LIFE = parse_duration(args.slowdown_half_life)
    if args.policy:
        try:
            overrides = parse_policy(args.policy)
        except ValueError as e:
            ap.error(str(e))
        POLICIES = POLICIES[:2] + (("mlpd", f"mlpd ({args.policy})", dataclasses.replace(POLICIES[2][2], **overrides)),)
    t_all = time.perf_counter()
    micro(args.before, args.repeat)
    inputs_cost(max(5, args.repeat // 10))
    if args.micro_only:
        return
    trace = make_trace(args.jobs, args.seed, args.load)
    print("\n".join(describe_trace(trace)))
    print(f"fair share: decayed_usage, half-life {HALF_LIFE / 86400:.0f} days (mlpd's default), "
          f"ledger window 4 half-lives; owner_slowdowns, half-life {SLOWDOWN_HALF_LIFE / 86400:g} days; "
          "mlpd's weights: the defaults of mlpd.toml")
    results = {}
    for key, _, policy in POLICIES:
        t0 = time.perf_counter()
        results[key] = r = simulate(trace, policy)
        print(f"  {key}: {r['calls']} schedule() calls, queue length mean {r['mean_q']:.0f} (while queued) / "
              f"max {r['max_q']}, simulated in {time.perf_counter() - t0:.1f} s")
    easy = results["backfill"]
    print()
    print("| policy | GPU allocation while queued | mean wait (h) | p95 wait (h) | Jain (per-user mean slowdown) "
          "| mean wait heavy / light users (h) | mean wait 8-GPU jobs (h) | max wait (h) | makespan (days) "
          "| schedule() mean µs/call (max ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, label, _ in POLICIES:
        r = results[key]
        cost = f"{r['us_call']:.0f} ({r['ms_max']:.1f})"
        if r["usage_us"] is not None:
            cost += f" + fair-share inputs {r['usage_us']:.0f}"
        print(f"| {label} | {r['allocation']:.3f} | {r['mean_wait_h']:.2f} | {r['p95_wait_h']:.2f} | {r['jain']:.3f} "
              f"| {r['heavy_h']:.2f} / {r['light_h']:.2f} | {r['big_h']:.2f} | {r['max_wait_h']:.1f} "
              f"| {r['makespan_d']:.2f} | {cost} |")
    print()
    print("| ratio vs EASY backfill | GPU allocation | mean wait | p95 wait | max wait | Jain | makespan |")
    print("|---|---|---|---|---|---|---|")
    for key, label, _ in POLICIES:
        if key == "backfill":
            continue
        r = results[key]
        print(f"| {label} | {r['allocation'] / easy['allocation']:.2f}x | {r['mean_wait_h'] / easy['mean_wait_h']:.2f}x "
              f"| {r['p95_wait_h'] / easy['p95_wait_h']:.2f}x | {r['max_wait_h'] / easy['max_wait_h']:.2f}x "
              f"| {r['jain'] / easy['jain']:.2f}x | {r['makespan_d'] / easy['makespan_d']:.2f}x |")
    print()
    mlpd = results["mlpd"]
    print("targets (mlpd vs EASY, this trace): " + "; ".join(
        f"{name}: {'met' if ok(mlpd, easy) else 'NOT met'}" for name, ok in TARGETS))
    if args.seeds > 1:
        met = {name: 0 for name, _ in TARGETS}
        jains = []
        for seed in range(args.seed, args.seed + args.seeds):
            t = make_trace(args.jobs, seed, args.load)
            e, m = simulate(t, POLICIES[1][2]), simulate(t, POLICIES[2][2])
            jains.append((e["jain"], m["jain"]))
            for name, ok in TARGETS:
                met[name] += ok(m, e)
        print(f"over {args.seeds} traces (seeds {args.seed}..{args.seed + args.seeds - 1}): "
              + "; ".join(f"{name}: met on {k}" for name, k in met.items())
              + "; Jain EASY / mlpd: " + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in jains)
              + f" (mean {statistics.fmean(a for a, _ in jains):.3f}/{statistics.fmean(b for _, b in jains):.3f})")
    print()
    bad = False
    for key, _, _ in POLICIES:
        v = results[key]["violations"]
        if v:
            bad = True
            print(f"SANITY {key}: {len(v)} violation(s); first: " + "; ".join(v[:3]))
    if not bad:
        print("sanity checks: no violations (placements valid, FIFO never overtakes, no head starts after the "
              "start it was promised when it became the head)")
    print(f"total wall time {time.perf_counter() - t_all:.1f} s")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
