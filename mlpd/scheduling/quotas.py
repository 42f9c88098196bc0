"""Teams, quotas and usage queries over the state database.

The arithmetic lives in mlpd.scheduling.accounting (pure); this module reads the ledger
and the quota tables and turns them into the scheduler's inputs and the
admission decision, with messages that say the limit, the usage and the reset.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from mlpd.scheduling.accounting import Allocation, decayed_usage, format_reset, gpu_seconds, overlap_seconds, period_bounds  # noqa: F401  (period_bounds re-exported)
from mlpd.config import Config
from mlpd.errors import MlpdError
from mlpd.scheduling.sharing import SHARE_EPS, as_gpus
from mlpd.scheduling.resource_caps import CapLedger, ResourceCap, Use, never_fits, use_of
from mlpd.store import Store, record_event
from mlpd.users import UserError, check_name

if TYPE_CHECKING:
    from mlpd.scheduling.scheduler import QueuedJob


@dataclass(frozen=True)
class Quota:
    """The limits that apply to one subject (a user or a team) and who it covers."""

    subject_kind: str  # 'user' or 'team'
    subject: str
    gpu_hours: float | None  # per period; None/0 = unlimited
    max_gpus: int | None     # None/0 = unlimited
    members: frozenset[str]
    # Concurrent CPU, memory and workload-count caps over every kind of work (the configured
    # defaults, per user; see mlpd.scheduling.resource_caps). None = unlimited.
    max_cpus: float | None = None
    max_memory: int | None = None
    max_jobs: int | None = None

    @property
    def label(self) -> str:
        return f"{self.subject_kind} {self.subject}"

    @property
    def resource_cap(self) -> ResourceCap | None:
        """Its CPU, memory and workload caps for the scheduler, or None when it has none."""
        if self.max_cpus is None and self.max_memory is None and self.max_jobs is None:
            return None
        return ResourceCap(self.label, self.members, self.max_cpus, self.max_memory, self.max_jobs)


class QuotaExceeded(MlpdError):
    """Work refused by a quota; the message names the limit, the usage and the reset."""

    def __init__(self, message: str):
        super().__init__(403, "quota_exceeded", message)


# ---------------------------------------------------------------- ledger


def allocations(store: Store, since: float | None = None, owners: Iterable[str] | None = None) -> list[Allocation]:
    """Ledger rows that overlap [since, now], optionally for some owners."""
    params: list[Any]
    sql, params = "SELECT owner, kind, object_id, gpu_uuid, gpu_index, gpu_model, start, end, share FROM allocations WHERE 1=1", []
    if since is not None:
        sql += " AND (end IS NULL OR end >= ?)"
        params.append(since)
    owners = list(owners) if owners is not None else None
    if owners is not None:
        if not owners:
            return []
        sql += f" AND owner IN ({','.join('?' * len(owners))})"
        params += owners
    return [Allocation(**row) for row in store.query(sql, params)]


def gpu_hours_used(store: Store, members: Iterable[str], since: float, now: float) -> float:
    """GPU-hours the members used since `since` (open allocations count up to now)."""
    return sum(gpu_seconds(a, since, now) for a in allocations(store, since, members)) / 3600


def fair_share_usage(store: Store, config: Config, now: float) -> dict[str, float]:
    """Decayed GPU-seconds per owner (four half-lives of history is over 90% of the weight)."""
    from mlpd.units import parse_duration

    half_life = parse_duration(config["scheduler.fair_share_half_life"])
    return decayed_usage(allocations(store, now - 4 * half_life), now, half_life)


# Each owner's weighted sum of bounded slowdowns (num) and of weights (den) over the GPU jobs that
# started since :since, each weighted 2^(-age of its start / half-life) = exp((start - now) k); a
# running job counts its run so far. Summed in SQLite: a pass reads one row per owner. The index on
# started_at (0012) is named: left to itself SQLite scans all of jobs_owner to group, or takes
# jobs_kind, which nearly every row matches.
FAIR_SHARE_SLOWDOWN_SQL = """
SELECT owner, SUM(w * s) AS num, SUM(w) AS den FROM (
  SELECT owner, exp((started_at - :now) * :k) AS w,
         max(1.0, (max(0.0, started_at - submitted_at) + max(0.0, coalesce(ended_at, :now) - started_at))
                  / max(coalesce(ended_at, :now) - started_at, :floor)) AS s
  FROM jobs INDEXED BY jobs_started_at WHERE started_at >= :since AND {kinds} AND gpu_uuids != '[]'
) GROUP BY owner"""


def fair_share_slowdown(store: Store, config: Config, now: float, queue: Sequence[QueuedJob],
                        max_age: float) -> dict[str, float]:
    """Each owner's recent mean bounded slowdown (mlpd.scheduling.scheduler.owner_slowdowns) over the GPU jobs
    that started in the last four half-lives and the queued ones."""

    from mlpd.units import parse_duration
    from mlpd.scheduling.scheduler import MIN_EXPANSION_BASE, owner_slowdowns

    half_life = parse_duration(config["scheduler.slowdown_half_life"])
    from mlpd.kinds.base import names

    counted = names("counts_slowdown")  # the batch kinds, whose waits count (Kind.counts_slowdown)
    kinds = {f"kind{i}": k for i, k in enumerate(counted)}
    kinds_sql = f"kind IN ({', '.join(':' + k for k in kinds)})" if kinds else "0"
    params = {"now": now, "k": math.log(2) / half_life, "floor": MIN_EXPANSION_BASE, "since": now - 4 * half_life, **kinds}
    try:
        sums = {r["owner"]: (r["num"], r["den"]) for r in store.query(FAIR_SHARE_SLOWDOWN_SQL.format(kinds=kinds_sql), params)}
    except sqlite3.OperationalError as e:  # an SQLite built without its math functions (exp, 3.35+)
        if "exp" not in str(e):
            raise
        rows = store.query("SELECT owner, submitted_at, started_at, ended_at FROM jobs INDEXED BY jobs_started_at "
                           f"WHERE started_at >= :since AND {kinds_sql} AND gpu_uuids != '[]'", params)
        return owner_slowdowns([(r["owner"], r["submitted_at"], r["started_at"], r["ended_at"]) for r in rows],
                               queue, now, half_life, max_age)
    return owner_slowdowns((), queue, now, half_life, max_age, sums=sums)


# ---------------------------------------------------------------- teams


def teams_of(store: Store) -> dict[str, list[str]]:
    """user -> the teams they belong to."""
    out: dict[str, list[str]] = {}
    for row in store.query("SELECT team, user FROM team_members ORDER BY team"):
        out.setdefault(row["user"], []).append(row["team"])
    return out


def team_members(store: Store, team: str) -> list[str]:
    return [r["user"] for r in store.query("SELECT user FROM team_members WHERE team = ? ORDER BY user", [team])]


def add_team(store: Store, name: str, actor: str) -> None:
    check_name(name)
    with store.write() as db:
        if db.execute("SELECT 1 FROM teams WHERE name = ?", [name]).fetchone():
            raise UserError(f"team {name!r} already exists", code="conflict", status=409)
        db.execute("INSERT INTO teams (name, created_at) VALUES (?, ?)", [name, time.time()])
        record_event(db, actor, "team.add", "team", name)


def remove_team(store: Store, name: str, actor: str) -> None:
    with store.write() as db:
        if not db.execute("SELECT 1 FROM teams WHERE name = ?", [name]).fetchone():
            raise UserError(f"no such team {name!r}", code="not_found", status=404)
        db.execute("DELETE FROM team_members WHERE team = ?", [name])
        db.execute("DELETE FROM quotas WHERE subject_kind = 'team' AND subject = ?", [name])
        db.execute("DELETE FROM resource_caps WHERE subject_kind = 'team' AND subject = ?", [name])
        db.execute("DELETE FROM priority_grants WHERE subject = ?", [f"team:{name}"])  # a team made again later starts with none
        db.execute("DELETE FROM teams WHERE name = ?", [name])
        record_event(db, actor, "team.remove", "team", name)


def set_membership(store: Store, team: str, user: str, member: bool, actor: str) -> None:
    """Add (member=True) or remove a user from a team; idempotent."""
    with store.write() as db:
        if not db.execute("SELECT 1 FROM teams WHERE name = ?", [team]).fetchone():
            raise UserError(f"no such team {team!r}", code="not_found", status=404)
        if member:
            if not db.execute("SELECT 1 FROM users WHERE name = ? AND removed_at IS NULL", [user]).fetchone():
                raise UserError(f"no such user {user!r}", code="not_found", status=404)
            db.execute("INSERT OR IGNORE INTO team_members (team, user) VALUES (?, ?)", [team, user])
        else:
            db.execute("DELETE FROM team_members WHERE team = ? AND user = ?", [team, user])
        record_event(db, actor, "team.member_add" if member else "team.member_remove", "team", team, user=user)


def list_teams(store: Store) -> list[dict[str, Any]]:
    teams = store.query("SELECT name, created_at FROM teams ORDER BY name")
    for t in teams:
        t["members"] = team_members(store, t["name"])
    return teams


# ---------------------------------------------------------------- quotas


def set_quota(store: Store, subject_kind: str, subject: str, gpu_hours: float | None, max_gpus: int | None, actor: str) -> None:
    """Set (or with both None, clear) a user's or team's quota."""
    if gpu_hours is not None and gpu_hours < 0 or max_gpus is not None and max_gpus < 0:
        raise UserError("quota values must be >= 0 (0 means unlimited)")
    with store.write() as db:
        table = "users" if subject_kind == "user" else "teams"
        extra = " AND removed_at IS NULL" if subject_kind == "user" else ""
        if not db.execute(f"SELECT 1 FROM {table} WHERE name = ?{extra}", [subject]).fetchone():
            raise UserError(f"no such {subject_kind} {subject!r}", code="not_found", status=404)
        if gpu_hours is None and max_gpus is None:
            db.execute("DELETE FROM quotas WHERE subject_kind = ? AND subject = ?", [subject_kind, subject])
        else:
            db.execute(
                "INSERT INTO quotas (subject_kind, subject, gpu_hours, max_gpus, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(subject_kind, subject) DO UPDATE SET gpu_hours = excluded.gpu_hours, max_gpus = excluded.max_gpus, updated_at = excluded.updated_at",
                [subject_kind, subject, gpu_hours, max_gpus, time.time()])
        record_event(db, actor, "quota.set", subject_kind, subject, gpu_hours=gpu_hours, max_gpus=max_gpus)


def quotas_for(store: Store, config: Config, user: str) -> list[Quota]:
    """Every quota that applies to the user: their own (or the configured default) and their teams'."""
    rows = {(r["subject_kind"], r["subject"]): r for r in store.query("SELECT * FROM quotas")}
    caps = {(r["subject_kind"], r["subject"]): r for r in store.query("SELECT * FROM resource_caps")}
    own = rows.get(("user", user))
    out = [Quota("user", user,
                 own["gpu_hours"] if own else (config["quotas.gpu_hours"] or None),
                 own["max_gpus"] if own else (config["quotas.max_gpus"] or None),
                 frozenset([user]), *_caps_of(caps.get(("user", user)), default_caps(config)))]
    for team in teams_of(store).get(user, []):
        row, cap_row = rows.get(("team", team)), caps.get(("team", team))
        if row or cap_row:
            out.append(Quota("team", team, row["gpu_hours"] if row else None, row["max_gpus"] if row else None,
                             frozenset(team_members(store, team)), *_caps_of(cap_row, (None, None, None))))
    return [q for q in out if q.gpu_hours or q.max_gpus or q.resource_cap]


