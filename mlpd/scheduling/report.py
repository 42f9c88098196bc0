"""The platform report: is the box used, where do people get stuck, how long from a first
experiment to production (`mlpd admin report`, the admin's "Platform" page, a few /metrics gauges).

Every figure comes from rows mlpd already keeps: the workload rows (``jobs``: jobs, workspace
sessions and deployment replicas alike, with submit, start and end times, state and reason), the
users table, the ledger (``allocations``) with the NVML samples beside it (``gpu_samples``), the
events table (``deployment.created``), the deployments' revisions (when each began serving) and
MLflow's registry, read-only through the ModelRegistry the caller passes (mlpd.tracking.server.TrackingDb). docs/report.md defines
each figure exactly; the arithmetic here is plain Python over those rows, with the period passed
in, so a test can seed rows with known times and compare every number.

Nothing here branches on a workload kind's name: figures that differ by kind are grouped by it.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mlpd.jobs import TERMINAL_STATES, JobState
from mlpd.scheduling.accounting import Allocation, busy_seconds, gpu_seconds
from mlpd.store import Store

BUCKETS = ("week", "month")
# Ended, and not as its owner wanted (a cancel is their choice): failed, timed out, lost.
FAILED_STATES = tuple(sorted(TERMINAL_STATES - {JobState.SUCCEEDED.value, JobState.CANCELLED.value}))
SUCCEEDED = JobState.SUCCEEDED.value
NO_TEAM = "(no team)"
DEFAULT_WEEKS = 12


class ReportError(ValueError):
    """A report that cannot be made as asked (a period that ends before it starts, an unknown bucket)."""


@dataclass(frozen=True)
class Period:
    """One bucket of the report: [start, end) in unix seconds, and its label (2026-W49, 2026-12)."""

    start: float
    end: float
    label: str


def bucket_start(t: float, by: str) -> float:
    """The start (UTC midnight) of the ISO week (Monday) or calendar month containing t."""
    day = _dt.datetime.fromtimestamp(t, tz=_dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if by == "week":
        return (day - _dt.timedelta(days=day.weekday())).timestamp()
    return day.replace(day=1).timestamp()


def periods(since: float, until: float, by: str) -> list[Period]:
    """The weeks or months that [since, until) touches, each clipped to [since, until)."""
    if by not in BUCKETS:
        raise ReportError(f"by: expected one of {', '.join(BUCKETS)}, got {by!r}")
    if not until > since:
        raise ReportError("until: must be after since")
    out, t = [], bucket_start(since, by)
    while t < until:
        start = _dt.datetime.fromtimestamp(t, tz=_dt.UTC)
        if by == "week":
            nxt = start + _dt.timedelta(days=7)
            iso = start.isocalendar()
            label = f"{iso[0]}-W{iso[1]:02d}"
        else:
            nxt = start + _dt.timedelta(days=calendar.monthrange(start.year, start.month)[1])
            label = start.strftime("%Y-%m")
        out.append(Period(max(t, since), min(nxt.timestamp(), until), label))
        t = nxt.timestamp()
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile: the ceil(q/100 * n)-th smallest value (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def failure_cause(state: str, reason: str, exit_code: int | None) -> str:
    """The cause of an ended workload that failed, timed out or was lost, as the report groups it."""
    reason = reason or ""
    if state == JobState.LOST.value:
        return "lost"
    if state == JobState.TIMED_OUT.value:
        return "time limit"
    if reason.startswith("out of memory"):
        return "out of memory"
    if reason.startswith("building its environment failed"):
        return "environment build"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return "could not start"


def _overlaps(row: dict[str, Any], start: float, end: float, now: float) -> bool:
    """Whether a workload row ran at some moment of [start, end): it started before end and had not ended by start."""
    if row["started_at"] is None or row["started_at"] >= end:
        return False
    ended = row["ended_at"] if row["ended_at"] is not None else now
    return ended >= start


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(v, digits)


class ModelRegistry(Protocol):
    """What the report reads of MLflow's registry (mlpd.tracking.server.TrackingDb, read-only)."""

    def models_registered(self, since: float, until: float) -> list[dict[str, Any]]:
        """Registered models created in [since, until): [{"model", "registered_at"}], oldest first."""

    def first_runs(self) -> dict[str, float]:
        """Registered model -> the start of the first run of its experiment (see docs/report.md)."""


