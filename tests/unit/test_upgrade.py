"""A state database written by release 0.1.0 upgrades at start with nothing lost.

tests/fixtures/state-0.1.0.db was written by mlpd 0.1.0's own code (users, tokens, a job
token, teams, quotas, jobs in several states, their events and ledger rows). It is copied
and migrated as the daemon migrates at start.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from mlpd import store as store_module
from mlpd.store import Store

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "state-0.1.0.db"
TABLES = ("users", "tokens", "jobs", "events", "allocations", "teams", "team_members", "quotas", "daemon_status")


def rows(path: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(path) as db:
        out = {}
        for table in TABLES:
            columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
            out[table] = [dict(zip(columns, r)) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
        return out


def test_a_0_1_0_database_upgrades_with_every_row_intact(tmp_path):
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    before = rows(path)
    assert len(before["users"]) == 3 and len(before["jobs"]) == 4 and len(before["allocations"]) == 2
    applied = Store(str(path)).migrate()
    assert applied == [name for name, _ in store_module.MIGRATIONS][3:]
    after = rows(path)
    for table in TABLES:
        assert len(after[table]) == len(before[table]), table
        for old, new in zip(before[table], after[table]):
            assert {k: new[k] for k in old} == old, table  # every old column, every value
    # what the upgrade adds: 0.1.0's job tokens are scoped to their jobs, people's tokens are not
    scoped = {t["label"]: t["job_id"] for t in after["tokens"]}
    assert all(job_id == label[4:] for label, job_id in scoped.items() if label.startswith("job:"))
    assert all(job_id is None for label, job_id in scoped.items() if not label.startswith("job:"))
    # 0010_preemption: every job so far ran once, and its ledger rows are its first attempt's
    assert {j["attempts"] for j in after["jobs"]} == {1} and {a["attempt"] for a in after["allocations"]} == {1}
    assert Store(str(path)).migrate() == []  # a second start changes nothing


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    before = rows(path)

    def broken(db):
        db.execute("ALTER TABLE jobs ADD COLUMN half_done TEXT")
        db.execute("UPDATE users SET role = 'admin'")
        raise RuntimeError("disk full")

    monkeypatch.setattr(store_module, "MIGRATIONS", store_module.MIGRATIONS[:3] + (("0004_broken", broken),))
    with pytest.raises(RuntimeError, match="disk full"):
        Store(str(path)).migrate()
    assert rows(path) == before
    with sqlite3.connect(path) as db:
        assert "half_done" not in [r[1] for r in db.execute("PRAGMA table_info(jobs)")]
        assert [r[0] for r in db.execute("SELECT name FROM schema_migrations ORDER BY name")] == ["0001_initial", "0002_jobs", "0003_accounting"]


def test_a_database_from_a_newer_mlpd_is_refused_and_left_as_it_is(tmp_path):
    from mlpd.store import NewerDatabase

    path = tmp_path / "mlpd.db"
    shutil.copy(FIXTURE, path)
    Store(str(path)).migrate()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('0099_from_the_future', 0)")
    before = rows(path)
    with pytest.raises(NewerDatabase, match="newer mlpd .*0099_from_the_future.*upgrade mlpd"):
        Store(str(path)).migrate()
    assert rows(path) == before
