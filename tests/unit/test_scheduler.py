"""Specs for mlpd.scheduling.scheduler: priority/FIFO, EASY backfill, model matching, explanations."""
import random

from mlpd.scheduling.scheduler import (
    Gpu, Head, Holding, Placement, Plan, Policy, QueuedJob, explain, format_time, queue_order, schedule,
)

def explained(*args, **kwargs):
    """schedule() with every waiting job explained (the daemon asks for that only in `jobs show`)."""
    return schedule(*args, explain=True, **kwargs)


NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
HOUR = 3600.0
A100 = "NVIDIA A100"
H100 = "NVIDIA H100 80GB HBM3"


def gpus(n, model=A100, start=0, drained=()):
    return [Gpu(f"GPU-{i}", i, model, drained=i in drained) for i in range(start, start + n)]


def job(id, gpus=1, priority=0, submitted_at=0.0, time_limit=None, owner="carol", model=None):
    return QueuedJob(id=id, owner=owner, gpus=gpus, gpu_model=model, priority=priority,
                     submitted_at=submitted_at, time_limit=time_limit)


def placed(plan):
    return {p.job_id: p.gpu_uuids for p in plan.placements}


def wait_of(plan, job_id):
    [w] = [w for w in plan.waits if w.job_id == job_id]
    return w


# --- queue order -----------------------------------------------------------------

def test_priority_beats_fifo():
    early_low = job("low", priority=0, submitted_at=1)
    late_high = job("high", priority=5, submitted_at=2)
    assert [j.id for j in queue_order([early_low, late_high])] == ["high", "low"]
    plan = explained(gpus(1), [], [early_low, late_high], NOW)
    assert placed(plan) == {"high": ("GPU-0",)}
    assert wait_of(plan, "low").position == 2


def test_fifo_within_a_priority_then_id_breaks_ties():
    jobs = [job("c", submitted_at=2), job("b", submitted_at=1), job("a", submitted_at=2)]
    assert [j.id for j in queue_order(jobs)] == ["b", "a", "c"]
    plan = explained(gpus(1), [], jobs, NOW)
    assert placed(plan) == {"b": ("GPU-0",)}


# --- basic placement and explanations ---------------------------------------------

def test_two_one_gpu_jobs_use_different_gpus_and_a_third_waits_for_the_earliest_end():
    plan = explained(gpus(2), [], [job("j1", submitted_at=1, time_limit=2 * HOUR, owner="alice"),
                                  job("j2", submitted_at=2, time_limit=HOUR, owner="bob"),
                                  job("j3", submitted_at=3)], NOW)
    assert placed(plan) == {"j1": ("GPU-0",), "j2": ("GPU-1",)}
    w = wait_of(plan, "j3")
    assert w.position == 3
    assert w.estimated_start == NOW + HOUR  # bob's job ends first
    assert {h.owner for h in w.blocking} == {"bob"}
    assert "job j2 of bob until" in w.reason and "at the latest" in w.reason


def test_wait_reason_names_owner_short_job_id_and_latest_end():
    holdings = [Holding("GPU-1", "7f3a9c2e4b1d", "alice", NOW + 2 * HOUR),
                Holding("GPU-3", "91cc04ab5e2f", "bob", None)]
    plan = explained(gpus(4), holdings, [job("x", gpus=2, model=A100, time_limit=HOUR),
                                        job("big", gpus=4, submitted_at=1)], NOW)
    assert placed(plan) == {"x": ("GPU-0", "GPU-2")}
    w = wait_of(plan, "big")
    assert w.position == 2
    # The whole id as 'mlpd jobs' lists it, so 'mlpd jobs show' finds it.
    assert f"GPU 1 held by job 7f3a9c2e4b1d of alice until {format_time(NOW + 2 * HOUR)} at the latest" \
        in w.reason
    assert "GPU 3 held by job 91cc04ab5e2f of bob, no time limit" in w.reason
    assert w.reason.startswith("waiting for 4 GPUs (NVIDIA A100)")
    assert w.estimated_start is None  # bob's job has no end
    assert {h.job_id for h in w.blocking} >= {"7f3a9c2e4b1d", "91cc04ab5e2f"}


def test_wait_reason_names_a_workspace_and_a_replica_by_their_names_not_their_session_ids():
    holdings = [Holding("GPU-0", "8e946a850fbf", "nina", None, "workspace lab (nina)"),
                Holding("GPU-1", "1234abcd5678", "omar", None, "deployment iris, replica 0 (omar)")]
    plan = explained(gpus(2), holdings, [job("big", gpus=2)], NOW)
    w = wait_of(plan, "big")
    assert "GPU 0 held by workspace lab (nina), no time limit" in w.reason
    assert "GPU 1 held by deployment iris, replica 0 (omar), no time limit" in w.reason
    assert "8e946a85" not in w.reason


