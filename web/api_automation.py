"""Schedules and sweeps: work that runs itself (see mlpd.automation). Dependencies ride on POST /jobs (`after`)."""

from __future__ import annotations

import time

from flask import g, jsonify, request

from mlpd.automation import schedules
from mlpd.kinds.jobspec import SpecError, parse_spec
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


# ---------------------------------------------------------------- sweeps

SWEEP_BODY = {
    "command": Field(list, True, "the command, with {name} where each parameter's value goes"),
    "params": Field(dict, True, "name -> a list of values (a grid; the choices of a random sweep) or 'uniform:A:B', "
                                "'loguniform:A:B', 'int:A:B' (random sweeps)"),
    "random": Field(int, doc="draw this many trials at random instead of the grid"),
    "seed": Field(int, doc="the random generator's seed (the same seed, the same trials; recorded when not given)"),
    "parallel": Field(int, doc="at most this many trials queued or running at once (default 1)"),
    "metric": Field(str, doc="the MLflow metric that ranks the trials"),
    "goal": Field(str, doc="max (default) or min"),
    "name": Field(str, doc="a name for the sweep (its MLflow parent run and its trials' names)"),
    "spec": Field(dict, doc="the rest of each trial's job spec (image, gpus, code, env, experiment, ...), as POST /jobs takes it"),
    "yes": Field(bool, doc="confirm a sweep of more than 1,000 trials"),
    "stop_after_steps": Field(int, doc="early stopping by the median rule: a running trial whose best metric up to this step is "
                                       "worse than the median of the other trials' there is stopped"),
}


def run_status(state: str) -> str:
    """The MLflow status of a run whose trial ended in `state`."""
    from mlpd.jobs import JobState

    return {JobState.SUCCEEDED.value: "FINISHED", JobState.CANCELLED.value: "KILLED"}.get(state, "FAILED")


def _tracking_db():
    from flask import current_app

    from mlpd.tracking.server import TrackingDb

    if "mlpd.tracking_db" not in current_app.extensions:
        current_app.extensions["mlpd.tracking_db"] = TrackingDb(config().state_dir)
    return current_app.extensions["mlpd.tracking_db"]


def _sweep(sweep_id: str) -> dict:
    from mlpd.automation import sweeps

    sweep = sweeps.get(store(), sweep_id)
    if sweep is None or (sweep["owner"] != g.user.name and not g.user.is_admin):
        raise ApiError(404, "not_found", f"no sweep {sweep_id!r}; 'mlpd sweep list' lists yours")
    return sweep


def sweep_view(s: dict, states: dict | None = None) -> dict:
    """The stable JSON form of a sweep (without its trials)."""
    d = s["definition"]
    return {"id": s["id"], "name": s["name"], "owner": s["owner"], "parallel": s["parallel"], "metric": s["metric"], "goal": s["goal"],
            "experiment": s["experiment"], "parent_run_id": s["parent_run_id"], "created_at": s["created_at"],
            "cancelled_at": s["cancelled_at"], "command": d["command"], "params": d["params"], "random": d["random"], "seed": d["seed"],
            "stop_after_steps": d.get("stop_after_steps"),
            **({"states": states} if states is not None else {})}


@route("/sweeps", summary="List sweeps, newest first (yours; admins ?all=1), with their trials' states")
def list_sweeps():
    from mlpd.automation import sweeps

    owner = None if (g.user.is_admin and request.args.get("all")) else g.user.name
    return jsonify({"sweeps": [sweep_view(s, s["states"]) for s in sweeps.list_sweeps(store(), owner)]})


@route("/sweeps", methods=("POST",), summary="Start a sweep: one job per trial over a grid or random parameters, at most `parallel` at once",
       body=SWEEP_BODY)
