"""The job controller on the in-memory runtime: real SQLite, a clock moved by hand, no Docker.

The in-memory runtime passes the same contract suite as Docker (tests/contract), so what
the controller does here is what it does against the engine; these tests run in
milliseconds and cover what is slow or racy to arrange with real containers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpd import jobs
from mlpd.config import load_config
from mlpd.controller import JobController
from mlpd.runtime.gpus import make_inventory
from mlpd.jobs import JobState
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.runtime.protocol import LaunchRequest, Phase
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def world(tmp_path):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "",
                                          "gpus.declare": 2})
    store = Store(cfg.db_path)
    store.migrate()
    clock = Clock()
    runtime = MemoryRuntime("test", clock=clock)
    inventory = make_inventory(2, "declared")

    class World:
        def controller(self):
            return JobController(store, cfg, runtime, inventory, clock=clock)

        def submit(self, command, **spec):
            parsed, _ = parse_spec({"command": command, **spec})
            clock.advance(0.001)  # submission order decides the queue; equal times would not
            return jobs.submit(store, "alice", parsed, now=clock())["id"]

        def job(self, job_id):
            return jobs.get(store, job_id)

        def events(self, job_id):
            return [e["action"] for e in jobs.history(store, job_id)]

    w = World()
    w.store, w.config, w.clock, w.runtime = store, cfg, clock, runtime
    return w


def test_exit_codes_and_oom_are_classified(world):
    c = world.controller()
    ok, bad, oom = world.submit(["true"]), world.submit(["sh", "-c", "echo hi; exit 3"]), world.submit(["sleep", "60"], memory="64m")
    c.reconcile(now=world.clock())
    assert world.job(ok)["state"] == "succeeded" and world.job(ok)["exit_code"] == 0
    assert (world.job(bad)["state"], world.job(bad)["reason"]) == ("failed", "exited with code 3")
    assert "hi" in (Path(jobs.job_dir(world.config.state_dir, bad)) / "log").read_text()
    assert world.job(oom)["state"] == "running"
    world.runtime.oom_kill(oom)
    c.reconcile(now=world.clock.advance(1))
    assert world.job(oom)["state"] == "failed" and world.job(oom)["reason"] == "out of memory: the container was OOM-killed (limit 64 MiB)"
    assert world.runtime.list_jobs() == {}  # every ended container removed, its log kept


def test_an_unknown_program_fails_with_the_engines_reason_and_leaves_nothing(world):
    c = world.controller()
    j = world.submit(["python", "train.py"])
    c.reconcile(now=world.clock())
    job = world.job(j)
    assert job["state"] == "failed" and "executable file not found" in job["reason"]
    assert world.runtime.inspect(j) is None


def test_a_container_left_created_by_a_dead_daemon_is_started_once(world):
    j = world.submit(["sleep", "5"])
    # the daemon died between allocating GPUs and starting: the job is `starting`, its container `created`
    assert jobs.transition(world.store, j, JobState.STARTING, gpu_uuids=[], gpu_indices=[])
    req = LaunchRequest(j, "alice", "mlpd/train:latest", ("sleep", "5"), {}, (), None, None, "1000:1000", None, "/nonexistent")
    world.runtime.leave_created(req)
    assert world.runtime.inspect(j).phase == Phase.PENDING
    c = world.controller()
    c.reconcile(now=world.clock())
    assert world.job(j)["state"] == "running"
    c.reconcile(now=world.clock.advance(1))
    assert len(world.runtime.list_jobs()) == 1
    c.reconcile(now=world.clock.advance(5))
    assert world.job(j)["state"] == "succeeded"
    assert world.events(j).count("job.running") == 1


def test_a_vanished_container_makes_the_job_lost_and_an_orphan_is_removed(world):
    c = world.controller()
    running, ended = world.submit(["sleep", "60"]), world.submit(["sleep", "60"])
    c.reconcile(now=world.clock())
    world.runtime.vanish(running)
    # `ended` finished while the daemon was down and its container stayed: an orphan once the DB says so
    assert jobs.transition(world.store, ended, JobState.CANCELLED, reason="test", ended_at=world.clock())
    c.reconcile(now=world.clock.advance(1))
    lost = world.job(running)
    assert lost["state"] == "lost" and "vanished" in lost["reason"] and lost["ended_at"] >= lost["started_at"]
    assert world.runtime.inspect(ended) is None


def test_a_container_of_no_known_job_is_removed_but_a_queued_jobs_is_left(world):
    c = world.controller()
    stray = LaunchRequest("feedfacecafe", "bob", "mlpd/train:latest", ("sleep", "60"), {}, (), None, None, "1000:1000", None, "/x")
    world.runtime.start_job(stray)
    c.reconcile(now=world.clock())
    assert world.runtime.inspect("feedfacecafe") is None


def test_cancel_racing_with_a_natural_end_records_one_end(world):
    c = world.controller()
    j = world.submit(["sleep", "5"])
    c.reconcile(now=world.clock())
    jobs.request_cancel(world.store, j, "alice")
    world.clock.advance(6)  # it also exits 0 on its own before the controller acts
    c.reconcile(now=world.clock())
    c.reconcile(now=world.clock.advance(1))
    job = world.job(j)
    assert job["state"] == "cancelled" and job["reason"] == "cancelled by alice"
    assert [e for e in world.events(j) if e in ("job.cancelled", "job.succeeded", "job.failed")] == ["job.cancelled"]


def test_a_queued_job_is_cancelled_at_once_and_never_started(world):
    c = world.controller()
    j = world.submit(["sleep", "60"], gpus=2)
    holder = world.submit(["sleep", "60"], gpus=2)
    jobs.transition(world.store, holder, JobState.CANCELLED, reason="x")  # out of the way; j is next
    blocker = world.submit(["sleep", "60"], gpus=2)
    c.reconcile(now=world.clock())
    assert world.job(j)["state"] == "running" and world.job(blocker)["state"] == "queued"
    cancelled = jobs.request_cancel(world.store, blocker, "alice")
    assert cancelled["state"] == "cancelled" and cancelled["ended_at"] is not None
    c.reconcile(now=world.clock.advance(1))
    assert world.runtime.inspect(blocker) is None


def test_the_time_limit_stops_the_job_and_is_recorded_as_the_cause(world):
    c = world.controller()
    j = world.submit(["sleep", "100"], time_limit="10s")
    c.reconcile(now=world.clock())
    c.reconcile(now=world.clock())  # the pass after the launch (the launch wakes the loop for it)
    assert c.next_deadline == pytest.approx(T0 + 10)
    c.reconcile(now=world.clock.advance(9))
    assert world.job(j)["state"] == "running"
    c.reconcile(now=world.clock.advance(1.5))
    job = world.job(j)
    assert job["state"] == "timed_out" and job["reason"] == "stopped after its time limit of 10s"
    assert job["exit_code"] == 143


def test_a_restarted_daemon_picks_up_jobs_in_every_state(world):
    first = world.controller()
    running = world.submit(["sleep", "60"], gpus=1)
    queued_later = world.submit(["sleep", "60"], gpus=2)  # waits for the GPU of `running`
    exited = world.submit(["sleep", "2"])
    vanished = world.submit(["sleep", "60"])
    done = world.submit(["true"])
    first.reconcile(now=world.clock())
    starting = world.submit(["sleep", "60"])
    jobs.transition(world.store, starting, JobState.STARTING, gpu_uuids=[], gpu_indices=[])  # died before its container existed
    before = {j: world.job(j)["state"] for j in (queued_later, running, exited, vanished, done)}
    assert before[queued_later] == "queued" and before[running] == "running"
    # the daemon is down for a while: one job ends, one container is removed by hand
    world.clock.advance(5)
    world.runtime.vanish(vanished)
    second = world.controller()
    second.reconcile(now=world.clock())
    assert world.job(exited)["state"] == "succeeded"
    assert world.job(vanished)["state"] == "lost"
    assert world.job(done)["state"] == "succeeded" and world.events(done).count("job.succeeded") == 1
    assert world.job(starting)["state"] == "running"
    assert world.job(running)["state"] == "running" and world.events(running).count("job.running") == 1
    assert world.job(queued_later)["state"] == "queued"
    # nothing booked twice: one open ledger row per running GPU job
    rows = world.store.query("SELECT object_id, COUNT(*) AS n FROM allocations GROUP BY object_id")
    assert all(r["n"] == len(world.job(r["object_id"])["gpu_uuids"]) for r in rows)


def test_a_launch_asked_for_by_a_stale_pass_never_runs_a_job_twice(world):
    c = world.controller()
    j = world.submit(["true"])
    c.reconcile(now=world.clock())
    assert world.job(j)["state"] == "succeeded"
    stale = dict(world.job(j), state="starting")  # what an earlier read of the database said
    c._launch(stale)
    assert world.runtime.inspect(j) is None and world.events(j).count("job.succeeded") == 1


def test_the_transition_table_allows_only_its_steps():
    assert jobs.may_follow(JobState.RUNNING) == (JobState.STARTING,)
    assert set(jobs.may_follow(JobState.CANCELLED)) == {JobState.QUEUED, JobState.STARTING, JobState.RUNNING, JobState.PREEMPTED}
    assert set(jobs.may_follow(JobState.LOST)) == {JobState.STARTING, JobState.RUNNING}
    # preemption: only a running job is preempted, and a preempted one only goes back to the queue (or is cancelled)
    assert jobs.may_follow(JobState.PREEMPTED) == (JobState.RUNNING,)
    assert jobs.TRANSITIONS[JobState.PREEMPTED] == {JobState.QUEUED, JobState.CANCELLED}
    assert set(jobs.may_follow(JobState.QUEUED)) == {JobState.PREEMPTED}
    for terminal in jobs.TERMINAL:
        assert jobs.TRANSITIONS[terminal] == frozenset()


def test_a_terminal_job_never_moves_again(world):
    j = world.submit(["true"])
    assert jobs.transition(world.store, j, JobState.CANCELLED, reason="x")
    for to in JobState:
        assert not jobs.transition(world.store, j, to, reason="again")
    assert world.job(j)["state"] == "cancelled"
    assert json.dumps(world.events(j)) == json.dumps(["job.queued", "job.cancelled"])


def test_environments_are_built_once_reused_and_pruned_by_age_and_size(world):
    from mlpd.runtime.environments import environments_to_prune

    c = world.controller()
    first = world.submit(["true"], requirements="humanize==4.17.0\n")
    c.reconcile(now=world.clock())
    assert world.job(first)["state"] == "succeeded"
    built = [t for t in world.runtime.images if t.startswith("mlpd/env:")]
    assert len(built) == 1 and "job.environment_built" in world.events(first)
    second = world.submit(["true"], requirements="humanize==4.17.0\n")
    c.reconcile(now=world.clock())
    assert "job.environment_reused" in world.events(second) and "job.environment_built" not in world.events(second)
    other = world.submit(["true"], requirements="six==1.16.0\n")
    c.reconcile(now=world.clock())
    assert len([t for t in world.runtime.images if t.startswith("mlpd/env:")]) == 2
    # nothing is old or big yet
    assert c.prune_environments() == []
    # a month later, only what was used recently stays
    world.clock.advance(31 * 86400)
    recent = world.submit(["true"], requirements="six==1.16.0\n")
    c.reconcile(now=world.clock())
    removed = c.prune_environments()
    assert removed == built and world.job(recent)["state"] == "succeeded"
    assert [t for t in world.runtime.images if t.startswith("mlpd/env:")] != built
    # the pure rule: over the disk limit, least recently used first, never one used within the grace period
    images = [{"tag": f"mlpd/env:{n}", "size": 10, "created_at": 0.0} for n in "abc"]
    assert environments_to_prune(images, {"mlpd/env:a": 100.0, "mlpd/env:b": 8000.0, "mlpd/env:c": 9000.0}, 9500.0, 30, 15,
                                 grace=3600) == ["mlpd/env:a"]
    assert environments_to_prune(images, {"mlpd/env:a": 9400.0, "mlpd/env:b": 9400.0, "mlpd/env:c": 9400.0}, 9500.0, 30, 15) == []
    assert other


def test_a_drained_gpu_keeps_its_job_but_takes_no_new_work_until_undrained(world):
    from mlpd.scheduling.gpu_state import set_drained

    c = world.controller()
    holder = world.submit(["sleep", "10"], gpus=1)
    c.reconcile(now=world.clock())
    held = world.job(holder)["gpu_uuids"][0]
    set_drained(world.store, held, True, "root", "fan noise")
    waiting = world.submit(["sleep", "10"], gpus=2)
    c.reconcile(now=world.clock.advance(1))
    assert world.job(holder)["state"] == "running"  # running work finishes
    c.reconcile(now=world.clock.advance(10))
    assert world.job(holder)["state"] == "succeeded"
    c.reconcile(now=world.clock.advance(1))
    assert world.job(waiting)["state"] == "queued"  # both GPUs free, but one is drained
    from mlpd.controller import plan_now
    from mlpd.runtime.gpus import make_inventory

    plan, _, _ = plan_now(world.store, make_inventory(2, "declared"), world.config, world.clock(), explain=True)
    assert "drained by root: fan noise" in plan.waits[0].reason
    one = world.submit(["true"], gpus=1)
    c.reconcile(now=world.clock.advance(1))
    assert world.job(one)["state"] == "succeeded" and world.job(one)["gpu_uuids"] != [held]
    set_drained(world.store, held, False, "root")
    c.reconcile(now=world.clock.advance(1))
    assert world.job(waiting)["state"] == "running" and held in world.job(waiting)["gpu_uuids"]


def test_a_launch_whose_task_was_lost_is_asked_for_again_after_a_while(world):
    from mlpd.controller import HANDOFF_LOST_AFTER

    asked = []
    c = world.controller()
    c.dispatch = lambda action, job_id, *args: asked.append((action, job_id))  # the task is lost: it never runs
    j = world.submit(["sleep", "100"])
    c.reconcile(now=world.clock())
    assert asked == [("launch", j)] and world.job(j)["state"] == "starting"
    c.reconcile(now=world.clock.advance(HANDOFF_LOST_AFTER / 2))
    assert asked == [("launch", j)]  # not yet: it may only be waiting for a free worker thread
    world.clock.advance(HANDOFF_LOST_AFTER / 2)
    c.dispatch = lambda action, job_id, *args: (asked.append((action, job_id)), getattr(c, f"run_{action}")(job_id, *args))
    c.reconcile(now=world.clock())
    assert asked == [("launch", j), ("launch", j)]
    assert world.job(j)["state"] == "running" and not c.launching


def test_a_reason_that_quotes_a_jobs_output_keeps_its_text_and_loses_its_escape_sequences(world):
    """Issue 22 (break 11's class) and issue 23 item 7: a reason reached terminals and pages with raw escape codes."""
    j = world.submit(["true"])
    jobs.set_reason(world.store, j, "x")  # only a starting job takes a reason this way: nothing changes here
    assert jobs.transition(world.store, j, JobState.CANCELLED, reason="building failed: \x1b[91mERROR: No matching distribution\x1b[0m\x07")
    assert world.job(j)["reason"] == "building failed: ERROR: No matching distribution"
    assert jobs.history(world.store, j)[-1]["detail"]["reason"] == "building failed: ERROR: No matching distribution"
