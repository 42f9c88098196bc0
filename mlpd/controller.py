"""The job controller: level-triggered reconciliation of the database (intent) with Docker (fact).

One pass: look at every job the database says is starting or running and at
every container Docker has for this daemon; finish what ended (exit code, end
time and reason from Docker), stop what was cancelled or ran out of time, mark
lost what vanished, remove orphans; then ask the pure scheduler for placements
and launch them, and which preemptible jobs to preempt for waiting work of a higher
class (SIGTERM now, a stop after the grace period, then back to the queue). Launches and stops are
handed to `dispatch` (in the daemon: huey tasks, see mlpd.workers.tasks), so a slow image start or a
container that takes its time to stop does not hold up the loop; both are idempotent, and nothing
here depends on a pass, a launch or a stop running exactly once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Callable, Collection, Iterator

from mlpd import jobs
from mlpd.config import Config
from mlpd.runtime.environments import EnvironmentBuilder
from mlpd.scheduling.gpu_state import drains, stray_gpus
from mlpd.runtime.gpus import GpuInventory
from mlpd.jobs import ACTIVE, ACTIVE_STATES, TERMINAL_STATES, JobState
from mlpd.kinds.base import kind_of
from mlpd.logtext import live_log_path
from mlpd.scheduling.priority_classes import PriorityClasses
from mlpd.runtime.slurm import runs_on_slurm
from mlpd.runtime.protocol import DEEP_LEARNING_ULIMITS, ImageMissing, LaunchRequest, Phase, Runtime, RuntimeFailure, WorkloadStatus, attempt_of
from mlpd.scheduling import quotas
from mlpd.units import host_limits, parse_duration, shm_size
from mlpd.scheduling.sharing import share_of
from mlpd.scheduling.resource_caps import CapLedger, ResourceCap, Use, effective_limits, use_of
from mlpd.scheduling.scheduler import (Gpu, GpuLimit, Holding, Plan, Policy, Preemptible, QueuedJob, Wait, choose_preemptions, fair_share_factors,
                            format_time, schedule, score_terms, short_id, slowdown_factors, starving, waiting_for_the_host)
from mlpd.scheduling.scheduler import explain as explain_job
from mlpd.store import Store, record_event
from mlpd.workload_names import names_of

log = logging.getLogger("mlpd.controller")
# A launch or stop handed off this long ago that has not begun counts as lost (its huey task never
# ran): the next pass asks again. A copy that does run late finds the work done (tasks are idempotent).
HANDOFF_LOST_AFTER = 300.0  # seconds
OVER_QUOTA_PRIORITY = -1000  # below the lowest priority a user can set (-100)


def effective_time_limit(job: dict[str, Any], config: Config) -> float | None:
    """The job's own time limit, else the configured default (for jobs; a workspace is culled when
    idle and a deployment runs until removed), else none."""
    if job["spec"].get("time_limit"):
        return float(job["spec"]["time_limit"])
    default = config["jobs.default_time_limit"] if kind_of(job.get("kind")).default_time_limit else ""
    if default:
        return parse_duration(default)
    return None


def plan_now(store: Store, inventory: GpuInventory, config: Config, now: float,
             explain: bool | Collection[str] = False) -> tuple[Plan, list[dict], list[Gpu]]:
    """Run the scheduler over the database's current view: (plan, queued jobs, GPUs).

    `explain` as in scheduler.schedule: True explains every waiting job, a collection of ids those.
    """
    s = scheduler_inputs(store, inventory, config, now)
    plan = schedule(s.gpus, s.holdings, s.queue, now, s.policy, usage=s.usage, limits=s.limits, reserved=s.reserved, slowdown=s.slowdown,
                    explain=explain, caps=s.caps, running=s.running)
    return plan, s.queued, s.gpus


def explain_now(store: Store, inventory: GpuInventory, config: Config, now: float, job_id: str) -> Wait | None:
    """Why one queued job waits (None if it would start now); the scheduler stops at that job."""
    return why_waiting(store, inventory, config, now, job_id)[0]


def why_waiting(store: Store, inventory: GpuInventory, config: Config, now: float,
                job_id: str) -> tuple[Wait | None, dict[str, Any] | None]:
    """explain_now's answer, and the job's place in the order: its priority class and the terms of
    its priority score (scheduler.score_terms) with their sum; None for a job not queued."""
    s = scheduler_inputs(store, inventory, config, now)
    wait = explain_job(s.gpus, s.holdings, s.queue, now, job_id, s.policy, usage=s.usage, limits=s.limits,
                       reserved=s.reserved, slowdown=s.slowdown, caps=s.caps, running=s.running)
    job = next((q for q in s.queue if q.id == job_id), None)
    if job is None:
        return wait, None
    owners = {q.owner for q in s.queue}
    factors = fair_share_factors(s.usage, owners) if s.usage and s.policy.fair_share else {}
    slow = slowdown_factors(s.slowdown, owners) if s.slowdown and s.policy.fair_share else None
    usable: dict[str, int] = {}
    for g in s.gpus:
        if not g.drained:
            usable[g.model] = usable.get(g.model, 0) + 1
    terms = score_terms(job, now, s.policy, factors, max(usable.values(), default=0), slow)
    row = next(j for j in s.queued if j["id"] == job_id)
    klass = s.classes.of(row) if s.classes is not None else None
    return wait, {"score": sum(terms.values()), "terms": terms, "priority_class": klass,
                  "reserved": job_id in s.reserved, "starving": starving(job, now, s.policy)}


@dataclasses.dataclass
class SchedulerInputs:
    """What the scheduler sees, read from the database and the GPU inventory."""
    gpus: list[Gpu]
    holdings: list[Holding]
    queue: list[QueuedJob]
    queued: list[dict]  # the queued job rows
    policy: Policy
    usage: dict[str, float]
    limits: list[GpuLimit]
    reserved: dict[str, float]
    active: list[dict] = dataclasses.field(default_factory=list)  # the starting and running job rows
    classes: PriorityClasses | None = None
    slowdown: dict[str, float] = dataclasses.field(default_factory=dict)  # each owner's recent mean slowdown
    waiting: list[QueuedJob] = dataclasses.field(default_factory=list)  # the queued GPU jobs the slowdown counts
    caps: list[ResourceCap] = dataclasses.field(default_factory=list)  # owners' CPU, memory and workload caps
    running: list[Use] = dataclasses.field(default_factory=list)  # what active work holds of them


def scheduler_inputs(store: Store, inventory: GpuInventory, config: Config, now: float) -> SchedulerInputs:
    """Read the scheduler's inputs: GPUs (drained and stray ones marked), holdings, the queue, quotas, usage."""
    devices = inventory.devices()
    drained = drains(store, config["gpus.drained"], devices)
    stray: set[str] = set()
    if config["gpus.avoid_stray"]:
        # GPUs someone uses outside mlpd take no new work until that use ends.
        stray = set(stray_gpus(store))
    gpus = [Gpu(d.uuid, d.index, d.name, d.uuid in drained or d.uuid in stray,
                "in use outside mlpd" if d.uuid in stray else drained.get(d.uuid, "drained")) for d in devices]
    holdings = []
    active = jobs.in_states(store, ACTIVE)
    queued = [j for j in jobs.in_states(store, [JobState.QUEUED]) if not runs_on_slurm(j)]  # Slurm places those itself
    names = names_of(store, active + queued)  # how the scheduler's messages name each workload
    for job in active:
        limit = effective_time_limit(job, config)
        start = job["started_at"] or now
        for uuid in job["gpu_uuids"]:
            holdings.append(Holding(uuid, job["id"], job["owner"], start + limit if limit else None,
                                    names[job["id"]].label(with_owner=True), share_of(job["spec"])))
    owners = sorted({j["owner"] for j in queued if j["spec"]["gpus"]})
    limits, demoted, caps = {}, set(), {}
    for owner in sorted({j["owner"] for j in queued}):
        applicable = quotas.quotas_for(store, config, owner)
        for q in applicable:
            if q.max_gpus and owner in owners:
                limits[q.label] = GpuLimit(q.label, q.members, q.max_gpus)
            if q.resource_cap:
                caps[q.label] = q.resource_cap
        if owner in owners and quotas.over_gpu_hours(store, config, owner, now, applicable):
            demoted.add(owner)  # over its GPU-hours: runs only when nobody else waits
    host = host_limits()
    running = [use_of(j["owner"], j["spec"], config, host) for j in active]
    classes = PriorityClasses.from_config(config)
    queue = []
    for j in queued:
        use = use_of(j["owner"], j["spec"], config, host)
        queue.append(QueuedJob(j["id"], j["owner"], j["spec"]["gpus"], j["spec"].get("gpu_model"),
                               OVER_QUOTA_PRIORITY if j["owner"] in demoted else j["priority"], j["submitted_at"],
                               effective_time_limit(j, config), classes.rank(classes.of(j)), use.cpus, use.memory,
                               names[j["id"]].label(with_owner=True), share_of(j["spec"])))
    policy = scheduler_policy(config)
    usage = quotas.fair_share_usage(store, config, now) if policy.fair_share and len(owners) > 1 else {}
    waiting = waiting_for_the_host(queue, holdings, list(limits.values()), demoted, list(caps.values()), running)
    slowdown = (quotas.fair_share_slowdown(store, config, now, waiting, policy.max_age)
                if policy.fair_share and policy.weight_slowdown and len(owners) > 1 else {})
    reserved = {j["id"]: j["reserved_at"] for j in queued if j.get("reserved_at") is not None}
    return SchedulerInputs(gpus, holdings, queue, queued, policy, usage, list(limits.values()), reserved, active, classes,
                           slowdown, waiting, list(caps.values()), running)