# ---------------------------------------------------------------- the figures


def active_users(rows: Iterable[dict[str, Any]], period: Period, now: float) -> list[str]:
    """Users who owned a workload of any kind that ran at some moment of the period."""
    return sorted({r["owner"] for r in rows if _overlaps(r, period.start, period.end, now)})


def queue_waits(rows: Iterable[dict[str, Any]], period: Period) -> list[float]:
    """started_at - submitted_at of every workload row that started in the period."""
    return [r["started_at"] - r["submitted_at"] for r in rows
            if r["started_at"] is not None and period.start <= r["started_at"] < period.end]


def busy_of(store: Store, a: Allocation, until: float) -> float | None:
    """Busy GPU-seconds of one allocation from the NVML samples of its GPU (None where none exist)."""
    end = a.end if a.end is not None else until
    rows = store.query("SELECT at, utilization, resolution FROM gpu_samples WHERE gpu_uuid = ? AND at > ? AND at <= ? ORDER BY at",
                       [a.gpu_uuid, a.start, end + 3600])
    if not rows:
        return None
    return busy_seconds([(r["at"], r["utilization"]) for r in rows], a.start, end, rows[0]["resolution"])


def gpu_hours_by_team(store: Store, since: float, until: float) -> list[dict[str, Any]]:
    """GPU-hours allocated in [since, until) per team (a user in several teams counts in each; one in
    none under NO_TEAM), and busy GPU-hours where NVML samples exist (None where none do)."""
    teams: dict[str, list[str]] = defaultdict(list)
    for r in store.query("SELECT team, user FROM team_members ORDER BY team"):
        teams[r["user"]].append(r["team"])
    allocs = [Allocation(**r) for r in store.query(
        "SELECT owner, kind, object_id, gpu_uuid, gpu_index, gpu_model, start, end, share FROM allocations "
        "WHERE start < ? AND (end IS NULL OR end > ?)", [until, since])]
    has_samples = store.query_one("SELECT 1 AS x FROM gpu_samples LIMIT 1") is not None
    hours: dict[str, float] = defaultdict(float)
    busy: dict[str, float] = defaultdict(float)
    sampled: dict[str, bool] = defaultdict(bool)
    for a in allocs:
        secs = gpu_seconds(a, since, until)
        if secs <= 0:
            continue
        b = busy_of(store, a, until) if has_samples else None
        full = gpu_seconds(a, a.start, a.end if a.end is not None else until) or 1
        for team in teams.get(a.owner) or [NO_TEAM]:
            hours[team] += secs / 3600
            if b is not None:
                busy[team] += b * a.share * (secs / full) / 3600
                sampled[team] = True
    return [{"team": t, "gpu_hours": _round(hours[t]), "busy_gpu_hours": _round(busy[t]) if sampled[t] else None}
            for t in sorted(hours)]


def time_to_production(store: Store, registry: ModelRegistry, since: float, until: float) -> list[dict[str, Any]]:
    """Per registered model first served in [since, until): from the first run of its experiment
    (see first_runs) to the first moment a deployment's revision of a version of it began serving."""
    served = store.query("SELECT model_name, MIN(switched_at) AS at FROM deployment_revisions "
                         "WHERE model_name IS NOT NULL AND switched_at IS NOT NULL GROUP BY model_name")
    starts = registry.first_runs() if served else {}
    out = []
    for r in served:
        if not since <= r["at"] < until or r["model_name"] not in starts:
            continue
        first = starts[r["model_name"]]
        out.append({"model": r["model_name"], "first_run_at": first, "first_served_at": r["at"], "seconds": _round(r["at"] - first, 3)})
    return sorted(out, key=lambda x: (x["first_served_at"], x["model"]))


