"""The automation pass the worker runs before each scheduling pass (mlpd.workers.loop)."""

from __future__ import annotations

import logging
import time

from mlpd.config import Config
from mlpd.store import Store

log = logging.getLogger("mlpd.automation")


class AutomationPass:
    """Releases waiting jobs (dependencies, sweeps) and fires due schedules; `next_due` is when it
    wants to run again at the latest (the loop shortens its wait to it), or None."""

    def __init__(self, store: Store, config: Config):
        self.store, self.config = store, config
        self.next_due: float | None = None

    def run(self, now: float | None = None) -> bool:
        """One pass; True when it queued, cancelled or submitted something (the scheduler then has work)."""
        from mlpd.automation import dependencies, schedules, sweeps

        now = now if now is not None else time.time()
        changed = False
        for step, name in ((lambda: dependencies.release(self.store, now), "dependencies"),
                           (lambda: sweeps.release(self.store, now), "sweeps")):
            try:
                changed = bool(step()) or changed
            except Exception:
                log.exception("releasing waiting jobs (%s) failed; trying again on the next pass", name)
        try:
            fired, self.next_due = schedules.fire_due(self.store, self.config, now)
            if fired:
                changed = True
                # jobs a schedule submitted with a dependency (--overlap queue) wait; the rest are queued
                dependencies.release(self.store, now)
        except Exception:
            log.exception("firing schedules failed; trying again on the next pass")
            self.next_due = now + 5
        return changed
