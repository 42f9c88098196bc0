"""Specs for mlpd.scheduling.scheduler's multifactor order and sticky reservations: the start time promised
to the head is kept, over passes, whatever fair share, age and later arrivals say."""
import random

from mlpd.scheduling.scheduler import (
    Gpu, GpuLimit, Holding, Policy, QueuedJob, fair_share_factors, owner_slowdowns, priority_score, queue_order, schedule, size_factor,
    score_terms, slowdown_factors, waiting_for_the_host,
)

NOW = 1_800_000_000.0
HOUR = 3600.0
A100, H100 = "NVIDIA A100", "NVIDIA H100"


def gpus(n, model=A100):
    return [Gpu(f"GPU-{i}", i, model) for i in range(n)]


def job(id, owner, gpus=1, time_limit=None, submitted_at=NOW, priority=0):
    return QueuedJob(id, owner, gpus, None, priority, submitted_at, time_limit)


def placed(plan):
    return {p.job_id: p.gpu_uuids for p in plan.placements}


def keep(plan, reserved, now):
    """What the controller does after a pass (jobs.reserved_at): the head keeps its reservation."""
    return {plan.head.job_id: reserved.get(plan.head.job_id, now)} if plan.head else {}


# --- the order ---------------------------------------------------------------------

def test_fair_share_factor_is_one_for_no_usage_and_half_for_a_fair_share():
    f = fair_share_factors({"heavy": 300.0, "even": 100.0, "idle": 0.0}, owners={"new", "idle"})
    assert f["idle"] == f["new"] == 1.0
    assert f["even"] == 2 ** -1  # a quarter of the usage, a quarter of the shares (4 users)
    assert f["heavy"] == 2 ** -3
    assert fair_share_factors({}, {"a"}) == {"a": 1.0}


def test_score_sums_weighted_priority_age_fair_share_and_expansion():
    p = Policy(weight_priority=10, weight_age=100, max_age=10 * HOUR, weight_fair_share=1000,
               weight_expansion=10000, max_expansion=4)
    j = job("j", "alice", time_limit=HOUR, submitted_at=NOW - 2 * HOUR, priority=3)
    # 3 x 10 + 0.2 x 100 + 0.5 x 1000 + (2 h / (4 x 1 h)) x 10000
    assert priority_score(j, NOW, p, {"alice": 0.5}) == 30 + 20 + 500 + 5000
    assert priority_score(j, NOW, Policy(fair_share=False, weight_priority=10, weight_age=0, weight_expansion=0), {}) == 30


def test_age_lets_an_old_job_of_a_heavy_user_pass_a_new_job_of_a_light_user():
    usage = {"heavy": 1e6, "light": 1.0}
    old = job("old", "heavy", time_limit=HOUR, submitted_at=NOW - 3 * 86400)
    new = job("new", "light", time_limit=HOUR, submitted_at=NOW)
    p = Policy(weight_expansion=0)
    assert [j.id for j in queue_order([old, new], usage, now=NOW, policy=p)] == ["old", "new"]
    young = job("old", "heavy", time_limit=HOUR, submitted_at=NOW - 60)
    assert [j.id for j in queue_order([young, new], usage, now=NOW, policy=p)] == ["new", "old"]


def test_fair_share_off_is_priority_then_submit_order():
    usage = {"heavy": 1e6, "light": 1.0}
    queue = [job("h", "heavy", submitted_at=NOW - 10), job("l", "light", submitted_at=NOW - 5)]
    assert [j.id for j in queue_order(queue, usage, now=NOW, policy=Policy(fair_share=False))] == ["h", "l"]
    assert [j.id for j in queue_order(queue, usage, now=NOW, policy=Policy())] == ["l", "h"]


def test_size_factor_is_the_share_of_the_host_in_full_up_to_size_time_then_less():
    assert size_factor(job("w", "a", gpus=8, time_limit=300.0), 8, HOUR, 7 * 86400) == 1.0
    assert size_factor(job("w", "a", gpus=8, time_limit=HOUR), 8, HOUR, 7 * 86400) == 1.0
    assert size_factor(job("h", "a", gpus=4, time_limit=2 * HOUR), 8, HOUR, 7 * 86400) == 0.5 * 0.5
    assert size_factor(job("n", "a", gpus=1, time_limit=600.0), 8, HOUR, 7 * 86400) == 1 / 8
    assert size_factor(job("u", "a", gpus=8, time_limit=None), 8, HOUR, 7 * 86400) == HOUR / (7 * 86400)
    assert size_factor(job("x", "a", gpus=16, time_limit=60.0), 8, HOUR, 7 * 86400) == 1.0  # capped at the host
    assert size_factor(job("c", "a", gpus=0, time_limit=60.0), 8, HOUR, 7 * 86400) == 0.0  # CPU-only
    assert size_factor(job("w", "a", gpus=8, time_limit=60.0), 0, HOUR, 7 * 86400) == 0.0  # host unknown