def build(store: Store, registry: ModelRegistry, since: float, until: float, by: str = "week", now: float | None = None) -> dict[str, Any]:
    """The whole report for [since, until), bucketed by week or month; docs/report.md defines each figure."""
    buckets = periods(since, until, by)
    now = min(now if now is not None else until, until)
    rows = store.query("SELECT id, owner, kind, state, reason, exit_code, submitted_at, started_at, ended_at, cancel_reason "
                       "FROM jobs WHERE submitted_at < ? AND (ended_at IS NULL OR ended_at >= ?)", [until, since])
    whole = Period(since, until, "all")

    per_period = []
    for p in buckets:
        waits = queue_waits(rows, p)
        per_period.append({"label": p.label, "start": p.start, "end": p.end, "active_users": len(active_users(rows, p, now)),
                           "started": len(waits), "queue_wait_p50": _round(percentile(waits, 50), 3),
                           "queue_wait_p95": _round(percentile(waits, 95), 3)})

    # New users, and their time to a first success (a workload of theirs that ended succeeded, whenever).
    firsts = {r["owner"]: r["at"] for r in store.query(
        "SELECT owner, MIN(ended_at) AS at FROM jobs WHERE state = ? GROUP BY owner", [SUCCEEDED])}
    new_users = []
    for u in store.query("SELECT name, created_at FROM users WHERE created_at >= ? AND created_at < ? ORDER BY created_at, name",
                         [since, until]):
        first = firsts.get(u["name"])
        new_users.append({"user": u["name"], "created_at": u["created_at"], "first_success_at": first,
                          "seconds_to_first_success": _round(first - u["created_at"], 3) if first is not None else None})

    # Workloads per user (submitted in the period), by kind.
    per_user: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if since <= r["submitted_at"] < until:
            per_user[r["owner"]][r["kind"]] += 1
    workloads_per_user = [{"user": u, "by_kind": dict(sorted(k.items())), "total": sum(k.values())} for u, k in sorted(per_user.items())]

    # Outcomes by kind and the causes of failure: workloads that ended in the period.
    ended = [r for r in rows if r["ended_at"] is not None and since <= r["ended_at"] < until]
    outcomes: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    causes: dict[str, int] = defaultdict(int)
    for r in ended:
        outcomes[r["kind"]][r["state"]] += 1
        if r["state"] in FAILED_STATES:
            causes[failure_cause(r["state"], r["reason"], r["exit_code"])] += 1
    success_by_kind = []
    for kind, states in sorted(outcomes.items()):
        judged = states.get(SUCCEEDED, 0) + sum(states.get(s, 0) for s in FAILED_STATES)
        success_by_kind.append({"kind": kind, "ended": sum(states.values()), "succeeded": states.get(SUCCEEDED, 0),
                                "failed": sum(states.get(s, 0) for s in FAILED_STATES), "cancelled": states.get(JobState.CANCELLED.value, 0),
                                "success_rate": _round(states.get(SUCCEEDED, 0) / judged, 4) if judged else None})

    # Hours run by kind (started_at..ended_at, clipped), and the share of ended ones culled for idleness.
    hours_by_kind: dict[str, float] = defaultdict(float)
    for r in rows:
        if r["started_at"] is not None:
            end = r["ended_at"] if r["ended_at"] is not None else now
            hours_by_kind[r["kind"]] += max(0.0, min(end, until) - max(r["started_at"], since)) / 3600
    culled: dict[str, int] = defaultdict(int)
    for r in ended:
        if (r["reason"] or "").startswith("culled:") or (r["cancel_reason"] or "").startswith("culled:"):
            culled[r["kind"]] += 1
    runtime_by_kind = []
    for kind in sorted(set(hours_by_kind) | set(outcomes)):
        n_ended = sum(outcomes[kind].values()) if kind in outcomes else 0
        runtime_by_kind.append({"kind": kind, "hours": _round(hours_by_kind.get(kind, 0.0)), "ended": n_ended,
                                "culled_idle": culled.get(kind, 0),
                                "culled_share": _round(culled.get(kind, 0) / n_ended, 4) if n_ended else None})

    deployments = store.query("SELECT COUNT(*) AS n FROM events WHERE action = 'deployment.created' AND at >= ? AND at < ?",
                              [since, until])[0]["n"]
    models = registry.models_registered(since, until)
    return {
        "since": since, "until": until, "by": by,
        "periods": per_period,
        "active_users": len(active_users(rows, whole, now)),
        "new_users": new_users,
        "workloads_per_user": workloads_per_user,
        "success_by_kind": success_by_kind,
        "failure_causes": [{"cause": c, "count": n} for c, n in sorted(causes.items(), key=lambda x: (-x[1], x[0]))],
        "gpu_hours_by_team": gpu_hours_by_team(store, since, until),
        "runtime_by_kind": runtime_by_kind,
        "models_registered": len(models),
        "models": models,
        "deployments_started": deployments,
        "time_to_production": time_to_production(store, registry, since, until),
    }


