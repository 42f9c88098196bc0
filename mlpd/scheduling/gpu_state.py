"""What the web and the worker both need to know about GPUs and this daemon, computed in one place.

Who holds each GPU (from the active jobs), which GPUs someone uses outside mlpd (as the
sampler last recorded), and the daemon's instance id (the label on its containers).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from mlpd import jobs
from mlpd.kinds.base import kind_of
from mlpd.errors import MlpdError
from mlpd.scheduling.sharing import share_of
from mlpd.store import Store, record_event
from mlpd.workload_names import names_of

STRAY_STATUS_KEY = "gpus.stray"


def stray_gpus(store: Store) -> dict[str, list[int]]:
    """The last recorded stray GPU use: {uuid: pids} (written by the worker's GPU sampler)."""
    row = store.query_one("SELECT value FROM daemon_status WHERE key = ?", [STRAY_STATUS_KEY])
    return json.loads(row["value"]) if row else {}


def gpu_holders(store: Store) -> dict[str, dict[str, Any]]:
    """{gpu uuid: {job_id, owner, since, kind, workload, name, replica, label, show, share}} for every GPU an
    active workload holds (a job, a workspace's session, a deployment's replica: kind says which, workload is the
    workspace's or deployment's id; label names it as people read it, show is the command that looks it up;
    share the part of the GPU it holds, 1 for the whole GPU). A shared GPU gives its first holder here;
    gpu_sharers gives them all."""
    return {uuid: hs[0] for uuid, hs in gpu_sharers(store).items()}


def gpu_sharers(store: Store) -> dict[str, list[dict[str, Any]]]:
    """{gpu uuid: [holder, ...]} as gpu_holders, with every holder of a shared GPU (--gpus 0.5), earliest first."""
    holders: dict[str, list[dict[str, Any]]] = {}
    active = jobs.in_states(store, jobs.ACTIVE)
    names = names_of(store, active)
    for job in sorted(active, key=lambda j: (j["started_at"] or j["updated_at"] or 0, j["id"])):
        for uuid in job["gpu_uuids"]:
            holders.setdefault(uuid, []).append(
                {"job_id": job["id"], "owner": job["owner"], "since": job["started_at"] or job["updated_at"],
                 "kind": kind_of(job.get("kind")).name, "workload": job.get("workload"), **names[job["id"]].to_dict(),
                 "share": share_of(job["spec"])})
    return holders


def drains(store: Store, config_drained: list, devices: list) -> dict[str, str]:
    """{gpu uuid: why it takes no new work} for every drained GPU: drained by an admin at run time
    (with their reason) or listed in mlpd.toml's gpus.drained (by index or UUID)."""
    listed = {str(x) for x in config_drained}
    out = {d.uuid: "drained in mlpd.toml (gpus.drained)" for d in devices if str(d.index) in listed or d.uuid in listed}
    for row in store.query("SELECT gpu_uuid, reason, actor FROM gpu_drains"):
        out[row["gpu_uuid"]] = f"drained by {row['actor']}" + (f": {row['reason']}" if row["reason"] else "")
    return out


def find_gpu(devices: list, ref: str):
    """The device an admin names by index or UUID (or a unique UUID prefix); MlpdError 404 otherwise."""
    for d in devices:
        if ref == str(d.index) or ref == d.uuid:
            return d
    matches = [d for d in devices if len(ref) >= 8 and d.uuid.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{d.index} ({d.uuid})" for d in devices) or "none"
    raise MlpdError(404, "not_found", f"no GPU {ref!r} on this host; GPUs: {known}")


def set_drained(store: Store, gpu_uuid: str, drained: bool, actor: str, reason: str = "") -> None:
    """Drain a GPU (running work finishes, nothing new is placed on it) or undrain it; idempotent, an event either way."""
    with store.write() as db:
        if drained:
            db.execute("INSERT INTO gpu_drains (gpu_uuid, reason, actor, at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(gpu_uuid) DO UPDATE SET reason = excluded.reason, actor = excluded.actor, at = excluded.at",
                       [gpu_uuid, reason, actor, time.time()])
        else:
            db.execute("DELETE FROM gpu_drains WHERE gpu_uuid = ?", [gpu_uuid])
        record_event(db, actor, "gpu.drained" if drained else "gpu.undrained", "gpu", gpu_uuid, reason=reason)


def read_instance_id(state_dir: str) -> str:
    """This state directory's instance id (written by the daemon at start): the mlpd.instance label."""
    with open(os.path.join(state_dir, "instance_id")) as fh:
        return fh.read().strip()
