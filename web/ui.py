"""The web UI for the team: server-rendered pages under /ui, a little JavaScript for the live parts.

Every page reads through the same functions the JSON API uses (mlpd.jobs, quotas,
accounting, the scheduler's explanations through controller.plan_now, gpu_state), with
g.user set from the web session (ui_auth), so a member sees and does in the browser
exactly what their token could through /api/v1. Admin pages live in ui_admin.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shlex
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

import mlpd
from mlpd import jobs
from mlpd.errors import MlpdError
from mlpd.jobs import JobState
from mlpd.kinds.base import kind_of
from mlpd.units import format_bytes, format_duration
from mlpd.workload_names import name_of, short_id
from mlpd.web import config, store, ui_auth, ui_charts

ui = Blueprint("ui", __name__, url_prefix="/ui", template_folder="templates", static_folder="static")
ui_auth.register(ui)

# The navigation bar: (endpoint, label). Workspaces and deployments add their pages here when
# they land, e.g. NAV.insert(3, ("ui.workspaces", "Workspaces")); admins also see "Admin".
# Pages that only change things (forms), left out of a viewer's navigation.
VIEWER_HIDDEN = frozenset({"ui.submit"})
NAV: list[tuple[str, str]] = [("ui.dashboard", "Dashboard"), ("ui.job_list", "Jobs"), ("ui.submit", "Submit a job"),
                              ("ui.workspace_list", "Workspaces"), ("ui.deployment_list", "Models served"), ("ui.usage", "Usage")]

# The job states' named sets (mlpd.jobs), for templates and, through data attributes, the page script.
JOB_STATES = {"terminal": sorted(jobs.TERMINAL_STATES), "active": sorted(jobs.ACTIVE_STATES), "all": list(jobs.STATE_NAMES)}
LOG_TAIL_BYTES = 256 * 1024
# Content-Security-Policy: only this site's own script and style; charts are inline SVG markup.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


# ---------------------------------------------------------------- page furniture


def _static_version() -> str:
    """A cache-busting suffix for static files: the mtimes of the files (changes on upgrade)."""
    cached = current_app.extensions.get("mlpd.ui_static_version")
    if cached is None:
        folder = os.path.join(os.path.dirname(__file__), "static")
        mtimes = [int(os.stat(os.path.join(folder, f)).st_mtime) for f in sorted(os.listdir(folder))]
        cached = f"{mlpd.__version__}-{max(mtimes, default=0)}"
        current_app.extensions["mlpd.ui_static_version"] = cached
    return cached


@ui.app_template_filter("when")
def when(t: float | None) -> str:
    """A UTC time as people read it, with how long ago or from now."""
    if not t:
        return "-"
    stamp = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    delta = t - time.time()
    if abs(delta) < 5:
        return f"{stamp} (now)"
    rel = format_duration(round(abs(delta)))
    return f"{stamp} ({'in ' + rel if delta > 0 else rel + ' ago'})"


@ui.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    from mlpd.output import duration as for_people

    return for_people(seconds)  # "<1s", not "0.0072s"


@ui.app_template_filter("bytes")
def bytes_filter(n: int | None) -> str:
    return "-" if n is None else format_bytes(n)


@ui.context_processor
def page_furniture() -> dict[str, Any]:
    """What every page's template reads: navigation, the user, the CSRF token, helpers (ui_admin shares it)."""
    from mlpd.roles import is_viewer

    viewer = is_viewer(g.get("user"))
    nav = list(NAV) + ([("ui_admin.overview", "Admin")] if g.get("user") and g.user.is_admin else [])
    if viewer:  # a viewer sees no page or button that changes something (mlpd.roles); refused anyway (ui_auth)
        nav = [(endpoint, label) for endpoint, label in nav if endpoint not in VIEWER_HIDDEN]
    return {"can_change": not viewer, "csrf_token": ui_auth.csrf_token, "nav": nav, "user": g.get("user"), "static_version": _static_version(),
            "meter": lambda p: Markup(ui_charts.meter(p)), "version": mlpd.__version__, "display_command": display_command,
            "job_states": JOB_STATES}