def test_score_adds_weighted_size_only_with_the_host_size():
    p = Policy(fair_share=False, weight_age=0, weight_expansion=0, weight_size=1000, size_time=HOUR)
    j = job("j", "alice", gpus=2, time_limit=4 * HOUR)
    assert priority_score(j, NOW, p, {}, host_gpus=8) == 1000 * (2 / 8) * (1 / 4)
    assert priority_score(j, NOW, p, {}) == 0  # without the host's size, no size term


def test_size_puts_a_wide_short_job_ahead_of_an_older_narrow_long_one():
    old = job("narrow", "a", gpus=1, time_limit=10 * HOUR, submitted_at=NOW - 2 * HOUR)
    wide = job("wide", "b", gpus=8, time_limit=600.0, submitted_at=NOW)
    assert [j.id for j in queue_order([old, wide], {}, now=NOW, policy=Policy(weight_size=0), host_gpus=8)] == ["narrow", "wide"]
    p = Policy(weight_size=5000)
    assert [j.id for j in queue_order([old, wide], {}, now=NOW, policy=p, host_gpus=8)] == ["wide", "narrow"]
    # a long wide job gets little: 8/8 x 1 h / 100 h x 5000 = 50 < 2 h of age and expansion of the narrow one
    long_wide = job("long", "b", gpus=8, time_limit=100 * HOUR, submitted_at=NOW)
    assert [j.id for j in queue_order([old, long_wide], {}, now=NOW, policy=p, host_gpus=8)] == ["narrow", "long"]


def test_with_size_the_wide_short_job_holds_the_reservation_and_the_host_drains_for_it():
    g = gpus(2)
    busy = [Holding("GPU-0", "run", "c", NOW + HOUR)]
    narrow = job("narrow", "a", gpus=1, time_limit=10 * HOUR, submitted_at=NOW - HOUR)
    wide = job("wide", "b", gpus=2, time_limit=600.0, submitted_at=NOW - 60)
    plain = schedule(g, busy, [narrow, wide], NOW, Policy(weight_size=0))
    assert placed(plain) == {"narrow": ("GPU-1",)} and plain.head.job_id == "wide"
    assert plain.head.start == NOW + 10 * HOUR  # behind the narrow job's 10 hours
    sized = schedule(g, busy, [narrow, wide], NOW, Policy(weight_size=5000))
    assert placed(sized) == {} and sized.head.job_id == "wide" and sized.head.start == NOW + HOUR


def test_a_reserved_job_goes_first_whatever_its_score():
    queue = [job("low", "heavy", priority=-5), job("high", "light", priority=50)]
    assert [j.id for j in queue_order(queue, {"heavy": 1e9}, now=NOW, reserved={"low": NOW - 1})] == ["low", "high"]


# --- the minimal case ----------------------------------------------------------

def test_the_heavy_users_head_job_starts_when_promised_though_a_light_user_arrives():
    # All 8 GPUs busy: 0-3 until +1 h, 4-7 until +3 h. The heavy user's 4-GPU job is the head,
    # promised +1 h. A light user then submits an 8-GPU 1 h job and a 4-GPU 2 h job.
    g = gpus(8)
    busy = [Holding(f"GPU-{i}", f"r{i}", "carol", NOW + (HOUR if i < 4 else 3 * HOUR)) for i in range(8)]
    heavy = job("heavy4", "heavy", gpus=4, time_limit=2 * HOUR, submitted_at=NOW)
    usage = {"heavy": 1e6, "light": 10.0, "carol": 1e5}
    plan = schedule(g, busy, [heavy], NOW, usage=usage)
    assert plan.head.job_id == "heavy4" and plan.head.start == NOW + HOUR
    reserved = keep(plan, {}, NOW)

    light = [job("light8", "light", gpus=8, time_limit=HOUR, submitted_at=NOW + 60),
             job("light4", "light", gpus=4, time_limit=2 * HOUR, submitted_at=NOW + 61)]
    plan = schedule(g, busy, [heavy] + light, NOW + 120, usage=usage, reserved=reserved, explain=True)
    assert placed(plan) == {}
    assert plan.head.job_id == "heavy4" and plan.head.start == NOW + HOUR
    assert [w.job_id for w in plan.waits if w.reserved] == ["heavy4"]
    reserved = keep(plan, reserved, NOW + 120)

    at = NOW + HOUR
    freed = [h for h in busy if h.ends_by > at]
    plan = schedule(g, freed, [heavy] + light, at, usage=usage, reserved=reserved)
    assert placed(plan) == {"heavy4": ("GPU-0", "GPU-1", "GPU-2", "GPU-3")}  # at +1 h, as promised
    # Without the reservation the light user's 8-GPU job becomes the head at +1 h, its 4-GPU job
    # backfills onto GPUs 0-3, and the heavy user would start only at +4 h.
    plan = schedule(g, freed, [heavy] + light, at, usage=usage)
    assert placed(plan) == {"light4": ("GPU-0", "GPU-1", "GPU-2", "GPU-3")}


