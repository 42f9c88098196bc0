"""Reading the audit trail (the events table) a page at a time, filtered, with each object named.

The events table grows by a few rows a minute on a busy box; a page that shows all of it is
thousands of pixels tall within the hour. Pages go newest first and are keyed by event id
(``before``), so a page stays the same while new events arrive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlpd.store import Store
from mlpd.workload_names import names_of

PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class EventFilter:
    """Which events to show: an action prefix ("job." or "deployment.rolled"), an actor, an object id
    (or its workspace/deployment name), and the page (events older than the id `before`)."""
    action: str = ""
    actor: str = ""
    object: str = ""
    before: int | None = None
    limit: int = PAGE_SIZE


def _like_prefix(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def page(store: Store, f: EventFilter) -> tuple[list[dict[str, Any]], int | None]:
    """(events newest first, each with its detail decoded and `label` naming its object; the `before` of
    the next page, None on the last)."""
    where: list[str] = []
    params: list[Any] = []
    if f.action:
        where.append("action LIKE ? ESCAPE '\\'")
        params.append(_like_prefix(f.action))
    if f.actor:
        where.append("actor = ?")
        params.append(f.actor)
    if f.object:
        # An id, or the name of a workspace or deployment: its events (keyed by its id) and those of its
        # sessions or replicas (workload rows that name it).
        ids = [r["id"] for r in store.query("SELECT id FROM workspaces WHERE name = ? UNION SELECT id FROM deployments WHERE name = ?",
                                            [f.object, f.object])]
        if ids:
            ids += [r["id"] for r in store.query(f"SELECT id FROM jobs WHERE workload IN ({','.join('?' * len(ids))})", ids)]
        where.append(f"object_id IN ({','.join('?' * (1 + len(ids)))})")
        params += [f.object, *ids]
    if f.before is not None:
        where.append("id < ?")
        params.append(f.before)
    limit = max(1, min(f.limit, MAX_PAGE_SIZE))
    rows = store.query("SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?",
                       params + [limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    for r in rows:
        try:
            r["detail"] = json.loads(r["detail"])
        except ValueError:
            r["detail"] = {}
    name_objects(store, rows)
    return rows, (rows[-1]["id"] if more and rows else None)


def name_objects(store: Store, rows: list[dict[str, Any]]) -> None:
    """Set each event's `label`: the workload it is about as people name it (mlpd.workload_names), the
    workspace or deployment by name, else the object id."""
    job_ids = sorted({r["object_id"] for r in rows if r["object_kind"] == "job"})
    jobs_by_id: dict[str, dict] = {}
    if job_ids:
        jobs_by_id = {j["id"]: j for j in store.query(
            f"SELECT id, owner, kind, name, workload FROM jobs WHERE id IN ({','.join('?' * len(job_ids))})", job_ids)}
    names = names_of(store, jobs_by_id.values())
    kinds = {r["object_kind"] for r in rows}
    ws = {r["id"]: r for r in store.query("SELECT id, name, owner FROM workspaces")} if "workspace" in kinds else {}
    deps = {r["id"]: r["name"] for r in store.query("SELECT id, name FROM deployments")} if "deployment" in kinds else {}
    for r in rows:
        oid = r["object_id"]
        if r["object_kind"] == "job" and oid in names:
            r["label"] = names[oid].label(with_owner=True)
        elif r["object_kind"] == "workspace" and oid in ws:
            r["label"] = f"workspace {ws[oid]['name']} ({ws[oid]['owner']})"
        elif r["object_kind"] == "deployment" and oid in deps:
            r["label"] = f"deployment {deps[oid]}"
        else:
            r["label"] = f"{r['object_kind']} {oid}"
