"""GPU scheduler: a pure function from the host's state to placements.

`schedule()` takes the GPUs, who holds them, the queue, the policy and the
current time, and returns which queued jobs start now (and on which GPUs) plus,
for every job that must wait, a human explanation and an estimated start.

The algorithm is strict priority + FIFO with optional EASY backfill: the first
job that does not fit gets a reservation on the GPUs that free earliest, and a
later job may only jump ahead if it cannot delay that reservation.

No I/O and no clock reads: the caller passes `now`, which keeps this testable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Mapping, Sequence

INF = math.inf


@dataclass(frozen=True)
class Gpu:
    uuid: str
    index: int
    model: str  # e.g. "NVIDIA H100 80GB HBM3" or "declared"
    drained: bool = False  # a drained GPU takes no new work (current holders keep running)
    drain_reason: str = "drained"  # how messages name why, e.g. "in use outside mlpd"


@dataclass(frozen=True)
class Holding:
    """One GPU held by running/starting work."""
    gpu_uuid: str
    job_id: str
    owner: str
    ends_by: float | None  # latest end (start + time limit); None = no time limit


@dataclass(frozen=True)
class QueuedJob:
    id: str
    owner: str
    gpus: int  # 0 = CPU-only
    gpu_model: str | None  # None: any model, but all GPUs of the job share one model
    priority: int  # higher runs first
    submitted_at: float
    time_limit: float | None  # seconds; None = unlimited


@dataclass(frozen=True)
class Policy:
    backfill: bool = True
    fair_share: bool = True  # among equal priorities, less recent usage goes first


@dataclass(frozen=True)
class GpuLimit:
    """A concurrent-GPU quota: the members together may hold at most max_gpus GPUs."""
    name: str                 # for messages, e.g. "user alice" or "team vision"
    members: frozenset[str]
    max_gpus: int


@dataclass(frozen=True)
class Placement:
    job_id: str
    gpu_uuids: tuple[str, ...]  # ordered by GPU index


@dataclass(frozen=True)
class Wait:
    job_id: str
    position: int  # 1-based position in queue order
    reason: str
    blocking: tuple[Holding, ...]
    estimated_start: float | None  # None: unknown (a blocker has no time limit) or never


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    waits: tuple[Wait, ...]


@dataclass(frozen=True)
class _Head:
    """The first job that did not fit, and the GPUs reserved for it."""
    job: QueuedJob
    position: int
    shadow: float  # when all reserved GPUs are free; INF = unknown
    reserved: frozenset[str]


def queue_order(queue: Iterable[QueuedJob], usage: Mapping[str, float] | None = None) -> list[QueuedJob]:
    """Return the jobs in scheduling order: priority desc, then (fair share) the owner's
    decayed recent usage asc, then submitted_at asc, then id."""
    usage = usage or {}
    return sorted(queue, key=lambda j: (-j.priority, usage.get(j.owner, 0.0), j.submitted_at, j.id))


def short_id(job_id: str) -> str:
    """Return the short form of a job id used in human messages."""
    return job_id[:8]


def format_time(t: float) -> str:
    """Format a unix time as "YYYY-MM-DD HH:MM UTC", rounded up to the minute.

    Rounding up because printed times are "at the latest" bounds: truncating
    would promise a GPU a little before it really frees.
    """
    return datetime.fromtimestamp(math.ceil(t / 60) * 60, tz=timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def _gpus_word(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _matches(gpu: Gpu, job: QueuedJob) -> bool:
    return job.gpu_model is None or gpu.model == job.gpu_model


def _groups(gpus: Sequence[Gpu]) -> dict[str, list[Gpu]]:
    """Group GPUs by model; dict order is by each group's lowest index."""
    groups: dict[str, list[Gpu]] = {}
    for g in sorted(gpus, key=lambda g: g.index):
        groups.setdefault(g.model, []).append(g)
    return groups


def _fit(job: QueuedJob, free: Sequence[Gpu]) -> tuple[Gpu, ...] | None:
    """Lowest-index GPUs of the first model group (by lowest index) that fits."""
    for group in _groups(free).values():
        if len(group) >= job.gpus:
            return tuple(group[:job.gpus])
    return None


