"""Preemption by priority class end to end: a real daemon with one declared GPU, real containers.

A preemptible job holds the only GPU; a production job arrives; the preemptible job gets SIGTERM,
writes a checkpoint to its outputs in the grace period, goes back to the queue, and resumes
(MLPD_ATTEMPT=2, the checkpoint there) once the production job has ended. The ledger books both
attempts, with no overlap between them or with the production job on that GPU.
"""

from __future__ import annotations

import sqlite3
import textwrap

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker

CHECKPOINTING = textwrap.dedent("""\
    import os, signal, sys, time
    attempt = os.environ["MLPD_ATTEMPT"]
    ck = "/outputs/checkpoint"
    if os.path.exists(ck):
        print("resumed from", open(ck).read(), "in attempt", attempt, flush=True)
        sys.exit(0)
    def on_term(*_):
        with open(ck, "w") as fh:
            fh.write("step 42 of attempt " + attempt)
        print("checkpoint written by attempt", attempt, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    print("attempt", attempt, "training", flush=True)
    while True:
        time.sleep(0.1)
""")


def config(tmp_path, text: str):
    path = tmp_path / "mlpd.toml"
    path.write_text(text)
    return path


def job(d, token, job_id):
    resp = d.api("GET", f"/api/v1/jobs/{job_id}", token)
    assert resp.status_code == 200, resp.text
    return resp.json()["job"]


def wait_state(d, token, job_id, states, timeout=60):
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (j := job(d, token, job_id))["state"] in states and j, timeout, 0.1, f"job {job_id} to be {states}")


def test_a_production_job_preempts_a_checkpointing_job_that_resumes_as_attempt_2(make_daemon, tmp_path):
    cfg = config(tmp_path, '[scheduler]\npreempt_after = "0"\npreempt_grace = "30s"\n'
                           'priority_class_users = {production = ["team:prod"]}\n')
    d = make_daemon(["--declare-gpus", "1"], config_file=cfg)
    alice, alice_token = new_user(d, "alice")
    bob, bob_token = new_user(d, "bob")
    for args in (["team", "add", "prod"], ["team", "member", "add", "prod", bob]):
        result = d.cli("admin", *args)
        assert result.returncode == 0, result.stderr

    train = as_json(d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "preemptible", "--json", "--",
                          "python3", "-c", CHECKPOINTING, token=alice_token))["job"]["id"]
    wait_for(lambda: "training" in d.api("GET", f"/api/v1/jobs/{train}/logs", alice_token).text, 60, 0.2, "attempt 1 to train")
    assert job(d, alice_token, train)["attempt"] == 1 and job(d, alice_token, train)["priority_class"] == "preemptible"

    # alice is not in team prod: a clear refusal at submit, nothing queued
    refused = d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "production", "--", "true", token=alice_token)
    assert refused.returncode != 0 and "priority class 'production' is not yours to use" in refused.stderr
    unknown = d.api("POST", "/api/v1/jobs", alice_token, json={"command": ["true"], "priority_class": "urgent"})
    assert unknown.status_code == 400 and "unknown class 'urgent'" in unknown.json()["error"]["message"]

    prod = as_json(d.cli("run", "--no-code", "--gpus", "1", "--priority-class", "production", "--json", "--",
                         "sh", "-c", "echo production on $CUDA_VISIBLE_DEVICES; sleep 3", token=bob_token))["job"]["id"]
    # SIGTERM, the checkpoint, back to the queue: attempt 2 waits while the production job runs
    wait_state(d, bob_token, prod, {"running", "succeeded"})
    again = job(d, alice_token, train)
    assert again["attempt"] == 2 and again["state"] in ("queued", "starting", "running", "succeeded")
    assert len(again["preemptions"]) == 1 and f"preempted for job {prod[:12]} of {bob} (class production" in again["preemptions"][0]["reason"]
    wait_state(d, bob_token, prod, "succeeded")
    done = wait_state(d, alice_token, train, {"succeeded", "failed"}, timeout=90)
    assert done["state"] == "succeeded" and done["attempt"] == 2

    log = d.api("GET", f"/api/v1/jobs/{train}/logs", alice_token).text
    assert "--- attempt 1 (preempted) ---" in log and "checkpoint written by attempt 1" in log
    assert "resumed from step 42 of attempt 1 in attempt 2" in log
    actions = [e["action"] for e in done["history"]]
    assert actions.index("job.preempt_requested") < actions.index("job.preempted") < actions.index("job.succeeded")
    assert actions.count("job.running") == 2

    show = d.cli("jobs", "show", train, token=alice_token)
    assert show.returncode == 0, show.stderr
    assert "attempt:     2" in show.stdout and "class:       preemptible" in show.stdout
    assert "preempted:   attempt 1 at " in show.stdout and f"for job {prod[:12]} of {bob}" in show.stdout

    # the ledger: one row per attempt, each closed, no overlap with each other or with the production job's row
    db = sqlite3.connect(d.state_dir / "mlpd.db")
    rows = db.execute("SELECT object_id, attempt, gpu_uuid, start, end FROM allocations WHERE object_id IN (?, ?) ORDER BY start",
                      [train, prod]).fetchall()
    db.close()
    assert [(r[0], r[1]) for r in rows] == [(train, 1), (prod, 1), (train, 2)]
    assert len({r[2] for r in rows}) == 1 and all(r[4] is not None for r in rows)
    for earlier, later in zip(rows, rows[1:], strict=False):
        assert earlier[4] <= later[3], (earlier, later)
