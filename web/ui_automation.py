"""The web UI's automation pages: schedules (list, pause, resume, run now, remove; one page each with its
runs) and sweeps (list; one page each with its trials, best first, and a parameter-vs-metric chart).
Each reads through the same functions as the JSON API (web/api_automation.py, mlpd.automation); a job's
page shows what it waits for, its schedule and its sweep (automation_links)."""

from __future__ import annotations

import time
from html import escape

from flask import g, redirect, render_template, request, url_for
from markupsafe import Markup

from mlpd.automation import schedules, sweeps
from mlpd.errors import MlpdError
from mlpd.web import config, store
from mlpd.web.ui import NAV, ui

NAV.insert(3, ("ui.schedule_list", "Schedules"))
NAV.insert(4, ("ui.sweep_list", "Sweeps"))


@ui.app_template_global("automation_links")
def automation_links(job_id: str) -> dict:
    """What a job waits for, its schedule and its sweep (for job.html)."""
    from mlpd.automation import links

    return links.of_job(store(), job_id)


def _schedule(name: str) -> dict:
    owner = request.args.get("owner") or request.form.get("owner") or g.user.name
    s = schedules.get(store(), owner, name) if owner == g.user.name or g.user.is_admin else None
    if s is None:
        raise MlpdError(404, "not_found", f"no schedule {name!r}")
    return s


@ui.route("/schedules")
def schedule_list():
    from mlpd.web.api_automation import schedule_view

    everyone = g.user.is_admin and request.args.get("all") == "1"
    now = time.time()
    rows = [schedule_view(s, now) for s in schedules.list_schedules(store(), None if everyone else g.user.name)]
    return render_template("schedules.html", rows=rows, everyone=everyone)


@ui.route("/schedules/<name>")
def schedule_page(name: str):
    from mlpd.web.api_automation import schedule_view

    s = _schedule(name)
    return render_template("schedule.html", s=schedule_view(s), runs=schedules.runs(store(), s["id"], 50), message=request.args.get("done"))


@ui.route("/schedules/<name>/<action>", methods=("POST",))
def schedule_action(name: str, action: str):
    from mlpd.automation.admission import Refused
    from mlpd.web.api_jobs import wake

    s = _schedule(name)
    owner = {"owner": s["owner"]} if s["owner"] != g.user.name else {}
    if action in ("pause", "resume"):
        schedules.set_paused(store(), s, action == "pause", g.user.name)
        wake(f"schedule {action}")
        done = f"{action}d"
    elif action == "run-now":
        try:
            run = schedules.run_now(store(), config(), s, g.user.name)
        except Refused as exc:
            raise MlpdError(exc.status, exc.code, f"schedule {name}: {exc.message}") from None
        wake(f"submitted {run['job_id']}")
        done = f"submitted job {run['job_id']}"
    elif action == "remove":
        schedules.remove(store(), s, g.user.name)
        return redirect(url_for("ui.schedule_list"))
    else:
        raise MlpdError(404, "not_found", f"no action {action!r}")
    return redirect(url_for("ui.schedule_page", name=name, done=done, **owner))


@ui.route("/sweeps")
def sweep_list():
    from mlpd.web.api_automation import sweep_view

    everyone = g.user.is_admin and request.args.get("all") == "1"
    rows = [sweep_view(s, s["states"]) for s in sweeps.list_sweeps(store(), None if everyone else g.user.name)]
    return render_template("sweeps.html", rows=rows, everyone=everyone)


@ui.route("/sweeps/<sweep_id>")
def sweep_page(sweep_id: str):
    from mlpd.web.api_automation import show_sweep

    s = show_sweep(sweep_id=sweep_id).get_json()["sweep"]  # the API's own view (ownership checked there)
    charts = [Markup(scatter(f"{name} vs {s['metric']}", [(t["params"].get(name), t["metric"]) for t in s["trials"]], name, s["metric"]))
              for name in s["params"]] if s["metric"] else []
    return render_template("sweep.html", s=s, charts=charts)


@ui.route("/sweeps/<sweep_id>/cancel", methods=("POST",))
def sweep_cancel(sweep_id: str):
    from mlpd.web.api_automation import cancel_sweep

    cancel_sweep(sweep_id=sweep_id)
    return redirect(url_for("ui.sweep_page", sweep_id=sweep_id))


def scatter(title: str, points: list[tuple[str | None, float | None]], x_name: str, y_name: str) -> str:
    """An SVG scatter of metric against one parameter (numbers on a linear axis, or a log axis when they span
    two decades or more; other values as categories); trials without the metric are left out. Escaped markup."""
    import math

    pts = [(x, y) for x, y in points if x is not None and y is not None]
    width, height, left, bottom = 360, 200, 48, 28
    body = [f'<text x="4" y="12" font-size="11" fill="#333">{escape(title)}</text>']
    if not pts:
        body.append('<text x="60" y="100" font-size="11" fill="#666">no trial has logged the metric yet</text>')
    else:
        try:
            xs = [float(x) for x, _ in pts]
            log = min(xs) > 0 and max(xs) / min(xs) >= 100
            xv = [math.log10(x) if log else x for x in xs]
            labels = None
        except ValueError:
            cats = sorted({x for x, _ in pts})
            xv, log, labels = [float(cats.index(x)) for x, _ in pts], False, cats
        ys = [y for _, y in pts]
        x0, x1 = min(xv), max(xv)
        y0, y1 = min(ys), max(ys)
        sx = lambda v: left + (v - x0) / ((x1 - x0) or 1) * (width - left - 12) if x1 > x0 else (width + left) / 2  # noqa: E731
        sy = lambda v: height - bottom - (v - y0) / ((y1 - y0) or 1) * (height - bottom - 24) if y1 > y0 else height / 2  # noqa: E731
        body.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - 8}" y2="{height - bottom}" stroke="#d9dde3"/>')
        body.append(f'<line x1="{left}" y1="20" x2="{left}" y2="{height - bottom}" stroke="#d9dde3"/>')
        for v, (x, y) in zip(xv, pts, strict=True):
            body.append(f'<circle cx="{sx(v):.1f}" cy="{sy(y):.1f}" r="4" fill="#2f6db5"><title>{escape(x_name)}={escape(str(x))}: '
                        f'{escape(y_name)}={y:g}</title></circle>')
        body.append(f'<text x="{left}" y="{height - 8}" font-size="10" fill="#333">{escape(x_name)}{" (log)" if log else ""}: '
                    f'{escape(labels[0] if labels else f"{min(xs):g}")} .. {escape(labels[-1] if labels else f"{max(xs):g}")}</text>')
        body.append(f'<text x="2" y="30" font-size="10" fill="#333">{y1:g}</text><text x="2" y="{height - bottom}" font-size="10" '
                    f'fill="#333">{y0:g}</text>')
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>' + "".join(body) + "</svg>")