def fair_share_now(store: Store, inventory: GpuInventory, config: Config, now: float) -> list[dict[str, Any]]:
    """Each user's standing in fair share, as the next pass weighs it (`mlpd fair-share`): decayed
    GPU-hours and the usage factor, mean bounded slowdown and the slowdown factor, queued GPU jobs,
    and what the two factors add to the score of each of their jobs. Users with recent usage, recent
    GPU jobs or queued GPU work; the most favoured first."""
    s = scheduler_inputs(store, inventory, config, now)
    p = s.policy
    gpu_queue = [q for q in s.queue if q.gpus > 0]
    owners = {q.owner for q in gpu_queue}
    # scheduler_inputs reads these only when two or more users have GPU work queued
    usage = s.usage or quotas.fair_share_usage(store, config, now)
    slowdown = s.slowdown or quotas.fair_share_slowdown(store, config, now, s.waiting, p.max_age)
    usage_f = fair_share_factors(usage, owners)
    slow_f = slowdown_factors(slowdown, owners)
    queued = collections.Counter(q.owner for q in gpu_queue)
    for_the_host = collections.Counter(q.owner for q in s.waiting)
    rows: list[dict[str, Any]] = []
    for user in sorted(set(usage_f) | set(slow_f)):
        score = p.weight_fair_share * usage_f.get(user, 1.0) + p.weight_slowdown * slow_f.get(user, 0.0)
        rows.append({"user": user, "usage_gpu_hours": max(usage.get(user, 0.0), 0.0) / 3600,
                     "usage_factor": usage_f.get(user, 1.0), "slowdown": slowdown.get(user, 1.0),
                     "slowdown_factor": slow_f.get(user, 0.0), "queued": queued[user],
                     "queued_for_quota": queued[user] - for_the_host[user],
                     "score": score if p.fair_share else 0.0})
    rows.sort(key=lambda r: (-r["score"], r["user"]))
    return rows