def test_backfill_leaves_the_head_room_in_its_quota():
    limit = [GpuLimit("user alice", frozenset({"alice"}), 3)]
    g = gpus(4)
    busy = [Holding("GPU-3", "r", "bob", NOW + HOUR), Holding("GPU-2", "r2", "bob", NOW + HOUR)]
    queue = [job("head", "alice", gpus=3, time_limit=HOUR), job("short", "alice", gpus=1, time_limit=HOUR / 2, submitted_at=NOW + 1),
             job("other", "carol", gpus=1, time_limit=HOUR / 2, submitted_at=NOW + 2)]
    plan = schedule(g, busy, queue, NOW, limits=limit, policy=Policy(fair_share=False))
    assert plan.head.job_id == "head"
    # alice's own short job would leave her head no quota if GPUs free early; carol's goes onto a reserved GPU
    assert placed(plan) == {"other": ("GPU-1",)}


# --- over random scenarios ---------------------------------------------------------

def _simulate(rng, policy):
    """Replay random arrivals and completions through schedule(), keeping reservations as the
    controller does; check every pass that backfill cannot delay the head, and at every start
    that no head starts after the time it was promised when it became the head."""
    models = [A100] if rng.random() < 0.7 else [A100, H100]
    gs = [Gpu(f"GPU-{i}", i, rng.choice(models)) for i in range(rng.randint(2, 8))]
    owners = ["ann", "bo", "cy"]
    limits = [GpuLimit("user bo", frozenset({"bo"}), rng.randint(2, 4))] if rng.random() < 0.3 else []
    arrivals = []
    t = NOW
    for i in range(rng.randint(5, 25)):
        t += rng.choice([0, 0, 60, 600, 1800])
        limit = rng.choice([None, 600.0, 1800.0, 3600.0, 4 * 3600.0]) if rng.random() < 0.9 else None
        run = (limit or 6 * 3600.0) * rng.uniform(0.05, 1.0)  # jobs end by their time limit (no failures)
        model = rng.choice([None, None, A100]) if len(models) > 1 else None
        arrivals.append((t, QueuedJob(f"j{i}", rng.choice(owners), rng.choice([0, 1, 1, 1, 2, 2, 3, 4, 8]), model,
                                      rng.choice([0, 0, 0, 1]), t, limit), run))
    queue, running, reserved, promised, started = {}, {}, {}, {}, {}
    events = sorted({a[0] for a in arrivals})
    runtime = {q.id: run for _, q, run in arrivals}
    usage = {o: rng.uniform(0, 1e5) for o in owners}
    slowdown = {o: rng.uniform(1, 50) for o in owners}
    for _ in range(500):
        if not events:
            break
        now = events.pop(0)
        for jid in [j for j, (end, _, _, _) in running.items() if end <= now]:
            del running[jid]
        for at, q, _ in arrivals:
            if at == now:
                queue[q.id] = q
        for o in owners:  # usage and slowdowns move between passes: the order churns
            usage[o] = max(0.0, usage[o] + rng.uniform(-2e4, 2e4))
            slowdown[o] = max(1.0, slowdown[o] + rng.uniform(-10, 10))
        holdings = [Holding(u, jid, q.owner, None if q.time_limit is None else st + q.time_limit)
                    for jid, (_, st, q, uuids) in running.items() for u in uuids]
        plan = schedule(gs, holdings, list(queue.values()), now, policy, usage=usage, limits=limits, reserved=reserved,
                        slowdown=slowdown)
        reserved = keep(plan, reserved, now)
        if plan.head is not None and plan.head.start is not None:
            promised.setdefault(plan.head.job_id, plan.head.start)
            # Backfill never delays the head: alone, with everything placed now holding its GPUs,
            # it could start no earlier than it will.
            held_now = holdings + [Holding(u, p.job_id, queue[p.job_id].owner,
                                           None if queue[p.job_id].time_limit is None else now + queue[p.job_id].time_limit)
                                   for p in plan.placements for u in p.gpu_uuids]
            alone = schedule(gs, held_now, [queue[plan.head.job_id]], now, policy, limits=limits, explain=True)
            assert alone.placements == () and alone.head.start is not None
            assert alone.head.start <= plan.head.start
        for p in plan.placements:
            q = queue.pop(p.job_id)
            assert p.job_id not in promised or now <= promised[p.job_id], (p.job_id, now - promised[p.job_id])
            started[p.job_id] = now
            running[p.job_id] = (now + runtime[p.job_id], now, q, p.gpu_uuids)
            events.append(now + runtime[p.job_id])
        events = sorted(set(events))
    return started, promised


