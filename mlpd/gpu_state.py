"""What the web and the worker both need to know about GPUs and this daemon, computed in one place.

Who holds each GPU (from the active jobs), which GPUs someone uses outside mlpd (as the
sampler last recorded), and the daemon's instance id (the label on its containers).
"""

from __future__ import annotations

import json
import os
from typing import Any

from mlpd import jobs
from mlpd.store import Store

STRAY_STATUS_KEY = "gpus.stray"


def stray_gpus(store: Store) -> dict[str, list[int]]:
    """The last recorded stray GPU use: {uuid: pids} (written by the worker's GPU sampler)."""
    row = store.query_one("SELECT value FROM daemon_status WHERE key = ?", [STRAY_STATUS_KEY])
    return json.loads(row["value"]) if row else {}


def gpu_holders(store: Store) -> dict[str, dict[str, Any]]:
    """{gpu uuid: {job_id, owner, since}} for every GPU an active job holds."""
    holders = {}
    for job in jobs.in_states(store, jobs.ACTIVE):
        for uuid in job["gpu_uuids"]:
            holders[uuid] = {"job_id": job["id"], "owner": job["owner"], "since": job["started_at"] or job["updated_at"]}
    return holders


def read_instance_id(state_dir: str) -> str:
    """This state directory's instance id (written by the daemon at start): the mlpd.instance label."""
    with open(os.path.join(state_dir, "instance_id")) as fh:
        return fh.read().strip()