def scheduler_policy(config: Config) -> Policy:
    """The scheduler's policy from the scheduler.* settings."""
    return Policy(backfill=config["scheduler.backfill"], fair_share=config["scheduler.fair_share"],
                  weight_priority=float(config["scheduler.weight_priority"]), weight_age=float(config["scheduler.weight_age"]),
                  max_age=parse_duration(config["scheduler.max_age"]), weight_fair_share=float(config["scheduler.weight_fair_share"]),
                  weight_expansion=float(config["scheduler.weight_expansion"]), max_expansion=float(config["scheduler.max_expansion"]),
                  weight_size=float(config["scheduler.weight_size"]), size_time=parse_duration(config["scheduler.size_time"]),
                  weight_slowdown=float(config["scheduler.weight_slowdown"]),
                  starvation_wait=parse_duration(config["scheduler.starvation_wait"]), share_max=int(config["gpus.share_max"]))


def keep_reservation(store: Store, plan: Plan, queued: list[dict], gpus: list[Gpu], now: float) -> None:
    """Record which queued job holds the reservation (jobs.reserved_at), so that later passes keep it
    first whatever the priority order says; no other queued job holds one. Writes only on a change."""
    head = plan.head.job_id if plan.head else None
    stale = [j["id"] for j in queued if j.get("reserved_at") is not None and j["id"] != head]
    new = head is not None and any(j["id"] == head and j.get("reserved_at") is None for j in queued)
    if not stale and not new:
        return
    with store.write() as db:
        for job_id in stale:  # it can no longer start (quota, drained GPUs): the reservation moves on
            db.execute("UPDATE jobs SET reserved_at = NULL WHERE id = ? AND state = 'queued'", [job_id])
        if new and plan.head is not None:
            db.execute("UPDATE jobs SET reserved_at = ? WHERE id = ? AND state = 'queued'", [now, head])
            index_of = {g.uuid: g.index for g in gpus}
            indices = [index_of[u] for u in plan.head.gpu_uuids]
            by = "an unknown time (a holder has no time limit)" if plan.head.start is None else f"{format_time(plan.head.start)} at the latest"
            record_event(db, "mlpd", "job.reserved", "job", plan.head.job_id, at=now, gpu_indices=indices, starts_by=plan.head.start,
                         reason=f"GPUs {', '.join(map(str, indices))} reserved for it: it starts by {by}")


# What each kind of workload adds to a job's launch request: (store, config, row, request) -> request.
# Scheduling, the ledger and reconciliation are the same for every kind, but a new kind today is
# more than an entry here: its own API, UI and CLI modules, and kind branches in the controller,
# priority classes, quotas and users (issue 24 names each; the redesign makes a kind one module).
OUTPUTS_CHECK_INTERVAL = 60.0  # seconds between measurements of one running job's /outputs (jobs.max_outputs_gb)
INF_TIME = float("inf")


