"""mlpd.ops.supervision: the daemon's restart backoff and FATAL, as pure functions over a clock we hand in."""

from __future__ import annotations

import signal

from mlpd.ops.supervision import (BACKOFF, FATAL, RUNNING, ChildState, RestartPolicy, backoff_delay, due, exit_text, exited,
                              started)

POLICY = RestartPolicy(fatal_after=5, stable_after=60.0)


def test_quick_exits_back_off_1_2_4_8_then_the_fifth_in_a_row_is_fatal():
    child, now, delays = started(ChildState("worker"), 100.0), 100.0, []
    for _ in range(4):
        now += 2  # each run dies 2 s after its start
        child = exited(child, 1, now, POLICY)
        assert child.state == BACKOFF and not due(child, now)
        delays.append(child.restart_at - now)
        assert not due(child, child.restart_at - 0.01) and due(child, child.restart_at)
        now = child.restart_at
        child = started(child, now)
        assert child.state == RUNNING and child.restart_at is None
    assert delays == [1, 2, 4, 8]
    child = exited(child, -signal.SIGKILL, now + 2, POLICY)
    assert child.state == FATAL and child.quick_exits == 5 and child.last_exit == -9
    assert not due(child, now + 10_000)  # never started again


def test_the_delay_doubles_up_to_a_minute():
    assert [backoff_delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    many = RestartPolicy(fatal_after=100, stable_after=60.0)
    child, now = started(ChildState("web"), 0.0), 0.0
    for _ in range(12):
        child = exited(child, 1, now + 1, many)
        now = child.restart_at
        child = started(child, now)
    assert exited(child, 1, now + 1, many).restart_at == now + 1 + 60


def test_a_child_that_ran_long_enough_starts_a_fresh_count():
    child, now = started(ChildState("worker"), 0.0), 0.0
    for _ in range(4):
        child = exited(child, 1, now + 1, POLICY)
        now = child.restart_at
        child = started(child, now)
    assert child.quick_exits == 4
    child = exited(child, 1, now + 60, POLICY)  # it ran a whole minute: the last start went well
    assert child.state == BACKOFF and child.quick_exits == 0 and child.restart_at == now + 60 + 1
    child = started(child, child.restart_at)
    assert exited(child, 1, child.started_at + 1, POLICY).state == BACKOFF  # one quick exit is not five


def test_a_shorter_policy_gives_up_sooner():
    short = RestartPolicy(fatal_after=2, stable_after=5.0)
    child = exited(started(ChildState("front"), 0.0), 1, 1.0, short)
    assert child.state == BACKOFF
    assert exited(started(child, 2.0), 1, 3.0, short).state == FATAL


def test_exit_statuses_read_as_words():
    assert exit_text(3) == "exit status 3"
    assert exit_text(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_text(None) == "no exit yet"
