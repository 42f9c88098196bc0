"""Specs for GPU sharing in the pure scheduler (docs/gpu-sharing.md): shares of one GPU are packed
onto already shared GPUs, up to gpus.share_max per GPU and a sum of 1; whole-GPU work never lands on
a shared GPU (nor a share on a GPU held by whole-GPU work); concurrent-GPU quotas count shares."""
import pytest

from mlpd.scheduling.scheduler import GpuLimit, Holding, Policy, QueuedJob, choose_preemptions, schedule, waiting_for_the_host
from mlpd.scheduling.sharing import ShareError, as_gpus, demand, split_gpus

from test_scheduler import HOUR, NOW, SUBMITTED, gpus, job, placed, wait_of


def share(id, part=0.5, submitted_at=0.0, time_limit=None, owner="carol", priority=0):
    return QueuedJob(id=id, owner=owner, gpus=1, gpu_model=None, priority=priority, submitted_at=SUBMITTED + submitted_at,
                     time_limit=time_limit, share=part)


def holding(uuid, job_id, part=1.0, ends_by=None, owner="dave"):
    return Holding(uuid, job_id, owner, ends_by, share=part)


def test_four_half_gpu_workloads_fill_two_gpus_two_by_two():
    queue = [share(f"s{i}", submitted_at=i) for i in range(4)]
    plan = schedule(gpus(2), [], queue, NOW)
    assert placed(plan) == {"s0": ("GPU-0",), "s1": ("GPU-0",), "s2": ("GPU-1",), "s3": ("GPU-1",)}


def test_a_fifth_half_waits_for_room_on_a_shared_gpu():
    held = [holding("GPU-0", "a", 0.5), holding("GPU-0", "b", 0.5), holding("GPU-1", "c", 0.5), holding("GPU-1", "d", 0.5)]
    plan = schedule(gpus(2), held, [share("s5")], NOW, explain=True)
    assert placed(plan) == {}
    assert "a 0.5 share of a GPU" in wait_of(plan, "s5").reason


def test_a_share_is_packed_onto_an_already_shared_gpu_not_a_free_one():
    # GPU-0 free, GPU-1 holds one quarter share: the new share joins GPU-1, keeping GPU-0 whole for whole-GPU work.
    held = [holding("GPU-1", "q", 0.25)]
    plan = schedule(gpus(2), held, [share("s", 0.5)], NOW)
    assert placed(plan) == {"s": ("GPU-1",)}


def test_the_fullest_shared_gpu_with_room_is_preferred():
    held = [holding("GPU-0", "a", 0.25), holding("GPU-1", "b", 0.5), holding("GPU-2", "c", 0.75)]
    # 0.25 fits on each; the fullest with room is GPU-2 (0.75 + 0.25 = 1).
    assert placed(schedule(gpus(3), held, [share("s", 0.25)], NOW)) == {"s": ("GPU-2",)}
    # 0.5 does not fit on GPU-2; of the rest the fullest is GPU-1.
    assert placed(schedule(gpus(3), held, [share("s", 0.5)], NOW)) == {"s": ("GPU-1",)}


def test_share_max_caps_the_holders_of_one_gpu_whatever_their_sum():
    queue = [share(f"s{i}", 0.25, submitted_at=i) for i in range(4)]
    assert [p.gpu_uuids for p in schedule(gpus(2), [], queue, NOW, Policy(share_max=4)).placements] == [("GPU-0",)] * 4
    plan = schedule(gpus(2), [], queue, NOW, Policy(share_max=2))
    assert placed(plan) == {"s0": ("GPU-0",), "s1": ("GPU-0",), "s2": ("GPU-1",), "s3": ("GPU-1",)}
    # share_max = 1: each share gets a GPU of its own, the rest wait
    plan = schedule(gpus(2), [], queue, NOW, Policy(share_max=1))
    assert placed(plan) == {"s0": ("GPU-0",), "s1": ("GPU-1",)}


def test_tenths_of_a_gpu_fill_one_gpu_exactly():
    queue = [share(f"s{i}", 0.1, submitted_at=i) for i in range(11)]
    plan = schedule(gpus(2), [], queue, NOW, Policy(share_max=10))
    gpu_of = placed(plan)
    assert [gpu_of[f"s{i}"] for i in range(10)] == [("GPU-0",)] * 10  # 0.1 x 10 is 1 (floats: within SHARE_EPS)
    assert gpu_of["s10"] == ("GPU-1",)


def test_a_whole_gpu_job_never_lands_on_a_shared_gpu_and_waits_for_a_whole_free_one():
    held = [holding("GPU-0", "a", 0.5, ends_by=NOW + 2 * HOUR), holding("GPU-1", "b", 0.5, ends_by=NOW + HOUR)]
    plan = schedule(gpus(2), held, [job("whole", gpus=1)], NOW, explain=True)
    assert placed(plan) == {}
    assert plan.head is not None and plan.head.job_id == "whole"
    assert plan.head.gpu_uuids == ("GPU-1",) and plan.head.start == NOW + HOUR  # the GPU whose share ends first
    assert "GPU 1 held by" in wait_of(plan, "whole").reason
    # Its sharer gone, GPU-1 is whole and free again: the job starts there.
    plan = schedule(gpus(2), held[:1], [job("whole", gpus=1)], NOW)
    assert placed(plan) == {"whole": ("GPU-1",)}


