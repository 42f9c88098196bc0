"""The state database: one SQLite file, WAL, one connection per thread, versioned migrations.

Read-modify-write goes through ``Store.write()``, which opens ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the busy timeout instead of failing with
"database is locked" when a deferred transaction tries to upgrade.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator



def _import_sqlite_utils():
    """Import sqlite-utils without pandas and numpy.

    sqlite-utils imports them when present (MLflow installs both) only to map their
    types in insert(); mlpd never inserts such values, and the import would add about
    half a second to every host-side CLI call and daemon start.
    """
    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  (makes `import name` raise ImportError)
    try:
        import sqlite_utils as module
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return module


sqlite_utils = _import_sqlite_utils()

BUSY_TIMEOUT_MS = 10_000


def _migration_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('member', 'admin')),
            created_at REAL NOT NULL,
            removed_at REAL
        )"""
    )
    db.execute(
        """CREATE TABLE tokens (
            id TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            secret_hash TEXT NOT NULL,
            label TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            expires_at REAL,
            revoked_at REAL,
            last_used_at REAL
        )"""
    )
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            object_kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '{}'
        )"""
    )
    db.execute("CREATE INDEX events_object ON events (object_kind, object_id)")
    db.execute("CREATE TABLE daemon_status (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL)")


def _migration_jobs(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT,
            spec TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            exit_code INTEGER,
            priority INTEGER NOT NULL DEFAULT 0,
            gpu_uuids TEXT NOT NULL DEFAULT '[]',
            gpu_indices TEXT NOT NULL DEFAULT '[]',
            container_id TEXT,
            cancel_requested_by TEXT,
            submitted_at REAL NOT NULL,
            started_at REAL,
            ended_at REAL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX jobs_state ON jobs (state)")
    db.execute("CREATE INDEX jobs_owner ON jobs (owner)")


def _migration_accounting(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN gpu_models TEXT NOT NULL DEFAULT '[]'")
    db.execute(
        """CREATE TABLE allocations (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            gpu_uuid TEXT NOT NULL,
            gpu_index INTEGER NOT NULL,
            gpu_model TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL,
            UNIQUE (kind, object_id, gpu_uuid)
        )"""
    )
    db.execute("CREATE INDEX allocations_time ON allocations (start, end)")
    db.execute("CREATE TABLE teams (name TEXT PRIMARY KEY, created_at REAL NOT NULL)")
    db.execute("CREATE TABLE team_members (team TEXT NOT NULL REFERENCES teams(name) ON DELETE CASCADE, user TEXT NOT NULL, PRIMARY KEY (team, user))")
    db.execute(
        """CREATE TABLE quotas (
            subject_kind TEXT NOT NULL CHECK (subject_kind IN ('user', 'team')),
            subject TEXT NOT NULL,
            gpu_hours REAL,
            max_gpus INTEGER,
            updated_at REAL NOT NULL,
            PRIMARY KEY (subject_kind, subject)
        )"""
    )
    db.execute("CREATE TABLE gpu_samples (at REAL NOT NULL, gpu_uuid TEXT NOT NULL, utilization REAL NOT NULL, memory_used REAL NOT NULL, resolution REAL NOT NULL)")
    db.execute("CREATE INDEX gpu_samples_at ON gpu_samples (gpu_uuid, at)")


def _migration_scopes(db: sqlite_utils.Database) -> None:
    """Job-scoped tokens (a column, not a label a member could also write) and code archives owned by their uploaders."""
    db.execute("ALTER TABLE tokens ADD COLUMN job_id TEXT")
    # Tokens minted for jobs so far carried only their label; scoping them can only take power away.
    db.execute("UPDATE tokens SET job_id = substr(label, 5) WHERE label LIKE 'job:%'")
    db.execute("CREATE INDEX tokens_job ON tokens (job_id)")
    db.execute(
        """CREATE TABLE code_owners (
            digest TEXT NOT NULL,
            owner TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (digest, owner)
        )"""
    )


def _migration_drains(db: sqlite_utils.Database) -> None:
    """GPUs drained by an admin at run time (mlpd.toml's gpus.drained still counts too)."""
    db.execute("CREATE TABLE gpu_drains (gpu_uuid TEXT PRIMARY KEY, reason TEXT NOT NULL, actor TEXT NOT NULL, at REAL NOT NULL)")


def _migration_scheduler(db: sqlite_utils.Database) -> None:
    """The queued job holding the scheduler's reservation keeps it across passes (when it got it; NULL: none)."""
    db.execute("ALTER TABLE jobs ADD COLUMN reserved_at REAL")


def _migration_ui(db: sqlite_utils.Database) -> None:
    """Web UI logins: a password per user (slow hash), failed-login counts for lockout, and
    server-side sessions (only a hash of the cookie's secret is stored, so a copy of the
    database opens no session; logout and user removal end them at once)."""
    db.execute("ALTER TABLE users ADD COLUMN password_hash TEXT")
    db.execute("ALTER TABLE users ADD COLUMN password_changed_at REAL")
    # Keyed by the name typed, existing or not, so a lockout says nothing about who exists.
    db.execute("CREATE TABLE login_failures (name TEXT PRIMARY KEY, failures INTEGER NOT NULL, first_at REAL NOT NULL, locked_until REAL)")
    db.execute(
        """CREATE TABLE ui_sessions (
            id_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            csrf TEXT NOT NULL,
            method TEXT NOT NULL,
            created_at REAL NOT NULL,
            last_seen_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX ui_sessions_user ON ui_sessions (user_id)")


# Append only: a migration, once shipped, never changes; add a new one instead.
def _migration_workloads(db: sqlite_utils.Database) -> None:
    """Workloads of several kinds in one table (jobs; sessions of workspaces; replicas of deployments),
    so that they share the scheduler, the runtime, the ledger and reconciliation; and workspaces."""
    db.execute("ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'job'")
    db.execute("ALTER TABLE jobs ADD COLUMN workload TEXT")  # the workspace or deployment this row runs
    db.execute("ALTER TABLE jobs ADD COLUMN cancel_reason TEXT")  # why it was stopped, when not simply 'cancelled by X'
    db.execute("CREATE INDEX jobs_kind ON jobs (kind, state)")
    db.execute(
        """CREATE TABLE workspaces (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            token TEXT NOT NULL,
            port INTEGER NOT NULL UNIQUE,
            ssh_port INTEGER NOT NULL UNIQUE,
            session TEXT,
            last_activity REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (owner, name)
        )"""
    )
    db.execute("ALTER TABLE users ADD COLUMN ws_idle_timeout REAL")  # an admin's longer idle timeout for this user
    db.execute(
        """CREATE TABLE ssh_keys (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            key TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (owner, fingerprint)
        )"""
    )


def _migration_preemption(db: sqlite_utils.Database) -> None:
    """Preemption by priority class: a job runs in attempts (jobs.attempts, 1 for the first run),
    a preemption is asked for and then done (preempt_requested_at, preempt_reason), and the ledger
    books each attempt on its own rows: allocations gains `attempt`, and its UNIQUE key with it
    (SQLite cannot change a constraint in place, so the table is rebuilt, ids and rows kept)."""
    db.execute("ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1")
    db.execute("ALTER TABLE jobs ADD COLUMN preempt_requested_at REAL")
    db.execute("ALTER TABLE jobs ADD COLUMN preempt_reason TEXT")
    db.execute(
        """CREATE TABLE allocations_new (
            id INTEGER PRIMARY KEY,
            owner TEXT NOT NULL,
            kind TEXT NOT NULL,
            object_id TEXT NOT NULL,
            attempt INTEGER NOT NULL DEFAULT 1,
            gpu_uuid TEXT NOT NULL,
            gpu_index INTEGER NOT NULL,
            gpu_model TEXT NOT NULL,
            start REAL NOT NULL,
            end REAL,
            UNIQUE (kind, object_id, attempt, gpu_uuid)
        )"""
    )
    db.execute("""INSERT INTO allocations_new (id, owner, kind, object_id, attempt, gpu_uuid, gpu_index, gpu_model, start, end)
                  SELECT id, owner, kind, object_id, 1, gpu_uuid, gpu_index, gpu_model, start, end FROM allocations""")
    db.execute("DROP TABLE allocations")
    db.execute("ALTER TABLE allocations_new RENAME TO allocations")
    db.execute("CREATE INDEX allocations_time ON allocations (start, end)")


def _migration_serving(db: sqlite_utils.Database) -> None:
    """Deployments (a registered model served behind a stable endpoint), their revisions (one model
    version each: rolling out, serving, draining, retired or failed) and their replicas (a workload row
    of kind deployment each, with the loopback port it publishes and what its last health check saw)."""
    db.execute(
        """CREATE TABLE deployments (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL UNIQUE,
            model_uri TEXT NOT NULL,
            follow_alias INTEGER NOT NULL DEFAULT 0,
            followed_version TEXT,
            spec TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            current TEXT,
            canary TEXT,
            restarts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE deployment_revisions (
            id TEXT PRIMARY KEY,
            deployment TEXT NOT NULL,
            seq INTEGER NOT NULL,
            model_uri TEXT NOT NULL,
            model_name TEXT,
            model_version TEXT,
            run_id TEXT,
            location TEXT NOT NULL,
            requirements TEXT,
            canary_percent INTEGER,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            switched_at REAL,
            drain_until REAL,
            ended_at REAL,
            UNIQUE (deployment, seq)
        )"""
    )
    db.execute(
        """CREATE TABLE deployment_replicas (
            job_id TEXT PRIMARY KEY,
            deployment TEXT NOT NULL,
            revision TEXT NOT NULL,
            slot INTEGER NOT NULL,
            port INTEGER NOT NULL,
            healthy INTEGER NOT NULL DEFAULT 0,
            last_ok_at REAL,
            last_check_at REAL,
            last_check_error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        )"""
    )
    db.execute("CREATE INDEX deployment_replicas_revision ON deployment_replicas (revision)")
    # Request counts of the stable endpoint, one row per deployment, revision and web worker process
    # (each adds its own counts every few seconds; the totals are the sums).
    db.execute(
        """CREATE TABLE deployment_metrics (
            deployment TEXT NOT NULL,
            revision TEXT NOT NULL,
            source TEXT NOT NULL,
            requests INTEGER NOT NULL DEFAULT 0,
            errors INTEGER NOT NULL DEFAULT 0,
            seconds REAL NOT NULL DEFAULT 0,
            buckets TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (deployment, revision, source)
        )"""
    )
    db.execute("CREATE INDEX deployment_revisions_deployment ON deployment_revisions (deployment, state)")


def _migration_priority_grants(db: sqlite_utils.Database) -> None:
    """Priority classes granted by an admin at run time (`mlpd admin priority-class grant`): a user or
    "team:NAME" may use the class, besides those mlpd.toml's scheduler.priority_class_users names."""
    db.execute(
        """CREATE TABLE priority_grants (
            class TEXT NOT NULL,
            subject TEXT NOT NULL,
            actor TEXT NOT NULL,
            granted_at REAL NOT NULL,
            PRIMARY KEY (class, subject)
        )"""
    )


MIGRATIONS: tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...] = (
    ("0001_initial", _migration_initial),
    ("0002_jobs", _migration_jobs),
    ("0003_accounting", _migration_accounting),
    ("0004_scopes", _migration_scopes),
    ("0005_drains", _migration_drains),
    ("0006_workloads", _migration_workloads),
    ("0007_scheduler", _migration_scheduler),
    ("0008_ui", _migration_ui),
    ("0009_serving", _migration_serving),
    ("0010_preemption", _migration_preemption),
    ("0011_priority_grants", _migration_priority_grants),
)


class NewerDatabase(Exception):
    """The state database comes from a newer mlpd; the message says what to do."""


class Store:
    """The state database, shared by the web workers, the worker process and host-side admin commands."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection (SQLite connections must not cross threads)."""
        db = getattr(self._local, "db", None)
        if db is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            db = sqlite_utils.Database(conn)
            self._local.db, self._local.pid = db, os.getpid()
        return db

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A read-modify-write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """Rows as dicts."""
        return list(self.db.query(sql, params))

    def query_one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def migrate(self) -> list[str]:
        """Apply pending migrations in order, each in its own transaction; return the names applied.

        Raises NewerDatabase, changing nothing, for a database a newer mlpd has migrated: this
        release would not know what those migrations mean.
        """
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        known = {name for name, _ in MIGRATIONS}
        unknown = sorted(r["name"] for r in self.query("SELECT name FROM schema_migrations") if r["name"] not in known)
        if unknown:
            raise NewerDatabase(f"{self.path} was written by a newer mlpd (its migrations {', '.join(unknown)} are unknown to this "
                                "release); upgrade mlpd, or restore a backup taken with this release ('mlpd admin restore')")
        applied = []
        for name, migration in MIGRATIONS:
            with self.write() as db:
                if db.execute("SELECT 1 FROM schema_migrations WHERE name = ?", [name]).fetchone():
                    continue
                migration(db)
                db.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)", [name, time.time()])
                applied.append(name)
        return applied

    def pending_migrations(self) -> list[str]:
        """Names of migrations not yet applied (the daemon applies them at start)."""
        if not os.path.exists(self.path):
            return [name for name, _ in MIGRATIONS]
        if "schema_migrations" not in self.db.table_names():
            return [name for name, _ in MIGRATIONS]
        done = {row["name"] for row in self.query("SELECT name FROM schema_migrations")}
        return [name for name, _ in MIGRATIONS if name not in done]


def record_event(db: sqlite_utils.Database, actor: str, action: str, object_kind: str, object_id: str, at: float | None = None, **detail: Any) -> None:
    """Append one row to the audit trail; call inside the transaction that makes the change."""
    db.execute(
        "INSERT INTO events (at, actor, action, object_kind, object_id, detail) VALUES (?, ?, ?, ?, ?, ?)",
        [at if at is not None else time.time(), actor, action, object_kind, str(object_id), json.dumps(detail, sort_keys=True)],
    )


def set_status(store: Store, key: str, value: Any) -> None:
    """Record a piece of daemon status (e.g. the last reconcile) for /healthz and the API."""
    with store.write() as db:
        db.execute(
            "INSERT INTO daemon_status (key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            [key, json.dumps(value), time.time()],
        )


def get_status(store: Store) -> dict[str, Any]:
    """All daemon status entries with the time each was written."""
    return {row["key"]: {"value": json.loads(row["value"]), "updated_at": row["updated_at"]} for row in store.query("SELECT * FROM daemon_status")}
