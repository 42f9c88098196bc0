"""mlpd.store keeps pandas and numpy from sqlite-utils, and only from sqlite-utils.

Each check runs in a fresh interpreter: what matters is the first import of sqlite-utils in a process.
pandas and numpy are always installed here: MLflow requires both.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import mlpd.store
import sqlite_utils.db
seen = {"pd": sqlite_utils.db.pd is not None, "np": sqlite_utils.db.np is not None,
        "left_hidden": [n for n in ("pandas", "numpy") if n in sys.modules and sys.modules[n] is None],
        "pandas_loaded": "pandas" in sys.modules}
try:
    import pandas  # what MLflow does later in a web worker
    seen["pandas_after"] = pandas.__name__
except ImportError as exc:
    seen["pandas_after"] = "ImportError: " + str(exc)
print(json.dumps(seen))
"""


def probe(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_sqlite_utils_is_imported_without_pandas_and_pandas_still_imports_afterwards():
    seen = probe(PROBE)
    assert seen == {"pd": False, "np": False, "left_hidden": [], "pandas_loaded": False, "pandas_after": "pandas"}


def test_pandas_already_imported_is_left_alone():
    seen = probe("import pandas\n" + PROBE)
    assert seen["pd"] is True and seen["left_hidden"] == [] and seen["pandas_after"] == "pandas"


def test_the_table_api_works_without_pandas(tmp_path):
    code = f"""
import json
from mlpd.store import Store, record_event, set_status, get_status
s = Store({str(tmp_path / "mlpd.db")!r}); s.migrate()
with s.write() as db:
    record_event(db, "alice", "job.submit", "job", 7, gpus=[0, 1])
set_status(s, "reconcile", {{"ok": True}}); set_status(s, "reconcile", {{"ok": False}})
print(json.dumps([s.query("SELECT object_id, detail FROM events"), get_status(s)["reconcile"]["value"]]))
"""
    events, status = probe(code)
    assert events == [{"object_id": "7", "detail": '{"gpus": [0, 1]}'}] and status == {"ok": False}
