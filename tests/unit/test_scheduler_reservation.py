"""The controller keeps the head's reservation across passes (jobs.reserved_at), on the in-memory
runtime with real SQLite and a clock moved by hand."""
from __future__ import annotations

from pathlib import Path

from mlpd import jobs
from mlpd.config import load_config
from mlpd.controller import JobController, explain_now
from mlpd.runtime.gpus import make_inventory
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.scheduling.scheduler import format_time
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0


def test_the_head_keeps_its_reservation_and_its_start_time(tmp_path):
    now = [T0]
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path), "server.container_listen": "", "gpus.declare": 2})
    store = Store(cfg.db_path)
    store.migrate()
    runtime = MemoryRuntime("test", clock=lambda: now[0])
    inventory = make_inventory(2, "declared")
    c = JobController(store, cfg, runtime, inventory, clock=lambda: now[0])

    def submit(command, owner="alice", **spec):
        now[0] += 1
        return jobs.submit(store, owner, parse_spec({"command": command, **spec})[0], now=now[0])["id"]

    running = submit(["sleep", "600"], gpus=1, time_limit="1h")
    c.reconcile(now=now[0])
    assert jobs.get(store, running)["state"] == "running"
    started = jobs.get(store, running)["started_at"]

    head = submit(["true"], gpus=2, time_limit="1h")
    c.reconcile(now=now[0])
    row = jobs.get(store, head)
    assert row["state"] == "queued" and row["reserved_at"] == now[0]
    [event] = [e for e in jobs.history(store, head) if e["action"] == "job.reserved"]
    assert event["detail"]["reason"] == f"GPUs 0, 1 reserved for it: it starts by {format_time(started + 3600)} at the latest"
    wait = explain_now(store, inventory, cfg, now[0], head)
    assert wait.reserved and wait.estimated_start == started + 3600 and wait.position == 1

    # A later job of a user with higher priority and no usage still queues behind the reservation,
    # and cannot backfill: it would run past the head's start.
    urgent = submit(["sleep", "5"], owner="bob", gpus=1, time_limit="2h", priority=50)
    reserved_at = jobs.get(store, head)["reserved_at"]
    c.reconcile(now=now[0])
    assert jobs.get(store, urgent)["state"] == "queued" and jobs.get(store, head)["reserved_at"] == reserved_at
    assert explain_now(store, inventory, cfg, now[0], urgent).position == 2
    assert not explain_now(store, inventory, cfg, now[0], urgent).reserved

    now[0] += 600  # the running job ends: the head starts, then the urgent job's turn comes
    c.reconcile(now=now[0])
    assert jobs.get(store, head)["state"] in ("starting", "running", "succeeded")
    assert [e["action"] for e in jobs.history(store, head)].count("job.reserved") == 1
    c.reconcile(now=now[0] + 1)
    assert jobs.get(store, urgent)["state"] in ("starting", "running")
