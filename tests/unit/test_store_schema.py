"""The released migrations build the schema they always built.

tests/fixtures/schema-0010.sql is sqlite_master's SQL of a fresh database migrated by the
raw-SQL migrations 0001..0010 (captured before they moved to the sqlite-utils table API). A
database that today's code builds from nothing, and one written by release 0.1.0 and upgraded
to head, must both match it in every table, column (order, type, NOT NULL, default, primary
key), foreign key (with its actions), index (name, uniqueness, origin, columns), CHECK
constraint and table option. Migration bookkeeping is left out: it is the one thing that
moved on purpose (schema_migrations -> sqlite-utils' _sqlite_migrations).
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

from mlpd.scheduling.quotas import FAIR_SHARE_SLOWDOWN_SQL
from mlpd.store import MIGRATIONS, Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SCHEMA_0010 = FIXTURES / "schema-0010.sql"
STATE_0_1_0 = FIXTURES / "state-0.1.0.db"
RELEASED = [f"{n:04d}" for n in range(1, 11)]  # 0001 .. 0010: shipped, so frozen
BOOKKEEPING = {"schema_migrations", "_sqlite_migrations"}


def checks(sql: str) -> list[str]:
    """The CHECK constraints in a CREATE TABLE statement, whitespace-normalised."""
    out = []
    for match in re.finditer(r"\bCHECK\s*\(", sql, flags=re.IGNORECASE):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(sql[i], 0)
            i += 1
        out.append(" ".join(sql[match.end():i - 1].split()))
    return sorted(out)


def describe(conn: sqlite3.Connection) -> dict:
    """Everything about the schema that decides what the database accepts and how it is indexed."""
    master = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'").fetchall()
    tables = sorted(name for kind, name, _, _ in master if kind == "table" and name not in BOOKKEEPING)
    out: dict = {"objects": sorted((kind, name, tbl) for kind, name, tbl, _ in master if tbl not in BOOKKEEPING)}
    sql_of = {name: sql for kind, name, _, sql in master if kind == "table"}
    for table in tables:
        options = conn.execute("SELECT type, wr, strict FROM pragma_table_list WHERE name = ?", [table]).fetchone()
        indexes = {}
        for _, name, unique, origin, partial in conn.execute(f"PRAGMA index_list('{table}')"):
            key_columns = [(r[2], r[3], r[4]) for r in conn.execute(f"PRAGMA index_xinfo('{name}')") if r[5]]
            indexes[name] = (unique, origin, partial, key_columns)
        out[table] = {
            "columns": [r[1:] for r in conn.execute(f"PRAGMA table_xinfo('{table}')")],  # name, type, notnull, default, pk, hidden
            "foreign_keys": sorted(r[2:] for r in conn.execute(f"PRAGMA foreign_key_list('{table}')")),  # table, from, to, on_update, on_delete, match
            "indexes": indexes,
            "checks": checks(sql_of[table]),
            "options": options,
        }
    return out


def describe_file(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return describe(conn)
    finally:
        conn.close()


def released_schema() -> dict:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA_0010.read_text())
        return describe(conn)
    finally:
        conn.close()


def test_the_fixture_is_what_it_claims():
    schema = released_schema()
    assert schema["users"]["checks"] == ["role IN ('member', 'admin')"]
    assert schema["quotas"]["checks"] == ["subject_kind IN ('user', 'team')"]
    assert ("teams", "team", "name", "NO ACTION", "CASCADE", "NONE") in schema["team_members"]["foreign_keys"]
    assert schema["allocations"]["indexes"]["sqlite_autoindex_allocations_1"] == (
        1, "u", 0, [("kind", 0, "BINARY"), ("object_id", 0, "BINARY"), ("attempt", 0, "BINARY"), ("gpu_uuid", 0, "BINARY")])
    assert ("attempts", "INTEGER", 1, "1", 0, 0) in schema["jobs"]["columns"]
    assert len([t for t in schema if t != "objects"]) == 20


def test_only_released_migrations_are_compared():
    """When 0011 lands, this fixture still describes 0001..0010: build a database with those alone."""
    assert [name[:4] for name, _ in MIGRATIONS[:10]] == RELEASED


def test_a_fresh_database_has_the_released_schema(tmp_path, monkeypatch):
    import mlpd.store as store_module

    monkeypatch.setattr(store_module, "MIGRATIONS", list(MIGRATIONS[:10]))
    path = tmp_path / "fresh.db"
    Store(str(path)).migrate()
    assert describe_file(path) == released_schema()


def test_a_0_1_0_database_upgraded_has_the_released_schema(tmp_path, monkeypatch):
    import mlpd.store as store_module

    monkeypatch.setattr(store_module, "MIGRATIONS", list(MIGRATIONS[:10]))
    path = tmp_path / "upgraded.db"
    shutil.copy(STATE_0_1_0, path)
    Store(str(path)).migrate()
    assert describe_file(path) == released_schema()


def test_the_comparison_sees_a_changed_default_a_lost_check_and_a_renamed_index(tmp_path):
    """The description is sharp enough to catch what a careless rewrite would change."""
    base = SCHEMA_0010.read_text()
    variants = [
        base.replace("label TEXT NOT NULL DEFAULT ''", "label TEXT NOT NULL DEFAULT 'x'"),
        base.replace(" CHECK (role IN ('member', 'admin'))", ""),
        base.replace("CREATE INDEX jobs_state ON", "CREATE INDEX idx_jobs_state ON"),
        base.replace("team TEXT NOT NULL REFERENCES teams(name) ON DELETE CASCADE", "team TEXT NOT NULL REFERENCES teams(name)"),
        base.replace("name TEXT NOT NULL UNIQUE,", "name TEXT NOT NULL,"),
    ]
    for variant in variants:
        assert variant != base
        conn = sqlite3.connect(":memory:")
        conn.executescript(variant)
        assert describe(conn) != released_schema()
        conn.close()


# 0011_priority_grants as it first landed on main (raw SQL), before it moved to the table API.
PRIORITY_GRANTS_0011 = """CREATE TABLE priority_grants (
    class TEXT NOT NULL,
    subject TEXT NOT NULL,
    actor TEXT NOT NULL,
    granted_at REAL NOT NULL,
    PRIMARY KEY (class, subject)
)"""


def test_0011_builds_what_its_first_raw_sql_built(tmp_path, monkeypatch):
    """0001..0011 is the released schema plus 0011's table exactly as main first wrote it."""
    import mlpd.store as store_module

    assert MIGRATIONS[10][0] == "0011_priority_grants"
    monkeypatch.setattr(store_module, "MIGRATIONS", list(MIGRATIONS[:11]))
    path = tmp_path / "head.db"
    Store(str(path)).migrate()
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(SCHEMA_0010.read_text() + PRIORITY_GRANTS_0011 + ";")
        expected = describe(conn)
    finally:
        conn.close()
    assert "priority_grants" in expected and describe_file(path) == expected


