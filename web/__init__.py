"""The Flask app: the JSON API under /api/v1, the web UI under /ui, and /healthz.

``create_app()`` has no import-time side effects; gunicorn calls it once per
worker through ``mlpd.web.wsgi``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid

from flask import Flask, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider

import mlpd
from mlpd import strict_json
from mlpd.ops import supervision
from mlpd.config import Config, load_config
from mlpd.store import Store, get_status

RESOLVED_CONFIG_ENV = "MLPD_RESOLVED_CONFIG"
log = logging.getLogger("mlpd.web")


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON, reading request bodies as mlpd.strict_json does (finite numbers, bounded depth)."""

    def loads(self, s, **kwargs):
        return strict_json.loads(s)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        from flask import has_request_context

        record.request_id = g.get("request_id", "-") if has_request_context() else "-"
        return True


def _resolved_config() -> Config:
    path = os.environ.get(RESOLVED_CONFIG_ENV)
    if path:
        with open(path) as fh:
            return Config.from_json(fh.read())
    return load_config()


def store() -> Store:
    """The state database of the running app."""
    return current_app.extensions["mlpd.store"]


def config() -> Config:
    """The resolved configuration of the running app."""
    return current_app.extensions["mlpd.config"]


def create_app(cfg: Config | None = None, runtime=None) -> Flask:
    """Build the app for a resolved configuration (by default the one the daemon wrote).

    ``runtime`` (a :class:`mlpd.runtime.protocol.Runtime`) replaces the Docker connection that
    api_jobs.runtime() would open on first use: the fast tests pass a MemoryRuntime; the daemon
    passes nothing."""
    cfg = cfg or _resolved_config()
    app = Flask("mlpd.web", static_folder=None)
    app.json = StrictJSONProvider(app)
    app.json.sort_keys = False
    app.extensions["mlpd.config"] = cfg
    app.extensions["mlpd.store"] = Store(cfg.db_path)
    if runtime is not None:
        app.extensions["mlpd.runtime.protocol"] = runtime  # what api_jobs.runtime() answers
    app.config["MAX_CONTENT_LENGTH"] = cfg["jobs.max_code_mb"] * 1024 * 1024 + 1024 * 1024

    handler = logging.StreamHandler()
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    web_log = logging.getLogger("mlpd")
    if not web_log.handlers:
        web_log.addHandler(handler)
    web_log.setLevel(cfg["server.log_level"].upper())

    from mlpd.web import (api_admin, api_data, api_jobs, api_serving, api_usage, api_workspaces, errors, metrics, openapi, ui,
                          ui_password_api)

    errors.register_error_handlers(app)
    # The API, one blueprint per area (each declares its routes with its area.route).
    for area in (api_admin.area, api_jobs.area, api_usage.area, api_workspaces.area, api_serving.area, ui_password_api.area,
                 openapi.area, api_data.area):
        app.register_blueprint(area.blueprint)
    ui.install(app)  # the web UI: /ui pages (sessions, CSRF), / redirects there

    @app.before_request
    def _start():
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or uuid.uuid4().hex[:12]
        g.started = time.monotonic()

    @app.after_request
    def _finish(response):
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        user = g.get("user")
        log.info("%s %s %s %.1fms user=%s", request.method, request.path, response.status_code,
                 (time.monotonic() - g.get("started", time.monotonic())) * 1000, user.name if user else "-")
        return response

    metrics.install(app)

    from mlpd.web.mlflow_mount import MlflowMount

    # /mlflow/... goes to MLflow's own app (loaded on first use) through mlpd's auth, before Flask.
    app.wsgi_app = MlflowMount(app.wsgi_app, cfg, app.extensions["mlpd.store"])  # type: ignore[method-assign]
    from mlpd.web.serving_proxy import ServeMount

    # /serve/NAME/... goes to a healthy replica of that deployment, before Flask (the stable endpoint).
    app.wsgi_app = ServeMount(app.wsgi_app, cfg, app.extensions["mlpd.store"])  # type: ignore[method-assign]
    from mlpd.web.content_guard import ContentGuard

    # Outermost: what a member's code wrote (a model's answer, an artifact, a log) never runs on this origin.
    app.wsgi_app = ContentGuard(app.wsgi_app)  # type: ignore[method-assign]

    @app.get("/healthz")
    def healthz():
        status = get_status(store())
        beat = status.get("worker.heartbeat")
        worker_ok = bool(beat) and time.time() - beat["updated_at"] < max(30, 3 * cfg["scheduler.reconcile_interval"])
        body = {"status": "ok", "version": mlpd.__version__, "worker": "ok" if worker_ok else "starting"}
        # The daemon's processes as it last published them (RUNNING, BACKOFF, FATAL), in lower case.
        published = status.get(supervision.STATUS_KEY)
        if published:
            children = {name: child["state"].lower() for name, child in published["value"]["children"].items()}
            if children.get("worker") == "fatal":
                body["worker"] = "fatal"
            body["children"] = children
        return jsonify(body)

    return app
