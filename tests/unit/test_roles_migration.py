"""Migration 0015_roles rebuilds the users table (its CHECK constraint gains 'viewer') with every row,
id and reference kept: tokens and web sessions still point at their users, and foreign keys still hold."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from mlpd.store import Store

STATE_0_1_0 = Path(__file__).resolve().parents[1] / "fixtures" / "state-0.1.0.db"


def _rows(path, sql):
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_a_release_database_keeps_its_users_and_their_tokens(tmp_path):
    db = tmp_path / "mlpd.db"
    shutil.copy(STATE_0_1_0, db)
    users_before = _rows(db, "SELECT id, name, role, created_at, removed_at FROM users ORDER BY id")
    tokens_before = _rows(db, "SELECT t.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id")
    assert users_before and tokens_before  # the fixture has both
    applied = Store(str(db)).migrate()
    assert "0015_roles" in applied
    assert _rows(db, "SELECT id, name, role, created_at, removed_at FROM users ORDER BY id") == users_before
    assert _rows(db, "SELECT t.id, u.name FROM tokens t JOIN users u ON u.id = t.user_id ORDER BY t.id") == tokens_before
    assert _rows(db, "PRAGMA foreign_key_check") == []
    assert not _rows(db, "SELECT name FROM sqlite_master WHERE name = 'users_before_roles'")


def test_the_new_check_takes_a_viewer_and_foreign_keys_still_hold(tmp_path):
    from mlpd import users

    store = Store(str(tmp_path / "mlpd.db"))
    store.migrate()
    users.add_user(store, "vera", "viewer")
    token, _ = users.create_token(store, "vera")
    assert users.authenticate(store, token).role == "viewer"
    with pytest.raises(sqlite3.IntegrityError):
        with store.write() as db:
            db.execute("UPDATE users SET role = 'root' WHERE name = 'vera'")
    with pytest.raises(sqlite3.IntegrityError):  # tokens still reference users(id)
        with store.write() as db:
            db.execute("DELETE FROM users WHERE name = 'vera'")
    with pytest.raises(sqlite3.IntegrityError):  # and team_admins reference teams(name)
        with store.write() as db:
            db.execute("INSERT INTO team_admins (team, user, actor, added_at) VALUES ('nosuch', 'vera', 'x', 0)")
