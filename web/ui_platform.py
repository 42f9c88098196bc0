"""The admin's "Platform" page (/ui/admin/platform): the platform report (mlpd.scheduling.report) with small charts,
every chart beside its numbers. Registered on the admin blueprint, so only admins reach it."""

from __future__ import annotations

import datetime as dt
import time

from flask import render_template, request
from markupsafe import Markup
from mlpd.web import config, store, ui_charts

from mlpd.scheduling import report
from mlpd.tracking.server import TrackingDb


def _day(value: str | None) -> float | None:
    """A date from the page's form (2026-11-02), or None when empty or not a date."""
    try:
        return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp() if value else None
    except ValueError:
        return None


def platform_page(sections):
    """The page: ?since=&until= (dates), ?by=week|month."""
    by = request.args.get("by", "week")
    by = by if by in report.BUCKETS else "week"
    now = time.time()
    until = _day(request.args.get("until")) or now
    since = _day(request.args.get("since")) or report.default_since(until, by)
    error = ""
    if until <= since:
        error, since = "until must be after since: showing the default period instead", report.default_since(until, by)
    rep = report.build(store(), TrackingDb(config().state_dir), since, until, by, now=now)
    charts = {
        "active": Markup(ui_charts.vbars(f"Active users per {by}", [(p["label"], p["active_users"]) for p in rep["periods"]], unit="users")),
        "wait": Markup(ui_charts.vbars(f"Queue wait p95 per {by}", [(p["label"], (p["queue_wait_p95"] or 0) / 60) for p in rep["periods"]],
                                       unit="min")),
        "teams": Markup(ui_charts.hbars("GPU-hours per team", [(r["team"], r["gpu_hours"], r["busy_gpu_hours"])
                                                              for r in rep["gpu_hours_by_team"]])),
    }
    def day(t):
        return dt.datetime.fromtimestamp(t, tz=dt.UTC).strftime("%Y-%m-%d")

    return render_template("admin_platform.html", sections=sections, rep=rep, charts=charts, by=by, error=error,
                           since_day=day(since), until_day=day(until)), 400 if error else 200
