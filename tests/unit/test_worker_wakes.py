"""The worker loop: a wake for new work runs the scheduler alone; any other wake, and each tick, a full reconciliation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from mlpd.config import load_config
from mlpd.workers.loop import ControllerLoop


class Recording(ControllerLoop):
    def __init__(self, config):
        super().__init__(config)
        self.calls: list[str] = []
        self.controller = type("Connected", (), {"next_deadline": None})()  # the passes below are recorded, not run
        self.seen = threading.Event()

    def reconcile_once(self) -> None:
        self.calls.append("full")
        self.seen.set()

    def schedule_once(self) -> None:
        self.calls.append("schedule")
        self.seen.set()


def test_a_submit_wakes_only_the_scheduler_and_anything_else_a_full_pass(tmp_path):
    shipped = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
    config = load_config(shipped, {"server.state_dir": str(tmp_path), "scheduler.reconcile_interval": 3600})
    loop = Recording(config)
    loop.start()
    try:
        deadline = time.monotonic() + 5
        while loop.calls != ["full"] and time.monotonic() < deadline:  # the first pass reconciles
            time.sleep(0.01)
        for reason, expected in (("submitted abc", "schedule"), ("submitted workspace w1", "schedule"), ("cancel abc", "full"),
                                 ("docker event abc", "full"), ("done abc", "full")):
            loop.seen.clear()
            before = len(loop.calls)
            loop.wake(reason)
            assert loop.seen.wait(5)
            deadline = time.monotonic() + 5
            while len(loop.calls) == before and time.monotonic() < deadline:
                time.sleep(0.01)
            assert loop.calls[before:] == [expected], (reason, loop.calls)
    finally:
        loop.stop()


def test_a_workspace_server_that_never_answers_does_not_hold_up_reconciliation(tmp_path, monkeypatch):
    """A member can stop their own JupyterLab (kill -STOP inside the container): the idle check then
    waits on it, and must do so beside the reconcile loop, not in it."""
    from mlpd.kinds import workspace as workspaces

    shipped = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
    config = load_config(shipped, {"server.state_dir": str(tmp_path), "workspaces.cull_interval": 1})
    release, entered = threading.Event(), threading.Event()

    def hung_cull_pass(*args, **kwargs):
        entered.set()
        release.wait(30)
        return []

    monkeypatch.setattr(workspaces, "cull_pass", hung_cull_pass)
    loop = ControllerLoop(config)
    loop.store.migrate()
    reconciled = []
    loop.controller = type("C", (), {"reconcile": lambda self: reconciled.append(1), "next_deadline": None,
                                      "runtime": type("R", (), {"processes": lambda self, job_id: []})(),
                                      "prune_environments": lambda self: [], "apply_retention": lambda self: None})()
    loop.serving = type("S", (), {"run": lambda self: False})()
    loop.last_cull = 0.0
    consumer = loop.tasks.consumer()  # the worker's huey consumer, its threads without its signal handling
    consumer.start()
    try:
        done = threading.Thread(target=lambda: (loop.reconcile_once(), loop.reconcile_once()))
        done.start()
        done.join(10)
        assert not done.is_alive() and reconciled == [1, 1], "reconcile passes waited for a hung workspace server"
        assert entered.wait(10)  # the idle check did run, as a huey task
        loop.last_cull = 0.0
        loop.tasks.cull_workspaces()  # asked for again while the first still hangs: it does not pile up
        loop.reconcile_once()
        assert reconciled == [1, 1, 1] and loop.tasks.culling()
    finally:
        release.set()
        consumer.stop(graceful=True)
