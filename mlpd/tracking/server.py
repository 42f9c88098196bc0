"""The embedded MLflow tracking server and model registry: its state, its settings, its start.

mlpd runs MLflow's own Flask app inside its gunicorn workers, under /mlflow, rather
than supervising a separate ``mlflow server``. Why in-process:

- Memory. A stock ``mlflow server`` is a uvicorn/FastAPI front with its own worker
  processes (about 1.3 GB resident with its job runner off, 3 GB with it on); the
  mounted app costs what its imports cost in the workers that serve /mlflow, and
  nothing until the first /mlflow request (it is imported lazily).
- Latency and throughput. No second HTTP hop and no second server to start, watch,
  restart and secure. With WAL and synchronous=NORMAL on MLflow's SQLite connections
  (see :func:`tune_sqlite`) a commit no longer waits for fsync, which is what bounds a
  stock server's single log_metric calls on a small disk.
- One front door. mlpd's token check and ownership rules sit in front of MLflow as a
  WSGI wrapper (``mlpd.web.mlflow_mount``) on the same port, so there is no second
  port to firewall and no MLflow credentials to hand out.

The price: MLflow shares the workers' Python processes (an MLflow bug can take a worker
down; gunicorn restarts it), and MLflow's version is pinned with mlpd's.

This is the one module that imports MLflow's server code, always inside functions so
that ``import mlpd`` and the CLI stay fast. Its database is created or upgraded before
gunicorn forks (``python -m mlpd.tracking.server init STATE_DIR``, run by the daemon), so
workers never race on migrations. Ownership lookups read MLflow's SQLite file
directly (:class:`TrackingDb`): a primary-key lookup per request, without loading runs.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import threading
from typing import Any

log = logging.getLogger("mlpd.tracking.server")

PREFIX = "/mlflow"
ARTIFACT_ROOT = "mlflow-artifacts:/"
CONTAINER_HOST = "host.docker.internal"  # the runtime maps it to the host gateway in every container
OWNER_TAG = "mlpd.owner"  # on experiments, registered models and logged models: who may change them


class TrackingError(Exception):
    """MLflow's store could not be prepared; the message says why."""


# ---------------------------------------------------------------- where things live


def mlflow_dir(state_dir: str) -> str:
    """MLflow's part of the state directory."""
    return os.path.join(state_dir, "mlflow")


def db_path(state_dir: str) -> str:
    """MLflow's SQLite backend store (runs, metrics, experiments, the registry)."""
    return os.path.join(mlflow_dir(state_dir), "mlflow.db")


def artifacts_dir(state_dir: str) -> str:
    """Where proxied artifacts are stored: ``<experiment>/<run>/artifacts/...``."""
    return os.path.join(mlflow_dir(state_dir), "artifacts")


def backend_uri(state_dir: str) -> str:
    return "sqlite:///" + db_path(state_dir)


# ---------------------------------------------------------------- addresses


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def container_url(config) -> str | None:
    """The daemon's URL as job containers see it, or None when they cannot reach it."""
    listen_host, listen_port = split_listen(config["server.listen"])
    extra = config["server.container_listen"]
    if extra and extra != "auto":
        return f"http://{CONTAINER_HOST}:{split_listen(extra)[1]}"
    if is_wildcard(listen_host):
        return f"http://{CONTAINER_HOST}:{listen_port}"
    return None


# MLflow's own defaults (mlflow.server.security_utils, which cannot be imported without
# importing the server, and so fixing its settings, first): loopback and private addresses.
_MLFLOW_DEFAULT_HOSTS = ["localhost", "127.0.0.1", "[::1]", "0.0.0.0", "localhost:*", "127.0.0.1:*", "[[]::1]:*", "0.0.0.0:*",
                         "192.168.*", "10.*", *[f"172.{i}.*" for i in range(16, 32)], "fc00:*", "fd00:*"]


def allowed_hosts(config) -> list[str]:
    """Host header names the embedded MLflow accepts (its DNS-rebinding check): MLflow's
    defaults, host.docker.internal (job containers), the daemon's addresses and mlflow.allowed_hosts."""
    names = [CONTAINER_HOST, split_listen(config["server.listen"])[0]]
    extra = config["server.container_listen"]
    if extra and extra != "auto":
        names.append(split_listen(extra)[0])
    names += list(config["mlflow.allowed_hosts"])
    out: list[str] = list(_MLFLOW_DEFAULT_HOSTS)
    for name in names:
        if name and not is_wildcard(name):
            for pattern in (name, f"{name}:*"):
                if pattern not in out:
                    out.append(pattern)
    return out


