"""Prometheus metrics at /metrics: GPUs, their holders, the queue, jobs by state, GPU-hours by user.

Read from the state database and the GPU inventory at scrape time (a custom
collector), so every web worker reports the same numbers.
"""

from __future__ import annotations

import json
import time

from flask import Flask, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mlpd.web.errors import ApiError


class _StateCollector:
    def __init__(self, store, inventory):
        self.store, self.inventory = store, inventory

    def collect(self):
        from mlpd import jobs

        devices = self.inventory.devices()
        util = GaugeMetricFamily("mlpd_gpu_utilization_percent", "GPU utilization (NVML; absent for declared GPUs)", labels=["gpu", "uuid", "model"])
        mem = GaugeMetricFamily("mlpd_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=["gpu", "uuid", "model"])
        mem_total = GaugeMetricFamily("mlpd_gpu_memory_total_bytes", "GPU memory size (NVML)", labels=["gpu", "uuid", "model"])
        info = GaugeMetricFamily("mlpd_gpu_info", "One per GPU; declared=1 for declared (not real) GPUs", labels=["gpu", "uuid", "model", "declared"])
        allocated = GaugeMetricFamily("mlpd_gpu_allocated", "1 when an mlpd allocation holds the GPU", labels=["gpu", "uuid", "owner", "kind", "object_id"])
        stray = GaugeMetricFamily("mlpd_gpu_stray_processes", "Processes on the GPU that no mlpd allocation holds", labels=["gpu", "uuid"])
        holders = {}
        for job in jobs.in_states(self.store, jobs.ACTIVE):
            for uuid in job["gpu_uuids"]:
                holders[uuid] = job
        stray_status = self.store.query_one("SELECT value FROM daemon_status WHERE key = 'gpus.stray'")
        stray_by_uuid = json.loads(stray_status["value"]) if stray_status else {}
        for d in devices:
            labels = [str(d.index), d.uuid, d.name]
            info.add_metric(labels + ["1" if d.declared else "0"], 1)
            if d.utilization is not None:
                util.add_metric(labels, d.utilization)
            if d.memory_used is not None:
                mem.add_metric(labels, d.memory_used)
                mem_total.add_metric(labels, d.memory_total)
            holder = holders.get(d.uuid)
            allocated.add_metric([str(d.index), d.uuid, holder["owner"] if holder else "", "job" if holder else "", holder["id"] if holder else ""], 1 if holder else 0)
            stray.add_metric([str(d.index), d.uuid], len(stray_by_uuid.get(d.uuid, [])))
        yield from (util, mem, mem_total, info, allocated, stray)

        by_state = GaugeMetricFamily("mlpd_jobs", "Jobs by state", labels=["state"])
        counts = {r["state"]: r["n"] for r in self.store.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}
        for state in jobs.STATE_NAMES:
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        depth = GaugeMetricFamily("mlpd_queue_depth", "Queued jobs")
        depth.add_metric([], counts.get("queued", 0))
        yield depth

        now = time.time()
        hours = CounterMetricFamily("mlpd_gpu_hours", "GPU-hours allocated, all time, by user and kind", labels=["user", "kind"])
        for r in self.store.query("SELECT owner, kind, SUM((COALESCE(end, ?) - start) * share) AS secs FROM allocations GROUP BY owner, kind", [now]):
            hours.add_metric([r["owner"], r["kind"]], (r["secs"] or 0) / 3600)
        yield hours


def install(app: Flask) -> None:
    """Serve /metrics (admin token unless metrics.public)."""

    @app.get("/metrics")
    def metrics():
        from mlpd.web import config, store
        from mlpd.web.api_jobs import inventory
        from mlpd.web.auth import require_user
        from flask import g

        if not config()["metrics.public"]:
            require_user()
            if not g.user.is_admin:
                raise ApiError(403, "forbidden", "/metrics needs an admin token (or set metrics.public = true)")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StateCollector(store(), inventory()))
        from mlpd.web.serving_proxy import ServingCollector

        registry.register(ServingCollector(store()))
        from mlpd.web.api_report import PlatformCollector

        registry.register(PlatformCollector(store(), config().state_dir))  # the platform report's gauges (mlpd.scheduling.report)
        return Response(generate_latest(registry), mimetype="text/plain; version=0.0.4; charset=utf-8")
