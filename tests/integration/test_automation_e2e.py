"""Work that runs itself, end to end: a real daemon (the shared one), real Docker, real SQLite.

A chain of jobs with --after, and a schedule firing every minute (two minutes of real time: each
run is checked to be submitted within 5 s of its minute; skip, pause and resume on the way).
"""

from __future__ import annotations

import json
import math
import time

from helpers import as_json, holds_for, needs_docker, new_user, wait_for

pytestmark = needs_docker


def job(daemon, token, job_id):
    resp = daemon.api("GET", f"/api/v1/jobs/{job_id}", token)
    assert resp.status_code == 200, resp.text
    return resp.json()["job"]


def run(daemon, token, *args):
    result = daemon.cli("run", "--no-code", *args, token=token)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_a_chain_of_three_the_second_fails_and_the_third_is_cancelled_naming_it(daemon, tmp_path):
    _, token = new_user(daemon, "chain")
    first = run(daemon, token, "--", "sh", "-c", "sleep 2")
    second = run(daemon, token, "--after", first, "--", "sh", "-c", "exit 3")
    job_file = tmp_path / "third.toml"
    job_file.write_text(f'command = ["true"]\nafter = ["{second}:ok"]\n')
    third = daemon.cli("submit", "--no-code", str(job_file), token=token)
    assert third.returncode == 0, third.stderr
    third = third.stdout.strip().splitlines()[-1]
    assert job(daemon, token, second)["state"] == "waiting"
    shown = daemon.cli("jobs", "show", third, token=token)
    assert f"waiting: waiting for job {second}" in shown.stdout and f"job {second} (ok: must succeed)" in shown.stdout
    wait_for(lambda: job(daemon, token, third)["state"] == "cancelled", 60, 0.2, "the third job to be cancelled")
    assert job(daemon, token, first)["state"] == "succeeded"
    assert job(daemon, token, second)["state"] == "failed" and job(daemon, token, second)["exit_code"] == 3
    reason = job(daemon, token, third)["reason"]
    assert second in reason and "exited with code 3" in reason
    # the first started before the second was queued, and the third never started
    events = {j: [e["action"] for e in job(daemon, token, j)["history"]] for j in (first, second, third)}
    assert events[second][:2] == ["job.waiting", "job.queued"] and "job.starting" not in events[third]


def test_a_dependency_on_a_job_of_someone_else_is_refused_and_adds_nothing(daemon):
    _, mine = new_user(daemon, "depa")
    _, theirs = new_user(daemon, "depb")
    other = run(daemon, theirs, "--", "true")
    before = as_json(daemon.cli("jobs", "--json", token=mine))["jobs"]
    result = daemon.cli("run", "--no-code", "--after", other, "--", "true", token=mine)
    assert result.returncode != 0 and f"after: no such job {other!r}" in result.stderr
    bad = daemon.cli("run", "--no-code", "--after", other[:6] + ":maybe", "--", "true", token=mine)
    assert bad.returncode != 0 and "ok (it must succeed) or any" in bad.stderr
    assert as_json(daemon.cli("jobs", "--json", token=mine))["jobs"] == before


def test_a_schedule_every_minute_fires_within_five_seconds_skips_and_pauses(daemon):
    name, token = new_user(daemon, "cron")
    for schedule, command in (("quick", ["true"]), ("long", ["sleep", "100"])):
        result = daemon.cli("schedule", "add", schedule, "--cron", "* * * * *", "--no-code", "--", *command, token=token)
        assert result.returncode == 0, result.stderr
    assert "overlap: skip (the default" in result.stdout

    def runs(schedule):
        return as_json(daemon.cli("jobs", "--schedule", schedule, "--json", token=token))["jobs"]

    first_minute = math.ceil(time.time() / 60) * 60
    for n in (1, 2):
        wait_for(lambda: len(runs("quick")) >= n, first_minute + 60 * (n - 1) + 30 - time.time(), 0.5, f"run {n} of the schedule")
    quick = sorted(runs("quick"), key=lambda j: j["submitted_at"])
    for n, j in enumerate(quick[:2]):
        due = first_minute + 60 * n
        assert 0 <= j["submitted_at"] - due < 5, f"run {n + 1} submitted {j['submitted_at'] - due:.1f} s after its minute"
    # the long one's first run still runs at the second minute: skipped, and said so
    long_runs = runs("long")
    assert len(long_runs) == 1 and long_runs[0]["state"] == "running"
    shown = as_json(daemon.cli("schedule", "show", "long", "--json", token=token))["schedule"]
    skipped = [r for r in shown["runs"] if r["outcome"] == "skipped"]
    assert skipped and skipped[0]["detail"] == f"skipped: the previous run {long_runs[0]['id']} still runs (--overlap skip)"
    listed = as_json(daemon.cli("schedule", "--json", token=token))["schedules"]
    assert sorted(s["name"] for s in listed) == ["long", "quick"] and all(s["owner"] == name for s in listed)
    # paused: nothing fires across the next minute; resumed: it fires again
    assert daemon.cli("schedule", "pause", "quick", token=token).returncode == 0
    assert daemon.cli("schedule", "rm", "long", token=token).returncode == 0
    daemon.cli("cancel", "--no-wait", long_runs[0]["id"], token=token)
    count = len(runs("quick"))
    holds_for(lambda: len(runs("quick")) == count, max(0.0, math.ceil(time.time() / 60) * 60 + 5 - time.time()), 1.0,
              "no run while paused")
    resumed = daemon.cli("schedule", "resume", "quick", token=token)
    assert resumed.returncode == 0 and "resumed: next run" in resumed.stdout
    now_job = daemon.cli("schedule", "run-now", "quick", token=token)
    assert now_job.returncode == 0
    assert now_job.stdout.strip() in [j["id"] for j in runs("quick")]
    assert daemon.cli("schedule", "rm", "quick", token=token).returncode == 0
    assert as_json(daemon.cli("schedule", "--json", token=token))["schedules"] == []
