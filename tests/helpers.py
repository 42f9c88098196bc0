"""Helpers for tests, ``from helpers import wait_for, as_json``: re-exported from conftest, and polls of the daemon's state."""

from conftest import as_json, docker_available, free_port, holds_for, needs_docker, new_user, wait_for  # noqa: F401


def worker_passes_since(state_dir, since: float) -> int:
    """The reconcile passes of the worker process that wrote its heartbeat after ``since`` (a
    time.time()), 0 until it has: poll it with wait_for to let a restarted daemon reconcile."""
    import json
    import sqlite3
    from pathlib import Path

    db = sqlite3.connect(Path(state_dir) / "mlpd.db", timeout=10)
    try:
        row = db.execute("SELECT value, updated_at FROM daemon_status WHERE key = 'worker.heartbeat'").fetchone()
    finally:
        db.close()
    return json.loads(row[0]).get("passes", 0) if row and row[1] > since else 0