def test_property_no_head_starts_later_than_promised_and_backfill_never_delays_it():
    rng = random.Random(15)
    kept = 0
    for _ in range(150):
        policy = rng.choice([Policy(), Policy(fair_share=False), Policy(weight_fair_share=5000, weight_age=0),
                             Policy(weight_size=5000)])
        started, promised = _simulate(rng, policy)
        kept += sum(1 for j in promised if j in started)
    assert kept > 150  # the property was exercised on many heads that went on to start


def test_policy_defaults_are_the_documented_settings(tmp_path, monkeypatch):
    import mlpd.config
    from mlpd.config import load_config
    from mlpd.controller import scheduler_policy

    # the built-in defaults, not an installed host's /etc/mlpd/mlpd.toml (an upgrade keeps the admin's values)
    monkeypatch.setattr(mlpd.config, "SYSTEM_CONFIG", str(tmp_path / "absent.toml"))
    assert scheduler_policy(load_config(None, {"server.state_dir": str(tmp_path)})) == Policy()
    off = load_config(None, {"server.state_dir": str(tmp_path), "scheduler.fair_share": False, "scheduler.max_age": "1d"})
    assert scheduler_policy(off) == Policy(fair_share=False, max_age=86400.0)
    sized = load_config(None, {"server.state_dir": str(tmp_path), "scheduler.weight_size": 2000, "scheduler.size_time": "30m"})
    assert scheduler_policy(sized) == Policy(weight_size=2000.0, size_time=1800.0)


def test_bad_size_settings_are_refused_in_one_line(tmp_path):
    import pytest
    from mlpd.config import ConfigError, load_config

    for key, value, words in (("scheduler.weight_size", -1, "scheduler.weight_size"),
                              ("scheduler.size_time", "soon", "scheduler.size_time")):
        with pytest.raises(ConfigError) as info:
            load_config(None, {"server.state_dir": str(tmp_path), key: value})
        assert words in str(info.value) and "\n" not in str(info.value)


def test_queue_order_is_the_order_of_priority_score():
    rng = random.Random(3)
    for _ in range(200):
        policy = Policy(fair_share=rng.random() < 0.7, max_age=rng.choice([0.0, 3600.0, 7 * 86400.0]),
                        weight_expansion=rng.choice([0.0, 1000.0]), max_expansion=rng.choice([1.0, 100.0]))
        queue = [QueuedJob(f"j{i}", rng.choice("abc"), 1, None, rng.randint(-1, 1), NOW - rng.uniform(-60, 86400),
                           rng.choice([None, 60.0, 3600.0, 86400.0 * 30])) for i in range(rng.randint(1, 12))]
        usage = {o: rng.uniform(0, 100) for o in "ab"}
        factors = fair_share_factors(usage, {j.owner for j in queue})
        expected = sorted(queue, key=lambda j: (-priority_score(j, NOW, policy, factors), j.submitted_at, j.id))
        assert queue_order(queue, usage, now=NOW, policy=policy) == expected