@ui.after_request
def page_headers(response: Response) -> Response:
    """The security and caching headers of every page (ui_admin shares them)."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint == "ui.static":
        response.headers["Cache-Control"] = "public, max-age=86400"
    else:
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(status: int, message: str):
    titles = {400: "Bad request", 401: "Please log in", 403: "Not allowed", 404: "Not found", 405: "Not allowed", 409: "Conflict",
              429: "Too many attempts", 503: "Unavailable"}
    return render_template("error.html", status=status, title=titles.get(status, "Error"), message=message), status


@ui.errorhandler(MlpdError)
def page_for_mlpd_error(exc: MlpdError):
    """An MlpdError as an error page (ui_admin shares it)."""
    return _error_page(exc.status, exc.message)


@ui.errorhandler(HTTPException)
def page_for_http_error(exc: HTTPException):
    """An HTTP error as an error page (ui_admin shares it)."""
    message = exc.description or exc.name
    if exc.code == 404:
        message = "There is no such page, or it is not yours to see."
    return _error_page(exc.code or 500, message)


@ui.route("/<path:anything>")
def not_found(anything: str):
    return _error_page(404, "There is no such page, or it is not yours to see.")


# ---------------------------------------------------------------- dashboard


def _visible_job(job_id: str) -> dict:
    """The job if g.user may see it; 404 otherwise (as if it did not exist), as the API does."""
    from mlpd.roles import may_read

    job = jobs.get(store(), job_id)  # theirs; any for admins; their teams' members' for a viewer (mlpd.roles)
    if job is None or not may_read(store(), g.user, job["owner"]) or not kind_of(job.get("kind")).listed_with_jobs:
        raise MlpdError(404, "not_found", f"no such job {job_id[:40]!r}, or it is not yours")
    return job


def _mine(owner: str) -> bool:
    return owner == g.user.name or g.user.is_admin


def _job_label(job: dict | None, job_id: str) -> str:
    """How a workload is named on the page (mlpd.workload_names: a job by its name and id, a workspace
    by its name and owner, a deployment's replica by the deployment and slot)."""
    if not job:
        return f"job {short_id(job_id)}"
    return name_of(store(), job).label()


def _workload_url(job: dict | None, owner: str) -> str:
    """The page of this workload if the user may open it (their own, or any for an admin): a job's
    page, a workspace's or a deployment's; "" otherwise."""
    if not job or not _mine(owner):
        return ""
    name = name_of(store(), job)
    page = kind_of(name.kind).page(name, owner_is_viewer=owner == g.user.name)
    return url_for(page[0], **page[1]) if page else ""


def gpu_rows(now: float) -> list[dict[str, Any]]:
    """Each GPU with its holder, what for and until when (the data of the dashboard's GPU table)."""
    from mlpd.controller import effective_time_limit
    from mlpd.scheduling.gpu_state import drains, gpu_sharers, stray_gpus
    from mlpd.web.api_jobs import inventory

    cfg, st = config(), store()
    devices = inventory().devices()
    drained = drains(st, cfg["gpus.drained"], devices)
    holders, stray = gpu_sharers(st), stray_gpus(st)
    samples = _utilization_history([d.uuid for d in devices], now - 3600, now)
    rows = []
    for d in devices:
        sharers = []  # every holder of the GPU: one for whole-GPU work, up to gpus.share_max for shares
        for h in holders.get(d.uuid, []):
            job = jobs.get(st, h["job_id"])
            limit = effective_time_limit(job, cfg) if job else None
            sharers.append(dict(h, label=_job_label(job, h["job_id"]), url=_workload_url(job, h["owner"]),
                                until=(job["started_at"] + limit) if job and job["started_at"] and limit else None,
                                state=job["state"] if job else ""))
        holder = sharers[0] if sharers else None
        points = samples.get(d.uuid, [])
        rows.append({"index": d.index, "uuid": d.uuid, "model": d.name, "declared": d.declared, "memory_total": d.memory_total,
                     "memory_used": d.memory_used, "utilization": d.utilization, "holder": holder,
                     "holders": sharers, "shared": any(h["share"] < 1 for h in sharers),
                     "drained": drained.get(d.uuid), "stray_pids": stray.get(d.uuid, []),
                     "spark": Markup(ui_charts.lines(f"GPU {d.index} utilization, last hour", [(f"GPU {d.index}", points)], now - 3600, now))
                     if points else None})
    return rows


def _utilization_history(uuids: list[str], since: float, until: float) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    if not uuids:
        return out
    rows = store().query(f"SELECT gpu_uuid, at, utilization FROM gpu_samples WHERE at > ? AND at <= ? AND gpu_uuid IN "
                         f"({','.join('?' * len(uuids))}) ORDER BY at", [since, until, *uuids])
    for r in rows:
        out.setdefault(r["gpu_uuid"], []).append((r["at"], r["utilization"]))
    return out


def queue_view(now: float) -> dict[str, Any]:
    """The queue as the scheduler sees it now: depth, next start, and each waiting job (reasons for your own)."""
    from mlpd.controller import plan_now
    from mlpd.web.api_jobs import inventory

    plan, queued, _ = plan_now(store(), inventory(), config(), now, explain=True)
    by_id = {j["id"]: j for j in queued}
    waits = []
    for w in sorted(plan.waits, key=lambda w: w.position):
        job = by_id.get(w.job_id)
        if job is None:
            continue
        mine = _mine(job["owner"])
        label = _job_label(job, w.job_id) if mine else job.get("kind", "job")  # others' job names are theirs
        waits.append({"position": w.position, "id": w.job_id, "owner": job["owner"], "label": label, "gpus": job["spec"]["gpus"],
                      "estimated_start": w.estimated_start, "reason": w.reason if mine else "", "url": _workload_url(job, job["owner"])})
    starts = [w.estimated_start for w in plan.waits if w.estimated_start is not None]
    return {"depth": len(queued), "starting_now": len(plan.placements), "waits": waits,
            "next_start": now if plan.placements else (min(starts) if starts else None)}


def live_context() -> dict[str, Any]:
    now = time.time()
    return {"gpus": gpu_rows(now), "queue": queue_view(now), "now": now}


@ui.route("/")
def dashboard():
    from mlpd.roles import is_viewer, readable_owners

    # A viewer's dashboard shows their teams' members' work (mlpd.roles); everyone else's, their own.
    owner = readable_owners(store(), g.user) if is_viewer(g.user) else g.user.name
    mine = jobs.list_jobs(store(), owner, jobs.QUEUED_OR_ACTIVE_STATES, limit=50)
    return render_template("dashboard.html", mine=mine, **live_context())


@ui.route("/live/dashboard")
def live_dashboard():
    """The dashboard's live part (GPUs and queue) as HTML, for the page's polling script."""
    return render_template("_live.html", **live_context())


# ---------------------------------------------------------------- jobs


@ui.route("/jobs")
def job_list():
    state = request.args.get("state", "")
    states = [state] if state in jobs.STATE_NAMES else (sorted(jobs.QUEUED_OR_ACTIVE_STATES) if state == "active" else [])
    everyone = g.user.is_admin and request.args.get("all") == "1"
    owner_filter = request.args.get("owner", "").strip()[:64] if g.user.is_admin else ""
    owner = owner_filter or (None if everyone else g.user.name)
    from mlpd.roles import is_viewer, readable_owners

    if is_viewer(g.user):
        owner = readable_owners(store(), g.user)  # their teams' members' jobs
    rows = jobs.list_jobs(store(), owner, states, limit=201)
    return render_template("jobs.html", rows=rows[:200], truncated=len(rows) > 200, state=state, everyone=everyone,
                           owner_filter=owner_filter, state_names=jobs.STATE_NAMES)


_PLAIN_IN_DOUBLE_QUOTES = re.compile(r'[^"$`\\!]*')


def display_command(argv) -> str:
    """The command as a person would type it: shell quoting, in double quotes where that reads
    better (python -c "print('hi')"); splitting it again gives the same arguments."""
    out = []
    for arg in argv:
        quoted = shlex.quote(arg)
        if quoted != arg and "'" in arg and _PLAIN_IN_DOUBLE_QUOTES.fullmatch(arg):
            quoted = f'"{arg}"'
        out.append(quoted)
    return " ".join(out)


def _spec_items(job: dict) -> list[tuple[str, str]]:
    spec = job["spec"]
    items = [("image", spec.get("image") or config()["jobs.default_image"]), ("command", display_command(spec["command"])),
             ("GPUs", str(spec["gpus"]) + (f" ({spec['gpu_model']})" if spec.get("gpu_model") else ""))]
    if spec.get("time_limit"):
        items.append(("time limit", format_duration(spec["time_limit"])))
    if spec.get("cpus"):
        items.append(("CPUs", f"{spec['cpus']:g}"))
    if spec.get("memory"):
        items.append(("memory", format_bytes(spec["memory"])))
    if spec.get("priority"):
        items.append(("priority", str(spec["priority"])))
    if spec.get("experiment"):
        items.append(("experiment", spec["experiment"]))
    if spec.get("code"):
        items.append(("code", spec["code"][:12] + "..."))
    if spec.get("env"):
        items.append(("environment variables", ", ".join(sorted(spec["env"]))))
    return items


def _saved_log(job_id: str) -> str:
    """The tail of an ended job's saved log (build log first), as text."""
    folder = jobs.job_dir(config().state_dir, job_id)
    from mlpd import logtext

    chunks = []
    for name in ("build.log", "log"):
        try:
            with open(os.path.join(folder, name), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - LOG_TAIL_BYTES))
                data = fh.read(LOG_TAIL_BYTES)
                data = b"".join(logtext.select([data], timestamps=False))  # saved logs carry Docker's stamps
                chunks.append((b"(... earlier output cut ...)\n" if size > LOG_TAIL_BYTES else b"") + data)
        except (FileNotFoundError, IsADirectoryError):
            continue
    from mlpd.termsafe import strip_controls

    return strip_controls(b"".join(chunks).decode("utf-8", "replace"))


