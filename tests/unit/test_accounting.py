"""GPU-hours arithmetic, fair share and quota-aware scheduling: pure functions, no database."""

import datetime as dt

import pytest

from mlpd.scheduling.accounting import (Allocation, busy_seconds, decayed_usage, detect_stray, downsample, overlap_seconds,
                             period_bounds, summarize)
from mlpd.scheduling.scheduler import Gpu, GpuLimit, Holding, Policy, QueuedJob, schedule

H = 3600.0


def alloc(owner="alice", start=0.0, end=H, kind="job", obj="j1", uuid="G0", model="A100"):
    return Allocation(owner, kind, obj, uuid, 0, model, start, end)


def ts(text):
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp()


def test_overlap_clips_to_the_window_and_runs_open_allocations_to_until():
    assert overlap_seconds(alloc(start=0, end=100), 50, 200) == 50
    assert overlap_seconds(alloc(start=0, end=None), 50, 200) == 150
    assert overlap_seconds(alloc(start=300, end=400), 0, 200) == 0


def test_decayed_usage_halves_with_each_half_life():
    now = 10 * H
    recent = decayed_usage([alloc(start=now - 60, end=now)], now, half_life=H)["alice"]
    old = decayed_usage([alloc(start=now - H - 60, end=now - H)], now, half_life=H)["alice"]
    assert recent == pytest.approx(60, rel=0.02)
    assert old == pytest.approx(recent / 2, rel=0.02)


def test_decayed_usage_counts_a_running_allocation_up_to_now():
    now = 1000.0
    assert decayed_usage([alloc(start=900, end=None)], now, half_life=1e9)["alice"] == pytest.approx(100)


def test_period_bounds_are_utc_calendar_periods():
    now = ts("2026-11-23T15:30:00")
    assert period_bounds(now, "day") == (ts("2026-11-23T00:00:00"), ts("2026-11-24T00:00:00"))
    assert period_bounds(now, "week") == (ts("2026-11-23T00:00:00"), ts("2026-11-30T00:00:00"))  # a Monday
    assert period_bounds(now, "month") == (ts("2026-11-01T00:00:00"), ts("2026-12-01T00:00:00"))
    assert period_bounds(ts("2026-12-31T23:59:00"), "month")[1] == ts("2027-01-01T00:00:00")
    with pytest.raises(ValueError):
        period_bounds(now, "year")


def test_summarize_by_user_team_kind_with_cost():
    allocs = [alloc("alice", 0, 2 * H, obj="a", uuid="G0"), alloc("alice", 0, H, obj="a", uuid="G1"),
              alloc("bob", 0, H, kind="workspace", obj="b", model="H100")]
    by_user = {r.key: r for r in summarize(allocs, 0, 10 * H, "user", prices={"A100": 2.0})}
    assert by_user["alice"].gpu_hours == pytest.approx(3) and by_user["alice"].cost == pytest.approx(6)
    assert by_user["bob"].gpu_hours == pytest.approx(1) and by_user["bob"].cost is None  # H100 not priced
    by_team = {r.key: r.gpu_hours for r in summarize(allocs, 0, 10 * H, "team", teams_of={"alice": ["vision", "nlp"]})}
    assert by_team == {"vision": pytest.approx(3), "nlp": pytest.approx(3), "(no team)": pytest.approx(1)}
    by_kind = {r.key: r.gpu_hours for r in summarize(allocs, 0, 10 * H, "kind")}
    assert by_kind == {"job": pytest.approx(3), "workspace": pytest.approx(1)}
    with pytest.raises(ValueError):
        summarize(allocs, 0, H, "planet")


def test_summarize_by_day_splits_at_utc_midnight():
    start = ts("2026-11-22T23:00:00")
    rows = summarize([alloc(start=start, end=start + 3 * H)], start - H, start + 10 * H, "day")
    assert [(r.key, round(r.gpu_hours, 6)) for r in rows] == [("2026-11-22", 1.0), ("2026-11-23", 2.0)]