def test_queue_order_is_the_order_of_priority_score_with_job_size():
    rng = random.Random(4)
    for _ in range(200):
        policy = Policy(weight_size=rng.choice([0.0, 50.0, 5000.0]), size_time=rng.choice([0.0, 600.0, 3600.0]),
                        max_age=rng.choice([0.0, 7 * 86400.0]))
        host = rng.choice([0, 1, 4, 8])
        queue = [QueuedJob(f"j{i}", rng.choice("abc"), rng.choice([0, 1, 2, 4, 8, 16]), None, 0,
                           NOW - rng.uniform(-60, 86400), rng.choice([None, 60.0, 3600.0, 86400.0 * 30]))
                 for i in range(rng.randint(1, 12))]
        usage = {o: rng.uniform(0, 100) for o in "ab"}
        factors = fair_share_factors(usage, {j.owner for j in queue})
        expected = sorted(queue, key=lambda j: (-priority_score(j, NOW, policy, factors, host), j.submitted_at, j.id))
        assert queue_order(queue, usage, now=NOW, policy=policy, host_gpus=host) == expected


# --- the slowdown factor (fair share's second half) ----------------------------------

def test_owner_slowdown_is_the_weighted_mean_of_bounded_slowdowns():
    half = 86400.0
    history = [
        ("alice", NOW - 5 * HOUR, NOW - 4 * HOUR, NOW - 2 * HOUR),   # waited 1 h, ran 2 h: 1.5
        ("alice", NOW - 3 * HOUR, NOW - HOUR, None),                  # waited 2 h, running 1 h: 3
        ("bob", NOW - 60.0, NOW - 60.0, NOW - 30.0),                  # no wait; 30 s counts as 10 min: 1
        ("bob", NOW - half - 1140.0, NOW - half, NOW - half + 60.0),  # waited 19 min, ran 1 (counts 10), a half-life ago: 2
    ]
    s = owner_slowdowns(history, [], NOW, half, 7 * 86400.0)
    w = 0.5 ** (4 * HOUR / half)
    w2 = 0.5 ** (HOUR / half)
    assert abs(s["alice"] - (w * 1.5 + w2 * 3.0) / (w + w2)) < 1e-9
    w3 = 0.5 ** (60.0 / half)
    assert abs(s["bob"] - (w3 * 1.0 + 0.5 * 2.0) / (w3 + 0.5)) < 1e-9


def test_queued_work_counts_with_its_slowdown_so_far_and_cpu_jobs_not_at_all():
    queue = [job("q", "carol", time_limit=HOUR, submitted_at=NOW - 3 * HOUR),   # (3 h + 1 h) / 1 h = 4
             job("n", "dave", time_limit=None, submitted_at=NOW - 7 * 86400.0),  # no limit: max_age, (7 d + 7 d) / 7 d = 2
             QueuedJob("cpu", "erin", 0, None, 0, NOW - 86400.0, 60.0)]
    s = owner_slowdowns([], queue, NOW, 86400.0, 7 * 86400.0)
    assert s == {"carol": 4.0, "dave": 2.0}


def test_queued_work_held_by_its_owners_own_quota_does_not_count_as_slowed_down():
    # dave may hold 2 GPUs, holds 1 and queues three 1-GPU jobs: the first waits for the host, the
    # other two for dave's own quota; team "vision" (carol, erin) may hold 2, erin's 2-GPU job was
    # queued before carol's; frank is over his GPU-hours: none of his work counts
    limits = [GpuLimit("user dave", frozenset({"dave"}), 2), GpuLimit("team vision", frozenset({"carol", "erin"}), 2)]
    holdings = [Holding("GPU-0", "r", "dave", None)]
    queue = [job("d3", "dave", submitted_at=NOW - 1), job("d1", "dave", submitted_at=NOW - 3), job("d2", "dave", submitted_at=NOW - 2),
             job("c1", "carol", submitted_at=NOW - 1), job("e1", "erin", gpus=2, submitted_at=NOW - 5),
             job("f1", "frank", submitted_at=NOW - 9), job("big", "gina", gpus=8, submitted_at=NOW - 9),
             QueuedJob("cpu", "dave", 0, None, 0, NOW - 9, 60.0)]
    counted = waiting_for_the_host(queue, holdings, limits, over_quota={"frank"})
    assert [j.id for j in counted] == ["big", "e1", "d1"]
    # so queueing more than the quota lets run raises nothing
    base = owner_slowdowns([], [job("d1", "dave", time_limit=HOUR, submitted_at=NOW - 3 * HOUR)], NOW, 86400.0, 7 * 86400.0)
    many = [job(f"d{i}", "dave", time_limit=HOUR, submitted_at=NOW - 3 * HOUR + i) for i in range(20)]
    assert owner_slowdowns([], waiting_for_the_host(many, holdings, limits), NOW, 86400.0, 7 * 86400.0) == base
    assert waiting_for_the_host(many, holdings, ()) == sorted(many, key=lambda j: j.submitted_at)  # no quotas: all count