def test_a_share_never_lands_on_a_gpu_held_by_whole_gpu_work():
    held = [holding("GPU-0", "w", 1.0)]
    assert placed(schedule(gpus(2), held, [share("s")], NOW)) == {"s": ("GPU-1",)}
    assert placed(schedule(gpus(1), held, [share("s")], NOW)) == {}


def test_shares_placed_in_one_pass_keep_whole_gpus_for_whole_gpu_work():
    queue = [share("s1", submitted_at=0), job("whole", gpus=1, submitted_at=1), share("s2", submitted_at=2)]
    plan = schedule(gpus(2), [], queue, NOW)
    assert placed(plan) == {"s1": ("GPU-0",), "whole": ("GPU-1",), "s2": ("GPU-0",)}


def test_shares_behind_the_head_stay_off_its_reserved_gpu_unless_they_end_before_it_starts():
    # GPU-0 shared by one half ending in an hour (the head, a whole-GPU job, reserves it);
    # GPU-1 held whole without a time limit.
    held = [holding("GPU-0", "a", 0.5, ends_by=NOW + HOUR), holding("GPU-1", "w", 1.0)]
    queue = [job("head", gpus=1, priority=5), share("long", time_limit=2 * HOUR), share("short", time_limit=HOUR / 2, submitted_at=1)]
    plan = schedule(gpus(2), held, queue, NOW)
    assert plan.head.job_id == "head" and plan.head.gpu_uuids == ("GPU-0",)
    assert placed(plan) == {"short": ("GPU-0",)}  # it ends before the head starts; "long" would delay it


def test_a_concurrent_gpu_quota_of_one_admits_two_halves_and_the_third_waits():
    limit = GpuLimit("user carol", frozenset({"carol"}), 1)
    queue = [share(f"s{i}", submitted_at=i) for i in range(3)]
    plan = schedule(gpus(2), [], queue, NOW, limits=[limit], explain=True)
    assert set(placed(plan)) == {"s0", "s1"}
    assert "at the concurrent GPU quota of user carol: 1 GPUs at most, 1 held" in wait_of(plan, "s2").reason
    # holding one half, a whole GPU does not fit the quota; another half does
    held = [holding("GPU-0", "h", 0.5, owner="carol")]
    plan = schedule(gpus(2), held, [job("whole", gpus=1), share("half", submitted_at=1)], NOW, limits=[limit], explain=True)
    assert set(placed(plan)) == {"half"}
    assert "0.5 held" in wait_of(plan, "whole").reason


def test_the_slowdown_counts_shares_against_their_owners_quota():
    limit = GpuLimit("user carol", frozenset({"carol"}), 1)
    queue = [share(f"s{i}", submitted_at=i) for i in range(3)]
    assert [j.id for j in waiting_for_the_host(queue, [], [limit])] == ["s0", "s1"]


def test_preemption_counts_a_shared_victims_share_against_its_owners_quota():
    # Nothing to preempt: the waiting half fits its owner's quota of 1 beside the half they hold.
    limit = GpuLimit("user carol", frozenset({"carol"}), 1)
    held = [holding("GPU-0", "h", 0.5, owner="carol")]
    waiting = [QueuedJob("w", "carol", 1, None, 0, SUBMITTED, None, rank=2, share=0.5)]
    assert choose_preemptions(gpus(1), held, waiting, [], NOW, limits=[limit]) == ()


@pytest.mark.parametrize(("value", "expected"), [
    (0, (0, None)), (2, (2, None)), (2.0, (2, None)), ("3", (3, None)), (0.5, (1, 0.5)), ("0.25", (1, 0.25)), (".5", (1, 0.5)),
])
def test_a_gpu_request_is_whole_gpus_or_a_share_of_one(value, expected):
    assert split_gpus(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    (1.5, "a share is of one GPU"), (0.01, "from 0.05 to below 1"), (-1, "expected a whole number >= 0"),
    (True, "expected a whole number >= 0"), ("half", "expected a whole number >= 0"), (65, "at most 64"),
    (float("nan"), "expected a whole number >= 0"),
])
def test_a_bad_gpu_request_says_what_is_allowed(value, message):
    with pytest.raises(ShareError, match=message):
        split_gpus(value)


def test_demand_and_output_counts():
    assert demand(1, 0.5) == 0.5 and demand(2, None) == 2.0 and demand(0, None) == 0.0
    assert as_gpus(1.0) == 1 and isinstance(as_gpus(2.0), int) and as_gpus(0.5) == 0.5