def test_times_are_utc_rounded_up_to_the_minute():
    assert format_time(1_800_000_000.0) == "2027-01-15 08:00 UTC"
    assert format_time(1_800_000_001.0) == "2027-01-15 08:01 UTC"


def test_positions_number_the_whole_queue_including_placed_jobs():
    plan = explained(gpus(1), [], [job(f"j{i}", submitted_at=i) for i in range(4)], NOW)
    assert [(w.job_id, w.position) for w in plan.waits] == [("j1", 2), ("j2", 3), ("j3", 4)]


def test_cpu_only_jobs_are_always_placed():
    holdings = [Holding("GPU-0", "busy", "alice", None)]
    plan = explained(gpus(1), holdings,
                    [job("gpu", priority=9), job("cpu", gpus=0, priority=0)], NOW,
                    Policy(backfill=False))
    assert placed(plan) == {"cpu": ()}
    assert explained([], [], [job("cpu", gpus=0)], NOW).placements == (Placement("cpu", ()),)


# --- model matching and drained GPUs ------------------------------------------------

def test_job_asking_for_a_model_never_gets_another_model():
    mixed = gpus(2, A100) + gpus(2, H100, start=2)
    plan = explained(mixed, [], [job("h", gpus=1, model=H100)], NOW)
    assert placed(plan) == {"h": ("GPU-2",)}


def test_multi_gpu_job_never_spans_two_models():
    mixed = gpus(2, A100) + gpus(2, H100, start=2)
    holdings = [Holding("GPU-0", "a", "alice", NOW + HOUR), Holding("GPU-2", "b", "bob", NOW + HOUR)]
    plan = explained(mixed, holdings, [job("pair", gpus=2)], NOW)
    assert placed(plan) == {}  # GPU-1 (A100) + GPU-3 (H100) are free but can't be combined
    assert wait_of(plan, "pair").estimated_start == NOW + HOUR


def test_model_group_with_lowest_first_index_wins():
    mixed = gpus(2, H100) + gpus(2, A100, start=2)
    plan = explained(mixed, [], [job("pair", gpus=2), job("next", gpus=2, submitted_at=1)], NOW)
    assert placed(plan) == {"pair": ("GPU-0", "GPU-1"), "next": ("GPU-2", "GPU-3")}


def test_drained_gpus_take_no_new_work_and_are_named_in_the_reason():
    holdings = [Holding("GPU-0", "old", "alice", NOW + HOUR)]
    plan = explained(gpus(2, drained={1}), holdings, [job("j")], NOW)
    assert placed(plan) == {}
    w = wait_of(plan, "j")
    assert "GPU 1 drained" in w.reason
    assert w.estimated_start == NOW + HOUR


def test_drained_gpu_still_counts_its_holder_but_is_never_reused():
    holdings = [Holding("GPU-0", "old", "alice", NOW + HOUR)]
    plan = explained(gpus(1, drained={0}), holdings, [job("j")], NOW)
    w = wait_of(plan, "j")
    assert w.estimated_start is None and "can never run" in w.reason


def test_job_larger_than_the_host_waits_forever_and_does_not_block_others():
    plan = explained(gpus(2, drained={1}), [], [job("huge", gpus=4, priority=9, model=A100),
                                               job("small", gpus=1)], NOW, Policy(backfill=False))
    assert placed(plan) == {"small": ("GPU-0",)}
    w = wait_of(plan, "huge")
    assert w.reason == ("can never run: asks for 4 GPUs but the host has 1 usable GPU "
                        "of model NVIDIA A100 (GPU 1 drained)")
    assert w.estimated_start is None and w.blocking == ()


# --- backfill ---------------------------------------------------------------------

def head_scenario():
    """GPU-0 free, GPU-1 busy for 2h: a 2-GPU head must wait and reserves both."""
    return gpus(2), [Holding("GPU-1", "run", "alice", NOW + 2 * HOUR)]


def test_backfill_places_a_short_job_that_ends_before_the_shadow_time():
    g, h = head_scenario()
    plan = explained(g, h, [job("head", gpus=2, priority=1), job("short", time_limit=HOUR)], NOW)
    assert placed(plan) == {"short": ("GPU-0",)}
    assert wait_of(plan, "head").estimated_start == NOW + 2 * HOUR


def test_backfill_never_delays_the_head_with_a_long_or_unlimited_job():
    g, h = head_scenario()
    queue = [job("head", gpus=2, priority=1), job("long", time_limit=3 * HOUR, submitted_at=1),
             job("forever", submitted_at=2)]
    plan = explained(g, h, queue, NOW)
    assert placed(plan) == {}
    assert "reserved for job head" in wait_of(plan, "long").reason
    assert "no time limit" in wait_of(plan, "forever").reason


