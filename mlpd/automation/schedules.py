"""Schedules: a job spec (its code shipped once) run on a cron expression, each run an ordinary job of the owner.

`mlpd schedule add NAME --cron "0 3 * * *" [--timezone TZ] -f job.toml` (or `-- CMD...`). The worker
fires them from their own table (`fire_due`, every pass): a schedule's `last_due` is the last due
time it handled, moved forward by a compare-and-set in the same transaction that records the run
(`schedule_runs`, keyed by schedule and due time) and inserts its job, so a due time fires at most
once, across restarts and concurrent passes, and a schedule is due at most once a minute (cron's
resolution).

- Overlap (the previous run has not ended when the next is due): `skip` (default; the run is recorded
  as skipped, saying why), `queue` (the run waits for the previous one: a dependency `after PREV:any`),
  `replace` (the previous one is cancelled, the new one submitted).
- Catch-up: a due time found more than CATCH_UP_AFTER late (the daemon was down) fires once, however
  many were missed (`one`, the default), or is recorded as missed (`none`).
- A run is admitted against its owner as they are then (mlpd.automation.admission): quotas, the
  priority class, the code archive; a refused run is recorded with the reason. A schedule whose owner
  was removed stops (recorded, shown in the list).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from mlpd import jobs
from mlpd.automation import admission, cron, dependencies
from mlpd.config import Config
from mlpd.errors import MlpdError
from mlpd.jobs import NOT_ENDED_STATES
from mlpd.store import Store, record_event

log = logging.getLogger("mlpd.automation.schedules")
OVERLAP = ("skip", "queue", "replace")
CATCH_UP = ("one", "none")
LOOK_BACK = 31 * 86400.0  # seconds: how far back a restart looks for missed due times
CATCH_UP_AFTER = 60.0  # seconds: a due time found later than this was missed (the daemon was down), not just reached
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_SCHEDULES_PER_OWNER = 100


class ScheduleError(MlpdError):
    """A schedule that cannot be made or found."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_field"):
        super().__init__(status, code, message)