def test_busy_seconds_integrates_utilization_and_is_unknown_without_samples():
    samples = [(10.0, 100.0), (20.0, 50.0), (30.0, 0.0)]
    assert busy_seconds(samples, 0, 30, interval=10) == pytest.approx(15)
    assert busy_seconds(samples, 0, 15, interval=10) == pytest.approx(10 + 2.5)
    assert busy_seconds([], 0, 30, interval=10) is None


def test_busy_hours_appear_beside_allocated_hours():
    a = alloc(start=0, end=H)
    rows = summarize([a], 0, H, "user", busy={(a.object_id, a.gpu_uuid, a.start): H / 4})
    assert rows[0].gpu_hours == pytest.approx(1) and rows[0].busy_gpu_hours == pytest.approx(0.25)


def test_downsample_averages_buckets():
    out = downsample([(1, 10, 100), (2, 30, 300), (301, 50, 500)], 300)
    assert out == [(300, 20, 200), (600, 50, 500)]


def test_detect_stray_ignores_gpus_held_by_mlpd():
    assert detect_stray({"G0": [11], "G1": [12, 13], "G2": []}, held={"G0"}) == {"G1": [12, 13]}


# ---------------------------------------------------------------- scheduler: fair share and quotas

GPUS = [Gpu("G0", 0, "A100"), Gpu("G1", 1, "A100")]


def q(job_id, owner, gpus=1, priority=0, at=0.0, limit=None):
    return QueuedJob(job_id, owner, gpus, None, priority, at, limit)


def test_fair_share_puts_the_user_with_less_recent_usage_first():
    holding = [Holding("G0", "h", "carol", 100.0)]
    queue = [q("heavy-1", "heavy", at=1), q("light-1", "light", at=2)]
    plan = schedule(GPUS, holding, queue, now=10, usage={"heavy": 1e6, "light": 10.0})
    assert [p.job_id for p in plan.placements] == ["light-1"]
    plain = schedule(GPUS, holding, queue, now=10, policy=Policy(fair_share=False), usage={"heavy": 1e6})
    assert [p.job_id for p in plain.placements] == ["heavy-1"]  # FIFO without fair share


def test_fair_share_never_overrides_priority():
    plan = schedule(GPUS[:1], [], [q("a", "heavy", priority=5, at=1), q("b", "light", at=0)], now=10, usage={"heavy": 1e9})
    assert [p.job_id for p in plan.placements] == ["a"]


def test_concurrent_gpu_quota_makes_a_job_wait_without_blocking_others():
    limits = [GpuLimit("user alice", frozenset({"alice"}), 1)]
    holding = [Holding("G0", "running", "alice", None)]
    plan = schedule(GPUS + [Gpu("G2", 2, "A100")], holding, [q("a2", "alice", at=1), q("b1", "bob", at=2)], now=10, limits=limits, explain=True)
    assert [p.job_id for p in plan.placements] == ["b1"]
    wait = plan.waits[0]
    assert wait.job_id == "a2" and "concurrent GPU quota of user alice: 1 GPUs at most, 1 held" in wait.reason


def test_a_job_larger_than_its_quota_can_never_run():
    plan = schedule(GPUS, [], [q("big", "alice", gpus=2)], now=0, limits=[GpuLimit("team vision", frozenset({"alice", "bob"}), 1)], explain=True)
    assert not plan.placements and "can never run" in plan.waits[0].reason and "team vision" in plan.waits[0].reason


def test_team_quota_counts_every_member():
    limits = [GpuLimit("team vision", frozenset({"alice", "bob"}), 1)]
    plan = schedule(GPUS, [Holding("G0", "x", "bob", None)], [q("a", "alice")], now=0, limits=limits, explain=True)
    assert not plan.placements and "team vision" in plan.waits[0].reason