def test_backfill_may_use_gpus_outside_the_reservation_without_a_time_limit():
    g = gpus(2, A100) + gpus(1, H100, start=2)
    h = [Holding("GPU-1", "run", "alice", NOW + 2 * HOUR)]
    plan = explained(g, h, [job("head", gpus=2, priority=1, model=A100), job("forever")], NOW)
    assert placed(plan) == {"forever": ("GPU-2",)}  # head reserved GPU-0 + GPU-1


def test_unknown_shadow_time_only_allows_gpus_outside_the_reservation():
    g = gpus(2)
    h = [Holding("GPU-1", "run", "alice", None)]
    plan = explained(g, h, [job("head", gpus=2, priority=1), job("short", time_limit=60)], NOW)
    assert placed(plan) == {}
    assert wait_of(plan, "head").estimated_start is None
    assert wait_of(plan, "short").estimated_start is None


def test_only_the_first_blocked_job_gets_a_reservation():
    g = gpus(4)
    h = [Holding("GPU-0", "r0", "alice", NOW + HOUR), Holding("GPU-1", "r1", "bob", NOW + 5 * HOUR)]
    # head (4 GPUs) can start at +5h, so a 3h job cannot delay it. "second" (3 GPUs)
    # is blocked too; had it a reservation (GPU-0, 2, 3 at +1h) the 3h job would delay it.
    queue = [job("head", gpus=4, priority=2), job("second", gpus=3, priority=1),
             job("third", time_limit=3 * HOUR)]
    plan = explained(g, h, queue, NOW)
    assert placed(plan) == {"third": ("GPU-2",)}
    assert wait_of(plan, "head").estimated_start == NOW + 5 * HOUR
    # Without the big head, "second" becomes the head and keeps the 3h job out.
    plan = explained(g, h, queue[1:], NOW)
    assert placed(plan) == {}
    assert wait_of(plan, "second").estimated_start == NOW + HOUR


def test_easy_backfill_runs_a_long_job_on_gpus_the_head_will_not_need():
    # GPUs 0-3 free, 4-7 free in 1 h; the head wants 6. In an hour 8 GPUs are free, so 2 of the
    # 4 free now are spare: a 2-GPU job that runs 10 h starts now without delaying the head.
    holdings = [Holding(f"GPU-{i}", f"r{i}", "alice", NOW + HOUR) for i in range(4, 8)]
    plan = explained(gpus(8), holdings, [job("head", gpus=6, priority=1),
                                         job("long", gpus=2, time_limit=10 * HOUR)], NOW)
    assert placed(plan) == {"long": ("GPU-0", "GPU-1")}
    assert plan.head.job_id == "head" and plan.head.start == NOW + HOUR
    assert plan.head.gpu_uuids == tuple(f"GPU-{i}" for i in range(2, 8))  # busy ones first, then the highest free
    assert wait_of(plan, "head").estimated_start == NOW + HOUR


def test_a_third_long_job_would_delay_the_head_and_waits():
    holdings = [Holding(f"GPU-{i}", f"r{i}", "alice", NOW + HOUR) for i in range(4, 8)]
    plan = explained(gpus(8), holdings, [job("head", gpus=6, priority=1), job("long", gpus=2, time_limit=10 * HOUR),
                                         job("more", gpus=1, time_limit=10 * HOUR)], NOW)
    assert placed(plan) == {"long": ("GPU-0", "GPU-1")}
    assert "reserved for job head" in wait_of(plan, "more").reason


def test_a_short_backfill_job_takes_reserved_gpus_and_leaves_spare_ones_for_long_jobs():
    holdings = [Holding(f"GPU-{i}", f"r{i}", "alice", NOW + HOUR) for i in range(4, 8)]
    queue = [job("head", gpus=6, priority=1), job("short", gpus=2, time_limit=HOUR / 2, submitted_at=1),
             job("long", gpus=2, time_limit=10 * HOUR, submitted_at=2)]
    plan = explained(gpus(8), holdings, queue, NOW)
    assert placed(plan) == {"short": ("GPU-2", "GPU-3"), "long": ("GPU-0", "GPU-1")}


def test_plan_names_no_head_when_everything_fits():
    plan = schedule(gpus(2), [], [job("a"), job("b", submitted_at=1)], NOW)
    assert plan.head is None and plan.waiting == () and plan.waits == ()


