"""The audit trail a page at a time: newest first, keyed by event id, filtered by action prefix, actor
and object (an id, or a workspace's or deployment's name), each object named as people name it."""

from __future__ import annotations

from pathlib import Path

from mlpd.kinds import workspace as workspaces
from mlpd.event_log import EventFilter, page
from mlpd.store import Store, record_event

T0 = 1_800_000_000.0


def _store(tmp_path) -> Store:
    store = Store(str(Path(tmp_path) / "mlpd.db"))
    store.migrate()
    return store


def test_pages_go_newest_first_and_stay_put_while_new_events_arrive(tmp_path):
    store = _store(tmp_path)
    with store.write() as db:
        for i in range(120):
            record_event(db, "alice" if i % 2 else "bob", "job.queued" if i % 3 else "gpu.drained", "gpu", f"GPU-{i}", at=T0 + i)
    first, before = page(store, EventFilter(limit=50))
    assert len(first) == 50 and first[0]["object_id"] == "GPU-119" and before == first[-1]["id"]
    with store.write() as db:
        record_event(db, "carol", "job.queued", "gpu", "GPU-new", at=T0 + 500)
    second, before2 = page(store, EventFilter(before=before, limit=50))
    assert second[0]["object_id"] == "GPU-69" and len(second) == 50
    third, last = page(store, EventFilter(before=before2, limit=50))
    assert len(third) == 20 and last is None
    drained, _ = page(store, EventFilter(action="gpu.", actor="bob", limit=500))
    assert drained and all(e["action"] == "gpu.drained" and e["actor"] == "bob" for e in drained)
    assert page(store, EventFilter(action="job_", limit=500))[0] == []  # '_' is a character, not LIKE's wildcard
    assert page(store, EventFilter(action="%", limit=500))[0] == []


def test_an_object_is_found_by_a_workspaces_name_and_named_by_it(tmp_path):
    store = _store(tmp_path)
    ws = workspaces.create(store, "nina", "lab", workspaces.parse_workspace_spec({"gpus": 1}, "img"), 41000, 41001, now=T0)
    rows, _ = page(store, EventFilter(object="lab"))
    # the workspace's own events and its session's, each named by the workspace
    assert [e["action"] for e in rows] == ["job.queued", "workspace.created"]
    assert {e["label"] for e in rows} == {"workspace lab (nina)"}
    session, _ = page(store, EventFilter(object=ws["session"]))
    assert [e["action"] for e in session] == ["job.queued"] and session[0]["label"] == "workspace lab (nina)"
