"""Work that runs itself, end to end: a real daemon (the shared one; the restart test its own), real
Docker, real SQLite, the daemon's real MLflow.

A chain of jobs with --after; a schedule firing every minute (two minutes of real time: each run is
checked to be submitted within 5 s of its minute; skip, pause and resume on the way); a daemon killed
across a due time; a 2x2 sweep with --parallel 2 and its MLflow child runs; a seeded random sweep
twice; early stopping by the median rule; every sweep refusal adding nothing.
"""

from __future__ import annotations

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


TRAIN = """import os, sys, time
import mlflow
lr, bs = float(sys.argv[2]), int(sys.argv[4])
assert os.environ["MLPD_PARAM_LR"] == sys.argv[2] and os.environ["MLPD_PARAM_BS"] == sys.argv[4]
with mlflow.start_run() as run:  # resumes the trial's child run (MLFLOW_RUN_ID)
    time.sleep(2)
    mlflow.log_metric("val_acc", lr * 1000 + bs)
    print("run", run.info.run_id)
"""


def mlflow_run(daemon, token, run_id):
    resp = daemon.api("GET", "/mlflow/api/2.0/mlflow/runs/get", token, params={"run_id": run_id})
    assert resp.status_code == 200, resp.text[:300]
    return resp.json()["run"]


def test_a_two_by_two_grid_runs_four_trials_at_most_two_at_once_with_child_runs(daemon, tmp_path):
    name, token = new_user(daemon, "sweep")
    (tmp_path / "train.py").write_text(TRAIN)
    started = daemon.cli("sweep", "--param", "lr=0.1,0.01", "--param", "bs=32,64", "--parallel", "2", "--metric", "val_acc", "--goal", "max",
                         "--", "python3", "train.py", "--lr", "{lr}", "--bs", "{bs}", token=token, cwd=str(tmp_path))
    assert started.returncode == 0, started.stderr
    sweep_id = started.stdout.strip().splitlines()[-1]
    assert "4 trials (grid), at most 2 at once" in started.stderr

    def shown():
        return as_json(daemon.cli("sweep", "show", sweep_id, "--json", token=token))["sweep"]

    wait_for(lambda: shown()["states"] == {"succeeded": 4}, 240, 1.0, "the four trials to succeed")
    s = shown()
    # never more than two at once: from each trial's events, the time it was queued to the time it ended
    spans = []
    for t in s["trials"]:
        history = job(daemon, token, t["job_id"])["history"]
        queued = next(e["at"] for e in history if e["action"] == "job.queued")
        ended = next(e["at"] for e in history if e["action"] == "job.succeeded")
        spans.append((queued, ended))
    most = max(sum(1 for a, b in spans if a <= moment < b) for moment, _ in spans)
    assert most == 2, spans
    # each trial logged into its own child run of the sweep's parent run, with its parameters
    for t in s["trials"]:
        run = mlflow_run(daemon, token, t["run_id"])
        tags = {x["key"]: x["value"] for x in run["data"].get("tags", [])}
        params = {x["key"]: x["value"] for x in run["data"].get("params", [])}
        assert tags["mlflow.parentRunId"] == s["parent_run_id"] and tags["mlpd.job_id"] == t["job_id"]
        assert params == t["params"] and run["info"]["user_id"] == name
        assert t["metric"] == float(t["params"]["lr"]) * 1000 + int(t["params"]["bs"])
    assert [t["params"] for t in s["trials"]][0] == {"lr": "0.1", "bs": "64"} and s["best"]["metric"] == 164.0
    text = daemon.cli("sweep", "show", sweep_id, token=token)
    assert f"best: trial 2 (job {s['best']['job_id']}) val_acc=164" in text.stdout
    listed = as_json(daemon.cli("jobs", "--sweep", sweep_id, "--json", token=token))["jobs"]
    assert sorted(j["id"] for j in listed) == sorted(t["job_id"] for t in s["trials"])


def test_a_random_sweep_with_the_same_seed_gives_the_same_trials_and_cancel_stops_the_rest(daemon):
    _, token = new_user(daemon, "rand")
    args = ["sweep", "--no-code", "--random", "3", "--seed", "42", "--param", "lr=loguniform:1e-4:1e-1", "--param", "layers=int:1:8",
            "--parallel", "1", "--", "sh", "-c", "sleep 60 # {lr} {layers}"]
    first = daemon.cli(*args, token=token)
    second = daemon.cli(*args, token=token)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    a, b = (as_json(daemon.cli("sweep", "show", r.stdout.strip().splitlines()[-1], "--json", token=token))["sweep"] for r in (first, second))
    params = lambda s: [t["params"] for t in sorted(s["trials"], key=lambda t: t["trial"])]  # noqa: E731
    assert params(a) == params(b) and len(params(a)) == 3 and a["seed"] == 42
    assert sorted(a["states"]) in (["queued", "waiting"], ["running", "waiting"], ["starting", "waiting"]) and a["states"]["waiting"] == 2
    for s in (a, b):
        cancelled = daemon.cli("sweep", "cancel", s["id"], token=token)
        assert cancelled.returncode == 0 and "cancelled 3 trials" in cancelled.stdout
    wait_for(lambda: as_json(daemon.cli("sweep", "show", a["id"], "--json", token=token))["sweep"]["states"] == {"cancelled": 3}, 60, 0.5,
             "the sweep's trials to be cancelled")


