"""The reconcile loop: every few seconds, and at once when woken, bring the world in line with the database.

Woken by Docker events (a job container started or died), by the API after a submit or a cancel
(a datagram, mlpd.wakeup), and by its own huey tasks when a launch or a stop is done, so the
scheduler reacts within milliseconds rather than on the polling period. What takes time (launches,
stops, the idle check of workspaces, housekeeping) it hands to huey (mlpd.workers.tasks).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from mlpd.config import Config
from mlpd.controller import JobController
from mlpd.scheduling.gpu_state import read_instance_id
from mlpd.runtime.gpus import make_inventory
from mlpd.runtime import connect
from mlpd.runtime.slurm import with_slurm
from mlpd.runtime.protocol import RuntimeFailure
from mlpd.store import Store, set_status
from mlpd.workers.live_logs import LiveLogs
from mlpd.workers.sampler import GpuSampler
from mlpd.workers.tasks import Tasks

if TYPE_CHECKING:
    from mlpd.serving.reconcile import ServingPass

log = logging.getLogger("mlpd.workers")
SCHEDULE_ONLY = "submitted"  # wakes that need only the scheduler: nothing running changed, so Docker need not be listed
SERVING_BUSY_INTERVAL = 0.5  # seconds between passes while a deployment rolls out or drains


class ControllerLoop:
    """A thread that runs one reconcile pass per tick; wake() asks for a pass now."""

    def __init__(self, config: Config):
        self.config = config
        self.store = Store(config.db_path)
        self.inventory = make_inventory(config["gpus.declare"], config["gpus.declared_model"], self.store)
        self.sampler = GpuSampler(self.store, self.inventory, float(config["gpus.sample_interval"]))
        self.controller: JobController | None = None
        self.docker_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconcile", daemon=True)
        self.passes = 0
        self._full = True  # the next pass reconciles with Docker (set by every wake but a submit's, and by each tick)
        self.last_cull = time.time()
        self.last_measure = 0.0  # the first pass with Docker asks for a disk measurement
        self.tasks = Tasks(config, self)
        self.serving: ServingPass | None = None  # once Docker answers
        self.serving_busy = False  # a rollout or a drain is in progress: pass more often
        self.live_logs = LiveLogs(config.state_dir)  # running output copied to files that log followers poll
        from mlpd.automation.passes import AutomationPass

        self.automation = AutomationPass(self.store, config)  # dependencies, sweeps and schedules (mlpd.automation)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def wake(self, reason: str = "") -> None:
        """Run a pass as soon as the current one ends. A wake for new work only ("submitted ...")
        asks for a scheduling pass (the database alone); any other for a full reconciliation."""
        log.debug("woken: %s", reason)
        if not reason.startswith(SCHEDULE_ONLY):
            self._full = True
        self._wake.set()

    def _connect(self) -> None:
        try:
            runtime = connect(read_instance_id(self.config.state_dir), self.config["docker.host"], self.config["docker.gpu_runtime"])
            runtime = with_slurm(runtime, self.config, read_instance_id(self.config.state_dir), self.store)
        except RuntimeFailure as exc:
            if self.docker_error != str(exc):
                log.error("%s; jobs wait until it answers", exc)
            self.docker_error = str(exc)
            return
        self.docker_error = None
        self.controller = JobController(self.store, self.config, runtime, self.inventory, self.wake, dispatch=self.tasks.dispatch)
        threading.Thread(target=runtime.watch, args=(lambda job_id: self.wake(f"docker event {job_id}"), self._stop), name="docker-events", daemon=True).start()
        log.info("connected to Docker (NVIDIA runtime: %s); %d GPUs (%s)", runtime.has_nvidia, len(self.inventory.devices()), self.inventory.kind)
        self.tasks.housekeeping()  # once at start; then hourly (a huey periodic task)

    def reconcile_once(self) -> None:
        """One pass: reconcile jobs with Docker and schedule; record a heartbeat either way."""
        if self.controller is None:
            self._connect()
        self.automation.release()
        try:
            self.sampler.maybe_sample()
        except Exception:
            log.exception("GPU sampling failed; trying again later")
        if self.controller is not None:
            self.controller.reconcile()
            if self.automation.fire():  # after reconciling: a schedule's previous run may have ended while the daemon was down
                self.wake("submitted by a schedule")
            try:
                self.live_logs.follow_running(self.store, self.controller.runtime)
            except Exception:
                log.exception("starting the live log copiers failed; trying again on the next pass")
            if time.time() - self.last_cull >= float(self.config["workspaces.cull_interval"]) and not self.tasks.culling():
                # A huey task: it waits on each workspace's JupyterLab, which its owner can stop
                # answering (kill -STOP in the container); reconciliation must not wait with it.
                self.last_cull = time.time()
                self.tasks.cull_workspaces()
            if time.time() - self.last_measure >= float(self.config["quotas.disk_measure_interval"]) and not self.tasks.measuring():
                self.last_measure = time.time()  # a huey task: du over a large dataset must not hold up reconciliation
                self.tasks.measure_disk()
            try:
                if self.serving is None:
                    from mlpd.serving.reconcile import ServingPass

                    self.serving = ServingPass(self.store, self.config, self.wake)
                self.serving_busy = self.serving.run()
            except Exception:
                log.exception("the serving pass failed; trying again on the next tick")
        set_status(self.store, "worker.heartbeat", {"passes": self.passes, "docker_error": self.docker_error,
                                                     "gpus": self.inventory.kind, "at": time.time()})

    def cull_workspaces(self) -> None:
        """Stop workspaces idle past their timeout (mlpd.kinds.workspace.cull_pass); wake the loop when one was.
        Run by the huey task of that name."""
        from mlpd.kinds import workspace as workspaces

        if self.controller is None:
            return
        try:
            if workspaces.cull_pass(self.store, self.config, processes=self.controller.runtime.processes):
                self.wake("workspaces culled")
        except Exception:
            log.exception("checking workspaces for idleness failed; trying again next interval")

    def measure_disk(self) -> None:
        """Measure homes, team folders and datasets (mlpd.disk_use.measure). Run by the huey task of that name."""
        from mlpd import disk_use

        try:
            counts = disk_use.measure(self.store, self.config)
            log.debug("measured disk use: %s", counts)
        except Exception:
            log.exception("measuring disk use failed; trying again next interval")

    def housekeeping(self) -> None:
        """Prune unused job environments and apply retention (the hourly huey task, and once at start)."""
        if self.controller is None:
            return
        try:
            self.controller.prune_environments()
            self.controller.apply_retention()
        except Exception:
            log.exception("pruning job environments or applying retention failed; trying again in an hour")

    def schedule_once(self) -> None:
        """A pass for new work only: place what is queued on free GPUs, from the database alone."""
        if self.controller is None:
            self.reconcile_once()
            return
        self.automation.release()
        self.controller.schedule()

    def _run(self) -> None:
        interval = float(self.config["scheduler.reconcile_interval"])
        last_full = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            full, self._full = self._full or time.monotonic() - last_full >= interval, False
            try:
                if full:
                    last_full = time.monotonic()
                    self.reconcile_once()
                else:
                    self.schedule_once()
            except Exception:
                log.exception("reconcile pass failed; retrying on the next tick")
            self.passes += 1
            timeout = interval
            deadline = self.controller.next_deadline if self.controller else None
            if deadline is not None:
                timeout = min(interval, max(0.05, deadline - time.time()))  # stop a job at its time limit, not a tick later
            if self.automation.next_due is not None:
                timeout = min(timeout, max(0.05, self.automation.next_due - time.time()))  # a schedule fires on its minute
            if self.serving_busy:
                timeout = min(timeout, SERVING_BUSY_INTERVAL)  # switch traffic within a second of a new version answering /ping
            if not self._wake.wait(timeout):
                self._full = True  # a tick: reconcile with Docker
