"""GPU-hours accounting: pure functions over allocation records and utilization samples.

The ledger rows come from the state database (one row per GPU per allocation, with
Docker's own start and end times); everything here is arithmetic on plain data,
with `now` passed in, so it is tested without a database, Docker or a clock.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

PERIODS = ("day", "week", "month")
GROUPINGS = ("user", "team", "day", "kind", "gpu_model")


@dataclass(frozen=True)
class Allocation:
    """One GPU held by one object (a job, a workspace, a deployment) from start to end (None: still held)."""

    owner: str
    kind: str
    object_id: str
    gpu_uuid: str
    gpu_index: int
    gpu_model: str
    start: float
    end: float | None
    share: float = 1.0  # the part of the GPU it held: 1 = whole, 0.5 = half of a shared GPU (mlpd.scheduling.sharing)


def overlap_seconds(a: Allocation, since: float, until: float) -> float:
    """Seconds of the allocation inside [since, until] (an open allocation runs to `until`)."""
    end = a.end if a.end is not None else until
    return max(0.0, min(end, until) - max(a.start, since))


def gpu_seconds(a: Allocation, since: float, until: float) -> float:
    """GPU-seconds the allocation books inside [since, until]: its seconds times its share, so an
    hour on half a GPU books 0.5 GPU-hours."""
    return overlap_seconds(a, since, until) * a.share


def decayed_usage(allocations: Iterable[Allocation], now: float, half_life: float) -> dict[str, float]:
    """GPU-seconds per owner, each second weighted by 2^(-age/half_life), as in Slurm's fair share."""
    usage: dict[str, float] = defaultdict(float)
    k = math.log(2) / half_life
    for a in allocations:
        end = min(a.end if a.end is not None else now, now)
        if end <= a.start:
            continue
        # integral of exp(-k (now - t)) dt from start to end
        usage[a.owner] += a.share * (math.exp(-k * (now - end)) - math.exp(-k * (now - a.start))) / k
    return dict(usage)


def period_bounds(now: float, period: str) -> tuple[float, float]:
    """(start, reset) of the UTC calendar day, ISO week (Monday) or month containing now."""
    if period not in PERIODS:
        raise ValueError(f"unknown period {period!r}: expected one of {', '.join(PERIODS)}")
    t = _dt.datetime.fromtimestamp(now, tz=_dt.timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, reset = day, day + _dt.timedelta(days=1)
    elif period == "week":
        start = day - _dt.timedelta(days=day.weekday())
        reset = start + _dt.timedelta(days=7)
    else:
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        reset = start + _dt.timedelta(days=days)
    return start.timestamp(), reset.timestamp()


def busy_seconds(samples: Sequence[tuple[float, float]], start: float, end: float, interval: float) -> float | None:
    """GPU-seconds actually busy in [start, end]: each sample (t, util%) stands for the `interval` before t.

    None when there is no sample in the window (no NVML: unknown, not zero).
    """
    total, seen = 0.0, False
    for t, util in samples:
        lo, hi = max(start, t - interval), min(end, t)
        if hi > lo:
            seen = True
            total += (hi - lo) * util / 100.0
    return total if seen else None


def downsample(samples: Sequence[tuple[float, float, float]], bucket: float) -> list[tuple[float, float, float]]:
    """Average (t, util, mem) samples into buckets of `bucket` seconds, each stamped at its bucket's end."""
    buckets: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    for s in samples:
        buckets[int(s[0] // bucket)].append(s)
    out = []
    for key in sorted(buckets):
        group = buckets[key]
        out.append(((key + 1) * bucket, sum(g[1] for g in group) / len(group), sum(g[2] for g in group) / len(group)))
    return out


@dataclass(frozen=True)
class UsageRow:
    key: str
    gpu_hours: float
    busy_gpu_hours: float | None
    cost: float | None
    allocations: int


def summarize(allocations: Iterable[Allocation], since: float, until: float, by: str,
              teams_of: Mapping[str, Sequence[str]] | None = None, prices: Mapping[str, float] | None = None,
              busy: Mapping[tuple[str, str, float], float | None] | None = None) -> list[UsageRow]:
    """GPU-hours per user, team, day, kind or GPU model in [since, until], with cost where priced.

    A user in several teams counts fully in each (team reports are per team, not a partition).
    `busy` maps (object_id, gpu_uuid, start) to busy GPU-seconds, when sampled.
    """
    if by not in GROUPINGS:
        raise ValueError(f"by: expected one of {', '.join(GROUPINGS)}")
    hours: dict[str, float] = defaultdict(float)
    busy_hours: dict[str, float] = defaultdict(float)
    busy_known: dict[str, bool] = defaultdict(bool)
    cost: dict[str, float] = defaultdict(float)
    priced: dict[str, bool] = defaultdict(bool)
    count: dict[str, int] = defaultdict(int)
    for a in allocations:
        if by == "day":
            # split at UTC midnights so each day gets its own share
            pieces = []
            t = max(a.start, since)
            end = min(a.end if a.end is not None else until, until)
            while t < end:
                day_start, day_end = period_bounds(t, "day")
                piece_end = min(end, day_end)
                pieces.append((_dt.datetime.fromtimestamp(day_start, tz=_dt.timezone.utc).strftime("%Y-%m-%d"), (piece_end - t) * a.share))
                t = piece_end
        else:
            secs = gpu_seconds(a, since, until)
            if secs <= 0:
                continue
            if by == "user":
                keys = [a.owner]
            elif by == "team":
                keys = list((teams_of or {}).get(a.owner, ())) or ["(no team)"]
            elif by == "kind":
                keys = [a.kind]
            else:
                keys = [a.gpu_model]
            pieces = [(k, secs) for k in keys]
        for key, secs in pieces:
            if secs <= 0:
                continue
            hours[key] += secs / 3600
            count[key] += 1
            price = (prices or {}).get(a.gpu_model)
            if price is not None:
                cost[key] += price * secs / 3600
                priced[key] = True
            b = (busy or {}).get((a.object_id, a.gpu_uuid, a.start))
            if b is not None:
                full = gpu_seconds(a, a.start, a.end if a.end is not None else until) or 1
                busy_hours[key] += b * a.share * (secs / full) / 3600  # a share's part of its GPU's busy time
                busy_known[key] = True
    return [UsageRow(k, round(hours[k], 6), round(busy_hours[k], 6) if busy_known[k] else None,
                     round(cost[k], 4) if priced[k] else None, count[k]) for k in sorted(hours)]


def format_reset(reset: float) -> str:
    return _dt.datetime.fromtimestamp(reset, tz=_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def detect_stray(processes_by_gpu: Mapping[str, Sequence[int]], held: Iterable[str]) -> dict[str, list[int]]:
    """GPUs with processes that no mlpd allocation holds: {uuid: pids}.

    A process on a GPU that an mlpd allocation holds is taken to be that work's
    (containers' PIDs live in other namespaces, so NVML cannot tell them apart).
    """
    held = set(held)
    return {uuid: sorted(pids) for uuid, pids in processes_by_gpu.items() if pids and uuid not in held}
