"""Dependencies between jobs: `mlpd run --after ID[:ok|:any]` (repeatable) and `after = [...]` in a job file.

A job with dependencies is submitted in the `waiting` state ("waiting for job X") and enters the
queue when every job it needs has ended: with `ok` (the default) that job must have succeeded,
with `any` any end will do. When a job it needs with `ok` ends otherwise (failed, cancelled, timed
out, lost), it is cancelled, and its reason names that job and how it ended. Only existing jobs
the submitter may see can be named, so a cycle cannot be built: a job can only wait for older ones.
"""

from __future__ import annotations

import re
import time
from typing import Any, Iterable

from mlpd import jobs
from mlpd.errors import MlpdError
from mlpd.jobs import TERMINAL_STATES, JobState
from mlpd.store import Store

CONDITIONS = ("ok", "any")
MAX_DEPENDENCIES = 32
_REF = re.compile(r"([0-9a-f]{12})(?::(ok|any))?")


class DependencyError(MlpdError):
    """A dependency that cannot be recorded: malformed, unknown, named twice."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_field"):
        super().__init__(status, code, message)


def parse_after(value: Any) -> list[tuple[str, str]]:
    """[(job id, "ok"|"any")] from a list of "ID[:ok|:any]" strings (the API body's and a job file's `after`)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise DependencyError(f"after: expected a list of job ids (ID, ID:ok or ID:any), got {type(value).__name__}")
    if len(value) > MAX_DEPENDENCIES:
        raise DependencyError(f"after: at most {MAX_DEPENDENCIES} jobs, got {len(value)}")
    out: list[tuple[str, str]] = []
    for item in value:
        m = _REF.fullmatch(item) if isinstance(item, str) else None
        if not m:
            shown = repr(item)[:40]
            raise DependencyError(f"after: {shown} is not a job id with an optional condition (12 hex characters, then :ok or :any; "
                                  "e.g. 3f2a9c1b7d4e:any)")
        if any(job_id == m.group(1) for job_id, _ in out):
            raise DependencyError(f"after: job {m.group(1)} is named twice")
        out.append((m.group(1), m.group(2) or "ok"))
    return out


def check_visible(store: Store, after: Iterable[tuple[str, str]], user: str, is_admin: bool) -> None:
    """Refuse a job that does not exist or that the submitter may not see (404, as if absent), and a
    workspace's session or a deployment's replica (a row that runs another workload, not a job of its own)."""
    for job_id, _ in after:
        job = jobs.visible(store, job_id, user, is_admin)
        if job is None or job["workload"] is not None:
            raise DependencyError(f"after: no such job {job_id!r}", 404, "not_found")


def waiting_reason(store: Store, after: list[tuple[str, str]]) -> str:
    """What a job with these dependencies waits for, in words ("waiting for job X" or "... for jobs X, Y")."""
    ids = [job_id for job_id, _ in after]
    rows = {r["id"]: r["state"] for r in store.query(f"SELECT id, state FROM jobs WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else {}
    pending = [job_id for job_id in ids if rows.get(job_id) not in TERMINAL_STATES] or ids
    return f"waiting for job{'s' if len(pending) > 1 else ''} {', '.join(pending)}"


def record(db, job_id: str, after: Iterable[tuple[str, str]]) -> None:
    """Record a job's dependencies, inside the transaction that inserts the job."""
    for after_id, condition in after:
        db.execute("INSERT INTO job_dependencies (job_id, after_id, condition) VALUES (?, ?, ?)", [job_id, after_id, condition])


def of(store: Store, job_id: str) -> list[dict[str, Any]]:
    """The jobs a job waits for (or waited for), with their states: [{"job", "condition", "state"}]."""
    return store.query("""SELECT d.after_id AS job, d.condition, j.state FROM job_dependencies d LEFT JOIN jobs j ON j.id = d.after_id
                          WHERE d.job_id = ? ORDER BY d.rowid""", [job_id])


def verdict(needs: list[dict[str, Any]]) -> tuple[str, str]:
    """What to do with a waiting job, from the jobs it needs (each {"job", "condition", "state", "reason"}):
    ("queue", ""), ("cancel", why) or ("wait", what for). Pure."""
    for need in needs:
        if need["condition"] == "ok" and need["state"] in TERMINAL_STATES and need["state"] != JobState.SUCCEEDED.value:
            how = need["state"].replace("_", " ") + (f": {need['reason']}" if need.get("reason") else "")
            return "cancel", f"cancelled: job {need['job']} it needed (--after {need['job']}:ok) {how}"
        if need["state"] is None:  # removed from the database: nothing left to wait for
            return "cancel", f"cancelled: job {need['job']} it needed no longer exists"
    pending = [n["job"] for n in needs if n["state"] not in TERMINAL_STATES]
    if pending:
        return "wait", f"waiting for job{'s' if len(pending) > 1 else ''} {', '.join(pending)}"
    return "queue", ""


def release(store: Store, now: float | None = None) -> list[str]:
    """Queue the waiting jobs whose dependencies have all ended as they need, cancel those whose
    dependencies failed, and keep the others' reasons current; returns the ids queued or cancelled.
    Waiting jobs without dependencies (sweep trials) are left to their sweep."""
    now = now if now is not None else time.time()
    rows = store.query("""SELECT d.job_id, d.after_id AS job, d.condition, j.state, j.reason, w.reason AS waiting_reason
                          FROM job_dependencies d JOIN jobs w ON w.id = d.job_id LEFT JOIN jobs j ON j.id = d.after_id
                          WHERE w.state = ? ORDER BY d.job_id, d.rowid""", [JobState.WAITING.value])
    by_job: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_job.setdefault(r["job_id"], []).append(r)
    changed = []
    for job_id, needs in by_job.items():
        action, why = verdict(needs)
        if action == "cancel":
            if jobs.transition(store, job_id, JobState.CANCELLED, reason=why, at=now, only_from=[JobState.WAITING], ended_at=now,
                               cancel_requested_by="mlpd", cancel_reason=why):
                changed.append(job_id)
        elif action == "queue":
            if jobs.transition(store, job_id, JobState.QUEUED, reason="", at=now, only_from=[JobState.WAITING]):
                changed.append(job_id)
        elif why != needs[0]["waiting_reason"]:
            with store.write() as db:
                db.execute("UPDATE jobs SET reason = ? WHERE id = ? AND state = ?", [why, job_id, JobState.WAITING.value])
    return changed


def submit(store: Store, owner: str, spec, warnings: list[str], after: list[tuple[str, str]]) -> dict[str, Any]:
    """Submit a job that waits for `after` (checked already with check_visible): the job row, its
    dependencies and its event in one transaction. Without dependencies, an ordinary submit."""
    if not after:
        return jobs.submit(store, owner, spec, warnings)
    reason = waiting_reason(store, after)
    with store.write() as db:
        job_id = jobs.submit(store, owner, spec, warnings, db=db, waiting=reason)["id"]
        record(db, job_id, after)
    return jobs.must_get(store, job_id)
