"""Retention: how long the files of ended jobs (logs, outputs) and unused code archives are kept.

What is removed: the directory of a job that ended more than ``retention.job_days`` ago (its
log, build log and outputs; the job's row, history and ledger stay), and a code archive that
no job submitted in the last ``retention.code_days`` used and no queued or active job uses.
Nothing of a queued, starting or running job is ever touched. Removal walks without
following links (shutil.rmtree), so a link a job left in its outputs is removed, not followed.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from mlpd import jobs
from mlpd.store import Store, record_event


@dataclass(frozen=True)
class RetentionPlan:
    job_dirs: list[str]      # job ids whose files go
    code: list[str]          # code archive digests that go
    bytes: int               # what that frees


def _size(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


# The states whose files and code are never removed; preempted: on its way back to the queue.
KEPT_STATES = tuple(sorted(jobs.NOT_ENDED_STATES))


def plan(store: Store, state_dir: str, job_days: float, code_days: float, now: float | None = None) -> RetentionPlan:
    """What retention would remove now (nothing is removed here)."""
    now = now or time.time()
    active = list(KEPT_STATES)
    old = store.query(f"""SELECT id FROM jobs WHERE state NOT IN ({','.join('?' * len(active))}) AND ended_at IS NOT NULL
                          AND ended_at < ?""", [*active, now - job_days * 86400])
    job_ids = [r["id"] for r in old if os.path.isdir(jobs.job_dir(state_dir, r["id"]))]
    code_root = os.path.join(state_dir, "code")
    digests = [d for d in (os.listdir(code_root) if os.path.isdir(code_root) else []) if len(d) == 64 and not d.startswith(".")]
    in_use = {r["digest"] for r in store.query(
        f"""SELECT json_extract(spec, '$.code') AS digest FROM jobs WHERE json_extract(spec, '$.code') IS NOT NULL
            AND (state IN ({','.join('?' * len(active))}) OR submitted_at >= ?)""", [*active, now - code_days * 86400])}
    fresh = {r["digest"] for r in store.query("SELECT digest FROM code_owners WHERE created_at >= ?", [now - code_days * 86400])}
    from mlpd.automation.schedules import code_in_use

    in_use |= code_in_use(store)  # a schedule ships its code once and runs it for as long as it exists
    code = [d for d in digests if d not in in_use and d not in fresh]
    freed = sum(_size(jobs.job_dir(state_dir, j)) for j in job_ids) + sum(_size(os.path.join(code_root, d)) for d in code)
    return RetentionPlan(job_ids, code, freed)


def apply(store: Store, state_dir: str, job_days: float, code_days: float, now: float | None = None,
          chosen: RetentionPlan | None = None) -> RetentionPlan:
    """Remove what plan() names (or chosen, a plan made earlier), re-checking each job's and archive's
    use just before; returns what was removed."""
    chosen = chosen or plan(store, state_dir, job_days, code_days, now)
    removed_jobs = []
    for job_id in chosen.job_dirs:
        job = jobs.get(store, job_id)
        if job is None or job["state"] not in jobs.TERMINAL_STATES:
            continue
        shutil.rmtree(jobs.job_dir(state_dir, job_id), ignore_errors=True)
        removed_jobs.append(job_id)
    removed_code = []
    for digest in chosen.code:
        with store.write() as db:
            still = db.execute(f"""SELECT 1 FROM jobs WHERE json_extract(spec, '$.code') = ?
                                   AND state IN ({','.join('?' * len(KEPT_STATES))})""", [digest, *KEPT_STATES]).fetchone()
            if still or db.execute("SELECT 1 FROM schedules WHERE json_extract(spec, '$.code') = ?", [digest]).fetchone():
                continue
            db.execute("DELETE FROM code_owners WHERE digest = ?", [digest])
        shutil.rmtree(jobs.code_dir(state_dir, digest), ignore_errors=True)
        removed_code.append(digest)
    if removed_jobs or removed_code:
        with store.write() as db:
            for job_id in removed_jobs:
                record_event(db, "mlpd", "job.files_removed", "job", job_id, reason=f"retention: ended over {job_days:g} days ago")
            for digest in removed_code:
                record_event(db, "mlpd", "code.removed", "code", digest, reason=f"retention: unused for {code_days:g} days")
    return RetentionPlan(removed_jobs, removed_code, chosen.bytes)
