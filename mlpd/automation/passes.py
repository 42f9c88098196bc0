"""The automation pass the worker runs before each scheduling pass (mlpd.workers.loop)."""

from __future__ import annotations

import logging
import time

from mlpd.config import Config
from mlpd.store import Store

log = logging.getLogger("mlpd.automation")


class AutomationPass:
    """Releases waiting jobs (dependencies, sweeps: before every scheduling pass) and fires due schedules
    (after each full reconciliation); `next_due` is when a schedule is due next (the loop shortens its
    wait to it), or None."""

    def __init__(self, store: Store, config: Config):
        self.store, self.config = store, config
        self.next_due: float | None = None
        self._tracking_db = None  # MLflow's database, read for early stopping (mlpd.tracking.TrackingDb)

    def run(self, now: float | None = None) -> bool:
        """release() then fire(): True when either changed something (the scheduler then has work)."""
        now = now if now is not None else time.time()
        released = self.release(now)
        return self.fire(now) or released

    def release(self, now: float | None = None) -> bool:
        """Queue the waiting jobs whose turn has come (dependencies, sweeps), cancel those whose dependencies
        failed, stop sweep trials the median rule judges; True when one was. Before each scheduling pass."""
        from mlpd.automation import dependencies, sweeps

        now = now if now is not None else time.time()
        changed = False
        for step, name in ((lambda: dependencies.release(self.store, now), "dependencies"),
                           (lambda: sweeps.release(self.store, now), "sweeps"),
                           (lambda: sweeps.stop_early(self.store, self._tracking().metric_history, now), "early stopping")):
            try:
                changed = bool(step()) or changed
            except Exception:
                log.exception("releasing waiting jobs (%s) failed; trying again on the next pass", name)
        return changed

    def _tracking(self):
        from mlpd.tracking.server import TrackingDb

        if self._tracking_db is None:
            self._tracking_db = TrackingDb(self.config.state_dir)
        return self._tracking_db

    def fire(self, now: float | None = None) -> bool:
        """Fire the due schedules; True when a run was submitted. Only after the jobs were reconciled with
        Docker (a full pass): at a restart, the previous run of a schedule must be known to have ended
        (it may have while the daemon was down) before the overlap rule looks at it."""
        from mlpd.automation import schedules

        now = now if now is not None else time.time()
        changed = False
        try:
            fired, self.next_due = schedules.fire_due(self.store, self.config, now)
            changed = fired > 0
        except Exception:
            log.exception("firing schedules failed; trying again on the next pass")
            self.next_due = now + 5
        return changed