def test_explanations_only_when_asked():
    g, h = head_scenario()
    queue = [job("head", gpus=2, priority=1), job("long", time_limit=3 * HOUR, submitted_at=1)]
    plan = schedule(g, h, queue, NOW)
    assert plan.waits == () and plan.waiting == ("head", "long")
    assert plan.head == Head("head", NOW + 2 * HOUR, ("GPU-0", "GPU-1"))
    assert [w.job_id for w in schedule(g, h, queue, NOW, explain={"long"}).waits] == ["long"]
    assert explain(g, h, queue, NOW, "long") == wait_of(explained(g, h, queue, NOW), "long")
    assert explain(g, h, queue, NOW, "nope") is None


def test_backfill_off_is_plain_fifo():
    g, h = head_scenario()
    queue = [job("head", gpus=2, priority=1, time_limit=HOUR), job("short", time_limit=60),
             job("cpu", gpus=0)]
    plan = explained(g, h, queue, NOW, Policy(backfill=False))
    assert placed(plan) == {"cpu": ()}  # the short job would have been backfilled
    w = wait_of(plan, "short")
    assert "ahead in the queue and backfill is off" in w.reason
    assert w.estimated_start == NOW + 3 * HOUR  # after the head runs (2h..3h)


def test_later_jobs_estimate_no_earlier_than_the_head():
    g, h = head_scenario()
    plan = explained(g, h, [job("head", gpus=2, priority=1, time_limit=HOUR),
                           job("after", gpus=2)], NOW)
    assert wait_of(plan, "after").estimated_start == NOW + 3 * HOUR  # head runs 2h..3h


def _random_scenario(rng):
    models = [A100, H100]
    gs = [Gpu(f"GPU-{i}", i, rng.choice(models), drained=rng.random() < 0.1)
          for i in range(rng.randint(1, 6))]
    holdings = [Holding(g.uuid, f"run{g.index}", "alice",
                        rng.choice([None, NOW + rng.randint(1, 10) * 600]))
                for g in gs if rng.random() < 0.5]
    queue = [QueuedJob(f"q{i}", "bob", rng.randint(0, 4), rng.choice([None, None, A100, H100]),
                       rng.randint(0, 2), float(rng.randint(0, 5)),
                       rng.choice([None, 300.0, 1800.0, 7200.0]))
             for i in range(rng.randint(1, 8))]
    return gs, holdings, queue


def test_property_backfill_never_delays_the_head():
    rng = random.Random(1234)
    for _ in range(500):
        gs, holdings, queue = _random_scenario(rng)
        plan = explained(gs, holdings, queue, NOW)
        by_id = {j.id: j for j in queue}
        # Every job is either placed or waits, exactly once.
        assert sorted(list(placed(plan)) + [w.job_id for w in plan.waits]) == sorted(by_id)
        # The head is the first waiting job that can ever run.
        head = next((w for w in plan.waits if "can never run" not in w.reason), None)
        if head is None or head.estimated_start is None:
            continue
        # Re-plan the head alone, with everything placed now holding its GPUs:
        # its earliest start must be no later than promised.
        now_held = list(holdings) + [
            Holding(u, p.job_id, "x", None if by_id[p.job_id].time_limit is None
                    else NOW + by_id[p.job_id].time_limit)
            for p in plan.placements for u in p.gpu_uuids]
        again = explained(gs, now_held, [by_id[head.job_id]], NOW)
        assert again.placements == ()
        assert again.waits[0].estimated_start is not None
        assert again.waits[0].estimated_start <= head.estimated_start


def test_placements_use_free_gpus_only_and_one_model_per_job():
    rng = random.Random(99)
    for _ in range(500):
        gs, holdings, queue = _random_scenario(rng)
        plan = explained(gs, holdings, queue, NOW, Policy(backfill=rng.random() < 0.5))
        by_uuid = {g.uuid: g for g in gs}
        held = {h.gpu_uuid for h in holdings}
        used = [u for p in plan.placements for u in p.gpu_uuids]
        assert len(used) == len(set(used)) and not set(used) & held
        for p in plan.placements:
            j = next(j for j in queue if j.id == p.job_id)
            assigned = [by_uuid[u] for u in p.gpu_uuids]
            assert len(assigned) == j.gpus
            assert not any(g.drained for g in assigned)
            assert len({g.model for g in assigned}) <= 1
            assert j.gpu_model is None or all(g.model == j.gpu_model for g in assigned)
            assert [g.index for g in assigned] == sorted(g.index for g in assigned)


def test_same_input_gives_same_output():
    rng = random.Random(7)
    for _ in range(200):
        gs, holdings, queue = _random_scenario(rng)
        first = explained(gs, holdings, queue, NOW)
        shuffled = list(queue)
        rng.shuffle(shuffled)
        assert explained(gs, holdings, shuffled, NOW) == first
        assert isinstance(first, Plan)
