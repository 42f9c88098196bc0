"""A state database written by release 0.1.0 upgrades at start with nothing lost.

tests/fixtures/state-0.1.0.db was written by mlpd 0.1.0's own code (users, tokens, a job
token, teams, quotas, jobs in several states, their events and ledger rows). It is copied
and migrated as the daemon migrates at start.
"""

from __future__ import annotations

import datetime
import hashlib
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlpd import store as store_module
from mlpd.store import MIGRATIONS, MigrationFailed, NewerDatabase, Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state-0.1.0.db"
TABLES = ("users", "tokens", "jobs", "events", "allocations", "teams", "team_members", "quotas", "daemon_status")


def rows(path: Path) -> dict[str, list[dict]]:
    with sqlite3.connect(path) as db:
        out = {}
        for table in TABLES:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            out[table] = [dict(zip(columns, r, strict=True)) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
        return out


def dump(path: Path) -> list[str]:
    """Every schema statement and every row of every table, bookkeeping included."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def legacy_record(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT name, applied_at FROM schema_migrations ORDER BY name").fetchall()


def test_a_0_1_0_database_upgrades_with_every_row_intact(tmp_path):
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    before = rows(path)
    before_record = legacy_record(path)
    assert len(before["users"]) == 3 and len(before["jobs"]) == 4 and len(before["allocations"]) == 2
    assert all(before[t] for t in TABLES if t != "daemon_status"), "0.1.0 wrote rows in each (daemon_status: none)"
    assert [name for name, _ in before_record] == ["0001_initial", "0002_jobs", "0003_accounting"]
    store = Store(str(path))
    assert store.pending_migrations() == [name for name, _ in MIGRATIONS][3:]
    applied = store.migrate()
    assert applied == [name for name, _ in MIGRATIONS][3:]
    after = rows(path)
    for table in TABLES:
        assert len(after[table]) == len(before[table]), table
        for old, new in zip(before[table], after[table], strict=True):
            assert {k: new[k] for k in old} == old, table  # every old column, every value
    # what the upgrade adds: 0.1.0's job tokens are scoped to their jobs, people's tokens are not
    scoped = {t["label"]: t["job_id"] for t in after["tokens"]}
    assert all(job_id == label[4:] for label, job_id in scoped.items() if label.startswith("job:"))
    assert all(job_id is None for label, job_id in scoped.items() if not label.startswith("job:"))
    # 0010_preemption: every job so far ran once, and its ledger rows are its first attempt's
    assert {j["attempts"] for j in after["jobs"]} == {1} and {a["attempt"] for a in after["allocations"]} == {1}
    # 0.1.0's own record of its migrations moved into sqlite-utils' table: same names, same times
    with sqlite3.connect(path) as db:
        assert "schema_migrations" not in [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
        moved = db.execute("SELECT migration_set, name, applied_at FROM _sqlite_migrations ORDER BY id").fetchall()
    assert [(s, n) for s, n, _ in moved] == [("mlpd", name) for name, _ in MIGRATIONS]
    assert [applied_at for _, _, applied_at in moved[:3]] == [
        str(datetime.datetime.fromtimestamp(t, datetime.timezone.utc)) for _, t in before_record]
    assert store.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert Store(str(path)).migrate() == []  # a second start changes nothing
    assert Store(str(path)).pending_migrations() == []


def broken_after_creating_a_table(db):
    """A migration that gets half-way: a table made (through the table API), a column added, rows changed."""
    db["half_done"].create({"id": int, "note": str}, pk="id")
    db["half_done"].insert({"id": 1, "note": "written before the failure"})
    db["jobs"].add_column("half_done", str)
    db.execute("UPDATE users SET role = 'admin'")
    raise RuntimeError("disk full")


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    """Upgrading 0.1.0 runs 0004..0010 and then a broken 0099: nothing of it stays, byte for byte."""
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    before, before_dump, before_digest = rows(path), dump(path), digest(path)
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [("0099_broken", broken_after_creating_a_table)])
    store = Store(str(path))
    with pytest.raises(MigrationFailed) as failed:
        store.migrate()
    message = str(failed.value)
    assert "migration 0099_broken failed: RuntimeError: disk full" in message and "nothing was changed" in message
    assert str(path) in message and "\n" not in message
    assert isinstance(failed.value.__cause__, RuntimeError)
    store.close()
    assert rows(path) == before
    assert dump(path) == before_dump  # schema and every row, schema_migrations included
    assert digest(path) == before_digest  # and the file itself, byte for byte
    assert legacy_record(path) == legacy_record(FIXTURE)
    # the release that wrote it would still run on it, and so does a fixed start
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    assert Store(str(path)).migrate() == [name for name, _ in MIGRATIONS][3:]


def test_a_failure_in_a_released_migration_changes_nothing_either(tmp_path, monkeypatch):
    """0004 succeeds, then 0005 fails mid-way: 0004 is rolled back with it, so the version stays 0.1.0's."""
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    before_dump = dump(path)

    def broken_drains(db):
        db["gpu_drains"].create({"gpu_uuid": str}, pk="gpu_uuid")
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store_module, "MIGRATIONS", [(n, broken_drains if n == "0005_drains" else f) for n, f in MIGRATIONS])
    with pytest.raises(MigrationFailed, match="migration 0005_drains failed: OperationalError: database or disk is full"):
        Store(str(path)).migrate()
    assert dump(path) == before_dump
    assert Store(str(path)).pending_migrations() == [name for name, _ in MIGRATIONS][3:]


