"""Fair share's slowdown factor, read from the state database by the controller: the owner whose
recent GPU jobs waited longest for their length goes first (in-memory runtime, real SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlpd import jobs
from mlpd.config import load_config
from mlpd.controller import JobController, scheduler_inputs
from mlpd.runtime.gpus import make_inventory
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0
HOUR = 3600.0


def make_world(tmp_path, **overrides):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "",
                                          "gpus.declare": 2, **overrides})
    store = Store(cfg.db_path)
    store.migrate()
    now = [T0]
    runtime = MemoryRuntime("test", clock=lambda: now[0])
    inventory = make_inventory(2, "declared")
    controller = JobController(store, cfg, runtime, inventory, clock=lambda: now[0])
    return store, cfg, inventory, controller, now


def submit(store, owner, at, **spec):
    parsed, _ = parse_spec({"command": ["sleep", "100"], "gpus": 1, "time_limit": "1h", **spec})
    return jobs.submit(store, owner, parsed, now=at)["id"]


def past_job(store, owner, submitted, started, ended, gpus=1):
    """A finished job in the history, as the controller would have left it."""
    job_id = submit(store, owner, submitted, gpus=gpus)
    with store.write() as db:
        db.execute("UPDATE jobs SET state = 'succeeded', started_at = ?, ended_at = ?, exit_code = 0, gpu_uuids = ? "
                   "WHERE id = ?", [started, ended, json.dumps([f"GPU-{i}" for i in range(gpus)]), job_id])
    return job_id


def history(store):
    # carol's last job waited 10 h for a 1 h run (slowdown 11); dave's started at once (1);
    # a CPU-only job of dave's that waited long does not count
    past_job(store, "carol", T0 - 20 * HOUR, T0 - 10 * HOUR, T0 - 9 * HOUR)
    past_job(store, "dave", T0 - 5 * HOUR, T0 - 5 * HOUR, T0 - 4 * HOUR)
    past_job(store, "dave", T0 - 50 * HOUR, T0 - 5 * HOUR, T0 - 4 * HOUR, gpus=0)


def test_the_controller_reads_each_owners_slowdown_from_started_and_queued_jobs(tmp_path):
    store, cfg, inventory, _, _ = make_world(tmp_path)
    history(store)
    submit(store, "dave", T0 - 2 * HOUR)   # queued 2 h, limit 1 h: 3 so far
    submit(store, "carol", T0)
    s = scheduler_inputs(store, inventory, cfg, T0).slowdown
    w_c, w_d = 0.5 ** (10 / (21 * 24)), 0.5 ** (5 / (21 * 24))  # 21-day half-life (the default), by start
    assert s["carol"] == pytest.approx((w_c * 11.0 + 1.0) / (w_c + 1.0))
    assert s["dave"] == pytest.approx((w_d * 1.0 + 3.0) / (w_d + 1.0))


def test_the_owner_whose_work_waited_longest_for_its_length_starts_first(tmp_path):
    store, _, _, controller, now = make_world(tmp_path)
    history(store)
    bob = submit(store, "bob", T0 - 3)
    dave = submit(store, "dave", T0 - 2)
    carol = submit(store, "carol", T0 - 1)  # last in, but carol's work has been slowed down most
    controller.reconcile(now=T0)
    state = {j: jobs.get(store, j)["state"] for j in (bob, dave, carol)}
    assert state[carol] != "queued" and state[bob] != "queued" and state[dave] == "queued"


def test_without_sqlite_math_functions_the_same_factor_is_summed_in_python(tmp_path, monkeypatch):
    from mlpd.scheduling import quotas

    store, cfg, inventory, _, _ = make_world(tmp_path)
    history(store)
    submit(store, "dave", T0 - 2 * HOUR)
    submit(store, "carol", T0)
    in_sql = scheduler_inputs(store, inventory, cfg, T0).slowdown
    # as an SQLite without its math functions answers: "no such function: exp"
    monkeypatch.setattr(quotas, "FAIR_SHARE_SLOWDOWN_SQL", quotas.FAIR_SHARE_SLOWDOWN_SQL.replace("exp(", "exp_x("))
    in_python = scheduler_inputs(store, inventory, cfg, T0).slowdown
    assert in_python.keys() == in_sql.keys() == {"carol", "dave"}
    for owner in in_sql:
        assert in_python[owner] == pytest.approx(in_sql[owner])


def test_weight_slowdown_0_leaves_submit_order(tmp_path):
    store, _, _, controller, _ = make_world(tmp_path, **{"scheduler.weight_slowdown": 0})
    history(store)
    bob = submit(store, "bob", T0 - 3)
    dave = submit(store, "dave", T0 - 2)
    carol = submit(store, "carol", T0 - 1)
    controller.reconcile(now=T0)
    state = {j: jobs.get(store, j)["state"] for j in (bob, dave, carol)}
    assert state[carol] == "queued" and state[bob] != "queued" and state[dave] != "queued"


def test_why_waiting_gives_the_terms_of_the_score_that_ordered_the_queue(tmp_path):
    from mlpd.controller import why_waiting

    store, cfg, inventory, controller, _ = make_world(tmp_path)
    history(store)
    hold = submit(store, "bob", T0 - 10, gpus=2)
    controller.reconcile(now=T0 - 10)
    dave = submit(store, "dave", T0 - 2 * HOUR)
    carol = submit(store, "carol", T0)
    controller.reconcile(now=T0)  # the pass gives the head (carol, slowed down most) the reservation
    wait, prio = why_waiting(store, inventory, cfg, T0, dave)
    assert jobs.get(store, hold)["state"] != "queued" and wait is not None
    assert set(prio["terms"]) == {"priority", "age", "fair_share", "slowdown", "expansion"}
    assert prio["score"] == pytest.approx(sum(prio["terms"].values()))
    assert prio["priority_class"] == "default"
    _, carols = why_waiting(store, inventory, cfg, T0, carol)
    assert carols["terms"]["slowdown"] == pytest.approx(3000)  # carol's work was slowed down most
    assert 0 < prio["terms"]["slowdown"] < carols["terms"]["slowdown"]
    assert carols["reserved"] and not prio["reserved"]
    assert why_waiting(store, inventory, cfg, T0, hold) == (None, None)  # not queued


def test_fair_share_now_lists_each_users_factors_most_favoured_first(tmp_path):
    from mlpd.controller import fair_share_now

    store, cfg, inventory, _, _ = make_world(tmp_path)
    history(store)
    submit(store, "dave", T0 - 2 * HOUR)
    submit(store, "carol", T0)
    submit(store, "carol", T0, gpus=0)  # CPU-only work is not GPU work queued
    rows = fair_share_now(store, inventory, cfg, T0)
    by_user = {r["user"]: r for r in rows}
    assert [r["user"] for r in rows] == ["carol", "dave"]  # carol's work was slowed down most
    carol, dave = by_user["carol"], by_user["dave"]
    assert carol["slowdown_factor"] == 1.0 and 0 < dave["slowdown_factor"] < 1
    assert carol["queued"] == 1 and dave["queued"] == 1
    assert carol["usage_factor"] == dave["usage_factor"] == 1.0 and carol["usage_gpu_hours"] == 0.0  # no ledger rows
    assert carol["score"] == pytest.approx(100 * 1.0 + 3000 * 1.0)
    assert dave["score"] == pytest.approx(100 + 3000 * dave["slowdown_factor"])
    off = make_world(tmp_path / "off", **{"scheduler.fair_share": False})
    assert all(r["score"] == 0.0 for r in fair_share_now(off[0], off[2], off[1], T0))


def test_work_queued_beyond_the_owners_own_quota_does_not_raise_their_slowdown(tmp_path):
    from mlpd.controller import fair_share_now

    # everyone may hold 1 GPU at once: dave queues five jobs, four of which wait for his own quota
    store, cfg, inventory, _, _ = make_world(tmp_path, **{"quotas.max_gpus": 1, "quotas.over_quota": "queue"})
    history(store)
    for _ in range(5):
        submit(store, "dave", T0 - 2 * HOUR)
    submit(store, "carol", T0)
    s = scheduler_inputs(store, inventory, cfg, T0)
    w_d = 0.5 ** (5 / (21 * 24))
    assert s.slowdown["dave"] == pytest.approx((w_d * 1.0 + 3.0) / (w_d + 1.0))  # one queued job counts, not five
    assert [q.owner for q in s.waiting] == ["dave", "carol"]
    dave = next(r for r in fair_share_now(store, inventory, cfg, T0) if r["user"] == "dave")
    assert dave["queued"] == 5 and dave["queued_for_quota"] == 4
