"""Preemption by priority class in the controller, on the in-memory runtime with a hand-moved clock.

A production job that cannot start preempts preemptible work: SIGTERM, a grace period, a stop,
the job queued again as its next attempt (MLPD_ATTEMPT), its ledger rows one set per attempt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpd import jobs
from mlpd.config import load_config
from mlpd.controller import JobController
from mlpd.runtime.gpus import make_inventory
from mlpd.jobs import JobState
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.runtime.protocol import container_name
from mlpd.store import Store
from test_controller import SHIPPED, Clock


@pytest.fixture
def world(tmp_path):
    def make(gpus: int = 1, **settings):
        cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "",
                                              "gpus.declare": gpus, **settings})
        store = Store(cfg.db_path)
        store.migrate()
        clock = Clock()
        runtime = MemoryRuntime("test", clock=clock)

        class World:
            def __init__(self):
                self.store, self.config, self.clock, self.runtime = store, cfg, clock, runtime
                self.c = JobController(store, cfg, runtime, make_inventory(gpus, "declared"), clock=clock)

            def submit(self, command, owner="alice", kind="job", **spec):
                parsed, _ = parse_spec({"command": command, **spec})
                clock.advance(0.001)
                return jobs.submit(store, owner, parsed, now=clock(), kind=kind)["id"]

            def job(self, job_id):
                return jobs.get(store, job_id)

            def state(self, job_id):
                return self.job(job_id)["state"]

            def events(self, job_id):
                return [e["action"].removeprefix("job.") for e in jobs.history(store, job_id)]

            def tick(self, seconds=0.0):
                self.c.reconcile(now=clock.advance(seconds))

            def ledger(self, job_id):
                return store.query("SELECT attempt, gpu_uuid, start, end FROM allocations WHERE object_id = ? ORDER BY attempt", [job_id])

        return World()

    return make


LONG = ["sh", "-c", "echo attempt $MLPD_ATTEMPT; sleep 1000"]


def test_a_production_job_preempts_the_latest_preemptible_job_which_runs_again_as_attempt_2(world):
    w = world(gpus=2)
    old = w.submit(LONG, gpus=1, priority_class="preemptible")
    w.tick()
    new = w.submit(LONG, gpus=1, priority_class="preemptible")
    w.tick(10)
    assert w.state(old) == w.state(new) == "running"
    prod = w.submit(["sleep", "100"], owner="bob", gpus=1, priority_class="production")
    w.tick(1)
    # it has not waited scheduler.preempt_after (5m) yet: nothing is preempted, and the loop knows when to look again
    assert w.state(prod) == "queued" and w.state(new) == "running" and "preempt_requested" not in w.events(new)
    assert w.c.next_deadline == pytest.approx(w.job(prod)["submitted_at"] + 300)
    w.tick(300)
    # the latest started preemptible job was told to stop (SIGTERM; this one does not trap it, so it ended at once)
    assert w.state(old) == "running" and "preempt_requested" in w.events(new)
    w.tick(1)
    victim = w.job(new)
    assert (victim["state"], victim["attempts"]) == ("queued", 2)
    assert victim["reason"] == "queued again after preemption, for attempt 2" and victim["gpu_uuids"] == []
    # back in the queue it waits for a GPU like any job (here it holds the reservation)
    assert w.events(new) == ["queued", "starting", "running", "preempt_requested", "preempted", "queued", "reserved"]
    preempted = jobs.preemptions(jobs.history(w.store, new))
    assert len(preempted) == 1 and preempted[0]["attempt"] == 1
    assert preempted[0]["reason"] == f"preempted for job {prod[:12]} of bob (class production, 1 GPU)"
    assert w.state(prod) == "running"
    assert w.job(prod)["gpu_uuids"] == [w.ledger(new)[0]["gpu_uuid"]]  # it took the preempted job's GPU
    # attempt 1's output is kept beside the job's log; its token died with the attempt
    directory = Path(jobs.job_dir(w.config.state_dir, new))
    assert "attempt 1" in (directory / "attempt-1.log").read_text()
    assert w.store.query_one("SELECT COUNT(*) AS n FROM tokens WHERE job_id = ? AND revoked_at IS NULL", [new])["n"] == 0
    # the production job ends: the preempted job runs again, as attempt 2, with the same outputs directory
    w.tick(100)
    w.tick(0)
    assert w.state(prod) == "succeeded" and w.state(new) == "running"
    assert w.runtime.containers[container_name(new)].env["MLPD_ATTEMPT"] == "2"
    assert "attempt 2" in b"".join(w.runtime.logs(new)).decode()
    rows = w.ledger(new)
    assert [r["attempt"] for r in rows] == [1, 2] and rows[1]["end"] is None
    assert rows[0]["end"] <= rows[1]["start"]  # no overlap: attempt 1 was booked up to its stop
    # an attempt-2 job that ends books its second row, the first stays as it was
    w.c.runtime.stop(new)
    w.tick(1)
    rows2 = w.ledger(new)
    assert rows2[0] == rows[0] and rows2[1]["end"] is not None


def test_a_head_promised_a_start_later_than_preempt_after_preempts_at_once(world):
    w = world(gpus=1)
    victim = w.submit(["sleep", "7200"], gpus=1, priority_class="preemptible", time_limit="2h")
    w.tick()
    prod = w.submit(["sleep", "10"], owner="bob", gpus=1, priority_class="production")
    w.tick(1)
    # the production job could start in 2h at the latest, past its 5 minutes: no need to wait them out
    assert "preempt_requested" in w.events(victim)
    w.tick(1)
    assert w.state(prod) == "running" and w.job(victim)["attempts"] == 2


def test_the_grace_period_then_a_stop_and_workspaces_and_default_jobs_are_never_preempted(world):
    from mlpd.runtime.protocol import LaunchRequest

    w = world(gpus=3, **{"scheduler.preempt_after": "0", "scheduler.preempt_grace": "30s"})
    # a workspace session (even one whose spec names a preemptible class) runs on GPU 0
    ws = w.submit(["sleep", "1000"], kind="workspace", gpus=1, priority_class="preemptible")
    gpu0 = make_inventory(3, "declared").devices()[0]
    assert jobs.transition(w.store, ws, JobState.STARTING, gpu_uuids=[gpu0.uuid], gpu_indices=[0])
    w.runtime.start_job(LaunchRequest(ws, "alice", "mlpd/train:latest", ("sleep", "1000"), {}, (gpu0.uuid,), None, None, "1000:1000",
                                      None, "/nonexistent", kind="workspace"))
    default = w.submit(["sleep", "1000"], gpus=1)
    stubborn = w.submit(["sleep", "1000"], gpus=1, priority_class="preemptible")
    w.tick()
    assert {w.state(j) for j in (ws, default, stubborn)} == {"running"}
    w.runtime.ignore_term(stubborn)  # its trap writes a checkpoint and never exits
    prod = w.submit(["sleep", "10"], owner="bob", gpus=2, priority_class="production")
    w.tick(1)
    # preempt_after = 0: at once; but only the preemptible job may go, and one GPU is not enough for two:
    assert w.job(stubborn)["preempt_requested_at"] is None and w.state(prod) == "queued"
    one = w.submit(["sleep", "10"], owner="bob", gpus=1, priority_class="production")
    w.tick(1)
    assert w.job(stubborn)["preempt_requested_at"] == w.clock() and w.state(stubborn) == "running"
    assert w.c.next_deadline == pytest.approx(w.clock() + 30)
    w.tick(29)
    assert w.state(stubborn) == "running"  # still in its grace period
    w.tick(1)
    assert w.state(stubborn) == "queued" and w.job(stubborn)["exit_code"] is None
    assert w.state(one) == "running" and w.state(ws) == "running" and w.state(default) == "running"
    history = jobs.history(w.store, stubborn)
    preempted = next(e for e in history if e["action"] == "job.preempted")
    assert preempted["detail"]["exit_code"] == 137  # killed after its grace period


def test_a_cancel_during_the_grace_period_wins_and_a_preempted_job_can_be_cancelled(world):
    w = world(gpus=1, **{"scheduler.preempt_after": "0"})
    victim = w.submit(["sleep", "1000"], gpus=1, priority_class="preemptible")
    w.tick()
    w.runtime.ignore_term(victim)
    w.submit(["sleep", "10"], owner="bob", gpus=1, priority_class="production")
    w.tick(1)
    assert w.job(victim)["preempt_requested_at"] is not None
    jobs.request_cancel(w.store, victim, "alice")
    w.tick(1)
    assert w.state(victim) == "cancelled" and w.job(victim)["attempts"] == 1
    # a job left preempted (the daemon died before requeueing it) is queued again by the next pass, or cancelled
    other = w.submit(["sleep", "1000"], gpus=1, priority_class="preemptible")
    assert jobs.transition(w.store, other, JobState.STARTING, gpu_uuids=[], gpu_indices=[])
    assert jobs.transition(w.store, other, JobState.RUNNING, started_at=w.clock())
    assert jobs.transition(w.store, other, JobState.PREEMPTED, reason="preempted for job x", ended_at=w.clock())
    assert jobs.request_cancel(w.store, other, "alice")["state"] == "cancelled"
    third = w.submit(["sleep", "1000"], gpus=1, priority_class="preemptible")
    assert jobs.transition(w.store, third, JobState.STARTING, gpu_uuids=[], gpu_indices=[])
    assert jobs.transition(w.store, third, JobState.RUNNING, started_at=w.clock())
    assert jobs.transition(w.store, third, JobState.PREEMPTED, reason="preempted for job x", ended_at=w.clock())
    w.tick(1)
    assert w.job(third)["attempts"] == 2 and w.state(third) in ("queued", "starting", "running")


def test_an_earlier_attempts_container_is_removed_before_the_next_attempt_starts(world):
    from mlpd.runtime.protocol import LaunchRequest

    w = world(gpus=1)
    j = w.submit(["sh", "-c", "echo attempt $MLPD_ATTEMPT"], gpus=1, priority_class="preemptible")
    with w.store.write() as db:
        db.execute("UPDATE jobs SET attempts = 2 WHERE id = ?", [j])
    # attempt 1's container is still there (its removal failed), ended
    old = LaunchRequest(j, "alice", "mlpd/train:latest", ("true",), {}, (), None, None, "1000:1000", None, "/nonexistent", attempt=1)
    w.runtime.start_job(old)
    w.tick()
    assert w.state(j) == "succeeded"
    assert "attempt 2" in (Path(jobs.job_dir(w.config.state_dir, j)) / "log").read_text()