def test_every_sweep_refusal_adds_nothing(daemon, tmp_path):
    _, token = new_user(daemon, "refuse")
    (tmp_path / "sweep.toml").write_text('command = ["echo", "{lr}"]\n[params]\nlr = []\n')
    cases = [
        (["--random", "2", "--param", "lr=lognormal:1:2", "--", "echo", "{lr}"], "unknown distribution 'lognormal'"),
        (["--param", "lr=", "--", "echo", "{lr}"], "empty grid"),
        (["-f", str(tmp_path / "sweep.toml")], "empty grid"),
        (["--param", "lr=1,2", "--", "echo", "{lr}", "{bs}"], "placeholder {bs} has no parameter"),
        (["--param", "a=" + ",".join(map(str, range(40))), "--param", "b=" + ",".join(map(str, range(30))), "--", "echo", "{a}{b}"],
         "1200 trials, over 1000: confirm with --yes"),
    ]
    for args, message in cases:
        result = daemon.cli("sweep", "--no-code", *args, token=token)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    # the API refuses the same, whatever the client
    resp = daemon.api("POST", "/api/v1/sweeps", token, json={"command": ["echo", "{lr}"], "params": {"lr": "lognormal:1:2"}, "random": 2})
    assert resp.status_code == 400 and "unknown distribution" in resp.json()["error"]["message"]
    assert as_json(daemon.cli("sweep", "list", "--json", token=token))["sweeps"] == []
    assert as_json(daemon.cli("jobs", "--json", token=token))["jobs"] == []


def test_a_daemon_killed_across_a_due_time_fires_that_time_exactly_once_after_restart(make_daemon):
    import signal

    d = make_daemon()
    _, token = new_user(d, "restart")
    assert d.cli("schedule", "add", "every", "--cron", "* * * * *", "--no-code", "--", "true", token=token).returncode == 0

    def runs():
        return as_json(d.cli("schedule", "show", "every", "--json", token=token))["schedule"]["runs"]

    wait_for(lambda: runs(), 75, 0.5, "the first run")
    [first] = runs()
    wait_for(lambda: job(d, token, first["job_id"])["state"] == "succeeded", 30, 0.2, "the first run to end")  # else: skipped (overlap)
    d.stop(signal.SIGKILL)
    missed = first["due_at"] + 60
    wait_for(lambda: time.time() > missed + 2, 70, 0.5, "the next due time to pass while the daemon is down")
    restarted = time.time()
    d.start()
    wait_for(lambda: len(runs()) == 2, 30, 0.5, "the missed due time to fire after the restart")
    second = runs()[0]
    assert second["due_at"] == missed and second["job_id"] and second["outcome"] in ("fired", "catch-up"), second
    assert job(d, token, second["job_id"])["submitted_at"] >= restarted
    # and never again for that due time, however often the worker looks before the next one
    holds_for(lambda: [r["due_at"] for r in runs()] == [missed, first["due_at"]], max(0.0, missed + 60 - time.time() - 2), 0.5,
              "one run per due time")


HOLD = """import sys, time
import mlflow
v = float(sys.argv[1])
with mlflow.start_run():
    for step in range(3):
        mlflow.log_metric("acc", v, step=step)
    time.sleep(20)
    mlflow.log_metric("acc", v, step=3)
"""


def test_early_stopping_by_the_median_rule_stops_the_worst_trial(daemon, tmp_path):
    _, token = new_user(daemon, "median")
    (tmp_path / "hold.py").write_text(HOLD)
    started = daemon.cli("sweep", "--param", "v=1,9,10", "--parallel", "3", "--metric", "acc", "--stop-after-steps", "2",
                         "--", "python3", "hold.py", "{v}", token=token, cwd=str(tmp_path))
    assert started.returncode == 0, started.stderr
    sweep_id = started.stdout.strip().splitlines()[-1]

    def shown():
        return as_json(daemon.cli("sweep", "show", sweep_id, "--json", token=token))["sweep"]

    wait_for(lambda: sum(shown()["states"].get(s, 0) for s in ("succeeded", "cancelled")) == 3, 180, 1.0, "the three trials to end")
    by_value = {t["params"]["v"]: t for t in shown()["trials"]}
    assert by_value["1"]["state"] == "cancelled" and "stopped early by the median rule" in by_value["1"]["reason"]
    assert by_value["9"]["state"] == "succeeded" and by_value["10"]["state"] == "succeeded"
    assert shown()["stop_after_steps"] == 2 and shown()["best"]["params"] == {"v": "10"}