def _caps_of(row: dict[str, Any] | None, defaults: tuple[float | None, int | None, int | None]) -> tuple[float | None, int | None, int | None]:
    """(max_cpus, max_memory, max_jobs) from a resource_caps row: NULL = the default, 0 = unlimited (None)."""
    if row is None:
        return defaults
    out: list[Any] = []
    for key, default in zip(("max_cpus", "max_memory", "max_jobs"), defaults, strict=True):
        value = row[key]
        out.append(default if value is None else (value or None))
    return out[0], out[1], out[2]


def set_caps(store: Store, subject_kind: str, subject: str, actor: str, max_cpus: float | None = None,
             max_memory: int | None = None, max_jobs: int | None = None, clear: bool = False) -> None:
    """Set a user's or team's concurrent CPU, memory and workload caps: only those given change
    (0 = unlimited); clear=True goes back to the configured defaults (a team: none)."""
    for name, value in (("max_cpus", max_cpus), ("max_memory", max_memory), ("max_jobs", max_jobs)):
        if value is not None and (value < 0 or value != value):
            raise UserError(f"{name}: must be >= 0 (0 means unlimited)")
    with store.write() as db:
        table = "users" if subject_kind == "user" else "teams"
        extra = " AND removed_at IS NULL" if subject_kind == "user" else ""
        if not db.execute(f"SELECT 1 FROM {table} WHERE name = ?{extra}", [subject]).fetchone():
            raise UserError(f"no such {subject_kind} {subject!r}", code="not_found", status=404)
        if clear:
            db.execute("DELETE FROM resource_caps WHERE subject_kind = ? AND subject = ?", [subject_kind, subject])
        else:
            db.execute("INSERT OR IGNORE INTO resource_caps (subject_kind, subject, updated_at) VALUES (?, ?, ?)",
                       [subject_kind, subject, time.time()])
            for name, value in (("max_cpus", max_cpus), ("max_memory", max_memory), ("max_jobs", max_jobs)):
                if value is not None:
                    db.execute(f"UPDATE resource_caps SET {name} = ?, updated_at = ? WHERE subject_kind = ? AND subject = ?",
                               [value, time.time(), subject_kind, subject])
        record_event(db, actor, "quota.caps_set", subject_kind, subject, max_cpus=max_cpus, max_memory=max_memory,
                     max_jobs=max_jobs, clear=clear)


