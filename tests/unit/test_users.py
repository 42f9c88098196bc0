"""The state store and users/tokens, against real SQLite files in a temp dir."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import pytest

from helpers import wait_for
from mlpd import users
from mlpd.store import MIGRATIONS, Store, get_status, record_event, set_status
from mlpd.users import UserError


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path / "state" / "mlpd.db"))
    s.migrate()
    return s


def events(store: Store) -> list[dict]:
    rows = store.query("SELECT actor, action, object_kind, object_id, detail FROM events ORDER BY id")
    for row in rows:
        row["detail"] = json.loads(row["detail"])
    return rows


def raw_db_bytes(store: Store) -> bytes:
    """Everything SQLite has written: the main file and the WAL."""
    data = b""
    for suffix in ("", "-wal"):
        try:
            with open(store.path + suffix, "rb") as fh:
                data += fh.read()
        except FileNotFoundError:
            pass
    return data


def all_cell_values(path: str) -> list:
    """Every cell of every table, read with the plain sqlite3 module."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return [v for t in tables for row in conn.execute(f'SELECT * FROM "{t}"') for v in row]
    finally:
        conn.close()


# ---------------------------------------------------------------- migrations and SQLite settings


def test_migrations_apply_once(tmp_path):
    s = Store(str(tmp_path / "new" / "mlpd.db"))
    assert s.pending_migrations() == [name for name, _ in MIGRATIONS]
    assert s.migrate() == [name for name, _ in MIGRATIONS]
    assert s.pending_migrations() == []
    assert s.migrate() == []
    # a second process (a new Store on the same file) applies nothing either
    assert Store(s.path).migrate() == []
    assert s.applied_migrations() == [name for name, _ in MIGRATIONS]
    assert {"users", "tokens", "events", "daemon_status"} <= set(s.db.table_names())


