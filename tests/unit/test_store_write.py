"""Store.write() and Store.migrate() when SQLite itself refuses: the transaction ends, nothing half-stays."""

from __future__ import annotations

import sqlite3
import time

import pytest

from mlpd import store as store_module
from mlpd.store import MigrationFailed, Store


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path / "mlpd.db"))
    s.migrate()
    return s


def test_a_commit_that_fails_rolls_back_and_the_connection_stays_usable(store):
    with store.write() as db:
        db["users"].insert({"name": "alice", "role": "member", "created_at": time.time()})
    # A deferred foreign key is checked at COMMIT: the COMMIT fails and SQLite keeps the transaction open.
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
        with store.write() as db:
            db.execute("PRAGMA defer_foreign_keys = ON")
            db["tokens"].insert({"id": "t1", "user_id": 999, "secret_hash": "x", "created_at": time.time()})
            db["users"].insert({"name": "bob", "role": "member", "created_at": time.time()})
    assert not store.db.conn.in_transaction
    assert [r["name"] for r in store.query("SELECT name FROM users")] == ["alice"]
    assert store.query("SELECT id FROM tokens") == []
    with store.write() as db:  # the next write works on the same connection
        db["users"].insert({"name": "carol", "role": "member", "created_at": time.time()})
    assert [r["name"] for r in store.query("SELECT name FROM users ORDER BY id")] == ["alice", "carol"]


def test_a_database_held_by_another_writer_is_reported_in_one_line_and_left_alone(tmp_path, monkeypatch):
    path = tmp_path / "mlpd.db"
    Store(str(path)).migrate()
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 200)
    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS + [("0099_more", lambda db: db["more"].create({"id": int}))])
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(MigrationFailed) as failed:
            Store(str(path)).migrate()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(failed.value)
    assert "\n" not in message and str(path) in message
    assert "OperationalError: database is locked" in message and "nothing was changed" in message
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 10_000)
    assert Store(str(path)).pending_migrations() == ["0099_more"]
    assert Store(str(path)).migrate() == ["0099_more"]