def default_caps(config: Config) -> tuple[float | None, int | None, int | None]:
    """The configured per-user CPU, memory and workload caps (quotas.max_cpus, max_memory, max_jobs); None = unlimited."""
    from mlpd.units import parse_memory

    return (float(config["quotas.max_cpus"]) or None, parse_memory(config["quotas.max_memory"]) if config["quotas.max_memory"] else None,
            config["quotas.max_jobs"] or None)


def running_uses(store: Store, config: Config, owners: Iterable[str] | None = None) -> list[Use]:
    """What the running work (every kind) of the owners (all when None) holds of their CPU, memory and workload caps."""

    from mlpd.units import host_limits

    host = host_limits()
    sql, params = "SELECT owner, spec FROM jobs WHERE state IN ('starting', 'running')", []
    if owners is not None:
        owners = list(owners)
        if not owners:
            return []
        sql += f" AND owner IN ({','.join('?' * len(owners))})"
        params = owners
    return [use_of(r["owner"], json.loads(r["spec"]), config, host) for r in store.query(sql, params)]


def admit_resources(store: Store, config: Config, user: str, specs: Sequence[dict[str, Any]],
                    applicable: list[Quota] | None = None) -> list[str]:
    """Check new work (one spec per workload it starts: a job, a workspace, each replica) against the
    user's CPU, memory and workload caps. Work that could never fit is refused whatever the mode
    (QuotaExceeded); over the caps now it is refused with quotas.over_quota = "refuse", else it
    waits in the queue and the notes say why."""
    from mlpd.units import host_limits

    applicable = applicable if applicable is not None else quotas_for(store, config, user)
    caps = [c for c in (q.resource_cap for q in applicable) if c is not None]
    if not caps or not specs:
        return []
    host = host_limits()
    uses = [use_of(user, spec, config, host) for spec in specs]
    for use in uses:
        never = never_fits(caps, use)
        if never:
            raise QuotaExceeded(never + "; ask for less (--cpus, --memory) or ask an admin to raise the quota")
    members = set().union(*(c.members for c in caps))
    ledger = CapLedger(caps, running_uses(store, config, members))
    for use in uses:
        why = ledger.refusal(use)
        if why:
            if config["quotas.over_quota"] == "refuse":
                raise QuotaExceeded(why + "; wait for your running work to end (or stop some), or ask an admin to raise it")
            return [why + "; it waits in the queue until some of your running work ends"]
        ledger.take(use)
    return []