def preemption_rows(history: list[dict]) -> list[dict[str, Any]]:
    """Each time the job was preempted, oldest first: the attempt stopped, when, why (which job of
    which class it made way for, as `mlpd jobs show` says it) and that job's id when g.user may see it."""
    out: list[dict[str, Any]] = []
    for_job = None
    for event in history:
        if event["action"] == "job.preempt_requested":
            for_job = event["detail"].get("for_job")
        elif event["action"] == "job.preempted":
            visible = for_job and jobs.visible(store(), for_job, g.user.name, g.user.is_admin) is not None
            out.append({"attempt": len(out) + 1, "at": event["at"], "reason": event["detail"].get("reason", ""),
                        "for_job": for_job if visible else None})
            for_job = None
    return out


@ui.route("/jobs/<job_id>")
def job(job_id: str):
    from mlpd.scheduling.priority_classes import PriorityClasses
    from mlpd.web.api_jobs import explain_wait, mlflow_runs

    job = _visible_job(job_id)
    waiting = explain_wait(job_id) if job["state"] == JobState.QUEUED.value else None
    if waiting and not g.user.is_admin:
        waiting["blocking"] = [dict(b, job_id=b["job_id"] if b["owner"] == g.user.name else "") for b in waiting["blocking"]]
    terminal = job["state"] in jobs.TERMINAL_STATES
    history = jobs.history(store(), job_id)
    preempting = job["preempt_requested_at"] is not None and job["state"] in jobs.ACTIVE_STATES
    return render_template("job.html", job=job, spec_items=_spec_items(job), history=history, waiting=waiting,
                           priority_class=PriorityClasses.from_config(config()).of(job), preemptions=preemption_rows(history),
                           preempting=preempting, runs=mlflow_runs(job_id), terminal=terminal, log=_saved_log(job_id) if terminal else "",
                           duration=((job["ended_at"] or time.time()) - job["started_at"]) if job["started_at"] else None)


