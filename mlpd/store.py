"""The state database: one SQLite file, WAL, one connection per thread, migrations by sqlite-utils.

Read-modify-write goes through ``Store.write()``, which opens ``BEGIN IMMEDIATE`` so
that concurrent writers queue on the busy timeout instead of failing with
"database is locked" when a deferred transaction tries to upgrade.

Migrations are named functions in ``MIGRATIONS`` (append only), run by sqlite-utils'
own ``Migrations`` and recorded in its ``_sqlite_migrations`` table. They build tables
with the sqlite-utils table API (``db[name].create``, ``add_column``, ``create_index``,
``transform``); raw SQL remains only where that API cannot say the schema exactly.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sqlite3
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator


def _import_sqlite_utils():
    """Import sqlite-utils without pandas and numpy.

    sqlite-utils imports both whenever they are installed (MLflow installs them), only to map
    their types in insert(); mlpd never inserts such values. Importing them costs every process
    that opens the state database about half a second of CPU: measured with
    bench/bench_store.py, a daemon start answers in about half the time and a host-side
    `mlpd admin ... --state-dir` in about a quarter. So they are hidden from that one import
    (`sys.modules[name] = None` makes `import name` raise ImportError) and put back at once:
    a later `import pandas` (MLflow's, in a web worker) works as usual. This runs at this
    module's import, before any thread of ours exists; imported lazily from a request thread,
    it could hide pandas from another thread importing MLflow at that moment.
    """
    hidden = [name for name in ("pandas", "numpy") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None
    try:
        import sqlite_utils as module
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return module


if TYPE_CHECKING:
    import sqlite_utils
else:
    sqlite_utils = _import_sqlite_utils()

BUSY_TIMEOUT_MS = 10_000
MIGRATION_SET = "mlpd"  # this application's rows in sqlite-utils' _sqlite_migrations table

# Where the table API falls short, so a migration keeps raw SQL for that statement:
# - CHECK constraints: Table.create() takes none (users.role, quotas.subject_kind);
# - UNIQUE constraints: Table.create() takes none, and create_index(unique=True) makes a
#   named index where the schema has a constraint (a different schema, and a different
#   answer to a later transform());
# - changing a UNIQUE constraint: transform() keeps the constraints it finds (0010).
# Migrations run inside one transaction (see Store.migrate); transform() in one refuses a
# table that other tables reference with ON DELETE actions (teams), see sqlite-utils' docs.


def _migration_initial(db: sqlite_utils.Database) -> None:
    db.execute(  # raw SQL: a UNIQUE and a CHECK constraint
        """CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('member', 'admin')),
            created_at REAL NOT NULL,
            removed_at REAL
        )"""
    )
    db["tokens"].create(
        {"id": str, "user_id": int, "secret_hash": str, "label": str, "created_at": float, "expires_at": float,
         "revoked_at": float, "last_used_at": float},
        pk="id", foreign_keys=[("user_id", "users", "id")], not_null={"user_id", "secret_hash", "label", "created_at"},
        defaults={"label": ""},
    )
    db["events"].create(
        {"id": int, "at": float, "actor": str, "action": str, "object_kind": str, "object_id": str, "detail": str},
        pk="id", not_null={"at", "actor", "action", "object_kind", "object_id", "detail"}, defaults={"detail": "{}"},
    )
    db["events"].create_index(["object_kind", "object_id"], index_name="events_object")
    db["daemon_status"].create({"key": str, "value": str, "updated_at": float}, pk="key", not_null={"value", "updated_at"})


def _migration_jobs(db: sqlite_utils.Database) -> None:
    db["jobs"].create(
        {"id": str, "owner": str, "name": str, "spec": str, "state": str, "reason": str, "exit_code": int, "priority": int,
         "gpu_uuids": str, "gpu_indices": str, "container_id": str, "cancel_requested_by": str, "submitted_at": float,
         "started_at": float, "ended_at": float, "updated_at": float},
        pk="id",
        not_null={"owner", "spec", "state", "reason", "priority", "gpu_uuids", "gpu_indices", "submitted_at", "updated_at"},
        defaults={"reason": "", "priority": 0, "gpu_uuids": "[]", "gpu_indices": "[]"},
    )
    db["jobs"].create_index(["state"], index_name="jobs_state")
    db["jobs"].create_index(["owner"], index_name="jobs_owner")


def _migration_accounting(db: sqlite_utils.Database) -> None:
    db["jobs"].add_column("gpu_models", str, not_null_default="[]")
    db.execute(  # raw SQL: a UNIQUE constraint
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
    db["allocations"].create_index(["start", "end"], index_name="allocations_time")
    db["teams"].create({"name": str, "created_at": float}, pk="name", not_null={"created_at"})
    db["team_members"].create(
        {"team": str, "user": str}, pk=("team", "user"), not_null={"team", "user"},
        foreign_keys=[sqlite_utils.db.ForeignKey("team_members", "team", "teams", "name", on_delete="CASCADE")],
    )
    db.execute(  # raw SQL: a CHECK constraint
        """CREATE TABLE quotas (
            subject_kind TEXT NOT NULL CHECK (subject_kind IN ('user', 'team')),
            subject TEXT NOT NULL,
            gpu_hours REAL,
            max_gpus INTEGER,
            updated_at REAL NOT NULL,
            PRIMARY KEY (subject_kind, subject)
        )"""
    )
    db["gpu_samples"].create(
        {"at": float, "gpu_uuid": str, "utilization": float, "memory_used": float, "resolution": float},
        not_null={"at", "gpu_uuid", "utilization", "memory_used", "resolution"},
    )
    db["gpu_samples"].create_index(["gpu_uuid", "at"], index_name="gpu_samples_at")


def _migration_scopes(db: sqlite_utils.Database) -> None:
    """Job-scoped tokens (a column, not a label a member could also write) and code archives owned by their uploaders."""
    db["tokens"].add_column("job_id", str)
    # Tokens minted for jobs so far carried only their label; scoping them can only take power away.
    db.execute("UPDATE tokens SET job_id = substr(label, 5) WHERE label LIKE 'job:%'")
    db["tokens"].create_index(["job_id"], index_name="tokens_job")
    db["code_owners"].create({"digest": str, "owner": str, "created_at": float}, pk=("digest", "owner"),
                             not_null={"digest", "owner", "created_at"})


def _migration_drains(db: sqlite_utils.Database) -> None:
    """GPUs drained by an admin at run time (mlpd.toml's gpus.drained still counts too)."""
    db["gpu_drains"].create({"gpu_uuid": str, "reason": str, "actor": str, "at": float}, pk="gpu_uuid",
                            not_null={"reason", "actor", "at"})


def _migration_scheduler(db: sqlite_utils.Database) -> None:
    """The queued job holding the scheduler's reservation keeps it across passes (when it got it; NULL: none)."""
    db["jobs"].add_column("reserved_at", float)


def _migration_ui(db: sqlite_utils.Database) -> None:
    """Web UI logins: a password per user (slow hash), failed-login counts for lockout, and
    server-side sessions (only a hash of the cookie's secret is stored, so a copy of the
    database opens no session; logout and user removal end them at once)."""
    db["users"].add_column("password_hash", str)
    db["users"].add_column("password_changed_at", float)
    # Keyed by the name typed, existing or not, so a lockout says nothing about who exists.
    db["login_failures"].create({"name": str, "failures": int, "first_at": float, "locked_until": float}, pk="name",
                                not_null={"failures", "first_at"})
    db["ui_sessions"].create(
        {"id_hash": str, "user_id": int, "csrf": str, "method": str, "created_at": float, "last_seen_at": float,
         "expires_at": float},
        pk="id_hash", foreign_keys=[("user_id", "users", "id")],
        not_null={"user_id", "csrf", "method", "created_at", "last_seen_at", "expires_at"},
    )
    db["ui_sessions"].create_index(["user_id"], index_name="ui_sessions_user")


def _migration_workloads(db: sqlite_utils.Database) -> None:
    """Workloads of several kinds in one table (jobs; sessions of workspaces; replicas of deployments),
    so that they share the scheduler, the runtime, the ledger and reconciliation; and workspaces."""
    db["jobs"].add_column("kind", str, not_null_default="job")
    db["jobs"].add_column("workload", str)  # the workspace or deployment this row runs
    db["jobs"].add_column("cancel_reason", str)  # why it was stopped, when not simply 'cancelled by X'
    db["jobs"].create_index(["kind", "state"], index_name="jobs_kind")
    db.execute(  # raw SQL: UNIQUE constraints
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
    db["users"].add_column("ws_idle_timeout", float)  # an admin's longer idle timeout for this user
    db.execute(  # raw SQL: a UNIQUE constraint
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
    (SQLite cannot change a constraint in place, nor can transform(), so the table is rebuilt in
    raw SQL, ids and rows kept)."""
    db["jobs"].add_column("attempts", int, not_null_default=1)
    db["jobs"].add_column("preempt_requested_at", float)
    db["jobs"].add_column("preempt_reason", str)
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
    db["allocations"].drop()
    db.rename_table("allocations_new", "allocations")
    db["allocations"].create_index(["start", "end"], index_name="allocations_time")


def _migration_serving(db: sqlite_utils.Database) -> None:
    """Deployments (a registered model served behind a stable endpoint), their revisions (one model
    version each: rolling out, serving, draining, retired or failed) and their replicas (a workload row
    of kind deployment each, with the loopback port it publishes and what its last health check saw)."""
    db.execute(  # raw SQL: a UNIQUE constraint
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
    db.execute(  # raw SQL: a UNIQUE constraint
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
    db["deployment_replicas"].create(
        {"job_id": str, "deployment": str, "revision": str, "slot": int, "port": int, "healthy": int, "last_ok_at": float,
         "last_check_at": float, "last_check_error": str, "created_at": float},
        pk="job_id",
        not_null={"deployment", "revision", "slot", "port", "healthy", "last_check_error", "created_at"},
        defaults={"healthy": 0, "last_check_error": ""},
    )
    db["deployment_replicas"].create_index(["revision"], index_name="deployment_replicas_revision")
    # Request counts of the stable endpoint, one row per deployment, revision and web worker process
    # (each adds its own counts every few seconds; the totals are the sums).
    db["deployment_metrics"].create(
        {"deployment": str, "revision": str, "source": str, "requests": int, "errors": int, "seconds": float,
         "buckets": str, "updated_at": float},
        pk=("deployment", "revision", "source"),
        not_null={"deployment", "revision", "source", "requests", "errors", "seconds", "buckets", "updated_at"},
        defaults={"requests": 0, "errors": 0, "seconds": 0},
    )
    db["deployment_revisions"].create_index(["deployment", "state"], index_name="deployment_revisions_deployment")


def _migration_priority_grants(db: sqlite_utils.Database) -> None:
    """Priority classes granted by an admin at run time (`mlpd admin priority-class grant`): a user or
    "team:NAME" may use the class, besides those mlpd.toml's scheduler.priority_class_users names."""
    db["priority_grants"].create({"class": str, "subject": str, "actor": str, "granted_at": float}, pk=("class", "subject"),
                                 not_null={"class", "subject", "actor", "granted_at"})


def _migration_jobs_started_at(db: sqlite_utils.Database) -> None:
    """The scheduler sums each owner's recently started GPU jobs every pass (the slowdown factor of fair
    share): an index on started_at that covers the columns it reads, so the table itself is not read."""
    db["jobs"].create_index(["started_at", "owner", "submitted_at", "ended_at", "kind", "gpu_uuids"],
                            index_name="jobs_started_at")


def _migration_resource_caps(db: sqlite_utils.Database) -> None:
    """Per-user and per-team concurrent CPU, memory and workload caps (`mlpd admin quota set --max-cpus
    ...`), beside the GPU quotas: NULL = the configured default (quotas.max_*; none for a team), 0 = unlimited."""
    db["resource_caps"].create({"subject_kind": str, "subject": str, "max_cpus": float, "max_memory": int, "max_jobs": int,
                                "updated_at": float}, pk=("subject_kind", "subject"), not_null={"subject_kind", "subject", "updated_at"})


def _migration_data(db: sqlite_utils.Database) -> None:
    """Datasets declared at run time (`mlpd admin dataset add`; mlpd.toml's [datasets.NAME] are read from the
    file), and the last background measurement of each home, team folder and dataset (mlpd.disk_use)."""
    db["datasets"].create({"name": str, "path": str, "teams": str, "users": str, "writable": int, "added_by": str, "added_at": float},
                          pk="name", not_null={"name", "path", "teams", "users", "writable", "added_by", "added_at"})
    db["disk_sizes"].create({"kind": str, "name": str, "bytes": int, "measured_at": float}, pk=("kind", "name"),
                            not_null={"kind", "name", "bytes", "measured_at"})


def _migration_roles(db: sqlite_utils.Database) -> None:
    """Roles beyond member and admin: a viewer (reads what their teams' members see, changes nothing),
    and team admins (team_admins: a user who manages one team's members, quotas and grants).

    users.role carries a CHECK constraint, which SQLite cannot change in place: the table is rebuilt
    with its rows and ids. tokens and ui_sessions reference users(id), and foreign keys are on (and
    cannot be turned off inside the migration's transaction), so the checks are deferred to the
    commit, when every referenced id exists again."""
    sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'users'").fetchone()[0]
    old_check = re.search(r"CHECK\s*\(\s*role\s+IN\s*\([^)]*\)\s*\)", sql)
    if old_check is None:
        raise ValueError("users.role: its CHECK constraint is not the one mlpd made")
    db.execute("PRAGMA defer_foreign_keys = ON")
    db.execute("CREATE TABLE users_before_roles AS SELECT * FROM users")
    db.execute("DROP TABLE users")
    db.execute(sql[:old_check.start()] + "CHECK (role IN ('member', 'admin', 'viewer'))" + sql[old_check.end():])
    db.execute("INSERT INTO users SELECT * FROM users_before_roles")
    db.execute("DROP TABLE users_before_roles")
    db["team_admins"].create(
        {"team": str, "user": str, "actor": str, "added_at": float}, pk=("team", "user"), not_null={"team", "user", "actor", "added_at"},
        foreign_keys=[sqlite_utils.db.ForeignKey("team_admins", "team", "teams", "name", on_delete="CASCADE")],
    )


def _migration_gpu_share(db: sqlite_utils.Database) -> None:
    """GPU sharing (docs/gpu-sharing.md): each ledger row books the part of its GPU the work held
    (`share`: 1 for a whole GPU, 0.5 for half of one), so GPU-hours count fractions. Rows booked
    before sharing existed held whole GPUs."""
    db.execute("ALTER TABLE allocations ADD COLUMN share REAL NOT NULL DEFAULT 1.0")


def _migration_automation(db: sqlite_utils.Database) -> None:
    """Work that runs itself (mlpd.automation): dependencies between jobs (`mlpd run --after`),
    schedules (cron) with one row per due time they handled, and sweeps with one row per trial.
    Each run is an ordinary job row; these tables only link to it."""
    db["job_dependencies"].create({"job_id": str, "after_id": str, "condition": str}, pk=("job_id", "after_id"),
                                  not_null={"job_id", "after_id", "condition"})
    db["job_dependencies"].create_index(["after_id"], index_name="job_dependencies_after")
    db.execute(  # raw SQL: a UNIQUE constraint
        """CREATE TABLE schedules (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            name TEXT NOT NULL,
            cron TEXT NOT NULL,
            timezone TEXT NOT NULL,
            spec TEXT NOT NULL,
            overlap TEXT NOT NULL,
            catch_up TEXT NOT NULL,
            paused INTEGER NOT NULL DEFAULT 0,
            stopped TEXT,
            last_due REAL NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (owner, name)
        )"""
    )
    # One row per due time a schedule handled (fired, skipped, refused): the primary key is what
    # makes a due time fire at most once, across restarts and concurrent passes.
    db["schedule_runs"].create({"schedule_id": str, "due_at": float, "job_id": str, "outcome": str, "detail": str, "at": float},
                               pk=("schedule_id", "due_at"), not_null={"schedule_id", "due_at", "outcome", "detail", "at"})
    db["schedule_runs"].create_index(["job_id"], index_name="schedule_runs_job")
    db["sweeps"].create({"id": str, "owner": str, "name": str, "definition": str, "parallel": int, "metric": str, "goal": str,
                         "experiment": str, "parent_run_id": str, "created_at": float, "cancelled_at": float},
                        pk="id", not_null={"owner", "definition", "parallel", "created_at"})
    db["sweep_trials"].create({"sweep_id": str, "trial": int, "job_id": str, "params": str, "run_id": str}, pk=("sweep_id", "trial"),
                              not_null={"sweep_id", "trial", "job_id", "params"})
    db["sweep_trials"].create_index(["job_id"], index_name="sweep_trials_job", unique=True)


def _migration_serving_monitor(db: sqlite_utils.Database) -> None:
    """What a deployment's revisions were asked and answered (mlpd.serving.monitoring): one row per
    revision, its prediction sample, label counts and each feature's reference and bin counts (JSON)."""
    db["deployment_monitor"].create({"deployment": str, "revision": str, "data": str, "updated_at": float},
                                    pk=("deployment", "revision"), not_null={"deployment", "revision", "data", "updated_at"})


# In the order they apply. Append only: a shipped migration never changes what it builds
# (tests/unit/test_store_schema.py holds 0001..0010 to tests/fixtures/schema-0010.sql); add a new one.
MIGRATIONS: list[tuple[str, Callable[[sqlite_utils.Database], None]]] = [
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
    ("0012_jobs_started_at", _migration_jobs_started_at),
    ("0013_resource_caps", _migration_resource_caps),
    ("0014_data", _migration_data),
    ("0015_roles", _migration_roles),
    ("0016_automation", _migration_automation),
    ("0017_gpu_share", _migration_gpu_share),
    ("0018_serving_monitor", _migration_serving_monitor),
]


class MigrationError(Exception):
    """The state database cannot be brought to this release's schema; the message says why and what to do."""


class NewerDatabase(MigrationError):
    """The state database comes from a newer mlpd; the message says what to do."""


class MigrationFailed(MigrationError):
    """A migration raised; every migration of that start was rolled back."""


def _migration_set() -> sqlite_utils.Migrations:
    """MIGRATIONS as a sqlite-utils Migrations set, each raising MigrationFailed with its name."""
    migrations = sqlite_utils.Migrations(MIGRATION_SET)
    for name, migration in MIGRATIONS:
        migrations(name=name)(_named(name, migration))
    return migrations


def _named(name: str, migration: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    def run(db: sqlite_utils.Database) -> None:
        try:
            migration(db)
        except Exception as exc:
            raise MigrationFailed(f"migration {name} failed: {type(exc).__name__}: {exc}") from exc

    return run


def _adopt_schema_migrations(db: sqlite_utils.Database, migrations: sqlite_utils.Migrations) -> None:
    """Move the record of a database migrated before sqlite-utils' Migrations (mlpd's own
    schema_migrations table) into _sqlite_migrations: same names, same order, same times.

    The old table is dropped, not kept beside the new one: a release that still reads it (0.1.0)
    then finds no record, tries to create its tables again and stops, instead of running
    unaware on a schema newer than it knows.
    """
    if not db["schema_migrations"].exists():
        return
    migrations.ensure_migrations_table(db)
    db[migrations.migrations_table].insert_all(
        ({"migration_set": MIGRATION_SET, "name": row["name"],
          "applied_at": str(datetime.datetime.fromtimestamp(row["applied_at"], datetime.timezone.utc))}
         for row in db["schema_migrations"].rows_where(order_by="applied_at, name")),
        ignore=True,
    )
    db["schema_migrations"].drop()

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
            # No sqlite-utils plugins: whatever else is installed in the venv gets no hook on the state database.
            db = sqlite_utils.Database(conn, execute_plugins=False)
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def close(self) -> None:
        """Close this thread's connection (the next use opens a new one)."""
        db = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "pid", None) == os.getpid():
            db.close()
        self._local.db = None

    @contextmanager
    def write(self) -> Iterator[sqlite_utils.Database]:
        """A read-modify-write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (disk full) can leave the transaction open; some errors end it themselves.
            if db.conn.in_transaction:
                db.execute("ROLLBACK")
            raise

    def query(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        """Rows as dicts."""
        return list(self.db.query(sql, params))

    def query_one(self, sql: str, params: Any = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; return the names applied.

        They apply in one BEGIN IMMEDIATE transaction, each in a savepoint of its own (sqlite-utils'
        Migrations runs each in db.atomic(), which nests): a second process migrating at the same
        moment waits, then finds nothing pending, and a migration that fails (MigrationFailed) leaves
        the database exactly as it was before this call. Raises NewerDatabase, changing nothing, for
        a database a newer mlpd has migrated: this release would not know what those migrations mean.
        """
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        migrations = _migration_set()
        try:
            with self.write() as db:
                _adopt_schema_migrations(db, migrations)
                known = {name for name, _ in MIGRATIONS}
                unknown = [m.name for m in migrations.applied(db) if m.name not in known]
                if unknown:
                    raise NewerDatabase(f"{self.path} was written by a newer mlpd (its migrations {', '.join(sorted(unknown))} are "
                                        "unknown to this release); upgrade mlpd, or restore a backup taken with this release "
                                        "('mlpd admin restore')")
                pending = [m.name for m in migrations.pending(db)]
                migrations.apply(db)
        except NewerDatabase:
            raise
        except (MigrationFailed, sqlite3.Error) as exc:
            what = str(exc) if isinstance(exc, MigrationFailed) else f"migrating failed: {type(exc).__name__}: {exc}"
            raise MigrationFailed(f"{self.path}: {what}; nothing was changed (the database is as it was before this start): "
                                  "fix the cause and start again, or keep running the release that wrote it") from (exc.__cause__ or exc)
        return pending

    def applied_migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in the order they were applied."""
        if not os.path.exists(self.path):
            return []
        db = self.db
        legacy = [row["name"] for row in db["schema_migrations"].rows_where(order_by="applied_at, name")] \
            if db["schema_migrations"].exists() else []
        return legacy + [m.name for m in _migration_set().applied(db)]

    def pending_migrations(self) -> list[str]:
        """Names of migrations not yet applied (the daemon applies them at start)."""
        done = set(self.applied_migrations())
        return [name for name, _ in MIGRATIONS if name not in done]


def record_event(db: sqlite_utils.Database, actor: str, action: str, object_kind: str, object_id: str, at: float | None = None, **detail: Any) -> None:
    """Append one row to the audit trail; call inside the transaction that makes the change."""
    db["events"].insert({"at": at if at is not None else time.time(), "actor": actor, "action": action, "object_kind": object_kind,
                         "object_id": str(object_id), "detail": json.dumps(detail, sort_keys=True)})


def set_status(store: Store, key: str, value: Any) -> None:
    """Record a piece of daemon status (e.g. the last reconcile) for /healthz and the API."""
    with store.write() as db:
        db["daemon_status"].upsert({"key": key, "value": json.dumps(value), "updated_at": time.time()}, pk="key")


def get_status(store: Store) -> dict[str, Any]:
    """All daemon status entries with the time each was written."""
    return {row["key"]: {"value": json.loads(row["value"]), "updated_at": row["updated_at"]} for row in store.db["daemon_status"].rows}
