"""GPU scheduler: a pure function from the host's state to placements.

`schedule()` takes the GPUs, who holds them, the queue, the policy and the
current time, and returns which queued jobs start now (and on which GPUs) and
which job holds the reservation. Why a job waits (a sentence, its blockers and
a start time) is worked out only when asked for: `explain()` for one job, or
`schedule(..., explain=True)` for all of them.

The algorithm is EASY backfill over a multifactor priority order:

- Order: by priority class first (a higher class always goes first); within a
  class, a job that holds the reservation comes first; then the starving jobs
  (waited policy.starvation_wait or longer), oldest first, whatever their score:
  each takes the reservation in turn, which bounds the longest wait
  (docs/scheduling.md); then by a priority
  score (as in Slurm's multifactor plugin), the sum of the job's own priority,
  its age, (with fair share) its owner's two fair-share factors (recent usage,
  and how much their recent work was slowed down by waiting), its expansion and
  its size (wide, short jobs first), each times a weight from the policy; ties
  by submit time, then id.
- The first job that does not fit (the head) reserves GPUs: the earliest time
  enough GPUs of one model are free (its shadow time), on the GPUs that free
  up by then, preferring those busy now, so GPUs free now stay usable by long
  jobs. A later job may start if it ends before the shadow time, or if it fits
  on free GPUs outside the reservation (EASY backfill).
- The reservation sticks: the caller keeps which job holds it (`reserved`) and
  passes it back, so later passes put that job first whatever the order says.
  Backfill never delays it, so its start time never moves later (absent
  failures and work of a higher class): the time shown to the user is a bound.
- Preemption (`choose_preemptions`): which running preemptible jobs to stop so
  that waiting work of a higher class can start; the caller decides when.

No I/O and no clock reads: the caller passes `now`, which keeps this testable.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Collection, Iterable, Mapping, Sequence

from mlpd.scheduling.resource_caps import CapLedger, ResourceCap, Use
from mlpd.scheduling.sharing import SHARE_EPS
from mlpd.workload_names import label as workload_label
from mlpd.workload_names import short_id as workload_short_id

INF = math.inf
MIN_EXPANSION_BASE = 600.0  # expansion counts a job shorter than 10 minutes as 10 minutes long
SLOWDOWN_SCALE_FLOOR = 2.0  # slowdown_factors scales by the largest mean slowdown, but by at least this
LOWEST_USER_PRIORITY = -100  # the lowest priority a job may ask for; below it (work over its GPU-hours) never starves
STARVATION_WAIT_DEFAULT = 6 * 3600.0  # scheduler.starvation_wait's default (mlpd.toml; a test holds them equal)


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
    label: str = ""  # how messages name the holder (mlpd.workload_names, with its owner); "" = a job by id
    share: float = 1.0  # the part of the GPU it holds: 1 = the whole GPU, less = a share (gpus.share_max per GPU)


@dataclass(frozen=True)
class QueuedJob:
    id: str
    owner: str
    gpus: int  # 0 = CPU-only
    gpu_model: str | None  # None: any model, but all GPUs of the job share one model
    priority: int  # the job's own priority; higher runs first
    submitted_at: float
    time_limit: float | None  # seconds; None = unlimited
    rank: int = 0  # its priority class's rank (higher classes go first, whatever the score)
    cpus: float = 0.0  # what it counts against its owner's CPU and memory caps (mlpd.scheduling.resource_caps.use_of)
    memory: int = 0
    label: str = ""  # how messages name it (mlpd.workload_names, with its owner); "" = a job by id
    share: float = 1.0  # < 1: a share of one GPU (gpus is then 1), placed by _share_fit (docs/gpu-sharing.md)

    @property
    def shared(self) -> bool:
        """True for work that asks for a share of one GPU rather than whole GPUs."""
        return self.gpus == 1 and self.share < 1.0

    @property
    def demand(self) -> float:
        """What it counts against concurrent-GPU quotas: its share, or its whole GPUs."""
        return self.share if self.shared else float(self.gpus)


@dataclass(frozen=True)
class Policy:
    """How the queue is ordered and whether jobs may overtake the head.

    A job's priority score is the sum of
      weight_priority x its own priority (-100..100; -1000 for work over its GPU-hours),
      weight_age x min(1, waited / max_age),
      weight_fair_share x its owner's fair-share factor in (0, 1] (only with fair_share),
      weight_slowdown x its owner's slowdown factor in [0, 1] (only with fair_share),
      weight_expansion x min(1, waited / (max_expansion x its time limit, 10 min at least)),
      weight_size x its job-size factor (its share of the host's GPUs, less for time limits over size_time).
    The defaults are mlpd.toml's (a test holds them equal): one point of a job's priority
    outranks any difference in the other terms.
    """
    backfill: bool = True
    fair_share: bool = True
    weight_priority: float = 10000.0
    weight_age: float = 4000.0
    max_age: float = 14 * 86400.0  # seconds
    weight_fair_share: float = 100.0
    weight_expansion: float = 1000.0
    max_expansion: float = 100.0
    weight_size: float = 0.0
    size_time: float = 3600.0  # seconds
    weight_slowdown: float = 3000.0
    # A job that has waited this long (seconds) is starving: it goes ahead of every job of its class
    # but the reservation holder, oldest first, whatever its score; 0 = off. See starving().
    starvation_wait: float = STARVATION_WAIT_DEFAULT
    # At most this many shared workloads on one GPU (gpus.share_max); their shares sum to 1 at most.
    share_max: int = 4


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
    reserved: bool = False  # it holds the reservation: estimated_start is a bound that backfill keeps


@dataclass(frozen=True)
class Head:
    """The job holding the reservation: it starts by `start` at the latest (None: unknown)."""
    job_id: str
    start: float | None
    gpu_uuids: tuple[str, ...]  # the GPUs reserved for it, ordered by GPU index


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]
    waits: tuple[Wait, ...] = ()  # explanations: of every waiting job with explain=True, else of those asked for
    head: Head | None = None
    waiting: tuple[str, ...] = ()  # every job not placed, in queue order


@dataclass(frozen=True)
class _Head:
    """The first job that did not fit, and the GPUs reserved for it."""
    job: QueuedJob
    position: int
    shadow: float  # when all reserved GPUs are free; INF = unknown
    reserved: frozenset[str]


def fair_share_factors(usage: Mapping[str, float], owners: Iterable[str] = ()) -> dict[str, float]:
    """Each user's fair-share factor in (0, 1], as in Slurm's classic formula 2^(-U/S).

    U is the user's part of all decayed usage and S its part of the shares:
    every user who has used GPUs recently or has work queued has an equal
    share. A user who used nothing gets 1, one who used exactly their share 0.5.
    """
    users = set(owners) | {u for u, x in usage.items() if x > 0}
    total = sum(x for x in usage.values() if x > 0)
    if total <= 0:
        return dict.fromkeys(users, 1.0)
    n = len(users)
    return {u: 2.0 ** (-max(usage.get(u, 0.0), 0.0) / total * n) for u in users}


def owner_slowdowns(history: Iterable[tuple[str, float, float, float | None]], queue: Iterable[QueuedJob],
                    now: float, half_life: float, max_age: float,
                    sums: Mapping[str, tuple[float, float]] | None = None) -> dict[str, float]:
    """Each owner's recent mean bounded slowdown, the second half of fair share.

    A job's bounded slowdown is max(1, (wait + run) / max(run, 10 min)): 1 for a job that started at once,
    100 for a 10-minute job that waited 16 hours. `history` holds (owner, submitted_at, started_at,
    ended_at or None while it runs) of GPU jobs that started; a running job counts its run so far,
    and each job is weighted by 2^(-age of its start / half_life). Each queued job counts with
    weight 1 and its expected slowdown so far, (waited + time limit) / max(time limit, 10 min)
    (no limit counts as max_age), so an owner whose work waits now rises at once. CPU-only jobs
    do not count. `sums`: the history already summed per owner, (weighted slowdowns, weights), as
    mlpd.scheduling.quotas.fair_share_slowdown reads it from SQLite.
    """
    num: dict[str, float] = {u: n for u, (n, _) in (sums or {}).items()}
    den: dict[str, float] = {u: d for u, (_, d) in (sums or {}).items()}
    for owner, submitted, started, ended in history:
        run = max(0.0, (now if ended is None else ended) - started)
        w = 0.5 ** (max(0.0, now - started) / half_life) if half_life > 0 else 1.0
        num[owner] = num.get(owner, 0.0) + w * max(1.0, (max(0.0, started - submitted) + run) / max(run, MIN_EXPANSION_BASE))
        den[owner] = den.get(owner, 0.0) + w
    for j in queue:
        if j.gpus <= 0:
            continue
        limit = max_age if j.time_limit is None else j.time_limit
        num[j.owner] = num.get(j.owner, 0.0) + max(1.0, (max(0.0, now - j.submitted_at) + limit) / max(limit, MIN_EXPANSION_BASE))
        den[j.owner] = den.get(j.owner, 0.0) + 1.0
    return {u: num[u] / den[u] for u in num if den[u] > 0}


def waiting_for_the_host(queue: Iterable[QueuedJob], holdings: Iterable[Holding], limits: Sequence[GpuLimit] = (),
                         over_quota: Iterable[str] = (), caps: Sequence[ResourceCap] = (),
                         running: Sequence[Use] = ()) -> list[QueuedJob]:
    """The queued GPU jobs that wait for the host, not for their owner's own quotas: the ones fair
    share's slowdown counts (owner_slowdowns). Left out: every job of an owner over their GPU-hours
    (`over_quota`: they run only when nobody else waits), and a job for which the owner's
    concurrent-GPU limits have no room, counting the GPUs they hold now and those of the jobs the
    same limits hold queued before it (in submit order). Otherwise a member could raise their own
    slowdown factor, and with it the priority of all their work, by queueing more than their quota
    lets run. Likewise for their CPU, memory and workload caps (`caps`, `running`)."""
    skip = set(over_quota)
    limits_of, taken = _quota_ledger(limits, holdings)
    ledger = CapLedger(caps, running) if caps else None
    out = []
    for j in sorted(queue, key=lambda q: (q.submitted_at, q.id)):
        if j.gpus <= 0 or j.owner in skip:
            continue
        lids = limits_of.get(j.owner, ())
        if any(taken[i] + j.demand > limits[i].max_gpus + SHARE_EPS for i in lids):
            continue  # waits for its owner's own quota
        use = Use(j.owner, j.cpus, j.memory)
        if ledger and ledger.refusal(use):
            continue  # waits for its owner's own caps
        for i in lids:
            taken[i] += j.demand
        if ledger:
            ledger.take(use)
        out.append(j)
    return out


def _quota_ledger(limits: Sequence[GpuLimit], holdings: Iterable[Holding]) -> tuple[dict[str, list[int]], list[float]]:
    """For concurrent-GPU quotas: each user's limits (indexes into `limits`) and the GPUs each limit's
    members hold in `holdings` (one per GPU held, its share for a shared GPU)."""
    limits_of: dict[str, list[int]] = {}
    for i, limit in enumerate(limits):
        for m in limit.members:
            limits_of.setdefault(m, []).append(i)
    held = [0.0] * len(limits)
    for h in holdings:
        for i in limits_of.get(h.owner, ()):
            held[i] += h.share
    return limits_of, held


def slowdown_factors(slowdown: Mapping[str, float], owners: Iterable[str] = ()) -> dict[str, float]:
    """Each owner's slowdown factor in [0, 1]: (s - 1) / (s_max - 1) of their mean slowdown s
    (from owner_slowdowns; an owner with none counts as 1), s_max the largest but at least
    SLOWDOWN_SCALE_FLOOR: the owner whose work has been slowed down most gets 1, one whose work never
    waited 0; while nobody's work has waited as long as it ran, the factors stay small (seconds of
    waiting must not reorder the queue by the full weight).
    As finish-time fairness (Themis, NSDI '20): who has been served worst goes first."""
    users = set(owners) | set(slowdown)
    top = max(max((slowdown.get(u, 1.0) for u in users), default=1.0), SLOWDOWN_SCALE_FLOOR)
    return {u: max(0.0, slowdown.get(u, 1.0) - 1.0) / (top - 1.0) for u in users}


def size_factor(job: QueuedJob, host_gpus: int, size_time: float, max_age: float) -> float:
    """The job-size factor in [0, 1]: its share of the host's GPUs, in full for a time limit of
    size_time or less, else times size_time / its time limit (10 minutes at least; no limit counts
    as max_age). As Slurm's job-size factor with SMALL_RELATIVE_TO_TIME, inverted: wide, short jobs
    score highest, so they reach the head and start draining the host sooner. 0 without GPUs."""
    if job.gpus <= 0 or host_gpus <= 0:
        return 0.0
    limit = max(max_age if job.time_limit is None else job.time_limit, MIN_EXPANSION_BASE)
    return min(1.0, job.gpus / host_gpus) * (1.0 if limit <= size_time else size_time / limit)


def starving(job: QueuedJob, now: float | None, policy: Policy) -> bool:
    """True if the job has waited policy.starvation_wait or longer (and the mechanism is on).

    A starving job goes ahead of every other job of its class except the one holding the
    reservation, in submit order, whatever its score: so it takes the reservation as soon as the
    holder starts, and starts by the time its reserved GPUs free up (selective reservation, as
    Srinivasan et al. 2002: a job gets a reservation once it has waited past a threshold). Work over
    its owner's GPU-hours (a priority below LOWEST_USER_PRIORITY) runs only when nothing else waits,
    and never starves. The bound this gives is in docs/scheduling.md."""
    return (now is not None and policy.starvation_wait > 0 and job.priority >= LOWEST_USER_PRIORITY
            and now - job.submitted_at >= policy.starvation_wait)


def score_terms(job: QueuedJob, now: float | None, policy: Policy, factors: Mapping[str, float],
                host_gpus: int = 0, slowdown: Mapping[str, float] | None = None) -> dict[str, float]:
    """The terms of the job's priority score, each times its weight, as `mlpd jobs show` lists them:
    priority, age, fair_share (usage), slowdown, expansion, size. A term that is off is left out."""
    terms: dict[str, float] = {"priority": policy.weight_priority * job.priority}
    if now is not None:
        age = 1.0 if policy.max_age <= 0 else min(1.0, max(0.0, now - job.submitted_at) / policy.max_age)
        terms["age"] = policy.weight_age * age
    if policy.fair_share:
        terms["fair_share"] = policy.weight_fair_share * factors.get(job.owner, 1.0)
        if slowdown and policy.weight_slowdown:
            terms["slowdown"] = policy.weight_slowdown * slowdown.get(job.owner, 0.0)
    if now is not None and policy.weight_expansion:
        base = max(policy.max_age if job.time_limit is None else job.time_limit, MIN_EXPANSION_BASE) * policy.max_expansion
        terms["expansion"] = policy.weight_expansion * min(1.0, max(0.0, now - job.submitted_at) / base)
    if policy.weight_size:
        terms["size"] = policy.weight_size * size_factor(job, host_gpus, policy.size_time, policy.max_age)
    return terms


def priority_score(job: QueuedJob, now: float | None, policy: Policy, factors: Mapping[str, float],
                   host_gpus: int = 0, slowdown: Mapping[str, float] | None = None) -> float:
    """The job's multifactor priority score (higher goes first): the sum of its score_terms. `factors`
    from fair_share_factors, `slowdown` from slowdown_factors; `host_gpus` the most GPUs of one model
    the host has (the job-size factor needs it; 0: no size term)."""
    return sum(score_terms(job, now, policy, factors, host_gpus, slowdown).values())


def queue_order(queue: Iterable[QueuedJob], usage: Mapping[str, float] | None = None, *, now: float | None = None,
                policy: Policy = Policy(), reserved: Mapping[str, float] | None = None,
                host_gpus: int = 0, slowdown: Mapping[str, float] | None = None) -> list[QueuedJob]:
    """Return the jobs in scheduling order: by class rank desc; within a rank, those holding a
    reservation first (the earliest reserved first), then the starving ones (`starving`) by
    submitted_at asc, then the others by priority score desc, then submitted_at asc, then id.

    `usage` is each owner's decayed recent GPU usage and `slowdown` each owner's recent mean
    slowdown (owner_slowdowns), both only read with policy.fair_share;
    without `now` age adds nothing; without `host_gpus` (the most GPUs of one model) job size adds nothing.
    """
    queue = list(queue)
    reserved = reserved or {}
    factors = fair_share_factors(usage, {j.owner for j in queue}) if usage and policy.fair_share else {}
    # priority_score, inlined: this runs for every queued job on every pass (a test holds them equal).
    w_prio, w_age, w_fs, w_x = policy.weight_priority, policy.weight_age, policy.weight_fair_share, policy.weight_expansion
    timed = now is not None
    max_age, max_x, default_base = policy.max_age, policy.max_expansion, max(policy.max_age, MIN_EXPANSION_BASE)
    fs_on = policy.fair_share
    w_size = policy.weight_size if host_gpus > 0 else 0.0
    size_time = policy.size_time
    w_sd = policy.weight_slowdown if slowdown and fs_on else 0.0
    sfac = slowdown_factors(slowdown or {}, {j.owner for j in queue}) if w_sd else {}
    starve = policy.starvation_wait if timed and policy.starvation_wait > 0 else INF
    keyed = []
    for j in queue:
        if j.id in reserved:
            keyed.append((-j.rank, 0, reserved[j.id], j.submitted_at, j.id, j))
            continue
        if now is not None and now - j.submitted_at >= starve and j.priority >= LOWEST_USER_PRIORITY:  # starving(), inlined
            keyed.append((-j.rank, 1, j.submitted_at, j.submitted_at, j.id, j))
            continue
        score = w_prio * j.priority
        waited = now - j.submitted_at if now is not None else 0.0
        if timed:
            score += w_age * (1.0 if max_age <= 0 or waited >= max_age else waited / max_age if waited > 0 else 0.0)
        if fs_on:
            score += w_fs * factors.get(j.owner, 1.0)
        if timed and w_x:
            base = max_x * (default_base if j.time_limit is None else
                            j.time_limit if j.time_limit > MIN_EXPANSION_BASE else MIN_EXPANSION_BASE)
            score += w_x * (1.0 if waited >= base else waited / base if waited > 0 else 0.0)
        if w_sd:
            score += w_sd * sfac.get(j.owner, 0.0)
        if w_size and j.gpus > 0:  # size_factor, inlined
            limit = max(max_age if j.time_limit is None else j.time_limit, MIN_EXPANSION_BASE)
            score += w_size * (j.gpus / host_gpus if j.gpus < host_gpus else 1.0) * (
                1.0 if limit <= size_time else size_time / limit)
        keyed.append((-j.rank, 2, -score, j.submitted_at, j.id, j))
    keyed.sort(key=lambda k: k[:5])
    return [k[5] for k in keyed]


def short_id(job_id: str) -> str:
    """Return the short form of a job id used in human messages (as 'mlpd jobs' lists it)."""
    return workload_short_id(job_id)


def name_of(work: Holding | QueuedJob) -> str:
    """How a message names the work that holds a GPU or waits: its label (a workspace, a deployment's
    replica, a named job, with the owner), else the job by id and owner."""
    job_id = work.job_id if isinstance(work, Holding) else work.id
    return work.label or workload_label("job", job_id, work.owner, with_owner=True)


def format_time(t: float) -> str:
    """Format a unix time as "YYYY-MM-DD HH:MM UTC", rounded up to the minute.

    Rounding up because printed times are "at the latest" bounds: truncating
    would promise a GPU a little before it really frees.
    """
    return datetime.fromtimestamp(math.ceil(t / 60) * 60, tz=timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def _gpus_word(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def format_gpus(x: float) -> str:
    """A number of GPUs as messages show it: 2, or 1.5 where shares make it a fraction."""
    return str(int(round(x))) if abs(x - round(x)) < 1e-6 else f"{x:.2f}".rstrip("0")


def _matches(gpu: Gpu, job: QueuedJob) -> bool:
    return job.gpu_model is None or gpu.model == job.gpu_model


def _groups(gpus: Sequence[Gpu]) -> dict[str, list[Gpu]]:
    """Group GPUs by model; dict order is by each group's lowest index."""
    groups: dict[str, list[Gpu]] = {}
    for g in sorted(gpus, key=lambda g: g.index):
        groups.setdefault(g.model, []).append(g)
    return groups


def _fit(job: QueuedJob, free: Sequence[Gpu], prefer: Collection[str] = ()) -> tuple[Gpu, ...] | None:
    """GPUs of the first model group (by lowest index) that fits: those in `prefer`
    first, then the lowest indices; returned ordered by index."""
    for group in _groups(free).values():
        if len(group) >= job.gpus:
            if prefer:
                group = sorted(group, key=lambda g: (g.uuid not in prefer, g.index))
            return tuple(sorted(group[:job.gpus], key=lambda g: g.index))
    return None


def _earliest(job: QueuedJob, usable: Sequence[Gpu],
              free_at: Callable[[Gpu], float]) -> tuple[float, tuple[Gpu, ...]]:
    """Earliest time enough GPUs of one model are free, and which GPUs to reserve then.

    Of the GPUs that are free by that time, the ones that free up latest are
    reserved (the highest indices among equals), so GPUs free sooner stay
    usable by work that runs past it. Caller guarantees some model group is
    large enough. Ties between groups go to the group with the lowest index.
    """
    best: tuple[float, tuple[Gpu, ...]] | None = None
    for group in _groups(usable).values():
        if len(group) < job.gpus:
            continue
        t = sorted(free_at(g) for g in group)[job.gpus - 1]
        if best is not None and t >= best[0]:
            continue
        ready = [g for g in group if free_at(g) <= t]
        chosen = sorted(ready, key=lambda g: (-free_at(g), -g.index))[:job.gpus]
        best = (t, tuple(sorted(chosen, key=lambda g: g.index)))
    assert best is not None
    return best


def _caps(free_by_model: Mapping[str, list[Gpu]], exclude: Collection[str] = ()) -> dict[str | None, int]:
    """Most GPUs a job can get now, per model and (key None) in any one model."""
    caps: dict[str | None, int] = {}
    for model, free in free_by_model.items():
        caps[model] = sum(1 for g in free if g.uuid not in exclude) if exclude else len(free)
    caps[None] = max(caps.values(), default=0)
    return caps


def schedule(gpus: Sequence[Gpu], holdings: Sequence[Holding], queue: Sequence[QueuedJob],
             now: float, policy: Policy = Policy(), usage: Mapping[str, float] | None = None,
             limits: Sequence[GpuLimit] = (), reserved: Mapping[str, float] | None = None,
             explain: bool | Collection[str] = False, slowdown: Mapping[str, float] | None = None,
             caps: Sequence[ResourceCap] = (), running: Sequence[Use] = ()) -> Plan:
    """Decide which queued jobs start now, and which job holds the reservation.

    Walks the queue in `queue_order`. Jobs that fit are placed on the
    lowest-index free GPUs of one model. The first job that does not fit (the
    head) reserves GPUs (see `_earliest`); with `policy.backfill` a later job
    may still start if it cannot delay the head's start (EASY backfill).

    `reserved` maps the jobs that hold a reservation (from earlier passes) to
    when they got it: they go first. `usage` (each owner's decayed recent GPU
    usage) and `slowdown` (each owner's recent mean slowdown, owner_slowdowns) feed fair share. `limits` are concurrent-GPU quotas: a job that
    would take its owner (or team) over one waits without reserving GPUs, and
    backfill never takes the head's quota group past what the head needs. `caps` are
    concurrent CPU, memory and workload-count caps over every kind of work (GPU or not), `running`
    what running work holds of them: a job over one waits, like one over a GPU quota.

    `explain`: True gives every waiting job a `Wait` (the sentence, blockers and
    an estimated start); a collection of ids gives those jobs one; by default
    none, which keeps a pass over a long queue cheap.
    """
    return _plan(gpus, holdings, queue, now, policy, usage, limits, reserved, explain, None, slowdown, caps, running)


def explain(gpus: Sequence[Gpu], holdings: Sequence[Holding], queue: Sequence[QueuedJob], now: float,
            job_id: str, policy: Policy = Policy(), usage: Mapping[str, float] | None = None,
            limits: Sequence[GpuLimit] = (), reserved: Mapping[str, float] | None = None,
            slowdown: Mapping[str, float] | None = None, caps: Sequence[ResourceCap] = (),
            running: Sequence[Use] = ()) -> Wait | None:
    """Why one queued job waits, as `schedule(..., explain=True)` would say; None if it would start now.

    Stops at that job: the jobs behind it cannot change its answer.
    """
    plan = _plan(gpus, holdings, queue, now, policy, usage, limits, reserved, (job_id,), job_id, slowdown, caps, running)
    return next((w for w in plan.waits if w.job_id == job_id), None)


def _plan(gpus: Sequence[Gpu], holdings: Sequence[Holding], queue: Sequence[QueuedJob], now: float,
          policy: Policy, usage: Mapping[str, float] | None, limits: Sequence[GpuLimit],
          reserved: Mapping[str, float] | None, explain: bool | Collection[str], stop_at: str | None,
          slowdown: Mapping[str, float] | None = None, caps: Sequence[ResourceCap] = (),
          running: Sequence[Use] = ()) -> Plan:
    gpus = sorted(gpus, key=lambda g: g.index)
    ledger = CapLedger(caps, running) if caps else None
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
        return max(now, *(h.ends_by for h in hs if h.ends_by is not None))

    usable_by_model: dict[str, list[Gpu]] = {}
    for g in gpus:
        if not g.drained:
            usable_by_model.setdefault(g.model, []).append(g)
    largest: dict[str | None, int] = {m: len(grp) for m, grp in usable_by_model.items()}
    largest[None] = max(largest.values(), default=0)
    free_by_model = {m: [g for g in grp if g.uuid not in holders] for m, grp in usable_by_model.items()}
    cap = _caps(free_by_model)
    cap_outside = cap  # free GPUs outside the head's reservation

    # Concurrent-GPU quotas: GPUs held per limit, kept up to date as jobs are placed.
    limits_of, held = _quota_ledger(limits, (h for hs in holders.values() for h in hs))

    explain_all = explain is True
    explain_ids = frozenset() if explain is True or explain is False else frozenset(explain)
    placements: list[Placement] = []
    waiting: list[str] = []
    waits: list[Wait] = []
    head: _Head | None = None
    head_limits: frozenset[int] = frozenset()

    def place(job: QueuedJob, chosen: Sequence[Gpu] | None) -> None:
        nonlocal cap, cap_outside
        assert chosen is not None, "placed only where the free GPUs of its model fit it"
        placements.append(Placement(job.id, tuple(g.uuid for g in chosen)))
        # Placed work holds its GPUs like running work for the rest of this call.
        ends = None if job.time_limit is None else now + job.time_limit
        for g in chosen:
            holding = Holding(g.uuid, job.id, job.owner, ends, job.label, job.share if job.shared else 1.0)
            if job.shared and holders.get(g.uuid):
                holders[g.uuid].append(holding)  # one more share of an already shared GPU
            else:
                holders[g.uuid] = [holding]
                free_by_model[g.model].remove(g)
        for i in limits_of.get(job.owner, ()):
            held[i] += job.demand
        if ledger:
            ledger.take(Use(job.owner, job.cpus, job.memory))
        cap = _caps(free_by_model)
        cap_outside = cap if head is None else _caps(free_by_model, head.reserved)

    def free_for(job: QueuedJob) -> list[Gpu]:
        return [g for m, grp in free_by_model.items() if job.gpu_model in (None, m) for g in grp]

    def share_fit(job: QueuedJob, exclude: Collection[str] = ()) -> Gpu | None:
        """Where a share goes now: a GPU shared by shares only, with fewer than policy.share_max
        holders and room for its share, the fullest first (packing keeps whole GPUs free for whole-GPU
        work), else the free GPU of the lowest index. Never a GPU held by whole-GPU work."""
        best: tuple[tuple, Gpu] | None = None
        for m, grp in usable_by_model.items():
            if job.gpu_model not in (None, m):
                continue
            for g in grp:
                hs = holders.get(g.uuid, [])
                if g.uuid in exclude or any(h.share >= 1.0 for h in hs) or len(hs) >= max(policy.share_max, 1):
                    continue
                used = sum(h.share for h in hs)
                if used + job.share > 1.0 + SHARE_EPS:
                    continue
                key = (not hs, -used, g.index)
                if best is None or key < best[0]:
                    best = (key, g)
        return None if best is None else best[1]

    for pos, job in enumerate(queue_order(queue, usage, now=now, policy=policy, reserved=reserved, slowdown=slowdown,
                                                 host_gpus=largest[None]), start=1):
        n = job.gpus
        wanted = explain_all or job.id in explain_ids
        use = Use(job.owner, job.cpus, job.memory)
        over_cap = ledger.refusal(use) if ledger else None
        if over_cap:
            # Its owner's CPU, memory or workload cap stops it: like a GPU quota, it reserves nothing.
            waiting.append(job.id)
            if wanted:
                tail = "" if over_cap.startswith("can never run") else "; it starts when some of its owner's running work ends"
                waits.append(Wait(job.id, pos, over_cap + tail, (), None))
            if job.id == stop_at:
                break
            continue
        if n <= 0:  # CPU-only work never competes for GPUs
            placements.append(Placement(job.id, ()))
            if ledger:
                ledger.take(use)
            continue
        shared = n == 1 and job.share < 1.0  # job.shared, inlined: this runs for every queued job on every pass
        if head is not None and not wanted and (not policy.backfill or not (cap[None] or shared)):
            waiting.append(job.id)  # no GPU is left that anyone behind the head could take
            continue
        lids = limits_of.get(job.owner)
        if lids and any(job.demand > limits[i].max_gpus + SHARE_EPS or held[i] + job.demand > limits[i].max_gpus + SHARE_EPS
                        for i in lids):
            # Quota, not capacity, stops it: it must not reserve GPUs and hold up others.
            waiting.append(job.id)
            if wanted:
                waits.append(Wait(job.id, pos, _quota_reason(job, [limits[i] for i in lids], holders), (), None))
            if job.id == stop_at:
                break
            continue
        model = job.gpu_model
        if n > largest.get(model, 0):
            # It can never run here, so it must not reserve GPUs and block others.
            waiting.append(job.id)
            if wanted:
                waits.append(_never_wait(job, pos, gpus, largest.get(model, 0)))
            if job.id == stop_at:
                break
            continue
        if shared:
            # A share: onto a shared GPU with room, else a free one (share_fit). Behind the head, only
            # where it cannot delay the head: off its reserved GPUs, unless it ends before the head starts.
            where = None
            if head is None:
                where = share_fit(job)
            elif policy.backfill and _quota_room(job, lids, head_limits, head.job.demand, held, limits):
                harmless = job.time_limit is not None and head.shadow != INF and now + job.time_limit <= head.shadow
                where = share_fit(job, () if harmless else head.reserved)
            if where is not None:
                place(job, (where,))
                continue
        if head is None:
            if n <= cap.get(model, 0):
                place(job, _fit(job, free_for(job)))
                continue
            usable = [g for m, grp in usable_by_model.items() if model in (None, m) for g in grp]
            shadow, chosen = _earliest(job, usable, free_at)
            head = _Head(job, pos, shadow, frozenset(g.uuid for g in chosen))
            head_limits = frozenset(lids or ())
            cap_outside = _caps(free_by_model, head.reserved)
            waiting.append(job.id)
            if wanted:
                blocking = tuple(h for g in chosen for h in holders.get(g.uuid, []))
                waits.append(Wait(job.id, pos, _waiting_for(job, chosen, holders, gpus), blocking,
                                  None if shadow == INF else shadow, reserved=True))
            if job.id == stop_at:
                break
            continue
        if policy.backfill and not shared:
            # With an unknown shadow time the head may start any moment: nothing is harmless.
            harmless = job.time_limit is not None and head.shadow != INF and now + job.time_limit <= head.shadow
            # Nor may it take the head's quota: the head could then not start when its GPUs free up.
            if n <= (cap if harmless else cap_outside).get(model, 0) and _quota_room(
                    job, lids, head_limits, head.job.demand, held, limits):
                if harmless:  # it ends before the head starts: idle reserved GPUs are the best place
                    place(job, _fit(job, free_for(job), prefer=head.reserved))
                else:
                    place(job, _fit(job, [g for g in free_for(job) if g.uuid not in head.reserved]))
                continue
        waiting.append(job.id)
        if wanted:
            waits.append(_later_wait(job, pos, head, free_for(job), holders, gpus, usable_by_model, free_at,
                                     now, policy))
        if job.id == stop_at:
            break
    plan_head = None
    if head is not None:
        plan_head = Head(head.job.id, None if head.shadow == INF else head.shadow,
                         tuple(g.uuid for g in gpus if g.uuid in head.reserved))
    return Plan(tuple(placements), tuple(waits), plan_head, tuple(waiting))


@dataclass(frozen=True)
class Preemptible:
    """A running job that may be preempted (its class is preemptible)."""
    job_id: str
    owner: str
    gpu_uuids: tuple[str, ...]
    started_at: float
    rank: int  # its class's rank: only waiting work of a higher rank may preempt it


@dataclass(frozen=True)
class Preemption:
    job_id: str   # the running job to preempt
    for_job: str  # the waiting job it makes room for


MAX_VICTIM_SETS = 5000  # sets of victims weighed per model group before settling for the greedy choice


def choose_preemptions(gpus: Sequence[Gpu], holdings: Sequence[Holding], waiting: Sequence[QueuedJob],
                       candidates: Sequence[Preemptible], now: float, leaving: Collection[str] = (),
                       limits: Sequence[GpuLimit] = ()) -> tuple[Preemption, ...]:
    """Which running jobs to preempt so that each waiting job can start; the caller says which may
    (`waiting`, in queue order: those of a higher class that waited long enough).

    For each waiting job, on the usable GPUs of one model: if the GPUs free now, or being freed
    (`leaving`: jobs already told to stop), are enough, nothing more is preempted for it. Else the
    fewest candidates of a lower rank whose GPUs make up the rest; among as many, those freeing the
    fewest GPUs, then those losing the least work (GPU-seconds run so far: the latest started go
    first). The GPUs so found are promised to that job and not counted again for the next one. A
    job no preemption can help (too few usable GPUs of its model, over its concurrent-GPU quota)
    preempts nothing.
    """
    usable = [g for g in sorted(gpus, key=lambda g: g.index) if not g.drained]
    known = {g.uuid for g in gpus}
    holders: dict[str, set[str]] = {}
    for h in holdings:
        if h.gpu_uuid in known:
            holders.setdefault(h.gpu_uuid, set()).add(h.job_id)
    leaving = set(leaving)
    limits_of, held = _quota_ledger(limits, (h for h in holdings if h.job_id not in leaving))
    owners = {h.job_id: h.owner for h in holdings}
    share_of = {h.job_id: h.share for h in holdings}
    claimed: set[str] = set()
    out: list[Preemption] = []

    def open_now(g: Gpu) -> bool:
        return g.uuid not in claimed and holders.get(g.uuid, set()) <= leaving

    for job in waiting:
        lids = limits_of.get(job.owner, ())
        if job.gpus <= 0 or any(held[i] + job.demand > limits[i].max_gpus + SHARE_EPS for i in lids):
            continue
        best: tuple[tuple, list[str], tuple[Preemptible, ...]] | None = None
        for group in _groups([g for g in usable if _matches(g, job)]).values():
            if len(group) < job.gpus:
                continue
            free = [g.uuid for g in group if open_now(g)]
            if len(free) >= job.gpus:
                option: tuple[tuple, list[str], tuple[Preemptible, ...]] = ((0, 0, 0.0), free[:job.gpus], ())
            else:
                victims = _fewest_victims(job, group, free, holders, leaving, claimed, candidates, now)
                if victims is None:
                    continue
                ids = {c.job_id for c in victims}
                freed = [g.uuid for g in group if g.uuid not in claimed and g.uuid not in free
                         and holders.get(g.uuid, set()) - leaving <= ids]
                lost = sum((now - c.started_at) * len(c.gpu_uuids) for c in victims)
                option = ((len(victims), len(freed), lost), free + freed[:job.gpus - len(free)], victims)
            if best is None or option[0] < best[0]:
                best = option
        if best is None:
            continue
        _, take, victims = best
        claimed.update(take)
        for c in victims:
            leaving.add(c.job_id)
            out.append(Preemption(c.job_id, job.id))
            for i in limits_of.get(owners.get(c.job_id, c.owner), ()):
                held[i] -= len(c.gpu_uuids) * share_of.get(c.job_id, 1.0)
        for i in lids:
            held[i] += job.demand
    return tuple(out)


def _fewest_victims(job: QueuedJob, group: Sequence[Gpu], free: Sequence[str], holders: Mapping[str, set[str]],
                    leaving: Collection[str], claimed: Collection[str], candidates: Sequence[Preemptible],
                    now: float) -> tuple[Preemptible, ...] | None:
    """The fewest lower-rank candidates whose GPUs in `group` make up what `free` lacks for the job
    (ties: fewest GPUs freed, then least work lost); None when all of them together cannot."""
    need = job.gpus - len(free)
    in_group = {g.uuid for g in group if g.uuid not in claimed}
    options: list[tuple[Preemptible, int]] = []
    for c in candidates:
        if c.rank >= job.rank or c.job_id in leaving:
            continue
        # a GPU is freed only when the candidate is its one holder still staying
        mine = sum(1 for u in c.gpu_uuids if u in in_group and holders.get(u, set()) - set(leaving) <= {c.job_id})
        if mine:
            options.append((c, mine))
    sizes = sorted((n for _, n in options), reverse=True)
    if sum(sizes) < need:
        return None
    k = next(i for i in range(1, len(sizes) + 1) if sum(sizes[:i]) >= need)

    def cost(combo) -> tuple:
        return (sum(n for _, n in combo), sum((now - c.started_at) * len(c.gpu_uuids) for c, _ in combo),
                sorted(c.job_id for c, _ in combo))

    if math.comb(len(options), k) <= MAX_VICTIM_SETS:
        combo = min((combo for combo in itertools.combinations(options, k) if sum(n for _, n in combo) >= need), key=cost)
    else:  # too many sets to weigh: the largest first (still k of them), the latest started among equals
        ordered = sorted(options, key=lambda o: (-o[1], (now - o[0].started_at) * len(o[0].gpu_uuids)))
        combo = tuple(ordered[:k])
    return tuple(c for c, _ in combo)


def _quota_room(job: QueuedJob, lids: Sequence[int] | None, head_limits: frozenset[int], head_gpus: float,
                held: Sequence[float], limits: Sequence[GpuLimit]) -> bool:
    """True if the job leaves the head room in every concurrent-GPU quota they share."""
    return not lids or all(held[i] + job.demand + head_gpus <= limits[i].max_gpus + SHARE_EPS
                           for i in lids if i in head_limits)


def _quota_reason(job: QueuedJob, limits: Sequence[GpuLimit], holders: dict[str, list[Holding]]) -> str:
    for limit in limits:
        if job.demand > limit.max_gpus + SHARE_EPS:
            return (f"can never run: asks for {_gpus_word(job.gpus)} but the concurrent GPU quota of "
                    f"{limit.name} is {limit.max_gpus}")
    for limit in limits:
        hs = [h for hs in holders.values() for h in hs if h.owner in limit.members]
        taken = sum(h.share for h in hs)
        if taken + job.demand > limit.max_gpus + SHARE_EPS:
            jobs_ = ", ".join(sorted({name_of(h) for h in hs}))
            return (f"at the concurrent GPU quota of {limit.name}: {limit.max_gpus} GPUs at most, "
                    f"{format_gpus(taken)} held ({jobs_}); it starts when some are released")
    return "at its concurrent GPU quota"


def _describe_holders(gpu: Gpu, holders: dict[str, list[Holding]]) -> str:
    parts = []
    for h in holders[gpu.uuid]:
        until = (", no time limit" if h.ends_by is None
                 else f" until {format_time(h.ends_by)} at the latest")
        parts.append(f"{name_of(h)}{until}")
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
    want = f"a {format_gpus(job.share)} share of a GPU" if job.shared else _gpus_word(job.gpus)
    text = f"waiting for {want} ({model})"
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


def _later_wait(job: QueuedJob, pos: int, head: _Head, free: Sequence[Gpu], holders: dict[str, list[Holding]],
                gpus: Sequence[Gpu], usable_by_model: Mapping[str, list[Gpu]],
                free_at: Callable[[Gpu], float], now: float, policy: Policy) -> Wait:
    """Wait for a job queued behind the head (which holds the only reservation)."""
    usable = [g for m, grp in usable_by_model.items() if job.gpu_model in (None, m) for g in grp]
    head_ref = f"{name_of(head.job)} (position {head.position})"
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
