"""GPU sampling: utilization and memory per GPU at a modest rate, kept downsampled, and stray-use detection."""

from __future__ import annotations

import logging
import time

from mlpd import jobs
from mlpd.scheduling.accounting import detect_stray, downsample
from mlpd.scheduling.gpu_state import STRAY_STATUS_KEY
from mlpd.runtime.gpus import GpuInventory
from mlpd.store import Store, record_event, set_status

log = logging.getLogger("mlpd.workers.sampler")
KEEP_FULL_RESOLUTION = 24 * 3600  # then 5-minute averages
COARSE = 300.0


class GpuSampler:
    """Called from the reconcile loop; samples when its interval has passed."""

    def __init__(self, store: Store, inventory: GpuInventory, interval: float):
        self.store, self.inventory, self.interval = store, inventory, interval
        self.last_sample = 0.0
        self.last_downsample = 0.0
        self.stray: dict[str, list[int]] = {}

    def maybe_sample(self, now: float | None = None) -> None:
        now = now or time.time()
        if self.inventory.kind != "nvml" or now - self.last_sample < self.interval:
            return
        self.last_sample = now
        devices = self.inventory.devices()
        if not devices:
            return
        with self.store.write() as db:
            for d in devices:
                db.execute("INSERT INTO gpu_samples (at, gpu_uuid, utilization, memory_used, resolution) VALUES (?, ?, ?, ?, ?)",
                           [now, d.uuid, d.utilization or 0, d.memory_used or 0, self.interval])
        held = {u for j in jobs.in_states(self.store, jobs.ACTIVE) for u in j["gpu_uuids"]}
        self.update_stray(detect_stray({d.uuid: [p.pid for p in d.processes] for d in devices}, held))
        if now - self.last_downsample > 3600:
            self.last_downsample = now
            self.downsample_old(now)

    def update_stray(self, stray: dict[str, list[int]]) -> None:
        """Record stray GPU use in the daemon status, and an event when it starts or ends."""
        if stray == self.stray:
            return
        with self.store.write() as db:
            for uuid in set(stray) - set(self.stray):
                record_event(db, "mlpd", "gpu.stray_detected", "gpu", uuid, pids=stray[uuid])
                log.warning("stray GPU use on %s by pids %s (not an mlpd allocation)", uuid, stray[uuid])
            for uuid in set(self.stray) - set(stray):
                record_event(db, "mlpd", "gpu.stray_ended", "gpu", uuid)
        self.stray = stray
        set_status(self.store, STRAY_STATUS_KEY, stray)

    def downsample_old(self, now: float) -> None:
        """Replace full-resolution samples older than a day by 5-minute averages."""
        cutoff = now - KEEP_FULL_RESOLUTION
        with self.store.write() as db:
            rows = db.execute("SELECT gpu_uuid, at, utilization, memory_used FROM gpu_samples WHERE at < ? AND resolution < ?", [cutoff, COARSE]).fetchall()
            by_gpu: dict[str, list] = {}
            for uuid, at, util, mem in rows:
                by_gpu.setdefault(uuid, []).append((at, util, mem))
            db.execute("DELETE FROM gpu_samples WHERE at < ? AND resolution < ?", [cutoff, COARSE])
            for uuid, samples in by_gpu.items():
                for at, util, mem in downsample(samples, COARSE):
                    db.execute("INSERT INTO gpu_samples (at, gpu_uuid, utilization, memory_used, resolution) VALUES (?, ?, ?, ?, ?)", [at, uuid, util, mem, COARSE])