@ui.route("/jobs/<job_id>/log")
def job_log(job_id: str):
    """The job's output (streamed live with ?follow=1), through the same stream as the API's logs."""
    from mlpd.web.api_jobs import logs_response

    _visible_job(job_id)
    return logs_response(job_id, request.args.get("follow") == "1")


@ui.route("/jobs/<job_id>/state")
def job_state(job_id: str):
    """The job's state, for the page's script to notice a change."""
    job = _visible_job(job_id)
    return jsonify({"state": job["state"], "reason": job["reason"]})


@ui.route("/jobs/<job_id>/cancel", methods=("POST",))
def cancel(job_id: str):
    from mlpd.web.api_jobs import wake

    _visible_job(job_id)
    jobs.request_cancel(store(), job_id, g.user.name)
    wake(f"cancel {job_id}")
    return redirect(url_for("ui.job", job_id=job_id), code=303)


@ui.route("/jobs/<job_id>/rerun", methods=("POST",))
def rerun(job_id: str):
    """Submit the job's spec again as a new job of the current user."""
    from mlpd.web.api_jobs import create_job

    spec = dict(_visible_job(job_id)["spec"])
    if spec.get("code") and not jobs.holds_code(store(), spec["code"], g.user.name):
        raise MlpdError(403, "forbidden", "this job's code archive was uploaded by someone else; run it with 'mlpd run' from your copy")
    new, _ = create_job(spec)
    return redirect(url_for("ui.job", job_id=new["id"]), code=303)