def default_since(until: float, by: str) -> float:
    """The default start: the bucket DEFAULT_WEEKS weeks before until (weeks), or 6 months before (months)."""
    if by == "month":
        t = _dt.datetime.fromtimestamp(until, tz=_dt.UTC)
        month, year = t.month - 5, t.year
        while month < 1:
            month, year = month + 12, year - 1
        return _dt.datetime(year, month, 1, tzinfo=_dt.UTC).timestamp()
    return bucket_start(until - (DEFAULT_WEEKS - 1) * 7 * 86400, "week")


CSV_SECTIONS = ("periods", "new_users", "workloads_per_user", "success_by_kind", "failure_causes", "gpu_hours_by_team",
                "runtime_by_kind", "models", "time_to_production")


def to_csv(report: dict[str, Any]) -> str:
    """The report as CSV: one row per figure, columns section,key,field,value (long form, so every
    section fits one table and a spreadsheet pivots it)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["section", "key", "field", "value"])
    for name in ("since", "until", "by", "active_users", "models_registered", "deployments_started"):
        w.writerow(["summary", "", name, report[name]])
    keys = {"periods": "label", "new_users": "user", "workloads_per_user": "user", "success_by_kind": "kind", "failure_causes": "cause",
            "gpu_hours_by_team": "team", "runtime_by_kind": "kind", "models": "model", "time_to_production": "model"}
    for section in CSV_SECTIONS:
        for row in report[section]:
            for field, value in row.items():
                if field == keys[section]:
                    continue
                if isinstance(value, dict):
                    for k, v in value.items():
                        w.writerow([section, row[keys[section]], f"{field}.{k}", v])
                else:
                    w.writerow([section, row[keys[section]], field, "" if value is None else value])
    return buf.getvalue()


GAUGE_WINDOW = 7 * 86400


def gauges(store: Store, registry: ModelRegistry, now: float) -> dict[str, Any]:
    """What /metrics shows of the report: over the last GAUGE_WINDOW seconds (active users, queue wait
    p50 and p95, success ratio by kind) and all time (models registered, deployments started)."""
    rep = build(store, registry, now - GAUGE_WINDOW, now, "week", now)
    window = Period(now - GAUGE_WINDOW, now, "7d")
    rows = store.query("SELECT owner, submitted_at, started_at, ended_at FROM jobs WHERE started_at >= ?", [window.start])
    waits = queue_waits(rows, window)
    return {
        "active_users": rep["active_users"],
        "queue_wait_p50": percentile(waits, 50),
        "queue_wait_p95": percentile(waits, 95),
        "success_ratio": {k["kind"]: k["success_rate"] for k in rep["success_by_kind"] if k["success_rate"] is not None},
        "models_registered": len(registry.models_registered(0, now + 86400)),
        "deployments_started": store.query("SELECT COUNT(*) AS n FROM events WHERE action = 'deployment.created'")[0]["n"],
    }