def create_sweep():
    import secrets

    from mlpd.scheduling import quotas

    from mlpd.tracking import server as tracking
    from mlpd.automation import sweeps

    data = json_body()
    p = sweeps.plan(data, yes=bool(data.get("yes")))
    base = dict(data.get("spec") or {})
    for key in ("command", "name"):
        if key in base:
            raise ApiError(400, "invalid_field", f"spec.{key}: the sweep sets each trial's {key}; give it as the sweep's {key}")
    try:
        spec, warnings = parse_spec({**base, "command": sweeps.fill(p.command, p.trials[0])})
    except SpecError as exc:
        raise ApiError(400, "invalid_field", f"spec.{exc}") from None
    check_admission(spec)
    check_priority_class(spec)
    check_disk()
    warnings += quotas.admit(store(), config(), g.user.name, spec.gpu_demand, work=[{"cpus": spec.cpus, "memory": spec.memory}])
    experiment = spec.experiment or config()["mlflow.default_experiment"].format(owner=g.user.name)
    sweep_id = secrets.token_hex(6)
    try:
        parent, children = tracking.create_sweep_runs(config().state_dir, g.user.name, experiment, sweep_id, p.name, p.trials, p.metric, p.goal)
    except tracking.TrackingError as exc:
        raise ApiError(503, "tracking_unavailable", str(exc)) from None
    sweeps.create(store(), g.user.name, p, {k: v for k, v in spec.to_dict().items() if k not in ("command", "name")}, experiment, parent,
                  children, sweep_id=sweep_id)
    trial_rows = sweeps.trials(store(), sweep_id)
    try:
        tracking.tag_runs(config().state_dir, {t["run_id"]: {"mlpd.job_id": t["job_id"]} for t in trial_rows if t["run_id"]})
    except Exception as exc:  # the runs work without the tag; 'jobs show' then misses the link
        current_app_logger().warning("tagging sweep %s's runs with their jobs failed: %s", sweep_id, exc)
    wake(f"sweep {sweep_id}")
    return jsonify({"sweep": sweep_view(sweeps.get(store(), sweep_id)), "trials": len(trial_rows), "warnings": warnings}), 201


def current_app_logger():
    from flask import current_app

    return current_app.logger


@route("/sweeps/<sweep_id>", summary="One sweep with its trials, best first by its metric (read from MLflow)")
def show_sweep(sweep_id: str):
    from mlpd.automation import sweeps

    s = _sweep(sweep_id)
    rows = sweeps.trials(store(), s["id"])
    run_ids = [r["run_id"] for r in rows if r["run_id"]]
    values = _tracking_db().latest_metric(run_ids, s["metric"]) if s["metric"] else {}
    statuses = _tracking_db().run_statuses(run_ids + ([s["parent_run_id"]] if s["parent_run_id"] else []))
    _end_finished_runs(s, rows, statuses)
    out = []
    for r in rows:
        run = statuses.get(r["run_id"]) if r["run_id"] else None
        out.append({"trial": r["trial"], "job_id": r["job_id"], "state": r["state"], "reason": r["reason"], "params": r["params"],
                    "run_id": r["run_id"], "metric": values.get(r["run_id"]),
                    "run_url": f"{request.host_url.rstrip('/')}/mlflow/#/experiments/{run[1]}/runs/{r['run_id']}" if run else None})
    states: dict = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    ranked = sweeps.ranked(out, s["goal"])
    best = ranked[0] if ranked and ranked[0]["metric"] is not None else None
    return jsonify({"sweep": {**sweep_view(s, states), "trials": ranked, "best": best}})


def _end_finished_runs(s: dict, rows: list[dict], statuses: dict) -> None:
    """Runs of trials that ended without their code ending them (never ran, failed first) are ended here, and the parent
    once every trial has ended: MLflow then shows them as what they are, not as running forever."""
    from mlpd.tracking import server as tracking
    from mlpd.jobs import TERMINAL_STATES

    ends = {r["run_id"]: run_status(r["state"]) for r in rows
            if r["run_id"] and r["state"] in TERMINAL_STATES and statuses.get(r["run_id"], ("",))[0] == "RUNNING"}
    if s["parent_run_id"] and statuses.get(s["parent_run_id"], ("",))[0] == "RUNNING" and all(r["state"] in TERMINAL_STATES for r in rows):
        ends[s["parent_run_id"]] = "KILLED" if s["cancelled_at"] else "FINISHED"
    if ends:
        try:
            tracking.end_runs(config().state_dir, ends)
        except Exception as exc:
            current_app_logger().warning("ending sweep %s's MLflow runs failed: %s", s["id"], exc)


@route("/sweeps/<sweep_id>/cancel", methods=("POST",), summary="Cancel a sweep: its trials that have not ended are cancelled")
def cancel_sweep(sweep_id: str):
    from mlpd.automation import sweeps

    s = _sweep(sweep_id)
    cancelled = sweeps.cancel(store(), s, g.user.name)
    wake(f"cancel sweep {sweep_id}")
    return jsonify({"sweep": sweep_view(sweeps.get(store(), s["id"]) or s), "cancelled": cancelled})