def _earliest(job: QueuedJob, usable: Sequence[Gpu],
              free_at: Callable[[Gpu], float]) -> tuple[float, tuple[Gpu, ...]]:
    """Earliest time enough GPUs of one model are free, and which GPUs those are.

    Caller guarantees some model group is large enough. Ties between groups go
    to the group with the lowest index, so the result is deterministic.
    """
    best: tuple[float, tuple[Gpu, ...]] | None = None
    for group in _groups(usable).values():
        if len(group) < job.gpus:
            continue
        chosen = sorted(group, key=lambda g: (free_at(g), g.index))[:job.gpus]
        t = max(free_at(g) for g in chosen)
        if best is None or t < best[0]:
            best = (t, tuple(sorted(chosen, key=lambda g: g.index)))
    assert best is not None
    return best


def schedule(gpus: Sequence[Gpu], holdings: Sequence[Holding], queue: Sequence[QueuedJob],
             now: float, policy: Policy = Policy(), usage: Mapping[str, float] | None = None,
             limits: Sequence[GpuLimit] = ()) -> Plan:
    """Decide which queued jobs start now and explain why the others wait.

    Walks the queue in `queue_order`. Jobs that fit are placed on the
    lowest-index free GPUs of one model. The first job that does not fit (the
    head) reserves the GPUs that free earliest; with `policy.backfill` a later
    job may still start if it cannot delay the head's start (EASY backfill).
    Every job not placed gets exactly one `Wait`.

    With `policy.fair_share`, `usage` (each owner's decayed recent GPU usage)
    orders jobs of equal priority. `limits` are concurrent-GPU quotas: a job that
    would take its owner (or team) over one waits without reserving GPUs.
    """
    gpus = sorted(gpus, key=lambda g: g.index)
    by_uuid = {g.uuid: g for g in gpus}
    holders: dict[str, list[Holding]] = {}
    for h in holdings:
        if h.gpu_uuid in by_uuid:  # holdings on unknown GPUs cannot block anything
            holders.setdefault(h.gpu_uuid, []).append(h)

    def free_at(g: Gpu) -> float:
        hs = holders.get(g.uuid, [])
        if not hs:
            return now
        if any(h.ends_by is None for h in hs):
            return INF
        # An overdue holder is still there; the best guess is "any moment now".
        return max(now, *(h.ends_by for h in hs))

    placements: list[Placement] = []
    waits: list[Wait] = []
    head: _Head | None = None
    owner_of = {h.job_id: h.owner for hs in holders.values() for h in hs}
    held_jobs: dict[str, list[str]] = {}
    for hs in holders.values():
        for h in hs:
            held_jobs.setdefault(h.owner, []).append(h.job_id)

    def quota_block(job: QueuedJob) -> str | None:
        for limit in limits:
            if job.owner not in limit.members:
                continue
            held = [j for m in limit.members for j in held_jobs.get(m, [])]
            if job.gpus > limit.max_gpus:
                return (f"can never run: asks for {_gpus_word(job.gpus)} but the concurrent GPU quota of "
                        f"{limit.name} is {limit.max_gpus}")
            if len(held) + job.gpus > limit.max_gpus:
                jobs_ = ", ".join(sorted({f"job {short_id(j)} ({owner_of.get(j, '?')})" for j in held}))
                return (f"at the concurrent GPU quota of {limit.name}: {limit.max_gpus} GPUs at most, "
                        f"{len(held)} held ({jobs_}); it starts when some are released")
        return None

    for pos, job in enumerate(queue_order(queue, usage if policy.fair_share else None), start=1):
        if job.gpus <= 0:  # CPU-only work never competes for GPUs
            placements.append(Placement(job.id, ()))
            continue
        blocked = quota_block(job)
        if blocked:
            # Quota, not capacity, stops it: it must not reserve GPUs and hold up others.
            waits.append(Wait(job.id, pos, blocked, (), None))
            continue
        usable = [g for g in gpus if not g.drained and _matches(g, job)]
        largest = max((len(grp) for grp in _groups(usable).values()), default=0)
        if largest < job.gpus:
            # It can never run here, so it must not reserve GPUs and block others.
            waits.append(_never_wait(job, pos, gpus, largest))
            continue
        free = [g for g in usable if g.uuid not in holders]
        if head is None:
            chosen = _fit(job, free)
        elif policy.backfill:
            chosen = _fit(job, free if _harmless(job, head, now)
                          else [g for g in free if g.uuid not in head.reserved])
        else:
            chosen = None  # plain FIFO: nobody overtakes the head
        if chosen:
            placements.append(Placement(job.id, tuple(g.uuid for g in chosen)))
            # Placed work holds its GPUs like running work for the rest of this call.
            ends = None if job.time_limit is None else now + job.time_limit
            for g in chosen:
                holders[g.uuid] = [Holding(g.uuid, job.id, job.owner, ends)]
                held_jobs.setdefault(job.owner, []).append(job.id)
            owner_of[job.id] = job.owner
            continue
        if head is None:
            shadow, reserved = _earliest(job, usable, free_at)
            head = _Head(job, pos, shadow, frozenset(g.uuid for g in reserved))
            blocking = tuple(h for g in reserved for h in holders.get(g.uuid, []))
            reason = _waiting_for(job, reserved, holders, gpus)
            waits.append(Wait(job.id, pos, reason, blocking, None if shadow == INF else shadow))
        else:
            waits.append(_later_wait(job, pos, head, usable, free, holders, gpus, free_at,
                                     now, policy))
    return Plan(tuple(placements), tuple(waits))


