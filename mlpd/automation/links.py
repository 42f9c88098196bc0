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


def jobs_of(store: Store, owner: str | None, states: list[str], limit: int, schedule: str | None = None,
            sweep: str | None = None) -> list[dict[str, Any]]:
    """The jobs a schedule (by name) or a sweep (by id) made, newest first: `mlpd jobs --schedule NAME`.
    One owner's (None: anyone's, for admins), optionally in some states."""
    from mlpd import jobs

    ids: list[str] = []
    if schedule:
        from mlpd.automation.schedules import job_ids

        ids += job_ids(store, owner, schedule)
    if sweep:
        ids += [r["job_id"] for r in store.query("SELECT job_id FROM sweep_trials WHERE sweep_id = ?", [sweep])]
    rows = [j for j in (jobs.get(store, i) for i in dict.fromkeys(ids)) if j is not None]
    rows = [j for j in rows if (owner is None or j["owner"] == owner) and (not states or j["state"] in states)]
    rows.sort(key=lambda j: j["submitted_at"], reverse=True)
    return rows[:limit]
