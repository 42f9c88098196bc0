"""When to restart a child process of the daemon that exited, and when to give up on it.

supervisor's states, as plain data and pure functions taking ``now`` (tested without processes):
a child is RUNNING; one that exits soon after it started waits in BACKOFF, 1, 2, 4 ... up to
60 seconds, and is started again; the ``fatal_after``-th quick exit in a row makes it FATAL, and
it is not started again until the daemon itself restarts. A child that ran for ``stable_after``
seconds or longer had started well: its exit begins a fresh count, restarting after the first delay.
mlpd.ops.daemon does the starting and the watching; this module only decides.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, replace

STATUS_KEY = "daemon.children"  # the daemon_status row the daemon publishes its children's states in
RUNNING = "RUNNING"
BACKOFF = "BACKOFF"
FATAL = "FATAL"
CHILD_STATES = (RUNNING, BACKOFF, FATAL)

FIRST_DELAY = 1.0
MAX_DELAY = 60.0


@dataclass(frozen=True)
class RestartPolicy:
    """How many quick exits in a row make a child FATAL, and how long a run must be to not count as quick."""

    fatal_after: int = 5
    stable_after: float = 60.0


@dataclass(frozen=True)
class ChildState:
    """One child's supervision state; the times are the caller's clock (the daemon uses time.monotonic)."""

    name: str
    state: str = RUNNING
    started_at: float = 0.0
    quick_exits: int = 0  # exits in a row, each within stable_after of its start
    last_exit: int | None = None  # the last exit status (negative: the signal that ended it, as Popen has it)
    restart_at: float | None = None  # in BACKOFF: when to start it again


def started(child: ChildState, now: float) -> ChildState:
    """The child was (re)started at now."""
    return replace(child, state=RUNNING, started_at=now, restart_at=None)


def backoff_delay(quick_exits: int) -> float:
    """Seconds to wait before the next start after this many quick exits in a row (1, 2, 4 ... 60)."""
    return min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, quick_exits - 1))


def exited(child: ChildState, status: int, now: float, policy: RestartPolicy) -> ChildState:
    """The child exited with status at now: BACKOFF until its next start, or FATAL."""
    quick = child.quick_exits + 1 if now - child.started_at < policy.stable_after else 0
    if quick >= policy.fatal_after:
        return replace(child, state=FATAL, quick_exits=quick, last_exit=status, restart_at=None)
    return replace(child, state=BACKOFF, quick_exits=quick, last_exit=status, restart_at=now + backoff_delay(quick))


def due(child: ChildState, now: float) -> bool:
    """Whether a child in BACKOFF should be started now."""
    return child.state == BACKOFF and child.restart_at is not None and now >= child.restart_at


def exit_text(status: int | None) -> str:
    """An exit status for people: 'exit status 3' or 'killed by SIGKILL'."""
    if status is None:
        return "no exit yet"
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"