class JobController:
    """Reconciles jobs with containers and launches what the scheduler places."""

    def __init__(self, store: Store, config: Config, runtime: Runtime, inventory: GpuInventory, wake: Callable[[str], None] = lambda r: None,
                 dispatch: Callable[..., None] | None = None, clock: Callable[[], float] = time.time):
        """dispatch(action, job_id, *args) has `run_<action>(job_id, *args)` (launch, stop) run later,
        off the loop; the worker enqueues a huey task. Without one (tests) they run at once, inline."""
        self.store, self.config, self.runtime, self.inventory = store, config, runtime, inventory
        self.wake = wake
        # jobs with a launch or a stop asked for and not yet done -> when it was asked for (clock)
        self.launching: dict[str, float] = {}
        self._running: set[str] = set()  # jobs whose launch or stop is executing now
        self._lock = threading.Lock()
        self._clock = clock
        self.dispatch = dispatch or (lambda action, job_id, *args: getattr(self, f"run_{action}")(job_id, *args))
        self.environments = EnvironmentBuilder(runtime, clock)
        self.next_deadline: float | None = None  # the earliest time limit among running jobs
        self._outputs_measured: dict[str, float] = {}  # running job -> when its /outputs was last measured (now)

    # ------------------------------------------------------------ one pass
    def reconcile(self, now: float | None = None) -> None:
        """One level-triggered pass over all active jobs and this daemon's containers, then schedule.

        The database is read before Docker is listed, so a job that became active during the
        pass is never mistaken for an orphan; and a job without a listed container is read
        again and looked up directly before it is called lost, so a launch that completed
        between the two reads is never mistaken for a vanished container.
        """
        now = now or time.time()
        for job in jobs.in_states(self.store, [JobState.PREEMPTED]):
            self._requeue(job)  # the pass that preempted it stopped before requeueing it (a restart)
        active = jobs.in_states(self.store, ACTIVE)
        containers = self.runtime.list_jobs()
        self.next_deadline = None
        active_ids = {j["id"] for j in active}
        for job in active:
            if self._is_launching(job["id"]):
                continue
            container = containers.get(job["id"])
            if container is None:
                fresh = jobs.get(self.store, job["id"])
                if fresh is None or fresh["state"] not in ACTIVE_STATES or self._is_launching(fresh["id"]):
                    continue
                job = fresh
                container = self.runtime.inspect(job["id"])
            self._reconcile_job(job, container, now)
        for job_id, container in containers.items():
            if job_id not in active_ids and not self._is_launching(job_id):
                self._remove_orphan(job_id, container)
        self.schedule(now)

    def _is_launching(self, job_id: str) -> bool:
        with self._lock:
            return job_id in self.launching and not self._lost(job_id)

    def _lost(self, job_id: str) -> bool:
        """A launch or stop asked for HANDOFF_LOST_AFTER ago that has not begun: its task was lost
        (huey could not run it), so the next pass takes the job up again. Hold self._lock."""
        return job_id not in self._running and self._clock() - self.launching[job_id] >= HANDOFF_LOST_AFTER

    def _reconcile_job(self, job: dict[str, Any], c: WorkloadStatus | None, now: float) -> None:
        job_id = job["id"]
        if c is not None and attempt_of(c) < job["attempts"]:
            self.runtime.remove(job_id)  # an earlier attempt's container, left by a failed removal: never this attempt's
            c = None
        if c is None:
            if job["state"] == JobState.STARTING.value:
                self._launch(job)  # the daemon died between allocating and starting: start it now
            elif jobs.transition(self.store, job_id, JobState.LOST, reason="its container vanished (removed outside mlpd?)", ended_at=now):
                log.warning("job %s lost: container gone", job_id)
                self._ended(job_id, JobState.LOST)
            return
        if c.phase == Phase.PENDING:
            if job["cancel_requested_by"] and runs_on_slurm(job):
                self._hand_off("stop", job_id, 5)  # waiting in Slurm's queue: scancel it there
            else:
                self._launch(job)
            return
        if c.ended:
            self._finish(job, c)
            return
        if job["state"] == JobState.STARTING.value:
            jobs.transition(self.store, job_id, JobState.RUNNING, started_at=c.started_at, container_id=c.id, **gpus_placed_by_runtime(job, c))
            job = jobs.must_get(self.store, job_id)
        started = job["started_at"] or c.started_at or now
        limit = effective_time_limit(job, self.config)
        if limit:
            self.next_deadline = min(self.next_deadline or started + limit, started + limit)
        preempting = job["preempt_requested_at"] is not None and not job["cancel_requested_by"]
        if preempting:
            grace_end = job["preempt_requested_at"] + self._grace()
            if now < grace_end:
                self.next_deadline = min(self.next_deadline or grace_end, grace_end)
                return  # it is writing its checkpoint
        if not job["cancel_requested_by"] and not preempting and self._over_outputs_cap(job, now):
            job = jobs.get(self.store, job_id) or job
        if job["cancel_requested_by"] or (limit and now - started >= limit) or preempting:
            self._hand_off("stop", job_id, 0 if preempting else 5)  # a preempted job had its grace period

    def _over_outputs_cap(self, job: dict[str, Any], now: float) -> bool:
        """Measure a running job's /outputs (at most every OUTPUTS_CHECK_INTERVAL); one over
        jobs.max_outputs_gb is asked to stop, with the reason recorded (its outputs are kept)."""
        from mlpd.disk import tree_size

        cap_gb = self.config["jobs.max_outputs_gb"]
        if not cap_gb or now - self._outputs_measured.get(job["id"], -INF_TIME) < OUTPUTS_CHECK_INTERVAL:
            return False
        self._outputs_measured[job["id"]] = now
        for gone in [j for j, at in self._outputs_measured.items() if now - at > 10 * OUTPUTS_CHECK_INTERVAL]:
            del self._outputs_measured[gone]  # ended jobs
        size = tree_size(os.path.join(jobs.job_dir(self.config.state_dir, job["id"]), "outputs"), timeout=20)
        if size is None or size <= cap_gb * 1e9:
            return False
        reason = (f"stopped by mlpd: its /outputs holds {size / 1e9:.2f} GB, over the cap of {cap_gb:g} GB (jobs.max_outputs_gb); "
                  "what it wrote is kept ('mlpd jobs outputs ID')")
        log.warning("job %s: %s", job["id"], reason)
        jobs.request_cancel(self.store, job["id"], "mlpd", reason)
        return True

    def _finish(self, job: dict[str, Any], c: WorkloadStatus) -> None:
        """Record how the job ended from the runtime's own account, keep its log, remove the container."""
        job_id = job["id"]
        job = jobs.get(self.store, job_id) or job  # a cancel may have come in since the pass read it
        directory = jobs.job_dir(self.config.state_dir, job_id)
        os.makedirs(directory, exist_ok=True)
        self.runtime.save_logs(job_id, os.path.join(directory, "log"))
        keep_live_logs(directory, job.get("attempts") or 1)
        started = job["started_at"] or c.started_at
        ended = c.finished_at or time.time()
        if started is not None and ended < started:
            ended = started  # Docker records a short container's end a few ms before its start at times
        # A job that ended on its own before it was asked to make room (Docker's clock and ours may
        # differ a little) ended as it would have anyway.
        asked = job.get("preempt_requested_at")
        preempted = job.get("preempt_reason") if asked is not None and (c.finished_at is None or c.finished_at >= asked - 1) else None
        state, reason = jobs.classify_exit(c.exit_code, c.oom_killed, c.error, started, ended, effective_time_limit(job, self.config),
                                           job["cancel_requested_by"], effective_limits(job["spec"], self.config, host_limits())[1],
                                           job.get("cancel_reason"),
                                           preempted=preempted)
        if state == JobState.PREEMPTED:
            # Its attempt's log is kept beside the final one; GET /jobs/ID/logs shows them in order.
            if os.path.exists(os.path.join(directory, "log")):
                os.replace(os.path.join(directory, "log"), os.path.join(directory, f"attempt-{job['attempts']}.log"))
        if jobs.transition(self.store, job_id, state, reason=reason, at=ended, exit_code=c.exit_code,
                           ended_at=ended, started_at=started, container_id=c.id, **gpus_placed_by_runtime(job, c)):
            log.info("job %s %s: %s", job_id, state.value, reason)
            self._ended(job_id, state)
        jobs.revoke_job_tokens(self.store, job_id)  # the transition does it too; this also covers a replayed pass
        self.runtime.remove(job_id)
        if state == JobState.PREEMPTED:
            self._requeue(jobs.get(self.store, job_id))

    def _ended(self, job_id: str, state: JobState) -> None:
        """Tell the workload's kind that it ended for good (Kind.ended); a preempted job has not."""
        job = jobs.get(self.store, job_id)
        if job is not None and state.value in TERMINAL_STATES:
            try:
                kind_of(job.get("kind")).ended(self.store, self.config, job)
            except Exception:  # a kind's clean-up must not stop the pass that records every other end
                log.exception("job %s: its kind's end handling failed", job_id)

    def _requeue(self, job: dict[str, Any] | None) -> None:
        """Queue a preempted job again, once its container is gone (its name is the next attempt's)."""
        if job is None or job["state"] != JobState.PREEMPTED.value:
            return
        self.runtime.remove(job["id"])
        if jobs.requeue(self.store, job["id"]):
            log.info("job %s queued again for attempt %d", job["id"], job["attempts"] + 1)

    def _remove_orphan(self, job_id: str, c: WorkloadStatus) -> None:
        """Remove a container whose job has ended (or that no job of ours names); a job that is
        queued or active now (it moved on since the pass read the database) is left alone."""
        job = jobs.get(self.store, job_id)
        if job is not None and job["state"] not in TERMINAL_STATES:
            return
        directory = jobs.job_dir(self.config.state_dir, job_id)
        if job is not None and not os.path.exists(os.path.join(directory, "log")):
            os.makedirs(directory, exist_ok=True)
            self.runtime.save_logs(job_id, os.path.join(directory, "log"))
        log.info("removing orphaned container %s", c.name)
        self.runtime.stop(job_id, timeout=2)
        self.runtime.remove(job_id)

    # ------------------------------------------------------------ scheduling
    def schedule(self, now: float | None = None) -> None:
        """Place queued jobs on free GPUs and launch them; preempt for waiting work of a higher class."""
        now = now or time.time()
        self._submit_to_slurm()
        s = scheduler_inputs(self.store, self.inventory, self.config, now)
        plan = schedule(s.gpus, s.holdings, s.queue, now, s.policy, usage=s.usage, limits=s.limits, reserved=s.reserved, slowdown=s.slowdown,
                        caps=s.caps, running=s.running)
        queued, gpus = s.queued, s.gpus
        keep_reservation(self.store, plan, queued, gpus, now)
        index_of = {g.uuid: g.index for g in gpus}
        model_of = {g.uuid: g.model for g in gpus}
        by_id = {j["id"]: j for j in queued}
        for placement in plan.placements:
            indices = [index_of[u] for u in placement.gpu_uuids]
            if jobs.transition(self.store, placement.job_id, JobState.STARTING,
                               reason="", gpu_uuids=placement.gpu_uuids, gpu_indices=indices,
                               gpu_models=[model_of[u] for u in placement.gpu_uuids]):
                job = dict(by_id[placement.job_id], state="starting", gpu_uuids=list(placement.gpu_uuids), gpu_indices=indices)
                self._launch(job)
        if plan.waiting and s.classes is not None and s.classes.preemptible:
            self._preempt(s, plan, now)

    def _submit_to_slurm(self) -> None:
        """Jobs to run on Slurm are not placed here: each queued one starts at once (its launch is the
        sbatch; Slurm's queue is where it waits, and its reason shows while it is starting)."""
        for job in jobs.in_states(self.store, [JobState.QUEUED]):
            if runs_on_slurm(job) and jobs.transition(self.store, job["id"], JobState.STARTING, reason="submitting to Slurm"):
                self._launch(job)

    def _grace(self) -> float:
        return parse_duration(self.config["scheduler.preempt_grace"])

    def _preempt(self, s: SchedulerInputs, plan: Plan, now: float) -> None:
        """Preempt running preemptible jobs for waiting work of a higher class that could not start
        within scheduler.preempt_after (or whose promised start is later than that); which ones is the
        pure scheduler's choice (choose_preemptions). The victims get SIGTERM now; each pass after
        the grace period stops what is left (see _reconcile_job)."""
        classes = s.classes
        assert classes is not None, "the pass loads the classes before it preempts"
        candidates, leaving = [], set()
        for row in s.active:
            if row["preempt_requested_at"] is not None:
                leaving.add(row["id"])
            elif (kind_of(row["kind"]).preemptible and row["state"] == JobState.RUNNING.value and row["gpu_uuids"] and not row["cancel_requested_by"]
                  and not runs_on_slurm(row)  # its GPUs are the cluster's: freeing them frees none here
                  and classes.is_preemptible(classes.of(row))):
                candidates.append(Preemptible(row["id"], row["owner"], tuple(row["gpu_uuids"]), row["started_at"] or now,
                                              classes.rank(classes.of(row))))
        if not candidates:
            return
        lowest = min(c.rank for c in candidates)
        after = parse_duration(self.config["scheduler.preempt_after"])
        waiting_ids = set(plan.waiting)
        caps = CapLedger(s.caps, s.running) if s.caps else None
        due = []
        for job in s.queue:  # in queue order below
            if job.id not in waiting_ids or job.gpus <= 0 or job.rank <= lowest:
                continue
            if caps and caps.refusal(Use(job.owner, job.cpus, job.memory)):
                continue  # its owner's own CPU, memory or workload caps hold it: no preemption helps
            # a head promised a start later than that need not wait to know it (an unknown start may be any moment)
            promised_late = (plan.head is not None and plan.head.job_id == job.id and plan.head.start is not None
                             and plan.head.start > job.submitted_at + after)
            if now >= job.submitted_at + after or promised_late:
                due.append(job)
            else:  # look again when it has waited long enough
                self.next_deadline = min(self.next_deadline or job.submitted_at + after, job.submitted_at + after)
        if not due:
            return
        order = {job_id: i for i, job_id in enumerate(plan.waiting)}
        due.sort(key=lambda j: order[j.id])
        chosen = choose_preemptions(s.gpus, s.holdings, due, candidates, now, leaving, s.limits)
        if not chosen:
            return
        by_id = {j.id: j for j in due}
        rows = {j["id"]: j for j in s.queued}
        grace = self._grace()
        for p in chosen:
            waiting = rows[p.for_job]
            cls = classes.of(waiting)
            for_whom = by_id[p.for_job].label or f"job {short_id(p.for_job)} of {waiting['owner']}"
            reason = (f"preempted for {for_whom} (class {cls}, {by_id[p.for_job].gpus} GPU"
                      f"{'' if by_id[p.for_job].gpus == 1 else 's'})")
            if jobs.request_preemption(self.store, p.job_id, reason, p.for_job, at=now):
                log.info("job %s %s; SIGTERM now, stopped after %gs", p.job_id, reason, grace)
                self.runtime.terminate(p.job_id)
                self.next_deadline = min(self.next_deadline or now + grace, now + grace)

    def _launch(self, job: dict[str, Any]) -> None:
        self._hand_off("launch", job["id"])

    def _hand_off(self, action: str, job_id: str, *args: Any) -> None:
        """Ask for run_<action>(job_id, *args) once: not again while one is asked for or running."""
        with self._lock:
            if job_id in self.launching and not self._lost(job_id):
                return
            self.launching[job_id] = self._clock()
        try:
            self.dispatch(action, job_id, *args)
        except Exception:
            with self._lock:
                self.launching.pop(job_id, None)
            raise

    @contextlib.contextmanager
    def _claim(self, job_id: str) -> Iterator[bool]:
        """Whether this thread may act on the job now: False while another launch or stop of it runs
        (a task left in huey's queue by an earlier worker can meet a new one for the same job)."""
        with self._lock:
            mine = job_id not in self._running
            self._running.add(job_id)
            self.launching.setdefault(job_id, self._clock())
        try:
            yield mine
        finally:
            if mine:
                with self._lock:
                    self._running.discard(job_id)
                    self.launching.pop(job_id, None)
                self.wake(f"done {job_id}")

    def run_stop(self, job_id: str, timeout: int) -> None:
        """Stop the job's container (SIGTERM, then SIGKILL after `timeout`) and record how it ended.
        Idempotent: a job that has ended already, or whose container is gone, is left to the next pass."""
        with self._claim(job_id) as mine:
            if not mine:
                return
            job = jobs.get(self.store, job_id)
            if job is None or job["state"] not in ACTIVE_STATES:
                return
            self.runtime.stop(job_id, timeout=timeout)
            fresh = self.runtime.inspect(job_id)
            if fresh is not None and fresh.ended and attempt_of(fresh) >= job["attempts"]:
                self._finish(job, fresh)

    def run_launch(self, job_id: str) -> None:
        """Start the job's container if the job is still starting. Idempotent: run twice, or after the
        job moved on, it does nothing more."""
        with self._claim(job_id) as mine:
            if mine:
                self._launch_now(job_id)

    def _launch_now(self, job_id: str) -> None:
        try:
            # The pass that asked for this launch read the job (and Docker) a moment ago; an earlier
            # launch may have started, finished and removed the container since. Only a job that is
            # still starting is started, so no job ever runs twice.
            fresh = jobs.get(self.store, job_id)
            if fresh is None or fresh["state"] != JobState.STARTING.value:
                return
            if fresh["attempts"] > 1:
                old = self.runtime.inspect(job_id)
                if old is not None and attempt_of(old) < fresh["attempts"]:
                    self.runtime.remove(job_id)  # the container name is the job's: an earlier attempt's must go first
            req = self.launch_request(fresh)
            if fresh["spec"].get("requirements"):
                req = self._with_environment(fresh, req)
            state = self.runtime.start_job(req)
            if state.ended:
                self._finish(jobs.must_get(self.store, job_id), state)
            elif state.phase == Phase.PENDING:  # queued by a backend that places it itself (Slurm): starting, with its reason
                if state.error and state.error != fresh.get("reason"):
                    jobs.set_reason(self.store, job_id, state.error)
            else:
                jobs.transition(self.store, job_id, JobState.RUNNING, started_at=state.started_at, container_id=state.id,
                                **gpus_placed_by_runtime(fresh, state))
        except (ImageMissing, RuntimeFailure) as exc:
            jobs.transition(self.store, job_id, JobState.FAILED, reason=str(exc), ended_at=time.time())
        except Exception as exc:
            log.exception("launching job %s failed", job_id)
            self.runtime.remove(job_id)
            jobs.transition(self.store, job_id, JobState.FAILED, reason=f"mlpd could not start it: {exc}", ended_at=time.time())

    def apply_retention(self, now: float | None = None):
        """Remove ended jobs' files and unused code archives past their retention (see mlpd.retention)."""
        from mlpd import retention

        done = retention.apply(self.store, self.config.state_dir, self.config["retention.job_days"], self.config["retention.code_days"], now)
        if done.job_dirs or done.code:
            log.info("retention removed the files of %d ended jobs and %d code archives (%.1f MB)", len(done.job_dirs), len(done.code),
                     done.bytes / 1e6)
        return done

    def prune_environments(self) -> list[str]:
        """Remove job environments unused for environments.keep_days, or over environments.max_gb (least recently used first)."""
        rows = self.store.query("""SELECT json_extract(detail, '$.image') AS image, MAX(at) AS at FROM events
                                   WHERE action IN ('job.environment_built', 'job.environment_reused') GROUP BY image""")
        removed = self.environments.prune(self.config["environments.keep_days"], self.config["environments.max_gb"],
                                          {r["image"]: r["at"] for r in rows if r["image"]})
        if removed:
            with self.store.write() as db:
                for tag in removed:
                    record_event(db, "mlpd", "environment.removed", "image", tag)
            log.info("removed unused job environments: %s", ", ".join(removed))
        return removed

    def _with_environment(self, job: dict[str, Any], req: LaunchRequest) -> LaunchRequest:
        """The request with its image replaced by the job's environment, built first if needed."""
        log_path = os.path.join(jobs.job_dir(self.config.state_dir, job["id"]), "build.log")
        image, built = self.environments.ensure(
            req.image, job["spec"]["requirements"], log_path, req.user, pull=req.pull,
            on_build=lambda tag: jobs.set_reason(self.store, job["id"], f"building its environment {tag} (image + requirements)"))
        jobs.set_reason(self.store, job["id"], "", event=("job.environment_built" if built else "job.environment_reused"), image=image)
        log.info("job %s runs in %s (%s)", job["id"], image, "built now" if built else "reused")
        return dataclasses.replace(req, image=image)

    def launch_request(self, job: dict[str, Any]) -> LaunchRequest:
        """Turn a workload row into what the runtime needs: the core's request (defaults applied,
        directories made), then what its kind adds (Kind.launch_request)."""
        return kind_of(job.get("kind")).launch_request(self.store, self.config, job, self._job_request(job))

    def _job_request(self, job: dict[str, Any]) -> LaunchRequest:
        spec, cfg = job["spec"], self.config
        outputs = os.path.join(jobs.job_dir(cfg.state_dir, job["id"]), "outputs")
        os.makedirs(outputs, exist_ok=True)
        os.chmod(outputs, 0o777)  # the container's non-root uid writes here; the state dir itself stays 0700
        code = jobs.code_dir(cfg.state_dir, spec["code"]) if spec.get("code") else None
        if code and not os.path.isdir(code):
            raise RuntimeFailure(f"code archive {spec['code'][:12]} is not on the daemon (upload it again with 'mlpd run')")
        host = host_limits()
        cpus, memory = effective_limits(spec, cfg, host)
        # Credentials only for the kinds that get them (a model-serving replica has none: the daemon
        # copies its model out of the store for it).
        tracking = self._tracking_env(job) if kind_of(job.get("kind")).tracking_credentials else {}
        env = {"PYTHONUNBUFFERED": "1", "HOME": "/tmp", **spec.get("env", {}), **tracking}
        return LaunchRequest(
            job_id=job["id"], owner=job["owner"], image=spec.get("image") or cfg["jobs.default_image"],
            command=tuple(spec["command"]), env=env, gpu_uuids=tuple(job["gpu_uuids"]),
            cpus=cpus, memory=memory,
            user=cfg["jobs.container_user"], code_dir=code, outputs_dir=outputs, attempt=job.get("attempts") or 1,
            kind=kind_of(job.get("kind")).name, shm_size=shm_size(spec.get("shm"), memory, cfg["jobs.shm_size"], host[1]), ulimits=DEEP_LEARNING_ULIMITS,
            gpus=spec["gpus"], time_limit=effective_time_limit(job, cfg),
        )

    def _tracking_env(self, job: dict[str, Any]) -> dict[str, str]:
        """MLflow and mlpd settings for the container, over any the user set: the daemon's URL as
        containers reach it, and a token for the job's owner that is revoked when the job ends."""
        from mlpd.tracking import server as tracking

        url = tracking.container_url(self.config)
        if url is None:
            return {}
        token = jobs.create_job_token(self.store, job)
        spec = job["spec"]
        experiment = (spec.get("experiment") or spec.get("env", {}).get("MLFLOW_EXPERIMENT_NAME")
                      or self.config["mlflow.default_experiment"].format(owner=job["owner"]))
        # MLflow's "View run ... at http://host.docker.internal:..." would name an address only containers
        # resolve; the right links are in 'mlpd jobs show' and the web UI.
        return {"MLFLOW_TRACKING_URI": url + tracking.PREFIX, "MLFLOW_TRACKING_TOKEN": token, "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                "MLPD_URL": url, "MLPD_TOKEN": token, "MLFLOW_EXPERIMENT_NAME": experiment}


def gpus_placed_by_runtime(job: dict[str, Any], c: WorkloadStatus) -> dict[str, Any]:
    """The GPUs a backend that places work itself (Slurm) gave a job that mlpd placed on none, as the
    job row's fields, so that the ledger books them from the runtime's own start and end; {} otherwise."""
    from mlpd.runtime.protocol import LABEL_GPUS
    from mlpd.runtime.slurm import SLURM_GPU_MODEL

    uuids = [u for u in str(c.labels.get(LABEL_GPUS) or "").split(",") if u]
    if job.get("gpu_uuids") or not uuids or not runs_on_slurm(job):
        return {}
    return {"gpu_uuids": uuids, "gpu_indices": list(range(len(uuids))), "gpu_models": [SLURM_GPU_MODEL] * len(uuids)}


def keep_live_logs(directory: str, attempt: int) -> None:
    """Drop the worker's running copies of a workload's output (mlpd.workers.live_logs) once its log
    is saved: the saved log holds the same bytes. When Docker had no log to give (the container
    vanished), the running copy of this attempt becomes the saved log."""
    saved = os.path.join(directory, "log")
    for name in os.listdir(directory):
        if not (name.startswith("live-") and name.endswith(".log")):
            continue
        path = os.path.join(directory, name)
        if path == live_log_path(directory, attempt) and not os.path.exists(saved):
            os.replace(path, saved)
        else:
            os.unlink(path)