def held_gpus(store: Store, members: Iterable[str]) -> int | float:
    """GPUs the members hold now; a shared GPU counts as the share held (two halves hold 1)."""
    members = list(members)
    rows = store.query("SELECT gpu_uuids, COALESCE(json_extract(spec, '$.gpu_share'), 1.0) AS share FROM jobs "
                       f"WHERE state IN ('starting', 'running') AND owner IN ({','.join('?' * len(members))})", members)
    return as_gpus(sum(len(json.loads(r["gpu_uuids"])) * r["share"] for r in rows))


def status(store: Store, config: Config, user: str, now: float | None = None, applicable: list[Quota] | None = None) -> list[dict[str, Any]]:
    """Each applicable quota with its usage and reset time (for `mlpd quota` and messages)."""
    now = now or time.time()
    start, reset = period_bounds(now, config["quotas.period"])
    out = []
    for q in applicable if applicable is not None else quotas_for(store, config, user):
        row = {"subject": q.label, "period": config["quotas.period"], "gpu_hours_limit": q.gpu_hours or None,
               "gpu_hours_used": round(gpu_hours_used(store, q.members, start, now), 4),
               "max_gpus": q.max_gpus or None, "gpus_held": held_gpus(store, q.members),
               "period_start": start, "resets_at": reset}
        if q.resource_cap:
            uses = running_uses(store, config, q.members)
            row.update({"max_cpus": q.max_cpus, "cpus_held": sum(u.cpus for u in uses), "max_memory": q.max_memory,
                        "memory_held": sum(u.memory for u in uses), "max_jobs": q.max_jobs, "jobs_running": len(uses)})
        out.append(row)
    return out


