"""Priority classes and the choice of jobs to preempt: pure functions over plain data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpd.config import ConfigError, load_config
from mlpd.scheduling.priority_classes import PriorityClasses
from mlpd.scheduling.scheduler import Gpu, GpuLimit, Holding, Preemptible, Preemption, QueuedJob, choose_preemptions, queue_order, schedule

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
NOW = 1_000_000.0
PROD, DEFAULT, LOW = 3, 2, 1  # the shipped classes' ranks


def gpus(n: int, model: str = "A100", start: int = 0, drained: tuple[int, ...] = ()) -> list[Gpu]:
    return [Gpu(f"GPU-{i}", i, model, i in drained) for i in range(start, start + n)]


def job(job_id: str, n: int, rank: int = PROD, owner: str = "bob", model: str | None = None, submitted: float = NOW - 600) -> QueuedJob:
    return QueuedJob(job_id, owner, n, model, 0, submitted, 3600, rank)


def running(job_id: str, indices: tuple[int, ...], started: float, rank: int = LOW, owner: str = "alice") -> tuple[Preemptible, list[Holding]]:
    uuids = tuple(f"GPU-{i}" for i in indices)
    return Preemptible(job_id, owner, uuids, started, rank), [Holding(u, job_id, owner, None) for u in uuids]


def world(*jobs_running):
    candidates, holdings = [], []
    for p, hs in jobs_running:
        candidates.append(p)
        holdings += hs
    return candidates, holdings


def victims(result) -> list[str]:
    return sorted(p.job_id for p in result)


def test_the_latest_started_job_is_preempted_when_one_is_enough():
    cands, holds = world(running("old", (0,), NOW - 5000), running("new", (1,), NOW - 100), running("mid", (2,), NOW - 2000))
    assert choose_preemptions(gpus(3), holds, [job("p", 1)], cands, NOW) == (Preemption("new", "p"),)


def test_the_fewest_jobs_are_preempted_even_when_they_started_earlier():
    # two recent 1-GPU jobs would lose less work, but one 2-GPU job is fewer preemptions
    cands, holds = world(running("big", (0, 1), NOW - 5000), running("a", (2,), NOW - 10), running("b", (3,), NOW - 20))
    assert victims(choose_preemptions(gpus(4), holds, [job("p", 2)], cands, NOW)) == ["big"]


def test_among_as_many_victims_the_fewest_gpus_then_the_least_work_lost():
    cands, holds = world(running("four", (0, 1, 2, 3), NOW - 10), running("one", (4,), NOW - 9000), running("one-new", (5,), NOW - 50))
    assert victims(choose_preemptions(gpus(6), holds, [job("p", 1)], cands, NOW)) == ["one-new"]


def test_free_gpus_count_and_only_what_is_missing_is_preempted():
    cands, holds = world(running("a", (0,), NOW - 10), running("b", (1,), NOW - 20))
    # GPU 2 is free: a 2-GPU job needs one victim, the latest started
    assert victims(choose_preemptions(gpus(3), holds, [job("p", 2)], cands, NOW)) == ["a"]
    # a 1-GPU job fits on the free GPU: nobody is preempted
    assert choose_preemptions(gpus(3), holds, [job("p", 1)], cands, NOW) == ()


def test_only_lower_classes_are_preempted_and_nothing_when_it_would_not_be_enough():
    cands, holds = world(running("same", (0,), NOW - 10, rank=PROD), running("low", (1,), NOW - 10))
    assert victims(choose_preemptions(gpus(2), holds, [job("p", 1)], cands, NOW)) == ["low"]
    # two GPUs needed, but one holder is of the same class: preempting the other alone would not help
    assert choose_preemptions(gpus(2), holds, [job("p", 2)], cands, NOW) == ()
    # a default-class job may preempt preemptible work but not production work
    assert victims(choose_preemptions(gpus(2), holds, [job("d", 1, rank=DEFAULT)], cands, NOW)) == ["low"]
    # non-candidates (running work of classes that are not preemptible) are never chosen
    _, extra = running("prod", (2,), NOW - 5)
    assert choose_preemptions(gpus(3), holds + extra, [job("p", 3)], cands, NOW) == ()


def test_jobs_already_leaving_are_counted_and_no_gpu_is_promised_twice():
    cands, holds = world(running("a", (0,), NOW - 10), running("b", (1,), NOW - 20), running("c", (2,), NOW - 30))
    # "a" was told to stop in an earlier pass: its GPU is on its way for the waiting job
    assert choose_preemptions(gpus(3), holds, [job("p", 1)], cands, NOW, leaving={"a"}) == ()
    # two waiting jobs: each gets its own victim, the first the latest started
    result = choose_preemptions(gpus(3), holds, [job("p", 1), job("q", 1)], cands, NOW, leaving={"a"})
    assert result == (Preemption("b", "q"),)
    result = choose_preemptions(gpus(3), holds, [job("p", 1), job("q", 1)], cands, NOW)
    assert result == (Preemption("a", "p"), Preemption("b", "q"))


def test_model_groups_drained_gpus_and_quotas():
    cands, holds = world(running("a100", (0,), NOW - 10), running("h100", (2,), NOW - 10))
    mixed = gpus(2, "A100") + gpus(2, "H100", start=2)
    assert victims(choose_preemptions(mixed, holds, [job("p", 2, model="H100")], cands, NOW)) == ["h100"]
    # the job's GPUs share one model: on A100 it needs 1 victim, on H100 too; ties go to the lower indices
    assert victims(choose_preemptions(mixed, holds, [job("p", 2)], cands, NOW)) == ["a100"]
    # a drained GPU is not usable: the A100 group is too small, the H100 one still works
    assert victims(choose_preemptions(gpus(2, "A100", drained=(1,)) + gpus(2, "H100", start=2), holds, [job("p", 2)], cands, NOW)) == ["h100"]
    # over its concurrent-GPU quota the waiting job could not start anyway: nothing is preempted
    limit = GpuLimit("user bob", frozenset({"bob"}), 1)
    assert choose_preemptions(mixed, holds, [job("p", 2)], cands, NOW, limits=[limit]) == ()


def test_many_candidates_still_give_the_fewest():
    runs = [running(f"j{i}", (i,), NOW - i) for i in range(16)]
    cands, holds = world(*runs)
    result = choose_preemptions(gpus(16), holds, [job("p", 3)], cands, NOW)
    assert victims(result) == ["j0", "j1", "j2"]  # the three latest started


def test_a_higher_class_goes_first_in_the_queue_even_past_a_reservation():
    low = QueuedJob("low", "alice", 1, None, 100, NOW - 9000, 3600, DEFAULT)
    high = QueuedJob("high", "bob", 1, None, -100, NOW, 3600, PROD)
    assert [j.id for j in queue_order([low, high], now=NOW, reserved={"low": NOW - 100})] == ["high", "low"]
    plan = schedule(gpus(1), [], [low, high], NOW, reserved={"low": NOW - 100})
    assert [p.job_id for p in plan.placements] == ["high"]


def test_priority_classes_from_the_shipped_configuration(tmp_path):
    classes = PriorityClasses.from_config(load_config(SHIPPED))
    assert [classes.rank(n) for n in ("production", "default", "preemptible")] == [PROD, DEFAULT, LOW]
    assert classes.of({"spec": {}}) == "default" and classes.of({"spec": {"priority_class": "gone"}}) == "default"
    assert classes.of({"kind": "workspace", "spec": {"priority_class": "preemptible"}}) == "default"
    assert classes.is_preemptible("preemptible") and not classes.is_preemptible("default")
    # production is kept for admins by default; the others are open
    assert classes.refusal("production", "alice", False, [])[:2] == (403, "class_not_allowed")
    assert classes.refusal("production", "root", True, []) is None
    assert classes.refusal("preemptible", "alice", False, []) is None and classes.refusal(None, "alice", False, []) is None
    assert classes.refusal("urgent", "alice", True, [])[:2] == (400, "invalid_field")
    granted = PriorityClasses(classes.names, "default", classes.preemptible, {"production": ("bob", "team:vision")})
    assert granted.refusal("production", "bob", False, []) is None
    assert granted.refusal("production", "carol", False, ["vision"]) is None
    assert "bob, team:vision" in granted.refusal("production", "carol", False, ["nlp"])[2]


@pytest.mark.parametrize("text, key", [
    ('[scheduler]\ndefault_priority_class = "normal"\n', "scheduler.default_priority_class"),
    ('[scheduler]\npreemptible_classes = ["spot"]\n', "scheduler.preemptible_classes"),
    ('[scheduler]\npriority_class_users = {vip = []}\n', "scheduler.priority_class_users"),
    ('[scheduler]\npriority_classes = ["a", "a"]\n', "scheduler.priority_classes"),
    ('[scheduler]\npriority_class_users = {production = "alice"}\n', "scheduler.priority_class_users"),
    ('[scheduler]\npreempt_grace = ""\n', "scheduler.preempt_grace"),
])
def test_inconsistent_priority_class_settings_are_refused_with_the_key(tmp_path, text, key):
    path = tmp_path / "mlpd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert info.value.key == key