def test_0012_adds_an_index_on_jobs_started_at_and_nothing_else(tmp_path, monkeypatch):
    import mlpd.store as store_module

    assert MIGRATIONS[11][0] == "0012_jobs_started_at"
    monkeypatch.setattr(store_module, "MIGRATIONS", list(MIGRATIONS[:11]))
    before = tmp_path / "before.db"
    Store(str(before)).migrate()
    monkeypatch.setattr(store_module, "MIGRATIONS", list(MIGRATIONS[:12]))
    Store(str(before)).migrate()  # the upgrade
    after = describe_file(before)
    monkeypatch.setattr(store_module, "MIGRATIONS", list(MIGRATIONS[:11]))
    old = tmp_path / "old.db"
    Store(str(old)).migrate()
    expected = describe_file(old)
    assert after != expected
    conn = sqlite3.connect(before)
    try:
        plan = " ".join(r[-1] for r in conn.execute(
            "EXPLAIN QUERY PLAN " + FAIR_SHARE_SLOWDOWN_SQL.format(kinds="kind IN (:kind0)"),
            {"now": 0.0, "k": 1.0, "floor": 600.0, "since": 0.0, "kind0": "job"}))
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(jobs)")}
    finally:
        conn.close()
    assert "COVERING INDEX jobs_started_at" in plan  # the pass never reads the table itself
    assert indexes - {"jobs_started_at"} == {r[1] for r in sqlite3.connect(old).execute("PRAGMA index_list(jobs)")}