def test_a_migration_can_transform_a_table_and_stays_atomic(tmp_path, monkeypatch):
    """transform() (a table rebuilt) works inside the migration transaction, rows kept; a failure after it undoes it."""
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    Store(str(path)).migrate()
    before_dump = dump(path)

    def retype(db):
        db["gpu_samples"].transform(types={"resolution": int})
        db["jobs"].transform(column_order=["id", "state"])

    def retype_then_fail(db):
        retype(db)
        raise ValueError("no")

    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [("0099_retype", retype_then_fail)])
    with pytest.raises(MigrationFailed, match="0099_retype failed: ValueError: no"):
        Store(str(path)).migrate()
    assert dump(path) == before_dump
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [("0099_retype", retype)])
    assert Store(str(path)).migrate() == ["0099_retype"]
    after = rows(path)
    with sqlite3.connect(path) as db:
        assert [r[1] for r in db.execute("PRAGMA table_info(jobs)")][:2] == ["id", "state"]
        assert dict((r[1], r[2]) for r in db.execute("PRAGMA table_info(gpu_samples)"))["resolution"] == "INTEGER"
    assert len(after["jobs"]) == 4


def test_a_database_from_a_newer_mlpd_is_refused_and_left_as_it_is(tmp_path):
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    Store(str(path)).migrate()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('mlpd', '0099_from_the_future', '')")
    before = dump(path)
    with pytest.raises(NewerDatabase, match="newer mlpd .*0099_from_the_future.*upgrade mlpd"):
        Store(str(path)).migrate()
    assert dump(path) == before


def test_an_older_record_naming_an_unknown_migration_is_refused_too(tmp_path):
    """A database migrated by a newer build that still kept schema_migrations: refused, record not moved."""
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('0099_from_the_future', 0)")
    before = dump(path)
    with pytest.raises(NewerDatabase, match="0099_from_the_future"):
        Store(str(path)).migrate()
    assert dump(path) == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_daemon_start_says_which_migration_failed_and_that_nothing_changed(tmp_path, monkeypatch):
    from mlpd.cli import main

    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(FIXTURE, state / "mlpd.db")
    before = dump(state / "mlpd.db")
    config = tmp_path / "mlpd.toml"
    config.write_text("")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS + [("0099_broken", broken_after_creating_a_table)])
    result = CliRunner().invoke(main, ["daemon", "--config", str(config), "--state-dir", str(state),
                                       "--listen", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    assert "migration 0099_broken failed: RuntimeError: disk full" in lines[0] and "nothing was changed" in lines[0]
    assert dump(state / "mlpd.db") == before


def test_an_empty_record_left_by_an_older_release_is_dropped_and_nothing_else_changes(tmp_path):
    """0.1.0 started on an upgraded database creates an empty schema_migrations, then stops on
    'table users already exists'; the next start of this release drops that table and applies nothing."""
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    Store(str(path)).migrate()
    before = dump(path)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    assert Store(str(path)).migrate() == []
    assert dump(path) == before


def test_a_host_side_admin_command_on_a_newer_database_says_so_in_one_line(tmp_path):
    from click.testing import CliRunner

    from mlpd.cli import main

    state = tmp_path / "state"
    state.mkdir()
    shutil.copy(FIXTURE, state / "mlpd.db")
    Store(str(state / "mlpd.db")).migrate()
    with sqlite3.connect(state / "mlpd.db") as db:
        db.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) VALUES ('mlpd', '0099_from_the_future', '')")
    before = dump(state / "mlpd.db")
    result = CliRunner().invoke(main, ["admin", "user", "list", "--state-dir", str(state)])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: ") and "0099_from_the_future" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert dump(state / "mlpd.db") == before
