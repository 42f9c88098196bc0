"""What links a job to the automation that made it or holds it: the jobs it waits for, its schedule, its sweep."""

from __future__ import annotations

import json
from typing import Any

from mlpd.store import Store


def of_job(store: Store, job_id: str) -> dict[str, Any]:
    """{"after": [{"job", "condition", "state"}], "schedule": {"name", "owner", "due_at"} | None,
    "sweep": {"id", "trial", "params"} | None} for the job view (`jobs show`, GET /jobs/ID, the UI)."""
    from mlpd.automation import dependencies

    run = store.query_one("""SELECT s.name, s.owner, r.due_at FROM schedule_runs r JOIN schedules s ON s.id = r.schedule_id
                             WHERE r.job_id = ?""", [job_id])
    trial = store.query_one("SELECT sweep_id, trial, params FROM sweep_trials WHERE job_id = ?", [job_id])
    return {"after": dependencies.of(store, job_id), "schedule": run,
            "sweep": {"id": trial["sweep_id"], "trial": trial["trial"], "params": json.loads(trial["params"])} if trial else None}
