"""Sweeps (mlpd.automation.sweeps): the plan is pure; release runs on a real SQLite state database."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpd import jobs, users
from mlpd.automation import sweeps
from mlpd.automation.sweeps import SweepError
from mlpd.config import load_config
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
GRID = {"command": ["python", "train.py", "--lr", "{lr}", "--bs", "{bs}"], "params": {"lr": [0.1, 0.01], "bs": [32, 64]}, "parallel": 2,
        "metric": "val_acc", "goal": "max"}


def test_a_grid_has_one_trial_per_combination_with_values_in_command_and_environment():
    p = sweeps.plan(GRID)
    assert p.trials == [{"lr": "0.1", "bs": "32"}, {"lr": "0.1", "bs": "64"}, {"lr": "0.01", "bs": "32"}, {"lr": "0.01", "bs": "64"}]
    assert sweeps.fill(p.command, p.trials[2]) == ["python", "train.py", "--lr", "0.01", "--bs", "32"]
    env = sweeps.param_env(p.trials[2])
    assert env["MLPD_PARAM_LR"] == "0.01" and env["MLPD_PARAM_BS"] == "32" and env["MLPD_PARAMS"] == '{"bs": "32", "lr": "0.01"}'


def test_cli_param_text_reads_as_grids_and_distributions():
    assert sweeps.parse_param("lr", "0.1,0.01") == sweeps.Param("lr", ("0.1", "0.01"))
    assert sweeps.parse_param("lr", "loguniform:1e-4:1e-1") == sweeps.Param("lr", (), "loguniform", 1e-4, 1e-1)
    assert sweeps.parse_param_flags(["lr=0.1,0.01", "bs=32"]) == {"lr": "0.1,0.01", "bs": "32"}


def test_a_random_sweep_with_the_same_seed_gives_the_same_trials_within_their_ranges():
    d = {**GRID, "params": {"lr": "loguniform:1e-4:1e-1", "bs": [32, 64], "layers": "int:1:4", "drop": "uniform:0:0.5"}, "random": 20, "seed": 7}
    a, b = sweeps.plan(d), sweeps.plan(d)
    assert a.trials == b.trials and len(a.trials) == 20
    assert a.trials != sweeps.plan({**d, "seed": 8}).trials
    for t in a.trials:
        assert 1e-4 <= float(t["lr"]) <= 1e-1 and t["bs"] in ("32", "64") and 1 <= int(t["layers"]) <= 4 and 0 <= float(t["drop"]) <= 0.5
    unseeded = sweeps.plan({**d, "seed": None})
    assert unseeded.seed is not None and sweeps.plan({**d, "seed": unseeded.seed}).trials == unseeded.trials  # the seed is recorded


@pytest.mark.parametrize("change,message", [
    ({"params": {"lr": "lognormal:0:1", "bs": [32]}, "random": 3}, "unknown distribution 'lognormal'"),
    ({"params": {"lr": [], "bs": [32]}}, "empty grid"),
    ({"params": {}}, "empty grid"),
    ({"params": {"lr": "0.1,,0.2", "bs": [32]}}, "empty grid"),
    ({"params": {"lr": [0.1]}}, "placeholder {bs} has no parameter"),
    ({"params": {"lr": "loguniform:0:1", "bs": [32]}, "random": 2}, "LOW > 0"),
    ({"params": {"lr": "uniform:1:1", "bs": [32]}, "random": 2}, "LOW < HIGH"),
    ({"params": {"lr": "uniform:0:1", "bs": [32]}}, "needs a random sweep"),
    ({"params": {"lr": list(range(101)), "bs": list(range(10))}}, "1010 trials, over 1000: confirm with --yes"),
    ({"goal": "maximise"}, "goal"),
    ({"parallel": 0}, "parallel"),
])
def test_refusals_name_what_is_wrong(change, message):
    with pytest.raises(SweepError) as exc:
        sweeps.plan({**GRID, **change})
    assert message in exc.value.message


def test_over_a_thousand_trials_pass_with_yes():
    assert len(sweeps.plan({**GRID, "params": {"lr": list(range(101)), "bs": list(range(10))}}, yes=True).trials) == 1010


def test_shell_variables_are_not_placeholders():
    sweeps.check_placeholders(["sh", "-c", "echo ${HOME} {lr}"], [sweeps.Param("lr", ("1",))])


def test_ranked_puts_the_best_first_and_trials_without_the_metric_last():
    rows = [{"trial": 1, "metric": 0.5}, {"trial": 2, "metric": None}, {"trial": 3, "metric": 0.9}, {"trial": 4, "metric": 0.7}]
    assert [r["trial"] for r in sweeps.ranked(rows, "max")] == [3, 4, 1, 2]
    assert [r["trial"] for r in sweeps.ranked(rows, "min")] == [1, 4, 3, 2]


def test_release_keeps_at_most_parallel_trials_queued_or_running(tmp_path):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state")})
    store = Store(cfg.db_path)
    store.migrate()
    users.add_user(store, "alice")
    p = sweeps.plan(GRID)
    sweep_id = sweeps.create(store, "alice", p, {"command": ["x"]}, "exp", "", [""] * 4)
    ids = [t["job_id"] for t in sweeps.trials(store, sweep_id)]
    assert {jobs.get(store, i)["state"] for i in ids} == {"waiting"}
    assert sweeps.release(store) == ids[:2]
    assert sweeps.release(store) == []  # two are queued: no room
    jobs.transition(store, ids[0], jobs.JobState.STARTING)
    jobs.transition(store, ids[0], jobs.JobState.RUNNING)
    assert sweeps.release(store) == []
    jobs.transition(store, ids[0], jobs.JobState.FAILED, ended_at=1.0)  # a failed trial does not stop the sweep
    assert sweeps.release(store) == [ids[2]]
    assert jobs.get(store, ids[2])["spec"]["command"] == ["python", "train.py", "--lr", "0.01", "--bs", "32"]
    assert jobs.get(store, ids[2])["spec"]["env"]["MLPD_TRIAL"] == "3"
    cancelled = sweeps.cancel(store, sweeps.get(store, sweep_id), "alice")
    assert set(cancelled) == {ids[1], ids[2], ids[3]} and jobs.get(store, ids[3])["state"] == "cancelled"
    assert sweeps.release(store) == []


def test_the_median_rule_stops_a_trial_worse_than_the_median_of_the_others():
    assert sweeps.median_verdict(1.0, [9.0, 10.0], "max") == 9.5
    assert sweeps.median_verdict(9.0, [1.0, 10.0], "max") is None
    assert sweeps.median_verdict(9.0, [1.0, 10.0], "min") == 5.5
    assert sweeps.median_verdict(1.0, [10.0], "max") is None  # too few others to judge


def test_stop_early_judges_running_trials_that_reached_the_step(tmp_path):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state")})
    store = Store(cfg.db_path)
    store.migrate()
    users.add_user(store, "alice")
    p = sweeps.plan({"command": ["train", "{v}"], "params": {"v": [1, 9, 10, 2]}, "parallel": 4, "metric": "acc",
                     "stop_after_steps": 2})
    sweep_id = sweeps.create(store, "alice", p, {}, "exp", "parent", ["r1", "r9", "r10", "r2"])
    ids = [t["job_id"] for t in sweeps.trials(store, sweep_id)]
    sweeps.release(store)
    for i in ids:
        jobs.transition(store, i, jobs.JobState.STARTING)
        jobs.transition(store, i, jobs.JobState.RUNNING)
    # what MLflow's metrics table holds, read as TrackingDb.metric_history reads it: r2 has not reached step 2
    history = {"r1": [(0, 0.5), (1, 1.0), (2, 1.0), (5, float("nan"))], "r9": [(0, 3.0), (2, 9.0)], "r10": [(2, 10.0)],
               "r2": [(0, 2.0), (1, 2.0)]}
    asked = []

    def read(run_ids, key, step):
        asked.append((sorted(run_ids), key, step))
        return {r: history[r] for r in run_ids if r in history}

    assert sweeps.stop_early(store, read) == [ids[0]]
    assert asked == [(["r1", "r10", "r2", "r9"], "acc", 2)]
    job = jobs.get(store, ids[0])
    assert job["cancel_requested_by"] == "mlpd" and "median rule" in job["cancel_reason"] and "(1)" in job["cancel_reason"]
    assert sweeps.stop_early(store, read) == []  # asked once
    with pytest.raises(SweepError, match="give --metric"):
        sweeps.plan({"command": ["x"], "params": {"v": [1]}, "stop_after_steps": 2})
