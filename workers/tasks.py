"""mlpd's background work as huey tasks, on a SQLite queue in the state directory.

The reconcile loop (mlpd.workers.loop) decides what should happen; huey does the work that takes
time, on its consumer's worker threads, so the loop never waits on it:

- `launch(job_id)`: start a job's container (building its environment first when it has
  requirements: that build is the job's `starting` phase and blocks no other job);
- `stop(job_id, timeout)`: SIGTERM, then SIGKILL after the timeout, and record how it ended;
- `cull_workspaces()`: the idle check of running workspaces, asked for by the loop every
  workspaces.cull_interval (huey's own periodic tasks run at most once a minute, and tests use
  seconds), at most one at a time: it waits on each member's JupyterLab, which its owner can make
  hang;
- `measure_disk()`: the sizes of homes, team folders and datasets (mlpd.disk_use.measure), asked
  for by the loop every quotas.disk_measure_interval, at most one at a time (du over a large
  dataset can take minutes);
- `housekeeping()`: prune unused job environments and apply retention; a huey periodic task
  (hourly, crontab) and once at start.

Every task is idempotent (it reads the job's state first and does nothing when it moved on), so a
task run twice, or one left in the queue by a worker that died, is harmless; the loop asks again for
whatever the database still says should happen.

Waking: the queue is a SQLite table that huey's workers would poll. The tasks are enqueued by the
worker process itself, so the storage below also wakes a waiting consumer thread directly when a task
is enqueued in this process (`WakingSqliteStorage`), and polls the file only as a fallback for tasks
enqueued elsewhere; a launch starts a few milliseconds after the pass that placed the job (5.8 ms
measured in a review), not a polling interval later.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from huey import Huey, crontab
from huey.storage import SqliteStorage

from mlpd.config import Config

if TYPE_CHECKING:
    from mlpd.workers.loop import ControllerLoop

log = logging.getLogger("mlpd.workers.tasks")
WORKER_THREADS = 8  # launches (with environment builds), stops, the idle check and housekeeping at once
POLL_FALLBACK = 1.0  # seconds a consumer thread waits for an in-process wake before it reads the queue again


class WakingSqliteStorage(SqliteStorage):
    """huey's SQLite storage, blocking: dequeue() waits until a task is enqueued in this process
    (or POLL_FALLBACK passes), instead of huey's sleep-and-poll with back-off."""

    blocking = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._enqueued = threading.Condition()
        self._generation = 0

    def enqueue(self, data, priority=None):
        super().enqueue(data, priority)
        with self._enqueued:
            self._generation += 1
            self._enqueued.notify()

    def dequeue(self):
        with self._enqueued:
            seen = self._generation
        data = super().dequeue()
        if data is None:
            with self._enqueued:
                if self._generation == seen:  # nothing enqueued since the read above: wait for it
                    self._enqueued.wait(POLL_FALLBACK)
            data = super().dequeue()
        return data


class Tasks:
    """The huey instance of one worker and its tasks, bound to that worker's reconcile loop."""

    def __init__(self, config: Config, loop: "ControllerLoop"):
        self.huey = Huey("mlpd", storage_class=WakingSqliteStorage, filename=os.path.join(config.state_dir, "huey.db"), results=False)
        self._culling = threading.Lock()
        self._measuring = threading.Lock()

        def controller():
            if loop.controller is None:
                raise RuntimeError("Docker is not connected yet")  # the loop asks again once it is
            return loop.controller

        @self.huey.task(name="launch")
        def launch(job_id: str) -> None:
            controller().run_launch(job_id)

        @self.huey.task(name="stop")
        def stop(job_id: str, timeout: int) -> None:
            controller().run_stop(job_id, timeout)

        @self.huey.task(name="cull_workspaces")
        def cull_workspaces() -> None:
            if not self._culling.acquire(blocking=False):
                return  # the previous check still waits on some JupyterLab
            try:
                loop.cull_workspaces()
            finally:
                self._culling.release()

        @self.huey.task(name="measure_disk")
        def measure_disk() -> None:
            if not self._measuring.acquire(blocking=False):
                return  # the previous measurement still runs (du over a large dataset)
            try:
                loop.measure_disk()
            finally:
                self._measuring.release()

        @self.huey.periodic_task(crontab(minute="7"), name="housekeeping")
        def housekeeping() -> None:
            loop.housekeeping()

        self.launch, self.stop, self.cull_workspaces, self.housekeeping = launch, stop, cull_workspaces, housekeeping
        self.measure_disk = measure_disk

    def dispatch(self, action: str, job_id: str, *args: Any) -> None:
        """The controller's dispatch: enqueue its launch or stop (mlpd.controller.JobController)."""
        {"launch": self.launch, "stop": self.stop}[action](job_id, *args)

    def culling(self) -> bool:
        """Whether an idle check is running now."""
        return self._culling.locked()

    def measuring(self) -> bool:
        """Whether a disk measurement is running now."""
        return self._measuring.locked()

    def consumer(self):
        """huey's consumer for these tasks: worker threads, and the periodic scheduler for housekeeping."""
        return self.huey.create_consumer(workers=WORKER_THREADS, worker_type="thread", periodic=True, initial_delay=0.05,
                                         backoff=1.5, max_delay=POLL_FALLBACK, check_worker_health=True)
