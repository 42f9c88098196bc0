"""mlpd.serving.rollout: what a deployment needs next, decided over plain data (no Docker, no database)."""

from __future__ import annotations

from mlpd.serving.rollout import Replica, Revision, plan, restart_backoff

NOW = 1000.0
TIMEOUT = 60.0


def rev(id, seq, state, drain_until=None):
    return Revision(id, seq, state, f"version {seq}", drain_until)


def rep(job, revision, slot=0, state="running", healthy=True, created=1.0, started=990.0, ended=None, reason=""):
    return Replica(job, revision, slot, state, healthy, created, started, ended, reason)


def kinds(actions):
    return [(a.kind, a.revision, a.slot, a.job_id) for a in actions]


def test_a_new_revision_gets_a_replica_per_slot():
    assert kinds(plan([rev("a", 1, "rolling")], [], 2, NOW, TIMEOUT)) == [("start", "a", 0, ""), ("start", "a", 1, "")]


def test_traffic_switches_only_when_every_slot_answers_ping():
    revisions = [rev("old", 1, "serving"), rev("new", 2, "rolling")]
    old = [rep("o0", "old", 0), rep("o1", "old", 1)]
    half = [rep("n0", "new", 0), rep("n1", "new", 1, healthy=False)]
    assert kinds(plan(revisions, old + half, 2, NOW, TIMEOUT)) == []
    ready = [rep("n0", "new", 0), rep("n1", "new", 1)]
    assert kinds(plan(revisions, old + ready, 2, NOW, TIMEOUT)) == [("switch", "new", 0, "")]


def test_a_replica_that_ends_while_rolling_out_rolls_the_revision_back_with_its_reason():
    revisions = [rev("old", 1, "serving"), rev("new", 2, "rolling")]
    actions = plan(revisions, [rep("o0", "old"), rep("n0", "new", state="failed", ended=990.0, reason="exited with code 1")], 1, NOW, TIMEOUT)
    assert kinds(actions) == [("fail", "new", 0, "")]
    assert "exited with code 1" in actions[0].reason


def test_a_revision_that_never_answers_is_rolled_back_after_the_start_timeout():
    revisions = [rev("old", 1, "serving"), rev("new", 2, "rolling")]
    waiting = [rep("o0", "old"), rep("n0", "new", healthy=False, started=NOW - TIMEOUT + 1)]
    assert plan(revisions, waiting, 1, NOW, TIMEOUT) == []
    late = [rep("o0", "old"), rep("n0", "new", healthy=False, started=NOW - TIMEOUT - 1)]
    actions = plan(revisions, late, 1, NOW, TIMEOUT)
    assert kinds(actions) == [("fail", "new", 0, "")] and "did not answer /ping within 60s" in actions[0].reason


def test_a_queued_or_building_replica_has_no_start_timeout():
    revisions = [rev("new", 1, "rolling")]
    for state in ("queued", "starting"):
        assert plan(revisions, [rep("n0", "new", state=state, healthy=False, started=None)], 1, NOW, TIMEOUT) == []


def test_a_crashed_replica_of_the_serving_revision_is_restarted_with_a_growing_backoff():
    revisions = [rev("cur", 1, "serving")]
    once = [rep("r1", "cur", state="failed", ended=NOW - 0.1, reason="exited with code 137")]
    actions = plan(revisions, once, 1, NOW, TIMEOUT)
    assert kinds(actions) == [("restart", "cur", 0, "r1")] and "137" in actions[0].reason
    crashing = [rep(f"r{i}", "cur", state="failed", created=float(i), ended=NOW - 10 + i) for i in range(4)]
    assert restart_backoff(crashing, "cur", 0, NOW) == 8.0
    assert plan(revisions, crashing, 1, NOW, TIMEOUT) == []  # the last crash was 7 s ago: wait until 8 s
    assert kinds(plan(revisions, crashing, 1, NOW + 2, TIMEOUT)) == [("restart", "cur", 0, "r3")]


def test_only_the_newest_replica_of_a_slot_counts():
    revisions = [rev("cur", 1, "serving")]
    replicas = [rep("r1", "cur", state="failed", created=1.0, ended=500.0), rep("r2", "cur", created=2.0)]
    assert plan(revisions, replicas, 1, NOW, TIMEOUT) == []


def test_a_draining_revision_stops_after_its_drain_and_then_retires():
    revisions = [rev("old", 1, "draining", drain_until=NOW + 5), rev("new", 2, "serving")]
    replicas = [rep("o0", "old"), rep("n0", "new")]
    assert plan(revisions, replicas, 1, NOW, TIMEOUT) == []
    assert kinds(plan(revisions, replicas, 1, NOW + 5, TIMEOUT)) == [("stop", "old", 0, "o0")]
    stopped = [rep("o0", "old", state="cancelled", ended=NOW + 6), rep("n0", "new")]
    assert kinds(plan(revisions, stopped, 1, NOW + 7, TIMEOUT)) == [("retire", "old", 0, "")]


def test_an_older_rollout_is_superseded_by_a_newer_one():
    revisions = [rev("cur", 1, "serving"), rev("v2", 2, "rolling"), rev("v3", 3, "rolling")]
    actions = plan(revisions, [rep("c0", "cur"), rep("a0", "v2", healthy=False)], 1, NOW, TIMEOUT)
    assert ("supersede", "v2", 0, "") in kinds(actions) and ("start", "v3", 0, "") in kinds(actions)


def test_nothing_of_a_rolled_back_or_superseded_revision_keeps_running():
    revisions = [rev("back", 3, "rolled_back"), rev("sup", 2, "superseded"), rev("cur", 1, "serving")]
    replicas = [rep("b0", "back"), rep("s0", "sup"), rep("c0", "cur")]
    stops = [(a.job_id, a.reason) for a in plan(revisions, replicas, 1, NOW, TIMEOUT) if a.kind == "stop"]
    assert sorted(stops) == [("b0", "version 3 was rolled back"), ("s0", "version 2 was superseded")]


def test_nothing_of_a_failed_or_retired_revision_keeps_running():
    revisions = [rev("bad", 2, "failed"), rev("cur", 1, "serving")]
    actions = plan(revisions, [rep("b0", "bad"), rep("c0", "cur")], 1, NOW, TIMEOUT)
    assert kinds(actions) == [("stop", "bad", 0, "b0")]


def test_replicas_beyond_the_wanted_count_are_stopped():
    revisions = [rev("cur", 1, "serving")]
    assert kinds(plan(revisions, [rep("c0", "cur", 0), rep("c1", "cur", 1)], 1, NOW, TIMEOUT)) == [("stop", "cur", 1, "c1")]