def over_gpu_hours(store: Store, config: Config, user: str, now: float, applicable: list[Quota] | None = None) -> str | None:
    """A message if the user (or one of their teams) has used up its GPU-hours this period."""
    applicable = applicable if applicable is not None else quotas_for(store, config, user)
    applicable = [q for q in applicable if q.gpu_hours]
    if not applicable:
        return None  # the common case, and on every scheduling pass: no ledger query
    for s in status(store, config, user, now, applicable):
        if s["gpu_hours_limit"] and s["gpu_hours_used"] >= s["gpu_hours_limit"]:
            return (f"GPU-hour quota of {s['subject']} reached: {s['gpu_hours_used']:.2f} of {s['gpu_hours_limit']:g} "
                    f"GPU-hours used this {s['period']}; it resets at {format_reset(s['resets_at'])}")
    return None


def admit(store: Store, config: Config, user: str, gpus: float, now: float | None = None,
          work: Sequence[dict[str, Any]] | None = None) -> list[str]:
    """Check new work against the user's quotas: raise QuotaExceeded (refuse), or return notes (queue mode).

    `work`: the spec (its cpus and memory) of each workload it starts (a job, a workspace, each
    replica of a deployment); None = one workload with the default limits. Its CPU, memory and
    workload caps are checked whether or not it asks for GPUs (admit_resources). `gpus` counts a
    share of one GPU as its fraction (mlpd.scheduling.sharing.demand)."""
    now = now or time.time()
    notes = admit_resources(store, config, user, [{}] if work is None else list(work))
    if gpus <= 0:
        return notes
    refuse = config["quotas.over_quota"] == "refuse"
    for s in status(store, config, user, now):
        if s["max_gpus"] and gpus > s["max_gpus"] + SHARE_EPS:
            raise QuotaExceeded(f"gpus: asks for {as_gpus(gpus)} GPUs but the concurrent GPU quota of {s['subject']} is {s['max_gpus']}")
        if s["max_gpus"] and s["gpus_held"] + gpus > s["max_gpus"] + SHARE_EPS:
            message = f"concurrent GPU quota of {s['subject']}: {s['max_gpus']} GPUs at most, {s['gpus_held']} held now"
            if refuse:
                raise QuotaExceeded(message + "; wait for your running work to end, or ask an admin to raise it")
            notes.append(message + "; the job waits until GPUs are released")
    hours = over_gpu_hours(store, config, user, now)
    if hours:
        if refuse:
            raise QuotaExceeded(hours + "; ask an admin to raise it ('mlpd admin quota set')")
        notes.append(hours + "; the job is queued at the lowest priority")
    return notes
