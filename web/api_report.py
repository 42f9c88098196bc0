"""The platform report for admins (mlpd.scheduling.report): GET /api/v1/admin/report."""

from __future__ import annotations

import time

from flask import Response, jsonify, request
from mlpd.web import config, store
from mlpd.web.api_usage import _time_arg
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area

from mlpd.scheduling import report
from mlpd.tracking.server import TrackingDb

area = Area("report")  # registered by the app factory (mlpd.web.create_app)


def report_of_request() -> dict:
    """The report for ?since=&until=&by= (dates, date-times or unix times; by week or month), or ApiError 400."""
    by = request.args.get("by", "week")
    if by not in report.BUCKETS:
        raise ApiError(400, "invalid_field", f"by: expected one of {', '.join(report.BUCKETS)}")
    until = _time_arg("until", time.time())
    since = _time_arg("since", report.default_since(until, by))
    if until <= since:
        raise ApiError(400, "invalid_field", "until: must be after since")
    if until - since > 5 * 366 * 86400:
        raise ApiError(400, "invalid_field", "since: a report covers at most 5 years")
    return report.build(store(), TrackingDb(config().state_dir), since, until, by, now=time.time())


@area.route("/admin/report", admin=True,
            summary="The platform report (docs/report.md): ?since=&until= (a date, date-time or unix time; default the last 12 "
                    "weeks), ?by=week|month, ?format=csv")
def platform_report():
    data = report_of_request()
    if request.args.get("format") == "csv":
        return Response(report.to_csv(data), mimetype="text/csv")
    return jsonify(data)


class PlatformCollector:
    """The report's gauges for /metrics (mlpd.scheduling.report.gauges), read at scrape time."""

    def __init__(self, store_, state_dir: str):
        self.store, self.state_dir = store_, state_dir

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        g = report.gauges(self.store, TrackingDb(self.state_dir), time.time())
        active = GaugeMetricFamily("mlpd_platform_active_users", "Users who ran a workload of any kind in the last 7 days")
        active.add_metric([], g["active_users"])
        wait = GaugeMetricFamily("mlpd_platform_queue_wait_seconds", "Queue wait (submit to start) of workloads started in the "
                                 "last 7 days, nearest-rank percentile", labels=["quantile"])
        for q, key in (("0.5", "queue_wait_p50"), ("0.95", "queue_wait_p95")):
            if g[key] is not None:
                wait.add_metric([q], g[key])
        success = GaugeMetricFamily("mlpd_platform_success_ratio", "Succeeded / (succeeded + failed + timed out + lost), workloads "
                                    "ended in the last 7 days", labels=["kind"])
        for kind, ratio in sorted(g["success_ratio"].items()):
            success.add_metric([kind], ratio)
        models = GaugeMetricFamily("mlpd_platform_models_registered", "Registered models in MLflow's registry")
        models.add_metric([], g["models_registered"])
        deps = GaugeMetricFamily("mlpd_platform_deployments_started", "Deployments ever created (deployment.created events)")
        deps.add_metric([], g["deployments_started"])
        yield from (active, wait, success, models, deps)
