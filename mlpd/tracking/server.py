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
