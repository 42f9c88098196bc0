"""Deployment revisions move through one table (serving_rollout.REVISION_TRANSITIONS) by
serving.revision_transition: a compare-and-set on a real SQLite store that writes its event in the
same transaction, so two actors racing for one revision cannot both win."""

from __future__ import annotations

import json
import threading

import pytest

from mlpd.serving import deployments as serving
from mlpd.serving.rollout import ENDED_REVISIONS, LIVE_REVISIONS, REVISION_STATES, REVISION_TRANSITIONS, revision_may_follow
from mlpd.store import Store

T0 = 1_800_000_000.0


@pytest.fixture
def store(tmp_path):
    st = Store(str(tmp_path / "state.db"))
    st.migrate()
    with st.write() as db:
        db.execute("""INSERT INTO deployments (id, owner, name, model_uri, spec, key_hash, created_at, updated_at)
                      VALUES ('d1', 'alice', 'churn', 'models:/churn/1', '{"replicas": 1}', 'x', ?, ?)""", [T0, T0])
    return st


def add_revision(store: Store, n: int = 1, canary: int | None = None) -> str:
    with store.write() as db:
        return serving.add_revision(db, "d1", {"model_uri": f"models:/churn/{n}", "model_name": "churn", "model_version": str(n),
                                                "run_id": None, "location": "x", "requirements": None}, T0, canary)


def revision(store: Store, rev_id: str) -> dict:
    return store.query_one("SELECT * FROM deployment_revisions WHERE id = ?", [rev_id])


def revision_events(store: Store) -> list[dict]:
    rows = store.query("SELECT actor, action, object_kind, object_id, at, detail FROM events WHERE action LIKE 'revision.%' ORDER BY id")
    return [dict(r, detail=json.loads(r["detail"])) for r in rows]


def test_the_table_names_every_state_and_ended_ones_lead_nowhere():
    assert set(REVISION_TRANSITIONS) == set(REVISION_STATES)
    assert all(nexts <= set(REVISION_STATES) for nexts in REVISION_TRANSITIONS.values())
    assert all(REVISION_TRANSITIONS[s] == frozenset() for s in ENDED_REVISIONS)
    assert all(REVISION_TRANSITIONS[s] for s in (*LIVE_REVISIONS, "draining"))  # nothing live is stuck
    assert set(revision_may_follow("draining")) == {"serving", "canary"}
    assert revision_may_follow("rolling") == ()  # a revision is born rolling, never returns to it


def test_an_allowed_move_sets_the_fields_and_writes_its_event(store):
    rev = add_revision(store)
    assert serving.revision_transition(store, rev, "serving", at=T0 + 5, switched_at=T0 + 5)
    row = revision(store, rev)
    assert (row["state"], row["switched_at"], row["reason"]) == ("serving", T0 + 5, "")
    [event] = revision_events(store)
    assert event == {"actor": "mlpd", "action": "revision.serving", "object_kind": "deployment", "object_id": "d1", "at": T0 + 5,
                     "detail": {"revision": rev, "from": "rolling", "reason": ""}}


def test_a_reason_replaces_the_revisions_and_an_empty_one_keeps_it(store):
    rev = add_revision(store)
    assert serving.revision_transition(store, rev, "serving", switched_at=T0)
    assert serving.revision_transition(store, rev, "draining", "bob", "replaced by version 2 (promoted by bob)", drain_until=T0 + 30)
    assert serving.revision_transition(store, rev, "retired", ended_at=T0 + 31)
    row = revision(store, rev)
    assert (row["state"], row["reason"], row["drain_until"], row["ended_at"]) == \
           ("retired", "replaced by version 2 (promoted by bob)", T0 + 30, T0 + 31)
    assert [(e["actor"], e["action"], e["detail"]["from"]) for e in revision_events(store)] == \
           [("mlpd", "revision.serving", "rolling"), ("bob", "revision.draining", "serving"), ("mlpd", "revision.retired", "draining")]


@pytest.mark.parametrize("start, to", [("rolling", "retired"), ("rolling", "draining"), ("serving", "rolled_back"),
                                       ("serving", "canary"), ("draining", "serving"), ("retired", "serving"), ("failed", "rolling"),
                                       ("rolled_back", "serving"), ("superseded", "canary")])
def test_a_move_the_table_does_not_allow_is_refused_without_a_trace(store, start, to):
    rev = add_revision(store)
    with store.write() as db:
        db.execute("UPDATE deployment_revisions SET state = ? WHERE id = ?", [start, rev])  # the test's own setup, not a transition
    assert not serving.revision_transition(store, rev, to, reason="should not show")
    row = revision(store, rev)
    assert (row["state"], row["reason"]) == (start, "")
    assert revision_events(store) == []


def test_only_from_narrows_and_never_widens(store):
    rev = add_revision(store)
    assert not serving.revision_transition(store, rev, "superseded", only_from=["canary"])
    assert not serving.revision_transition(store, rev, "draining", only_from=["rolling"])  # rolling -> draining is not in the table
    assert serving.revision_transition(store, rev, "superseded", only_from=["rolling"], ended_at=T0)
    assert revision(store, rev)["state"] == "superseded"


