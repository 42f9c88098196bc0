"""Schedules and sweeps: work that runs itself (see mlpd.automation). Dependencies ride on POST /jobs (`after`)."""

from __future__ import annotations

import time

from flask import g, jsonify, request

from mlpd.automation import schedules
from mlpd.jobspec import SpecError, parse_spec
from mlpd.web import config, store
from mlpd.web.api_jobs import check_admission, check_disk, check_priority_class, wake
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body

area = Area("automation")  # registered by the app factory (mlpd.web.create_app)
route = area.route

SCHEDULE_BODY = {
    "name": Field(str, True, "1-64 letters, digits, '.', '_' or '-'"),
    "cron": Field(str, True, "five-field cron expression (minute hour day-of-month month day-of-week), e.g. '0 3 * * *'"),
    "timezone": Field(str, doc="IANA time zone the cron times are read in (default UTC)"),
    "spec": Field(dict, True, "the job spec each run submits (as POST /jobs takes it; its code archive is reused by every run)"),
    "overlap": Field(str, doc="when the previous run still runs: skip (default), queue or replace"),
    "catch_up": Field(str, doc="due times missed while the daemon was down: one (default: one run at start) or none"),
}


def owner_arg() -> str:
    """Whose schedules a request addresses: the caller's; admins may name another's with ?owner=."""
    other = request.args.get("owner")
    if other and other != g.user.name:
        if not g.user.is_admin:
            raise ApiError(404, "not_found", "no such schedule")
        return other
    return g.user.name


def _schedule(name: str) -> dict:
    schedule = schedules.get(store(), owner_arg(), name)
    if schedule is None:
        raise ApiError(404, "not_found", f"no schedule {name!r}; 'mlpd schedule' lists yours")
    return schedule


def schedule_view(s: dict, now: float | None = None) -> dict:
    """The stable JSON form of a schedule."""
    now = now if now is not None else time.time()
    last = store().query_one("""SELECT r.due_at, r.outcome, r.job_id, j.state FROM schedule_runs r LEFT JOIN jobs j ON j.id = r.job_id
                                WHERE r.schedule_id = ? ORDER BY r.due_at DESC LIMIT 1""", [s["id"]])
    return {"id": s["id"], "name": s["name"], "owner": s["owner"], "cron": s["cron"], "timezone": s["timezone"],
            "overlap": s["overlap"], "catch_up": s["catch_up"], "paused": s["paused"], "stopped": s["stopped"],
            "next_run": schedules.next_run(s, now), "command": s["spec"]["command"], "spec": s["spec"],
            "created_at": s["created_at"], "last_run": last}


@route("/schedules", summary="List schedules (yours; admins ?all=1)")
def list_schedules():
    owner = None if (g.user.is_admin and request.args.get("all")) else g.user.name
    now = time.time()
    return jsonify({"schedules": [schedule_view(s, now) for s in schedules.list_schedules(store(), owner)]})


@route("/schedules", methods=("POST",), summary="Make a schedule: a job spec run on a cron expression, each run a job of yours",
       body=SCHEDULE_BODY)
def create_schedule():
    data = json_body()
    timezone = data.get("timezone") or "UTC"
    overlap, catch_up = data.get("overlap") or "skip", data.get("catch_up") or "one"
    schedules.check_options(data["name"], data["cron"], timezone, overlap, catch_up)
    try:
        spec, warnings = parse_spec(data["spec"])
    except SpecError as exc:
        raise ApiError(400, "invalid_field", f"spec.{exc}") from None
    check_admission(spec)  # what the host can never run, and the code archive: once, here
    check_priority_class(spec)
    check_disk()
    s = schedules.create(store(), g.user.name, data["name"], data["cron"], timezone, spec.to_dict(), overlap, catch_up)
    wake("schedule created")  # the worker's next due time moves
    return jsonify({"schedule": schedule_view(s), "warnings": warnings}), 201


@route("/schedules/<name>", summary="One schedule with its latest runs (admins: ?owner=)")
def show_schedule(name: str):
    s = _schedule(name)
    view = schedule_view(s)
    view["runs"] = schedules.runs(store(), s["id"])
    return jsonify({"schedule": view})


@route("/schedules/<name>/pause", methods=("POST",), summary="Pause a schedule: nothing fires until it is resumed")
def pause_schedule(name: str):
    return jsonify({"schedule": schedule_view(schedules.set_paused(store(), _schedule(name), True, g.user.name))})


@route("/schedules/<name>/resume", methods=("POST",), summary="Resume a schedule from the next due time (what fell due while paused is not caught up)")
def resume_schedule(name: str):
    s = schedules.set_paused(store(), _schedule(name), False, g.user.name)
    wake("schedule resumed")
    return jsonify({"schedule": schedule_view(s)})


@route("/schedules/<name>/run-now", methods=("POST",), summary="Submit one run of a schedule now (a job of its owner)")
def run_schedule_now(name: str):
    from mlpd.automation.admission import Refused

    s = _schedule(name)
    check_disk()
    try:
        run = schedules.run_now(store(), config(), s, g.user.name)
    except Refused as exc:
        raise ApiError(exc.status, exc.code, f"schedule {name}: {exc.message}") from None
    wake(f"submitted {run['job_id']}")
    return jsonify({"run": run}), 201


@route("/schedules/<name>", methods=("DELETE",), summary="Remove a schedule (its runs' jobs stay)")
def remove_schedule(name: str):
    s = _schedule(name)
    schedules.remove(store(), s, g.user.name)
    return jsonify({"removed": s["name"], "owner": s["owner"]})