def test_slowdown_factor_is_one_for_the_most_slowed_down_owner_and_zero_for_none():
    f = slowdown_factors({"a": 5.0, "b": 3.0, "c": 1.0}, owners={"d"})
    assert f == {"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0}
    assert slowdown_factors({"a": 1.0}, {"b"}) == {"a": 0.0, "b": 0.0}  # nobody waited: no one goes ahead
    # seconds of waiting (slowdowns a hair above 1) must not reorder the queue by the whole weight
    tiny = slowdown_factors({"a": 1.000002, "b": 1.000001})
    assert tiny["a"] < 1e-5 and tiny["b"] < 1e-5
    assert slowdown_factors({"a": 1.5, "b": 1.0}) == {"a": 0.5, "b": 0.0}  # scaled as if the worst were 2


def test_the_owner_slowed_down_most_goes_first_only_with_fair_share():
    # bob used less (usage fair share favours him) but alice's work has waited far longer for its length
    usage = {"alice": 100.0, "bob": 10.0}
    slowdown = {"alice": 40.0, "bob": 2.0}
    a, b = job("a", "alice", time_limit=HOUR), job("b", "bob", time_limit=HOUR)
    p = Policy(weight_expansion=0, weight_age=0)
    assert [j.id for j in queue_order([b, a], usage, now=NOW, policy=p, slowdown=slowdown)] == ["a", "b"]
    assert [j.id for j in queue_order([b, a], usage, now=NOW, policy=p)] == ["b", "a"]
    off = Policy(weight_expansion=0, weight_age=0, weight_slowdown=0)
    assert [j.id for j in queue_order([b, a], usage, now=NOW, policy=off, slowdown=slowdown)] == ["b", "a"]
    no_fs = Policy(fair_share=False, weight_expansion=0, weight_age=0)
    # without fair share neither usage nor slowdown counts: submit order, then id
    assert [j.id for j in queue_order([b, a], usage, now=NOW, policy=no_fs, slowdown=slowdown)] == ["a", "b"]
    later_a = job("a", "alice", time_limit=HOUR, submitted_at=NOW + 1)
    assert [j.id for j in queue_order([later_a, b], usage, now=NOW + 1, policy=no_fs, slowdown=slowdown)] == ["b", "a"]
    # a job's own priority still outranks any slowdown
    urgent = job("u", "bob", time_limit=HOUR, priority=1)
    assert queue_order([a, urgent], usage, now=NOW, policy=p, slowdown=slowdown)[0].id == "u"


def test_queue_order_is_the_order_of_priority_score_with_slowdown():
    rng = random.Random(5)
    for _ in range(200):
        policy = Policy(fair_share=rng.random() < 0.8, weight_slowdown=rng.choice([0.0, 300.0, 3000.0]))
        queue = [QueuedJob(f"j{i}", rng.choice("abcd"), rng.choice([0, 1, 2]), None, rng.randint(-1, 1),
                           NOW - rng.uniform(-60, 86400), rng.choice([None, 60.0, 3600.0]))
                 for i in range(rng.randint(1, 12))]
        usage = {o: rng.uniform(0, 100) for o in "ab"}
        slowdown = {o: rng.uniform(1, 50) for o in rng.sample("abcd", rng.randint(0, 4))}
        factors = fair_share_factors(usage, {j.owner for j in queue})
        sf = slowdown_factors(slowdown, {j.owner for j in queue}) if slowdown else {}
        expected = sorted(queue, key=lambda j: (-priority_score(j, NOW, policy, factors, slowdown=sf), j.submitted_at, j.id))
        assert queue_order(queue, usage, now=NOW, policy=policy, slowdown=slowdown) == expected


def test_score_terms_are_what_mlpd_jobs_show_lists_and_sum_to_the_score():
    p = Policy(weight_size=500)
    j = job("j", "alice", gpus=4, time_limit=HOUR, submitted_at=NOW - 7 * 86400, priority=-1)
    terms = score_terms(j, NOW, p, {"alice": 0.5}, host_gpus=8, slowdown={"alice": 0.25})
    assert terms == {"priority": -10000, "age": 4000 * 0.5, "fair_share": 50, "slowdown": 750,
                     "expansion": 1000, "size": 500 * 0.5}
    assert sum(terms.values()) == priority_score(j, NOW, p, {"alice": 0.5}, 8, {"alice": 0.25})
    assert set(score_terms(j, NOW, Policy(fair_share=False), {})) == {"priority", "age", "expansion"}