def server_env(config) -> dict[str, str]:
    """The environment MLflow's server module reads when it is imported."""
    state = config.state_dir
    uri = backend_uri(state)
    return {
        "_MLFLOW_SERVER_FILE_STORE": uri,
        "_MLFLOW_SERVER_REGISTRY_STORE": uri,
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_ROOT": ARTIFACT_ROOT,
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": artifacts_dir(state),
        "_MLFLOW_STATIC_PREFIX": PREFIX,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(allowed_hosts(config)),
    }


# ---------------------------------------------------------------- SQLite tuning


def _tune_connection(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer. NORMAL: a commit is durable against a crash
        # of the process (WAL is synced at checkpoints), not against a power cut in the last
        # moments; for experiment tracking that is the right trade, and it removes the fsync
        # per logged metric that bounds a stock server.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def tune_sqlite() -> None:
    """WAL and synchronous=NORMAL on every SQLite connection SQLAlchemy opens in this process."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", _tune_connection):
        event.listen(Engine, "connect", _tune_connection)


# ---------------------------------------------------------------- the store


def _stamp(state_dir: str) -> str:
    from importlib.metadata import version

    return os.path.join(mlflow_dir(state_dir), f".schema-mlflow-{version('mlflow')}")


def init_store(state_dir: str) -> list[str]:
    """Create MLflow's database, or upgrade it to this MLflow's schema (a copy is kept first)."""
    os.makedirs(artifacts_dir(state_dir), mode=0o700, exist_ok=True)
    os.chmod(mlflow_dir(state_dir), 0o700)
    tune_sqlite()
    from mlflow.store.db import utils as dbutils

    uri = backend_uri(state_dir)
    done = []
    engine = dbutils.create_sqlalchemy_engine_with_retry(uri)
    if dbutils._is_empty_database(engine):
        dbutils._initialize_tables(engine)
        done.append("created")
    else:
        current, head = dbutils._get_schema_version(engine), dbutils._get_latest_schema_revision()
        if current != head:
            backup = f"{db_path(state_dir)}.before-{head}"
            with sqlite3.connect(db_path(state_dir)) as src, sqlite3.connect(backup) as dst:
                src.backup(dst)
            dbutils._upgrade_db(engine)
            done.append(f"upgraded {current} -> {head} (copy kept in {os.path.basename(backup)})")
    engine.dispose()
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    SqlAlchemyStore(uri, ARTIFACT_ROOT)  # verifies the schema, creates the Default experiment
    RegistryStore(uri)
    for old in os.listdir(mlflow_dir(state_dir)):
        if old.startswith(".schema-mlflow-"):
            os.remove(os.path.join(mlflow_dir(state_dir), old))
    with open(_stamp(state_dir), "w") as fh:
        fh.write(dbutils._get_latest_schema_revision())
    return done


def ensure_store(state_dir: str, timeout: float = 600) -> None:
    """Make MLflow's database ready in a subprocess (so this process never imports mlflow).

    Skipped when the stamp of this MLflow version is there: the schema is already current.
    """
    if os.path.exists(db_path(state_dir)) and os.path.exists(_stamp(state_dir)):
        return
    os.makedirs(mlflow_dir(state_dir), mode=0o700, exist_ok=True)
    try:
        result = subprocess.run([sys.executable, "-m", "mlpd.tracking.server", "init", state_dir], capture_output=True, text=True,
                                timeout=timeout, cwd=mlflow_dir(state_dir))
    except subprocess.TimeoutExpired:
        raise TrackingError(f"preparing MLflow's database {db_path(state_dir)} took over {timeout:.0f}s") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise TrackingError(f"preparing MLflow's database {db_path(state_dir)} failed:\n{tail}")
    for line in result.stdout.splitlines():
        log.info("mlflow store: %s", line)


# ---------------------------------------------------------------- the server app

_app_lock = threading.Lock()
_app: Any = None


def server_app(config):
    """MLflow's WSGI app (imported on first use, once per process), configured for this daemon."""
    global _app
    with _app_lock:
        if _app is None:
            os.environ.update(server_env(config))
            tune_sqlite()
            import mlflow.server

            _app = mlflow.server.app
            log.info("MLflow %s loaded (store %s)", _mlflow_version(), db_path(config.state_dir))
        return _app


def _mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


# ---------------------------------------------------------------- spans over OTLP (MLflow serves these only from FastAPI)


def parse_otlp_spans(body: bytes, media_type: str) -> list[Any]:
    """The spans of an OTLP/HTTP trace export (protobuf, or OTLP's JSON with hex ids) as MLflow Span objects.
    ValueError when the body is not one."""
    from google.protobuf.json_format import Error as JsonFormatError, Parse
    from google.protobuf.message import DecodeError
    from mlflow.entities.span import Span
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    try:
        if media_type == "application/json":
            from mlflow.server.otel_api import _convert_otlp_json_ids_to_base64

            Parse(_convert_otlp_json_ids_to_base64(body), request, ignore_unknown_fields=True)
        else:
            request.ParseFromString(body)
    except (DecodeError, JsonFormatError, ValueError) as exc:
        raise ValueError(f"not an OTLP trace export: {str(exc)[:200]}") from None
    spans = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for proto in scope_spans.spans:
                try:
                    spans.append(Span.from_otel_proto(proto, resource=resource_spans.resource))
                except Exception as exc:  # MLflow's converter raises whatever the malformed span makes it raise
                    raise ValueError(f"a span MLflow cannot read: {str(exc)[:200]}") from None
    if not spans:
        raise ValueError("the export holds no spans")
    return spans


def span_attributes(span: Any) -> dict[str, Any]:
    """A span's attributes (keys as sent)."""
    return dict(span._span.attributes or {})


def _store_call(config, call):
    """Run call(store) on MLflow's tracking store; MLflow's refusals come back as mlpd refusals with MLflow's code."""
    from mlpd.tracking.policy import Refused

    server_app(config)
    from mlflow.exceptions import MlflowException
    from mlflow.server.handlers import _get_tracking_store

    try:
        return call(_get_tracking_store())
    except MlflowException as exc:
        raise Refused(exc.get_http_status_code(), "mlflow_refused", exc.message, exc.error_code) from None


def claim_trace(config, experiment_id: str, trace_id: str, owner: str, request_time_ms: int) -> None:
    """Create an in-progress trace owned by `owner` (its mlpd.owner tag) before its first spans are logged, so
    the trace has its owner from the moment it exists. MLflow merges the spans and the client's trace into it."""
    from mlflow.entities import TraceInfo, TraceLocation, TraceState

    info = TraceInfo(trace_id=trace_id, trace_location=TraceLocation.from_experiment_id(experiment_id), request_time=request_time_ms,
                     state=TraceState.IN_PROGRESS, tags={OWNER_TAG: owner})
    _store_call(config, lambda store: store.start_trace(info))


def log_spans(config, experiment_id: str, spans: list[Any]) -> None:
    """Store spans in MLflow's tracking store (as MLflow's OTLP endpoint does)."""
    _store_call(config, lambda store: store.log_spans(experiment_id, spans))


def link_traces_to_run(config, trace_ids: list[str], run_id: str) -> None:
    _store_call(config, lambda store: store.link_traces_to_run(trace_ids, run_id))


# ---------------------------------------------------------------- ownership lookups


class TrackingDb:
    """Read-only lookups in MLflow's SQLite file: who owns a run, experiment or model.

    MLflow's own store would load whole runs (tags, params, latest metrics) to answer
    "whose run is this?"; this reads one row. A run's owner never changes, so it is cached.
    The table and column names are MLflow's schema (stable since MLflow 1.x); the
    integration tests run against the real thing.
    """

    def __init__(self, state_dir: str):
        self.path = db_path(state_dir)
        self._local = threading.local()
        self._run_owner: dict[str, tuple[str, str]] = {}

    def _db(self) -> sqlite3.Connection | None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not os.path.exists(self.path):
                return None
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            self._local.conn = conn
        return conn

    def _one(self, sql: str, params: list[Any]) -> tuple | None:
        db = self._db()
        return db.execute(sql, params).fetchone() if db is not None else None

    def run(self, run_id: str) -> tuple[str, str] | None:
        """(owner, experiment id) of a run, or None when there is no such run."""
        if run_id in self._run_owner:
            return self._run_owner[run_id]
        row = self._one("SELECT user_id, experiment_id FROM runs WHERE run_uuid = ?", [run_id])
        if row is None:
            return None
        if len(self._run_owner) > 50000:
            self._run_owner.clear()
        self._run_owner[run_id] = found = (row[0] or "", str(row[1]))
        return found

    def run_artifact_uri(self, run_id: str) -> str | None:
        """Where a run's artifacts are (None when there is no such run)."""
        row = self._one("SELECT artifact_uri FROM runs WHERE run_uuid = ?", [run_id])
        return (row[0] or "") if row else None

    def run_job_id(self, run_id: str) -> str:
        """The mlpd job that created a run ('' for a run a person created)."""
        row = self._one("SELECT value FROM tags WHERE run_uuid = ? AND key = 'mlpd.job_id'", [run_id])
        return row[0] if row else ""

    def model_version_location(self, name: str, version: str) -> str | None:
        """Where MLflow reads a model version's files from (its download URI), or None when there is no such version."""
        row = self._one("SELECT storage_location, source FROM model_versions WHERE name = ? AND version = ?", [name, version])
        return (row[0] or row[1] or "") if row else None

    def logged_model_location(self, model_id: str) -> str | None:
        """Where a logged model's files are (None when there is no such model)."""
        row = self._one("SELECT artifact_location FROM logged_models WHERE model_id = ?", [model_id])
        return (row[0] or "") if row else None

    def trace_exists(self, trace_id: str) -> bool:
        return self._one("SELECT 1 FROM trace_info WHERE request_id = ?", [trace_id]) is not None

    def trace(self, trace_id: str) -> tuple[str, str] | None:
        """(owner, experiment id) of a trace, or None when there is no such trace. The owner is its
        mlpd.owner tag ('' for a trace from before mlpd recorded one: admins only)."""
        row = self._one("SELECT experiment_id FROM trace_info WHERE request_id = ?", [trace_id])
        if row is None:
            return None
        tag = self._one("SELECT value FROM trace_tags WHERE request_id = ? AND key = ?", [trace_id, OWNER_TAG])
        return (tag[0] or "") if tag else "", str(row[0])

    def dataset_owner(self, dataset_id: str) -> str | None:
        """The owner of an evaluation dataset (its mlpd.owner tag; '' for none), or None when there is no such dataset."""
        if self._one("SELECT 1 FROM evaluation_datasets WHERE dataset_id = ?", [dataset_id]) is None:
            return None
        tag = self._one("SELECT value FROM evaluation_dataset_tags WHERE dataset_id = ? AND key = ?", [dataset_id, OWNER_TAG])
        return (tag[0] or "") if tag else ""

    def trace_artifact_location(self, request_id: str) -> str | None:
        """Where a trace's data is (None when MLflow has no such trace or keeps no location for it)."""
        row = self._one("SELECT value FROM trace_tags WHERE request_id = ? AND key = 'mlflow.artifactLocation'", [request_id])
        return row[0] if row else None

    def experiment_exists(self, experiment_id: str) -> bool:
        return self._one("SELECT 1 FROM experiments WHERE experiment_id = ?", [experiment_id]) is not None

    def experiment_owner(self, experiment_id: str) -> str:
        row = self._one("SELECT value FROM experiment_tags WHERE experiment_id = ? AND key = ?", [experiment_id, OWNER_TAG])
        return row[0] if row else ""

    def model_exists(self, name: str) -> bool:
        return self._one("SELECT 1 FROM registered_models WHERE name = ?", [name]) is not None

    def model_owner(self, name: str) -> str:
        row = self._one("SELECT value FROM registered_model_tags WHERE name = ? AND key = ?", [name, OWNER_TAG])
        return row[0] if row else ""

    def logged_model(self, model_id: str) -> tuple[str, str] | None:
        """(owner, experiment id) of a logged model: its owner tag, else its source run's owner."""
        row = self._one("SELECT experiment_id, source_run_id FROM logged_models WHERE model_id = ?", [model_id])
        if row is None:
            return None
        tag = self._one("SELECT tag_value FROM logged_model_tags WHERE model_id = ? AND tag_key = ?", [model_id, OWNER_TAG])
        owner = tag[0] if tag else ((self.run(row[1]) or ("", ""))[0] if row[1] else "")
        return owner, str(row[0])

    def _all(self, sql: str, params: list[Any]) -> list[tuple]:
        """Rows, or none when MLflow's file does not exist yet or has no tables yet (MLflow unused)."""
        db = self._db()
        if db is None:
            return []
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            return []

    def models_registered(self, since: float, until: float) -> list[dict[str, Any]]:
        """Registered models created in [since, until) (MLflow keeps milliseconds), oldest first (the platform report)."""
        rows = self._all("SELECT name, creation_time FROM registered_models WHERE creation_time >= ? AND creation_time < ? "
                         "ORDER BY creation_time, name", [since * 1000, until * 1000])
        return [{"model": r[0], "registered_at": r[1] / 1000} for r in rows]

    def first_runs(self) -> dict[str, float]:
        """Registered model -> the start (unix seconds) of the first run of its experiment: the experiment of
        the run that made its lowest-numbered version naming a run, and the earliest start_time in it."""
        rows = self._all("""
            SELECT mv.name, (SELECT MIN(r2.start_time) FROM runs r2 WHERE r2.experiment_id = r.experiment_id)
            FROM model_versions mv JOIN runs r ON r.run_uuid = mv.run_id
            WHERE CAST(mv.version AS INTEGER) = (SELECT MIN(CAST(v.version AS INTEGER)) FROM model_versions v
                                                 JOIN runs rr ON rr.run_uuid = v.run_id WHERE v.name = mv.name)""", [])
        return {r[0]: r[1] / 1000 for r in rows if r[1] is not None}

    def runs_for_job(self, job_id: str) -> list[dict[str, Any]]:
        """The MLflow runs a job created (tagged mlpd.job_id), oldest first."""
        db = self._db()
        if db is None:
            return []
        rows = db.execute(
            """SELECT r.run_uuid, r.experiment_id, r.name, r.status, r.lifecycle_stage, r.start_time
               FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid
               WHERE t.key = 'mlpd.job_id' AND t.value = ? ORDER BY r.start_time""", [job_id]).fetchall()
        return [{"run_id": r[0], "experiment_id": str(r[1]), "name": r[2], "status": r[3], "deleted": r[4] == "deleted"} for r in rows]

    def latest_metric(self, run_ids: list[str], key: str) -> dict[str, float]:
        """Each run's latest value of metric `key` (runs without it are left out)."""
        db = self._db()
        if db is None or not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        rows = db.execute(f"SELECT run_uuid, value, is_nan FROM latest_metrics WHERE key = ? AND run_uuid IN ({marks})", [key, *run_ids])
        return {r[0]: float(r[1]) for r in rows if not r[2]}

    def metric_history(self, run_ids: list[str], key: str, up_to_step: int) -> dict[str, list[tuple[int, float]]]:
        """Each run's (step, value) points of metric `key`: every point up to `up_to_step`, and the last step
        beyond it (so a caller knows the run got that far)."""
        db = self._db()
        if db is None or not run_ids:
            return {}
        marks = ",".join("?" * len(run_ids))
        out: dict[str, list[tuple[int, float]]] = {}
        for run_id, step, value in db.execute(f"""SELECT run_uuid, step, value FROM metrics WHERE key = ? AND is_nan = 0
                                                  AND run_uuid IN ({marks}) AND step <= ?""", [key, *run_ids, up_to_step]):
            out.setdefault(run_id, []).append((int(step), float(value)))
        for run_id, step in db.execute(f"SELECT run_uuid, MAX(step) FROM metrics WHERE key = ? AND run_uuid IN ({marks}) AND step > ? "
                                       "GROUP BY run_uuid", [key, *run_ids, up_to_step]):
            out.setdefault(run_id, []).append((int(step), float("nan")))
        return out

    def run_statuses(self, run_ids: list[str]) -> dict[str, tuple[str, str]]:
        """{run id: (status, experiment id)} of these runs."""
        db = self._db()
        if db is None or not run_ids:
            return {}
        rows = db.execute(f"SELECT run_uuid, status, experiment_id FROM runs WHERE run_uuid IN ({','.join('?' * len(run_ids))})", run_ids)
        return {r[0]: (r[1], str(r[2])) for r in rows}


# ---------------------------------------------------------------- sweeps (mlpd.automation.sweeps)

_stores_lock = threading.Lock()
_stores: dict[str, Any] = {}


def _tracking_store(state_dir: str):
    """MLflow's tracking store on the daemon's database (one per process), for what mlpd writes itself."""
    if not os.path.exists(db_path(state_dir)):
        raise TrackingError(f"MLflow's database {db_path(state_dir)} is not there (the daemon prepares it at start)")
    with _stores_lock:
        if state_dir not in _stores:
            tune_sqlite()
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            _stores[state_dir] = SqlAlchemyStore(backend_uri(state_dir), ARTIFACT_ROOT)
        return _stores[state_dir]


def create_sweep_runs(state_dir: str, owner: str, experiment: str, sweep_id: str, name: str, trials: list[dict[str, str]],
                      metric: str, goal: str) -> tuple[str, list[str]]:
    """A sweep's parent run and one child run per trial (tagged mlflow.parentRunId, with the trial's
    parameters logged), in `experiment` (made, owned by `owner`, when it does not exist); all of them
    the owner's. Returns (parent run id, child run ids). A trial's job resumes its child run
    (MLFLOW_RUN_ID), so what its code logs lands there. TrackingError when MLflow cannot be written."""
    import time as _time

    from mlflow.entities import ExperimentTag, Param, RunTag

    try:
        store = _tracking_store(state_dir)
        found = store.get_experiment_by_name(experiment)
        if found is None:
            experiment_id = store.create_experiment(experiment, tags=[ExperimentTag(OWNER_TAG, owner)])
        elif found.lifecycle_stage == "deleted":
            raise TrackingError(f"experiment {experiment!r} is deleted; restore it or choose another (--experiment)")
        else:
            experiment_id = found.experiment_id
        now = int(_time.time() * 1000)
        common = [RunTag("mlflow.user", owner), RunTag("mlpd.user", owner), RunTag("mlpd.sweep_id", sweep_id)]
        parent = store.create_run(experiment_id, owner, now, common + [RunTag("mlpd.sweep_metric", metric), RunTag("mlpd.sweep_goal", goal)],
                                  name or f"sweep-{sweep_id}")
        parent_id = parent.info.run_id
        children = []
        for n, values in enumerate(trials, start=1):
            run = store.create_run(experiment_id, owner, now, common + [RunTag("mlflow.parentRunId", parent_id), RunTag("mlpd.trial", str(n))],
                                   f"{name or 'sweep'}-{n}")
            store.log_batch(run.info.run_id, metrics=[], params=[Param(k, v) for k, v in values.items()], tags=[])
            children.append(run.info.run_id)
        return parent_id, children
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow could not record the sweep's runs: {exc}") from exc


def tag_runs(state_dir: str, tags_by_run: dict[str, dict[str, str]]) -> None:
    """Set mlpd's tags on runs mlpd made (a trial's mlpd.job_id, once its job exists)."""
    from mlflow.entities import RunTag

    store = _tracking_store(state_dir)
    for run_id, tags in tags_by_run.items():
        store.log_batch(run_id, metrics=[], params=[], tags=[RunTag(k, v) for k, v in tags.items()])


def end_runs(state_dir: str, statuses: dict[str, str]) -> None:
    """End runs mlpd made that are still RUNNING (a trial that never ran, or ended before its code did): FINISHED, FAILED or KILLED."""
    import time as _time

    store = _tracking_store(state_dir)
    for run_id, status in statuses.items():
        if store.get_run(run_id).info.status == "RUNNING":
            store.update_run_info(run_id, status, int(_time.time() * 1000), None)


def run_url(base_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run."""
    return f"{base_url.rstrip('/')}{PREFIX}/#/experiments/{experiment_id}/runs/{run_id}"


def main(argv: list[str]) -> int:
    """``python -m mlpd.tracking.server init STATE_DIR``: create or upgrade MLflow's database."""
    if len(argv) != 2 or argv[0] != "init":
        print("usage: python -m mlpd.tracking.server init STATE_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    for line in init_store(os.path.abspath(argv[1])):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