# ---------------------------------------------------------------- submit

FORM_FIELDS = ("name", "image", "gpus", "command", "requirements", "time_limit", "cpus", "memory")


def form_spec(form) -> tuple[dict[str, Any], dict[str, str]]:
    """The job spec a submitted form describes, and errors by field for what the form itself can tell."""
    values = {k: (form.get(k) or "").strip() for k in FORM_FIELDS}
    errors: dict[str, str] = {}
    spec: dict[str, Any] = {}
    if not values["command"]:
        errors["command"] = "enter the command to run, e.g. python train.py"
    else:
        spec["command"] = values["command"]
    if values["gpus"]:
        spec["gpus"] = values["gpus"]
    for key in ("name", "time_limit", "cpus", "memory"):
        if values[key]:
            spec[key] = values[key]
    if values["requirements"]:
        spec["requirements"] = values["requirements"].replace("\r\n", "\n") + "\n"
    image = values["image"] or config()["jobs.default_image"]
    spec["image"] = image
    return spec, errors


def _check_image(image: str, errors: dict[str, str]) -> None:
    """The form only offers images this host has: a missing one would fail at start, after the wait."""
    from mlpd.runtime.protocol import RuntimeFailure
    from mlpd.web.api_jobs import runtime

    try:
        present = runtime().image_present(image)
    except (MlpdError, RuntimeFailure) as exc:
        errors["image"] = f"cannot check the image now: {getattr(exc, 'message', str(exc))}"
        return
    except Exception:  # an invalid reference Docker itself refuses
        present = False
    if not present:
        errors["image"] = f"no image {image!r} on this host; pick one from the list, or ask an admin to build or pull it"


def _field_of(message: str) -> str:
    """Which form field an error from the spec parser or admission is about ('gpus: ...' -> gpus)."""
    head = message.split(":", 1)[0].strip()
    head = head.split("[", 1)[0].split(".", 1)[0]
    return head if head in FORM_FIELDS else "_form"


IMAGES_TTL = 30.0


def _images() -> list[str]:
    """The images the form offers: those on this host (not mlpd's base or built environments).
    Listing them is slow on an engine with many images, so the list is kept for IMAGES_TTL seconds."""
    from mlpd.web.api_jobs import runtime

    cached = current_app.extensions.get("mlpd.ui_images")
    if cached and time.monotonic() - cached[0] < IMAGES_TTL:
        return cached[1]
    try:
        tags = [i.get("tag") or "" for i in runtime().list_images(prefix="")]
    except Exception:  # no engine: the form still works, the check says why on submit
        return [config()["jobs.default_image"]]
    default = config()["jobs.default_image"]
    names = sorted({t for t in tags if t and "<none>" not in t and not t.startswith(("mlpd/base", "mlpd/env"))} | {default})
    current_app.extensions["mlpd.ui_images"] = (time.monotonic(), names)
    return names


@ui.route("/jobs/new", methods=("GET", "POST"))
def submit():
    from mlpd.web.api_jobs import create_job, inventory

    values = {k: (request.form.get(k) or "") for k in FORM_FIELDS} if request.method == "POST" else dict(request.args)
    errors: dict[str, str] = {}
    if request.method == "POST":
        spec, errors = form_spec(request.form)
        if "image" not in errors:
            _check_image(spec["image"], errors)
        if not errors:
            try:
                new, warnings = create_job(spec)
            except MlpdError as exc:
                errors[_field_of(exc.message)] = exc.message.split(": ", 1)[1] if _field_of(exc.message) != "_form" else exc.message
            else:
                return redirect(url_for("ui.job", job_id=new["id"]), code=303)
    gpu_count = len(inventory().devices())
    return render_template("submit.html", values=values, errors=errors, images=_images(), gpu_count=gpu_count,
                           default_image=config()["jobs.default_image"]), 400 if errors else 200


# ---------------------------------------------------------------- usage

PERIODS = {"7": 7, "30": 30, "90": 90}


def _day_labels(since: float, days: int) -> list[str]:
    start = dt.datetime.fromtimestamp(since, tz=dt.timezone.utc).date()
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(days + 1)]