def test_a_missing_revision_an_unknown_state_or_field_is_not_a_move(store):
    assert not serving.revision_transition(store, "nosuchrev", "serving")
    rev = add_revision(store)
    with pytest.raises(ValueError, match="not a revision state"):
        serving.revision_transition(store, rev, "running")
    with pytest.raises(ValueError, match="sets only"):
        serving.revision_transition(store, rev, "serving", model_uri="models:/other/1")
    assert revision(store, rev)["state"] == "rolling" and revision_events(store) == []


def test_inside_the_callers_transaction_it_commits_or_rolls_back_with_it(store):
    rev = add_revision(store)
    with pytest.raises(RuntimeError):
        with store.write() as db:
            assert serving.revision_transition(db, rev, "serving", switched_at=T0)
            raise RuntimeError("the caller's next write failed")
    assert revision(store, rev)["state"] == "rolling" and revision_events(store) == []
    with store.write() as db:
        assert serving.revision_transition(db, rev, "serving", switched_at=T0)
        db.execute("UPDATE deployments SET current = ? WHERE id = 'd1'", [rev])
    assert revision(store, rev)["state"] == "serving" and len(revision_events(store)) == 1


def test_concurrent_moves_of_one_revision_have_one_winner(store):
    """Eight actors (the pass switching, a member rolling back, an alias moving back...) race for
    one rolling revision, each on its own connection and each having seen it rolling (only_from): exactly
    one moves it, with exactly one event. (Without only_from a later one may still win a move the table
    allows from where the first left it: canary -> serving is a promotion.)"""
    rev = add_revision(store)
    targets = ["serving", "canary", "failed", "rolled_back", "superseded", "serving", "rolled_back", "failed"]
    barrier = threading.Barrier(len(targets))
    results: dict[int, bool] = {}

    def actor(i: int, to: str) -> None:
        mine = Store(store.path)  # a connection of its own, as another process would have
        barrier.wait()
        results[i] = serving.revision_transition(mine, rev, to, f"actor{i}", f"by actor {i}", only_from=["rolling"], ended_at=T0)
        mine.close()

    threads = [threading.Thread(target=actor, args=(i, to)) for i, to in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [i for i, won in results.items() if won]
    assert len(results) == len(targets) and len(winners) == 1, results
    [event] = revision_events(store)
    assert revision(store, rev)["state"] == targets[winners[0]]
    assert (event["actor"], event["action"], event["detail"]["from"]) == (f"actor{winners[0]}", f"revision.{targets[winners[0]]}", "rolling")


def test_a_stale_reader_loses_cleanly(store):
    """A caller that decided on what it read earlier finds the revision moved on: False, nothing written."""
    rev = add_revision(store)
    seen = revision(store, rev)["state"]
    assert serving.revision_transition(store, rev, "rolled_back", "bob", "rolled back by bob", only_from=["canary", "rolling"], ended_at=T0)
    assert seen == "rolling" and not serving.revision_transition(store, rev, "serving", only_from=[seen], switched_at=T0)
    assert revision(store, rev)["state"] == "rolled_back" and len(revision_events(store)) == 1


def test_promote_and_rollback_go_through_the_table(store):
    first, second = add_revision(store, 1), add_revision(store, 2, canary=20)
    assert serving.revision_transition(store, first, "serving", switched_at=T0)
    assert serving.revision_transition(store, second, "canary", switched_at=T0)
    with store.write() as db:
        db.execute("UPDATE deployments SET current = ?, canary = ? WHERE id = 'd1'", [first, second])
    serving.promote(store, {"serving.drain": "30s"}, serving.by_id(store, "d1"), "bob", now=T0 + 10)
    assert (revision(store, first)["state"], revision(store, first)["reason"], revision(store, first)["drain_until"]) == \
           ("draining", "replaced by version 2 (promoted by bob)", T0 + 40)
    assert (revision(store, second)["state"], revision(store, second)["reason"]) == ("serving", "promoted by bob")
    third = add_revision(store, 3, canary=10)
    assert serving.revision_transition(store, third, "canary", switched_at=T0 + 20)
    with store.write() as db:
        db.execute("UPDATE deployments SET canary = ? WHERE id = 'd1'", [third])
    assert serving.rollback(store, serving.by_id(store, "d1"), "carol", now=T0 + 30) == "version 3"
    assert (revision(store, third)["state"], revision(store, third)["reason"], revision(store, third)["ended_at"]) == \
           ("rolled_back", "rolled back by carol", T0 + 30)
    moves = [(e["actor"], e["action"], e["detail"]["revision"]) for e in revision_events(store)]
    assert moves[2:] == [("bob", "revision.draining", first), ("bob", "revision.serving", second), ("mlpd", "revision.canary", third),
                         ("carol", "revision.rolled_back", third)]