def check_options(name: str, cron_text: str, timezone: str, overlap: str, catch_up: str) -> None:
    """Refuse a bad name, cron expression, time zone, overlap or catch-up (ScheduleError/CronError, nothing stored)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ScheduleError("name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    cron.parse(cron_text)
    cron.zone(timezone)
    if overlap not in OVERLAP:
        raise ScheduleError(f"overlap: expected one of {', '.join(OVERLAP)}, got {str(overlap)[:40]!r}")
    if catch_up not in CATCH_UP:
        raise ScheduleError(f"catch_up: expected one of {', '.join(CATCH_UP)}, got {str(catch_up)[:40]!r}")


def create(store: Store, owner: str, name: str, cron_text: str, timezone: str, spec: dict[str, Any], overlap: str = "skip",
           catch_up: str = "one", now: float | None = None, actor: str | None = None) -> dict[str, Any]:
    """Store a schedule (spec validated by the caller, as a submit is); its first run is the first due time after now."""
    check_options(name, cron_text, timezone, overlap, catch_up)
    now = now if now is not None else time.time()
    schedule_id = secrets.token_hex(6)
    with store.write() as db:
        count = db.execute("SELECT COUNT(*) FROM schedules WHERE owner = ?", [owner]).fetchone()[0]
        if count >= MAX_SCHEDULES_PER_OWNER:
            raise ScheduleError(f"{owner} has {count} schedules, the most one member may have; remove some ('mlpd schedule rm NAME')",
                                409, "too_many")
        if db.execute("SELECT 1 FROM schedules WHERE owner = ? AND name = ?", [owner, name]).fetchone():
            raise ScheduleError(f"schedule {name!r} exists already; remove it first ('mlpd schedule rm {name}') or choose another name",
                                409, "exists")
        db.execute("""INSERT INTO schedules (id, owner, name, cron, timezone, spec, overlap, catch_up, paused, last_due, created_at, updated_at)
                      VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)""",
                   [schedule_id, owner, name, cron_text.strip(), timezone, json.dumps(spec), overlap, catch_up, now, now, now])
        record_event(db, actor or owner, "schedule.created", "schedule", schedule_id, name=name, owner=owner, cron=cron_text,
                     timezone=timezone, overlap=overlap, catch_up=catch_up)
    return must_get(store, owner, name)


def get(store: Store, owner: str, name: str) -> dict[str, Any] | None:
    """The schedule row (spec decoded), or None."""
    row = store.query_one("SELECT * FROM schedules WHERE owner = ? AND name = ?", [owner, name])
    return _decode(row) if row else None


def must_get(store: Store, owner: str, name: str) -> dict[str, Any]:
    """get() for a schedule that must be there (one just written): ScheduleError 404 if it is gone."""
    row = get(store, owner, name)
    if row is None:
        raise MlpdError(404, "not_found", f"no schedule {name!r} of {owner}")
    return row


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["spec"] = json.loads(row["spec"])
    row["paused"] = bool(row["paused"])
    return row


def list_schedules(store: Store, owner: str | None = None) -> list[dict[str, Any]]:
    """Schedules by owner and name (one owner's, or everyone's)."""
    rows = store.query("SELECT * FROM schedules" + (" WHERE owner = ?" if owner else "") + " ORDER BY owner, name", [owner] if owner else [])
    return [_decode(r) for r in rows]


def next_run(schedule: dict[str, Any], now: float) -> float | None:
    """When the schedule fires next (None: paused, stopped, or never)."""
    if schedule["paused"] or schedule["stopped"]:
        return None
    return cron.next_after(cron.parse(schedule["cron"]), max(schedule["last_due"], now - CATCH_UP_AFTER), cron.zone(schedule["timezone"]))


def runs(store: Store, schedule_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """The schedule's latest runs (fired, skipped, refused, missed), newest first, with their jobs' states."""
    return store.query("""SELECT r.due_at, r.at, r.outcome, r.detail, r.job_id, j.state AS job_state, j.reason AS job_reason
                          FROM schedule_runs r LEFT JOIN jobs j ON j.id = r.job_id WHERE r.schedule_id = ?
                          ORDER BY r.due_at DESC LIMIT ?""", [schedule_id, limit])


def job_ids(store: Store, owner: str | None, name: str) -> list[str]:
    """The ids of the jobs a schedule (of this owner; None: anyone's of that name) submitted."""
    sql = "SELECT r.job_id FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id WHERE s.name = ? AND r.job_id IS NOT NULL"
    return [r["job_id"] for r in store.query(sql + (" AND s.owner = ?" if owner else ""), [name, owner] if owner else [name])]


def code_in_use(store: Store) -> set[str]:
    """The code archives schedules run (retention keeps them: mlpd.retention)."""
    return {r["digest"] for r in store.query("SELECT DISTINCT json_extract(spec, '$.code') AS digest FROM schedules "
                                             "WHERE json_extract(spec, '$.code') IS NOT NULL")}


def set_paused(store: Store, schedule: dict[str, Any], paused: bool, actor: str, now: float | None = None) -> dict[str, Any]:
    """Pause or resume. Resuming runs at the next due time from now on: what fell due while paused is not caught up."""
    now = now if now is not None else time.time()
    with store.write() as db:
        db.execute("UPDATE schedules SET paused = ?, updated_at = ?" + ("" if paused else ", last_due = MAX(last_due, ?)") + " WHERE id = ?",
                   [int(paused), now, *([] if paused else [now]), schedule["id"]])
        record_event(db, actor, "schedule.paused" if paused else "schedule.resumed", "schedule", schedule["id"], name=schedule["name"])
    return must_get(store, schedule["owner"], schedule["name"])


def remove(store: Store, schedule: dict[str, Any], actor: str) -> None:
    """Remove the schedule (its runs' jobs stay, and keep their link in schedule_runs)."""
    with store.write() as db:
        db.execute("DELETE FROM schedules WHERE id = ?", [schedule["id"]])
        record_event(db, actor, "schedule.removed", "schedule", schedule["id"], name=schedule["name"], owner=schedule["owner"])


def run_now(store: Store, config: Config, schedule: dict[str, Any], actor: str, now: float | None = None) -> dict[str, Any]:
    """Submit one run at once, outside the cron times (the overlap rule does not apply: asked for in person).
    Returns the schedule_runs row; admission.Refused when the run cannot be submitted."""
    now = now if now is not None else time.time()
    spec, warnings = admission.admit(store, config, schedule["owner"], schedule["spec"])
    with store.write() as db:
        job_id = jobs.submit(store, schedule["owner"], spec, warnings, now=now, db=db)["id"]
        db.execute("INSERT INTO schedule_runs (schedule_id, due_at, job_id, outcome, detail, at) VALUES (?, ?, ?, 'fired', ?, ?)",
                   [schedule["id"], now, job_id, f"run now by {actor}", now])
        record_event(db, actor, "schedule.fired", "schedule", schedule["id"], name=schedule["name"], job_id=job_id, due_at=now, run_now=True)
    return {"due_at": now, "job_id": job_id, "outcome": "fired", "detail": f"run now by {actor}"}


def plan_firing(last_due: float, now: float, cron_text: str, timezone: str, catch_up: str) -> tuple[float | None, str]:
    """Pure: the due time to handle now (None: none has come) and how: "fire", "catch-up" or "missed"."""
    expr, tz = cron.parse(cron_text), cron.zone(timezone)
    # Down for longer than LOOK_BACK: what fell due before then is missed as a whole (one catch-up covers
    # it), and the search stays short (an every-minute schedule down a month: 43,200 steps).
    start = max(last_due, now - LOOK_BACK)
    latest, count = cron.latest_at_or_before(expr, start, now, tz)
    if latest is None:
        return None, ""
    if start > last_due:
        count += 1
    if count == 1 and now - latest <= CATCH_UP_AFTER:
        return latest, "fire"
    return latest, "catch-up" if catch_up == "one" else "missed"


def fire_due(store: Store, config: Config, now: float | None = None) -> tuple[int, float | None]:
    """Fire every schedule that is due (the worker, each pass): (runs submitted, the next due time of any schedule)."""
    now = now if now is not None else time.time()
    fired, soonest = 0, None
    for schedule in list_schedules(store):
        if schedule["paused"] or schedule["stopped"]:
            continue
        try:
            fired += fire_one(store, config, schedule, now)
            at = next_run(get(store, schedule["owner"], schedule["name"]) or schedule, now)
        except Exception:
            log.exception("schedule %s of %s could not fire; trying again on the next pass", schedule["name"], schedule["owner"])
            at = now + 5
        if at is not None:
            soonest = at if soonest is None else min(soonest, at)
    return fired, soonest


def fire_one(store: Store, config: Config, schedule: dict[str, Any], now: float) -> int:
    """Handle the schedule's due time if one has come: 1 when a job was submitted, else 0."""
    due, how = plan_firing(schedule["last_due"], now, schedule["cron"], schedule["timezone"], schedule["catch_up"])
    if due is None:
        return 0
    name = schedule["name"]
    if not admission.owner_is_active(store, schedule["owner"]):
        with store.write() as db:
            if db.execute("UPDATE schedules SET stopped = ?, updated_at = ? WHERE id = ? AND stopped IS NULL",
                          [f"stopped: its owner {schedule['owner']} was removed", now, schedule["id"]]).rowcount:
                record_event(db, "mlpd", "schedule.stopped", "schedule", schedule["id"], name=name, reason="owner removed")
        return 0
    if how == "missed":
        return _record(store, schedule, due, now, "missed", "missed while the daemon was down (--catch-up none)")
    label = "catch-up run: missed while the daemon was down" if how == "catch-up" else ""
    previous = store.query_one("""SELECT r.job_id, j.state FROM schedule_runs r JOIN jobs j ON j.id = r.job_id WHERE r.schedule_id = ?
                                  ORDER BY r.due_at DESC LIMIT 1""", [schedule["id"]])
    after: list[tuple[str, str]] = []
    if previous and previous["state"] in NOT_ENDED_STATES:
        prev = previous["job_id"]
        if schedule["overlap"] == "skip":
            return _record(store, schedule, due, now, "skipped", f"skipped: the previous run {prev} still runs (--overlap skip)")
        if schedule["overlap"] == "queue":
            after = [(prev, "any")]
        else:
            try:
                jobs.request_cancel(store, prev, "mlpd", f"replaced by the next run of schedule {name} (--overlap replace)")
            except jobs.JobError:
                pass  # it ended meanwhile
    try:
        spec, warnings = admission.admit(store, config, schedule["owner"], schedule["spec"])
    except MlpdError as exc:
        return _record(store, schedule, due, now, "refused", f"refused: {exc.message}")
    with store.write() as db:
        if not _advance(db, schedule, due, now):
            return 0
        waiting = dependencies.waiting_reason(store, after) if after else ""
        job_id = jobs.submit(store, schedule["owner"], spec, warnings, now=now, db=db, waiting=waiting)["id"]
        dependencies.record(db, job_id, after)
        detail = label or (f"queued after the previous run {after[0][0]} (--overlap queue)" if after else "")
        db.execute("INSERT INTO schedule_runs (schedule_id, due_at, job_id, outcome, detail, at) VALUES (?, ?, ?, ?, ?, ?)",
                   [schedule["id"], due, job_id, "catch-up" if how == "catch-up" else "fired", detail, now])
        record_event(db, "mlpd", "schedule.fired", "schedule", schedule["id"], name=name, job_id=job_id, due_at=due, catch_up=how == "catch-up")
    log.info("schedule %s of %s fired for %s: job %s", name, schedule["owner"], due, job_id)
    return 1


def _advance(db, schedule: dict[str, Any], due: float, now: float) -> bool:
    """Move the schedule's last due time to `due` if no one else has (compare-and-set); the run's row
    (primary key: schedule and due time) is the second guard."""
    done = db.execute("UPDATE schedules SET last_due = ?, updated_at = ? WHERE id = ? AND last_due = ? AND paused = 0",
                      [due, now, schedule["id"], schedule["last_due"]]).rowcount
    if done and db.execute("SELECT 1 FROM schedule_runs WHERE schedule_id = ? AND due_at = ?", [schedule["id"], due]).fetchone():
        return False
    return bool(done)


def _record(store: Store, schedule: dict[str, Any], due: float, now: float, outcome: str, detail: str) -> int:
    """Record a due time handled without a job (skipped, refused, missed), with its event; 0."""
    with store.write() as db:
        if not _advance(db, schedule, due, now):
            return 0
        db.execute("INSERT INTO schedule_runs (schedule_id, due_at, job_id, outcome, detail, at) VALUES (?, ?, NULL, ?, ?, ?)",
                   [schedule["id"], due, outcome, detail, now])
        record_event(db, "mlpd", f"schedule.{outcome}", "schedule", schedule["id"], name=schedule["name"], due_at=due, reason=detail)
    log.info("schedule %s of %s: %s", schedule["name"], schedule["owner"], detail)
    return 0
