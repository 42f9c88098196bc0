"""Retention on a real state database and directory: ended jobs' files and unused code go, nothing of live work does."""

from __future__ import annotations

import os
import time

from mlpd import jobs

from mlpd import retention
from mlpd.jobs import JobState
from mlpd.kinds.jobspec import parse_spec
from mlpd.store import Store

DAY = 86400.0


def test_old_ended_jobs_lose_their_files_live_ones_never_and_unused_code_goes(tmp_path):
    state = str(tmp_path)
    store = Store(os.path.join(state, "mlpd.db"))
    store.migrate()
    now = time.time()
    old_code, live_code = "a" * 64, "b" * 64
    for digest in (old_code, live_code):
        os.makedirs(jobs.code_dir(state, digest))
        open(os.path.join(jobs.code_dir(state, digest), "train.py"), "w").write("print(1)\n")

    def job(code, submitted):
        spec, _ = parse_spec({"command": ["true"], "code": code})
        job_id = jobs.submit(store, "alice", spec, now=submitted)["id"]
        os.makedirs(os.path.join(jobs.job_dir(state, job_id), "outputs"))
        open(os.path.join(jobs.job_dir(state, job_id), "log"), "w").write("x" * 1000)
        return job_id

    ended_old = job(old_code, now - 40 * DAY)
    jobs.transition(store, ended_old, JobState.CANCELLED, reason="x", ended_at=now - 39 * DAY)
    ended_recent = job(live_code, now - 2 * DAY)
    jobs.transition(store, ended_recent, JobState.CANCELLED, reason="x", ended_at=now - DAY)
    running_old = job(live_code, now - 50 * DAY)  # queued for ages, then running: never touched
    jobs.transition(store, running_old, JobState.STARTING, gpu_uuids=[], gpu_indices=[])
    jobs.transition(store, running_old, JobState.RUNNING, started_at=now - 45 * DAY)
    os.symlink("/etc", os.path.join(jobs.job_dir(state, ended_old), "outputs", "etc"))  # a job's link: removed, not followed

    due = retention.plan(store, state, 30, 30, now)
    assert due.job_dirs == [ended_old] and due.code == [old_code] and due.bytes > 1000
    done = retention.apply(store, state, 30, 30, now)
    assert done.job_dirs == [ended_old] and done.code == [old_code]
    assert not os.path.exists(jobs.job_dir(state, ended_old)) and os.path.exists("/etc/hostname")
    for kept in (ended_recent, running_old):
        assert os.path.exists(os.path.join(jobs.job_dir(state, kept), "log"))
    assert not os.path.exists(jobs.code_dir(state, old_code)) and os.path.exists(jobs.code_dir(state, live_code))
    assert jobs.get(store, ended_old)["state"] == "cancelled"  # the record stays
    assert "job.files_removed" in [e["action"] for e in jobs.history(store, ended_old)]
    assert retention.apply(store, state, 30, 30, now).job_dirs == []  # nothing twice


def test_code_a_job_uses_after_the_plan_is_kept_in_every_state_the_plan_keeps(tmp_path):
    """Issue 23 item 13: apply's re-check left out 'preempted', which the plan itself keeps."""
    state = str(tmp_path)
    store = Store(os.path.join(state, "mlpd.db"))
    store.migrate()
    now = time.time()
    digest = "c" * 64
    os.makedirs(jobs.code_dir(state, digest))
    due = retention.plan(store, state, 30, 30, now + 40 * DAY)
    assert due.code == [digest]  # nothing uses it when the plan is made
    spec, _ = parse_spec({"command": ["true"], "code": digest})
    job_id = jobs.submit(store, "alice", spec, now=now)["id"]  # then a job takes it, and is preempted at once
    jobs.transition(store, job_id, JobState.STARTING, gpu_uuids=[], gpu_indices=[])
    jobs.transition(store, job_id, JobState.RUNNING, started_at=now)
    assert jobs.transition(store, job_id, JobState.PREEMPTED, reason="for a production job")
    done = retention.apply(store, state, 30, 30, now + 40 * DAY, chosen=due)
    assert done.code == [] and os.path.isdir(jobs.code_dir(state, digest))