def test_database_is_in_wal_mode(store):
    conn = sqlite3.connect(store.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()
    assert store.db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_write_rolls_back_on_error(store):
    with pytest.raises(RuntimeError):
        with store.write() as db:
            db.execute("INSERT INTO users (name, role, created_at) VALUES ('ghost', 'member', 0)")
            raise RuntimeError("boom")
    assert store.query("SELECT * FROM users") == []
    users.add_user(store, "alice")  # the connection is usable afterwards
    assert users.get_user(store, "alice") is not None


def test_concurrent_writers_do_not_fail_with_database_locked(store):
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(15):
                users.add_user(store, f"u{n}-{i}")
                users.create_token(store, f"u{n}-{i}")
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(users.list_users(store)) == 120
    assert len(users.list_tokens(store)) == 120


def test_daemon_status_round_trips(store):
    set_status(store, "worker.heartbeat", {"passes": 1})
    set_status(store, "worker.heartbeat", {"passes": 2})
    status = get_status(store)
    assert status["worker.heartbeat"]["value"] == {"passes": 2}
    assert abs(status["worker.heartbeat"]["updated_at"] - time.time()) < 60


# ---------------------------------------------------------------- users


def test_add_get_list_remove_user(store):
    alice = users.add_user(store, "alice")
    bob = users.add_user(store, "bob", "admin")
    assert (alice.role, alice.is_admin, bob.is_admin) == ("member", False, True)
    assert users.get_user(store, "alice") == alice
    assert [(u["name"], u["role"]) for u in users.list_users(store)] == [("alice", "member"), ("bob", "admin")]
    users.remove_user(store, "bob")
    assert users.get_user(store, "bob") is None
    assert [u["name"] for u in users.list_users(store)] == ["alice"]


@pytest.mark.parametrize("name", ["", "Alice", "1abc", "a b", "a" * 33, "al;ce", "../x"])
def test_invalid_user_names_are_refused(store, name):
    with pytest.raises(UserError, match="invalid user name"):
        users.add_user(store, name)
    assert store.query("SELECT * FROM users") == []


def test_invalid_role_is_refused(store):
    with pytest.raises(UserError, match="invalid role"):
        users.add_user(store, "alice", "root")


def test_duplicate_and_removed_names_are_not_reused(store):
    users.add_user(store, "alice")
    with pytest.raises(UserError) as info:
        users.add_user(store, "alice")
    assert (info.value.code, info.value.status) == ("conflict", 409)
    users.remove_user(store, "alice")
    with pytest.raises(UserError, match="already exists"):
        users.add_user(store, "alice")


def test_removing_a_missing_user_is_not_found(store):
    with pytest.raises(UserError) as info:
        users.remove_user(store, "nobody")
    assert (info.value.code, info.value.status) == ("not_found", 404)


# ---------------------------------------------------------------- tokens


def test_token_is_stored_hashed_never_in_plaintext(store):
    users.add_user(store, "alice")
    token, record = users.create_token(store, "alice", "laptop")
    prefix, token_id, secret = token.split("_", 2)
    assert prefix == "mlpd" and token_id == record["id"] and len(secret) >= 40
    cells = all_cell_values(store.path)
    assert not any(isinstance(v, str) and (secret in v or token in v) for v in cells)
    assert secret.encode() not in raw_db_bytes(store)
    stored = store.query_one("SELECT secret_hash FROM tokens WHERE id = ?", [token_id])["secret_hash"]
    assert stored != secret and len(stored) == 64
    assert "secret" not in json.dumps(record) and secret not in json.dumps(record)


def test_listed_tokens_carry_no_secret(store):
    users.add_user(store, "alice")
    users.add_user(store, "bob")
    token_a, _ = users.create_token(store, "alice", "a")
    token_b, _ = users.create_token(store, "bob", "b")
    everything = users.list_tokens(store)
    assert [t["user"] for t in everything] == ["alice", "bob"]
    assert [t["user"] for t in users.list_tokens(store, "bob")] == ["bob"]
    for row in everything:
        assert set(row) == {"id", "user", "label", "created_at", "expires_at", "revoked_at", "last_used_at", "job_id"}
    dumped = json.dumps(everything)
    for token in (token_a, token_b):
        assert token.split("_", 2)[2] not in dumped


def test_authenticate_accepts_only_the_exact_live_token(store):
    users.add_user(store, "alice", "admin")
    token, record = users.create_token(store, "alice")
    user = users.authenticate(store, token)
    assert user is not None and (user.name, user.role) == ("alice", "admin")
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_id = "mlpd_" + "0" * 12 + "_" + token.split("_", 2)[2]
    for bad in (tampered, other_id, "", "mlpd_", "nonsense", token + "x", token.upper(), "Bearer " + token):
        assert users.authenticate(store, bad) is None, bad


def test_authenticate_records_last_use(store):
    users.add_user(store, "alice")
    token, record = users.create_token(store, "alice")
    assert users.list_tokens(store)[0]["last_used_at"] is None
    users.authenticate(store, token)
    assert users.list_tokens(store)[0]["last_used_at"] is not None


def test_expired_token_is_refused(store):
    users.add_user(store, "alice")
    token, record = users.create_token(store, "alice", expires_in=60)
    assert record["expires_at"] == pytest.approx(time.time() + 60, abs=5)
    assert users.authenticate(store, token) is not None
    assert users.authenticate(store, token, now=record["expires_at"] + 1) is None
    # expired tokens no longer count as active
    assert users.list_users(store)[0]["active_tokens"] == 1
    short, _ = users.create_token(store, "alice", expires_in=0.2)
    assert users.authenticate(store, short) is not None
    wait_for(lambda: users.authenticate(store, short) is None, 10, 0.05, "the 0.2 s token to expire on the real clock")


@pytest.mark.parametrize("expires_in", [0, -5])
def test_non_positive_expiry_is_refused(store, expires_in):
    users.add_user(store, "alice")
    with pytest.raises(UserError, match="expires_in"):
        users.create_token(store, "alice", expires_in=expires_in)
    assert users.list_tokens(store) == []


def test_token_for_missing_user_is_not_found(store):
    with pytest.raises(UserError) as info:
        users.create_token(store, "nobody")
    assert info.value.status == 404
    assert store.query("SELECT * FROM tokens") == []


def test_revoke_is_idempotent_and_scoped_to_owner(store):
    users.add_user(store, "alice")
    users.add_user(store, "bob")
    token, record = users.create_token(store, "alice")
    with pytest.raises(UserError) as info:
        users.revoke_token(store, record["id"], actor="bob", owner="bob")
    assert info.value.status == 404
    assert users.authenticate(store, token) is not None
    assert users.revoke_token(store, record["id"], actor="alice", owner="alice") == {"id": record["id"], "user": "alice", "revoked": True}
    assert users.authenticate(store, token) is None
    users.revoke_token(store, record["id"])  # again: no error
    assert [e["action"] for e in events(store)].count("token.revoke") == 1
    with pytest.raises(UserError):
        users.revoke_token(store, "ffffffffffff")


def test_removing_a_user_revokes_their_tokens(store):
    users.add_user(store, "alice")
    token, _ = users.create_token(store, "alice")
    users.remove_user(store, "alice")
    assert users.authenticate(store, token) is None
    assert users.list_tokens(store, "alice")[0]["revoked_at"] is not None
    with pytest.raises(UserError):
        users.create_token(store, "alice")


# ---------------------------------------------------------------- the audit trail


def test_every_user_and_token_change_writes_an_event(store):
    users.add_user(store, "alice", actor="host")
    users.add_user(store, "bob", "admin", actor="host")
    _, rec = users.create_token(store, "alice", "ci", expires_in=3600, actor="bob")
    users.revoke_token(store, rec["id"], actor="bob")
    users.remove_user(store, "alice", actor="bob")
    got = [(e["actor"], e["action"], e["object_kind"], e["object_id"]) for e in events(store)]
    assert got == [
        ("host", "user.add", "user", "alice"),
        ("host", "user.add", "user", "bob"),
        ("bob", "token.create", "token", rec["id"]),
        ("bob", "token.revoke", "token", rec["id"]),
        ("bob", "user.remove", "user", "alice"),
    ]
    detail = events(store)[2]["detail"]
    assert detail["user"] == "alice" and detail["label"] == "ci" and detail["expires_at"] == pytest.approx(rec["expires_at"])


def test_failed_changes_write_no_event(store):
    users.add_user(store, "alice")
    before = len(events(store))
    for attempt in (lambda: users.add_user(store, "alice"), lambda: users.remove_user(store, "zed"),
                    lambda: users.create_token(store, "zed"), lambda: users.revoke_token(store, "000000000000")):
        with pytest.raises(UserError):
            attempt()
    assert len(events(store)) == before


def test_record_event_stores_detail_as_json(store):
    with store.write() as db:
        record_event(db, "host", "thing.poke", "thing", 42, at=123.0, why="test")
    assert events(store)[-1] == {"actor": "host", "action": "thing.poke", "object_kind": "thing", "object_id": "42", "detail": {"why": "test"}}
    assert store.query_one("SELECT at FROM events ORDER BY id DESC LIMIT 1")["at"] == 123.0


def test_a_daemon_url_is_read_the_way_people_type_it():
    from mlpd.client import ClientError, normalize_url

    assert normalize_url("127.0.0.1:8470") == "http://127.0.0.1:8470"
    assert normalize_url("http://box:8470/") == "http://box:8470"
    assert normalize_url("http://box:8470/mlflow") == "http://box:8470"
    assert normalize_url("https://ml.example.org/mlpd/api/v1/") == "https://ml.example.org/mlpd"
    for bad in ("ftp://box", "http://", "http://box:99999", "box:port"):
        with pytest.raises(ClientError):
            normalize_url(bad)
