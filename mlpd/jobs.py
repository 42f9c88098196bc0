"""Training jobs: states, transitions and queries over the state database.

Every transition is a compare-and-set inside one BEGIN IMMEDIATE transaction
that also writes its event row, so concurrent actors (the API cancelling, the
controller finishing) can never both win.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import time
from typing import Any, Iterable, Protocol

from mlpd.errors import MlpdError
from mlpd.store import Store, record_event
from mlpd.termsafe import strip_controls


class JobState(str, enum.Enum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    PREEMPTED = "preempted"  # stopped for work of a higher class; queued again at once (a new attempt)
    WAITING = "waiting"  # not in the queue yet: waits for other jobs to end, or for its sweep's turn (mlpd.automation)


ACTIVE = (JobState.STARTING, JobState.RUNNING)
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.LOST)
STATE_NAMES = tuple(s.value for s in JobState)
# The named sets of state names (strings, as rows, the API, templates and the page script have them),
# defined here once: everything else imports these rather than spelling states out again.
TERMINAL_STATES = frozenset(s.value for s in TERMINAL)  # ended for good
ACTIVE_STATES = frozenset(s.value for s in ACTIVE)  # holds its GPUs: starting or running
QUEUED_OR_ACTIVE_STATES = frozenset({JobState.QUEUED.value, *ACTIVE_STATES})  # what people call "active" in lists
NOT_ENDED_STATES = frozenset(STATE_NAMES) - TERMINAL_STATES  # waiting, queued, starting, running, or preempted (queued again)
WAITING_STATES = frozenset({JobState.WAITING.value})  # submitted, not yet in the queue (mlpd.automation releases it)

# The state machine: which state may follow which. Every change of state goes through
# transition(), which allows exactly these (a compare-and-set on the state the table allows
# before the target), so no caller keeps its own list. Who causes each: a member (or admin)
# cancels a queued job; everything else is the controller's, from what the runtime reports.
# A preempted job is neither active nor ended: its attempt ended (booked, container removed) and
# it goes back to the queue with its history, as its next attempt. A waiting job is not in the
# queue yet: mlpd.automation queues it when the jobs it needs have ended (or cancels it when one
# failed), or when its sweep has room.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.WAITING: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.STARTING, JobState.CANCELLED}),
    JobState.STARTING: frozenset({JobState.RUNNING, *TERMINAL}),
    JobState.RUNNING: frozenset({*TERMINAL, JobState.PREEMPTED}),
    JobState.PREEMPTED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    **{state: frozenset() for state in TERMINAL},
}


def may_follow(to: JobState) -> tuple[JobState, ...]:
    """The states a job may be in for a transition to `to`."""
    return tuple(state for state, nexts in TRANSITIONS.items() if to in nexts)


def classify_exit(exit_code: int | None, oom_killed: bool, error: str, started: float | None, ended: float,
                  limit: float | None, cancelled_by: str | None, memory: int | None, cancel_reason: str | None = None,
                  preempted: str | None = None) -> tuple[JobState, str]:
    """How a job ended, from the runtime's account: its final state and the reason people read.

    A cancel, a preemption (`preempted`: why it was asked for) or a time limit is recorded as the
    cause when mlpd stopped the workload (its exit code is then the signal's, or the one its
    checkpointing handler chose); otherwise an OOM kill, a clean exit or a failure with its code.
    """
    from mlpd.units import format_bytes, format_duration

    if cancelled_by:
        return JobState.CANCELLED, cancel_reason or f"cancelled by {cancelled_by}"
    if preempted:
        return JobState.PREEMPTED, preempted
    if limit and started and ended - started >= limit - 0.5:
        return JobState.TIMED_OUT, f"stopped after its time limit of {format_duration(limit)}"
    if oom_killed:
        what = f" (limit {format_bytes(memory)})" if memory else ""
        return JobState.FAILED, f"out of memory: the container was OOM-killed{what}"
    if exit_code == 0:
        return JobState.SUCCEEDED, "exited with code 0"
    return JobState.FAILED, f"exited with code {exit_code}" + (f" ({error})" if error else "")


class JobError(MlpdError):
    """A job operation that cannot be done (a job already ended, not found)."""


def new_job_id() -> str:
    return secrets.token_hex(6)


class Spec(Protocol):
    """What the state table keeps of a workload's spec (a kind's spec, e.g. mlpd.kinds.jobspec.JobSpec)."""
    @property
    def name(self) -> str | None: ...
    @property
    def priority(self) -> int: ...

    def to_dict(self) -> dict[str, Any]: ...


def submit(store: Store | None, owner: str, spec: Spec, warnings: Iterable[str] = (), now: float | None = None,
           kind: str | None = None, workload: str | None = None, db=None, waiting: str = "") -> dict[str, Any]:
    """Queue a workload; returns its row. A job is its own workload; a workspace's session or a
    deployment's replica names its workspace or deployment (workload). With db, inside that
    transaction (the caller reads the row afterwards). With `waiting` (why, e.g. "waiting for job
    X"), the job is held out of the queue in the waiting state until mlpd.automation queues it."""
    from mlpd.kinds.base import kind_of

    kind = kind_of(kind).name  # an unknown kind is a bug of its caller: KeyError naming the known ones
    now = now or time.time()
    job_id = new_job_id()
    state = JobState.WAITING if waiting else JobState.QUEUED

    def insert(db) -> None:
        db.execute(
            """INSERT INTO jobs (id, owner, name, spec, state, reason, priority, submitted_at, updated_at, kind, workload)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [job_id, owner, spec.name, json.dumps(spec.to_dict()), state.value, waiting, spec.priority, now, now, kind, workload],
        )
        record_event(db, owner, f"job.{state.value}", "job", job_id, at=now, warnings=list(warnings), kind=kind, workload=workload,
                     **({"reason": waiting} if waiting else {}))

    if db is not None:
        insert(db)
        return {"id": job_id}
    assert store is not None, "submit() needs a store or a db"
    with store.write() as db:
        insert(db)
    return must_get(store, job_id)


def get(store: Store, job_id: str) -> dict[str, Any] | None:
    """The job row with its spec decoded, or None."""
    row = store.query_one("SELECT * FROM jobs WHERE id = ?", [job_id])
    return _decode(row) if row else None


def must_get(store: Store, job_id: str) -> dict[str, Any]:
    """get() for a job that must be there (one just written): JobError 404 if it is gone."""
    job = get(store, job_id)
    if job is None:
        raise JobError(404, "not_found", f"no job {job_id}")
    return job


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["spec"] = json.loads(row["spec"])
    row["gpu_uuids"] = json.loads(row["gpu_uuids"])
    row["gpu_indices"] = json.loads(row["gpu_indices"])
    return row


def visible(store: Store, job_id: str, user_name: str, is_admin: bool) -> dict[str, Any] | None:
    """The job if this user may see it (their own, or any for admins); None otherwise, as if absent."""
    job = get(store, job_id)
    if job is None or (not is_admin and job["owner"] != user_name):
        return None
    return job


def list_jobs(store: Store, owner: str | Iterable[str] | None = None, states: Iterable[str] = (), limit: int = 200,
              kinds: Iterable[str] | None = ()) -> list[dict[str, Any]]:
    """Jobs newest first, optionally one owner's (or several owners', a viewer's teams: mlpd.roles) and
    in some states: workloads of `kinds`, by default those listed with jobs (Kind.listed_with_jobs);
    None for every kind."""
    from mlpd.kinds.base import names

    where, params = [], []
    if kinds is not None:
        kinds = list(kinds) or list(names("listed_with_jobs"))
        where.append(f"kind IN ({','.join('?' * len(kinds))})")
        params += kinds
    if isinstance(owner, str) and owner:
        where.append("owner = ?")
        params.append(owner)
    elif owner is not None and not isinstance(owner, str):
        owners = sorted(owner)
        where.append(f"owner IN ({','.join('?' * len(owners))})" if owners else "0")
        params += owners
    states = list(states)
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        params += states
    sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY submitted_at DESC LIMIT ?"
    return [_decode(r) for r in store.query(sql, params + [limit])]


def in_states(store: Store, states: Iterable[JobState]) -> list[dict[str, Any]]:
    """All jobs in the given states, oldest first."""
    names = [s.value for s in states]
    return [_decode(r) for r in store.query(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(names))}) ORDER BY submitted_at", names)]


def transition(store: Store, job_id: str, to: JobState, actor: str = "mlpd", reason: str = "", at: float | None = None,
               only_from: Iterable[JobState] | None = None, **fields: Any) -> bool:
    """Move a job to `to` if TRANSITIONS allows it from its current state (compare-and-set, one
    transaction with its event and ledger rows); False when the job is in another state.
    only_from narrows the allowed states further (never widens them)."""
    at = at if at is not None else time.time()
    reason = strip_controls(reason)  # a reason may quote the job's own output (pip's, the container's): text, not commands
    allowed = [s.value for s in may_follow(to) if only_from is None or s in set(only_from)]
    sets = {"state": to.value, "updated_at": time.time(), **fields}
    if reason:
        sets["reason"] = reason
    for key in ("gpu_uuids", "gpu_indices", "gpu_models"):
        if key in sets:
            sets[key] = json.dumps(list(sets[key]))
    with store.write() as db:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
        if not row or row[0] not in allowed:
            return False
        assignments = ", ".join(f"{k} = ?" for k in sets)
        db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", [*sets.values(), job_id])
        _book_allocations(db, job_id, to)
        if to in TERMINAL or to == JobState.PREEMPTED:  # a job's credentials end with its attempt
            _revoke_job_tokens(db, job_id, at)
        detail = {k: v for k, v in fields.items() if k in ("exit_code", "gpu_uuids", "gpu_indices", "started_at", "ended_at")}
        record_event(db, actor, f"job.{to.value}", "job", job_id, at=at, reason=reason, **detail)
    return True


def set_reason(store: Store, job_id: str, reason: str, event: str = "", **detail: Any) -> None:
    """Say what a starting job is doing (e.g. building its environment), and record it as an event if named."""
    reason = strip_controls(reason)
    with store.write() as db:
        db.execute("UPDATE jobs SET reason = ?, updated_at = ? WHERE id = ? AND state = 'starting'", [reason, time.time(), job_id])
        if event:
            record_event(db, "mlpd", event, "job", job_id, **detail)


def job_token_label(job_id: str) -> str:
    """The label of the token a job's container gets (MLflow and API calls as the job's owner)."""
    return f"job:{job_id}"


def _revoke_job_tokens(db, job_id: str, at: float) -> None:
    db.execute("UPDATE tokens SET revoked_at = ? WHERE job_id = ? AND revoked_at IS NULL", [at, job_id])


def create_job_token(store: Store, job: dict[str, Any]) -> str:
    """Mint the token a job's container gets: its owner's, scoped to the job, dead when the job ends."""
    from mlpd.users import create_token

    token, _ = create_token(store, job["owner"], label=job_token_label(job["id"]), actor="mlpd", job_id=job["id"])
    return token


def revoke_job_tokens(store: Store, job_id: str) -> None:
    """Revoke the job's container token(s); idempotent. A job's credentials end with the job."""
    with store.write() as db:
        _revoke_job_tokens(db, job_id, time.time())


def _book_allocations(db, job_id: str, state: JobState) -> None:
    """Keep the GPU ledger in step with the job, in the same transaction as its transition.

    Rows open when the job runs (Docker's start time) and close when it ends or is preempted
    (Docker's end time); each attempt of a preempted job has rows of its own. UNIQUE (kind,
    object_id, attempt, gpu_uuid) and the compare-and-set transition make a repeated or replayed
    pass a no-op, so a restart never books twice or leaves a gap.
    """
    row = db.execute("SELECT owner, gpu_uuids, gpu_indices, gpu_models, started_at, ended_at, kind, attempts, "
                     "COALESCE(json_extract(spec, '$.gpu_share'), 1.0) FROM jobs WHERE id = ?", [job_id]).fetchone()
    owner, uuids, indices, models, started, ended = row[0], json.loads(row[1]), json.loads(row[2]), json.loads(row[3]), row[4], row[5]
    kind, attempt, share = row[6], row[7], row[8]  # share: the part of each GPU it holds (mlpd.scheduling.sharing)
    if not uuids or started is None or state not in (JobState.RUNNING, JobState.PREEMPTED, *TERMINAL):
        return
    models = models or ["unknown"] * len(uuids)
    for uuid, index, model in zip(uuids, indices, models, strict=False):
        db.execute("INSERT OR IGNORE INTO allocations (owner, kind, object_id, attempt, gpu_uuid, gpu_index, gpu_model, start, share) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [owner, kind, job_id, attempt, uuid, index, model, started, share])
    if state != JobState.RUNNING:
        db.execute("UPDATE allocations SET end = ?, start = ? WHERE kind = ? AND object_id = ? AND attempt = ? AND end IS NULL",
                   [max(ended or started, started), started, kind, job_id, attempt])


def request_preemption(store: Store, job_id: str, reason: str, for_job: str, at: float | None = None) -> bool:
    """Mark a running job for preemption (the controller then signals it, and stops it after the
    grace period); False when it is no longer running, or already being cancelled or preempted."""
    at = at if at is not None else time.time()
    with store.write() as db:
        done = db.execute("UPDATE jobs SET preempt_requested_at = ?, preempt_reason = ?, updated_at = ? WHERE id = ? AND state = 'running' "
                          "AND preempt_requested_at IS NULL AND cancel_requested_by IS NULL", [at, reason, time.time(), job_id]).rowcount
        if done:
            record_event(db, "mlpd", "job.preempt_requested", "job", job_id, at=at, reason=reason, for_job=for_job)
    return bool(done)


def requeue(store: Store, job_id: str, at: float | None = None) -> bool:
    """Queue a preempted job again as its next attempt, keeping its history, id, outputs and place
    in the queue (its submit time); False when it is not preempted (already requeued, cancelled)."""
    row = store.query_one("SELECT attempts FROM jobs WHERE id = ?", [job_id])
    if row is None:
        return False
    attempt = row["attempts"] + 1
    return transition(store, job_id, JobState.QUEUED, reason=f"queued again after preemption, for attempt {attempt}", at=at,
                      only_from=[JobState.PREEMPTED], attempts=attempt, gpu_uuids=[], gpu_indices=[], gpu_models=[], started_at=None,
                      ended_at=None, exit_code=None, container_id=None, preempt_requested_at=None, reserved_at=None)


def preemptions(history_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """When and why the job was preempted, from its history: [{"at", "attempt", "reason"}], oldest first."""
    out: list[dict[str, Any]] = []
    for event in history_rows:
        if event["action"] == "job.preempted":
            out.append({"at": event["at"], "attempt": len(out) + 1, "reason": event["detail"].get("reason", "")})
    return out


def request_cancel(store: Store, job_id: str, actor: str, reason: str | None = None) -> dict[str, Any]:
    """Cancel: a queued job ends at once; a starting or running one is stopped by the controller.
    reason, when given, is what people read instead of 'cancelled by ACTOR' (e.g. 'culled: idle 4h')."""
    now = time.time()
    if transition(store, job_id, JobState.CANCELLED, actor=actor, reason=reason or f"cancelled by {actor} before it started", at=now,
                  only_from=[JobState.WAITING, JobState.QUEUED, JobState.PREEMPTED], ended_at=now, cancel_requested_by=actor,
                  cancel_reason=reason):
        return must_get(store, job_id)
    with store.write() as db:
        row = db.execute("SELECT state FROM jobs WHERE id = ?", [job_id]).fetchone()
        if not row:
            raise JobError(404, "not_found", f"no such job {job_id!r}")
        state = row[0]
        if state in (JobState.STARTING.value, JobState.RUNNING.value):
            db.execute("UPDATE jobs SET cancel_requested_by = ?, cancel_reason = ?, updated_at = ? WHERE id = ? AND cancel_requested_by IS NULL",
                       [actor, reason, now, job_id])
            record_event(db, actor, "job.cancel_requested", "job", job_id, at=now, reason=reason)
        else:
            raise JobError(409, "already_ended", f"job {job_id} already ended ({state})")
    return must_get(store, job_id)


def history(store: Store, job_id: str) -> list[dict[str, Any]]:
    """The job's events, oldest first."""
    rows = store.query("SELECT at, actor, action, detail FROM events WHERE object_kind = 'job' AND object_id = ? ORDER BY id", [job_id])
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return rows


def job_dir(state_dir: str, job_id: str) -> str:
    """Where a job's log and outputs live; kept after its container is removed."""
    return os.path.join(state_dir, "jobs", job_id)


def grant_code(store: Store, digest: str, owner: str) -> None:
    """Record that owner uploaded the archive with this digest (idempotent): it is theirs to run."""
    with store.write() as db:
        db.execute("INSERT OR IGNORE INTO code_owners (digest, owner, created_at) VALUES (?, ?, ?)", [digest, owner, time.time()])


def holds_code(store: Store, digest: str, owner: str) -> bool:
    """Whether owner uploaded this archive. Archives are stored once by content, but a digest seen
    elsewhere (a run's tags) is not a key: only someone who sent the bytes may run them."""
    return store.query_one("SELECT 1 FROM code_owners WHERE digest = ? AND owner = ?", [digest, owner]) is not None


def code_dir(state_dir: str, digest: str) -> str:
    """The extracted code archive with this sha256 digest."""
    return os.path.join(state_dir, "code", digest)
