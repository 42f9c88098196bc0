"""The reconcile loop: every few seconds, and at once when woken, bring the world in line with the database."""

from __future__ import annotations

import logging
import threading
import time

from mlpd.config import Config
from mlpd.store import Store, set_status

log = logging.getLogger("mlpd.workers")


class ControllerLoop:
    """A thread that runs one reconcile pass per tick; wake() asks for a pass now."""

    def __init__(self, config: Config):
        self.config = config
        self.store = Store(config.db_path)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self.passes = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def wake(self, reason: str = "") -> None:
        """Run a pass as soon as the current one ends."""
        log.debug("woken: %s", reason)
        self._wake.set()

    def reconcile_once(self) -> None:
        """One pass; the jobs capability adds scheduling and Docker reconciliation here."""
        set_status(self.store, "worker.heartbeat", {"passes": self.passes, "at": time.time()})

    def _run(self) -> None:
        interval = float(self.config["scheduler.reconcile_interval"])
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("reconcile pass failed; retrying on the next tick")
            self.passes += 1
            self._wake.wait(interval)