def queue_waits(since: float, owner: str | None) -> list[tuple[str, float, float, int]]:
    """(day, mean wait, longest wait, jobs) of the jobs that started each day: how long the queue held them."""
    sql = "SELECT submitted_at, started_at FROM jobs WHERE started_at IS NOT NULL AND started_at >= ?"
    params: list[Any] = [since]
    if owner:
        sql += " AND owner = ?"
        params.append(owner)
    by_day: dict[str, list[float]] = {}
    for r in store().query(sql, params):
        day = dt.datetime.fromtimestamp(r["started_at"], tz=dt.timezone.utc).date().isoformat()
        by_day.setdefault(day, []).append(max(0.0, r["started_at"] - r["submitted_at"]))
    return [(day, sum(w) / len(w), max(w), len(w)) for day, w in sorted(by_day.items())]


def _wait_points(waits, since: float, days: int) -> list[tuple[str, float]]:
    mean = {day: m for day, m, _, _ in waits}
    return [(d, mean.get(d, 0.0) / 60) for d in _day_labels(since, days)]


@ui.route("/usage")
def usage():
    from mlpd.web.api_jobs import inventory
    from mlpd.web.api_usage import usage_rows

    days = PERIODS.get(request.args.get("days", "30"), 30)
    now = time.time()
    since = now - days * 86400
    by_user = usage_rows("user", since, now)
    by_team = usage_rows("team", since, now)
    by_day = {r["key"]: r for r in usage_rows("day", since, now)}
    day_points = [(d, by_day[d]["gpu_hours"] if d in by_day else 0.0) for d in _day_labels(since, days)]
    waits = queue_waits(since, None if g.user.is_admin else g.user.name)
    devices = inventory().devices()
    util = _utilization_history([d.uuid for d in devices], now - 3600, now)
    charts = {
        "users": Markup(ui_charts.hbars(f"GPU-hours per user, last {days} days", [(r["key"], r["gpu_hours"], r["busy_gpu_hours"]) for r in by_user])),
        "teams": Markup(ui_charts.hbars(f"GPU-hours per team, last {days} days", [(r["key"], r["gpu_hours"], r["busy_gpu_hours"]) for r in by_team])),
        "days": Markup(ui_charts.vbars(f"GPU-hours per day, last {days} days", day_points)),
        "util": Markup(ui_charts.lines("Utilization per GPU, last hour", [(f"GPU {d.index}", util.get(d.uuid, [])) for d in devices], now - 3600, now)),
        "waits": Markup(ui_charts.vbars(f"Mean queue wait per day, last {days} days", _wait_points(waits, since, days), unit="min")),
    }
    from mlpd import disk_use

    disk = disk_use.usage_of(store(), config(), g.user.name)  # your home and teams' folders, as the worker last measured them
    return render_template("usage.html", days=days, by_user=by_user, by_team=by_team, by_day=sorted(by_day.values(), key=lambda r: r["key"]),
                           waits=waits, charts=charts, currency=config()["pricing.currency"], periods=sorted(PERIODS, key=int),
                           disk=[("Your home", disk["home"])] + [(f"Team {t['team']}", t) for t in disk["teams"]])


@ui.route("/usage.csv")
def usage_csv():
    from mlpd.web.api_usage import usage_csv as to_csv, usage_rows

    by = request.args.get("by", "user")
    days = PERIODS.get(request.args.get("days", "30"), 30)
    now = time.time()
    response = to_csv(by, usage_rows(by, now - days * 86400, now))
    response.headers["Content-Disposition"] = f"attachment; filename=mlpd-usage-by-{by}-{days}d.csv"
    return response


def install(app) -> None:
    """Register the UI on the app: /ui pages, /ui/admin pages, and / sending browsers to the dashboard."""
    from mlpd.web import ui_automation, ui_serving, ui_workspaces  # noqa: F401  (their pages are on the ui blueprint)
    from mlpd.web.ui_admin import ui_admin

    app.register_blueprint(ui)
    app.register_blueprint(ui_admin)

    @app.get("/")
    def root():
        return redirect(url_for("ui.dashboard"))

    @app.get("/favicon.ico")
    def favicon():
        """Browsers ask for /favicon.ico on any page that names none (the API's, MLflow's): the same icon."""
        return redirect(url_for("ui.static", filename="favicon.svg"), 301)
