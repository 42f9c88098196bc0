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
                                 ("docker event abc", "full"), ("launched abc", "full")):
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