def _harmless(job: QueuedJob, head: _Head, now: float) -> bool:
    """True if the job is sure to end before the head's reserved GPUs are needed."""
    return (job.time_limit is not None and math.isfinite(head.shadow)
            and now + job.time_limit <= head.shadow)


def _describe_holders(gpu: Gpu, holders: dict[str, list[Holding]]) -> str:
    parts = []
    for h in holders[gpu.uuid]:
        until = (", no time limit" if h.ends_by is None
                 else f" until {format_time(h.ends_by)} at the latest")
        parts.append(f"{h.owner} (job {short_id(h.job_id)}){until}")
    return f"GPU {gpu.index} held by " + " and ".join(parts)


def _drained_note(gpus: Sequence[Gpu], model: str | None) -> list[str]:
    """Mention drained GPUs of the model: they are part of why the job can't fit."""
    return [f"GPU {g.index} {g.drain_reason}" for g in gpus
            if g.drained and (model is None or g.model == model)]


def _waiting_for(job: QueuedJob, chosen: Sequence[Gpu], holders: dict[str, list[Holding]],
                 gpus: Sequence[Gpu]) -> str:
    """E.g. "waiting for 2 GPUs (A100): GPU 1 held by alice (job 7f3a) until ..."."""
    model = chosen[0].model
    details = [_describe_holders(g, holders) for g in chosen if g.uuid in holders]
    details += _drained_note(gpus, model)
    text = f"waiting for {_gpus_word(job.gpus)} ({model})"
    return text + (": " + "; ".join(details) if details else "")


def _never_wait(job: QueuedJob, pos: int, gpus: Sequence[Gpu], largest: int) -> Wait:
    """Wait for a job that asks for more GPUs than the host can ever give it."""
    what = f"of model {job.gpu_model}" if job.gpu_model else "of one model"
    reason = (f"can never run: asks for {_gpus_word(job.gpus)} but the host has "
              f"{largest} usable GPU{'' if largest == 1 else 's'} {what}")
    drained = _drained_note(gpus, job.gpu_model)
    if drained:
        reason += f" ({', '.join(drained)})"
    return Wait(job.id, pos, reason, (), None)


def _later_wait(job: QueuedJob, pos: int, head: _Head, usable: Sequence[Gpu],
                free: Sequence[Gpu], holders: dict[str, list[Holding]], gpus: Sequence[Gpu],
                free_at: Callable[[Gpu], float], now: float, policy: Policy) -> Wait:
    """Wait for a job queued behind the head (which holds the only reservation)."""
    head_ref = f"job {short_id(head.job.id)} (position {head.position})"
    head_start = ("an unknown time" if head.shadow == INF
                  else f"{format_time(head.shadow)} at the latest")
    if _fit(job, free) is not None:
        # GPUs are free right now; only the queue rules keep this job waiting.
        if not policy.backfill:
            reason = f"GPUs are free but {head_ref} is ahead in the queue and backfill is off"
        else:
            why = ("it has no time limit" if job.time_limit is None
                   else "the head's start time is unknown" if head.shadow == INF
                   else "its time limit runs past that")
            reason = (f"the free GPUs it fits on are reserved for {head_ref}, which starts "
                      f"by {head_start}; it cannot backfill because {why}")
    else:
        reason = (_waiting_for(job, _earliest(job, usable, free_at)[1], holders, gpus)
                  + f"; queued behind {head_ref}")

    # Estimate: the head starts first and keeps its reserved GPUs until it ends.
    head_end = head.shadow + (head.job.time_limit if head.job.time_limit is not None else INF)

    def after_head(g: Gpu) -> float:
        return max(free_at(g), head_end) if g.uuid in head.reserved else free_at(g)

    est = max(head.shadow, _earliest(job, usable, after_head)[0])
    blocking = tuple(h for g in usable for h in holders.get(g.uuid, []))
    return Wait(job.id, pos, reason, blocking, None if est == INF else est)
