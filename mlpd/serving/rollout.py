"""What a deployment needs next: the pure rollout and health decision, over plain data.

A deployment has revisions (one model version each) and replicas (one workload row each, per
revision and slot). Each pass of the worker looks at them as they are now and decides:

- a revision that is rolling out gets a replica per slot; once every slot answers /ping it
  takes the traffic (``switch``; a canary takes its share of it), and the revision it replaces drains;
- a rolling revision whose replica ends (a crash at start, a failed environment build) or that
  does not answer /ping within the start timeout is rolled back (``fail``), with the reason;
- a serving (or canary) revision's replica that ended is started again (``restart``), with a
  backoff that grows while it keeps crashing;
- a draining revision is stopped once its drain time has passed, and retired when its replicas
  have ended; anything left of a failed or retired revision is stopped.

Nothing here reads a clock, a database or Docker: :func:`plan` takes ``now`` and returns actions
that :mod:`mlpd.serving.deployments` carries out. A pass can run any number of times; it converges.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlpd.jobs import TERMINAL_STATES
LIVE_REVISIONS = ("rolling", "serving", "canary")
# A revision's states, what each says happened (the API and the UI show these words):
#   rolling      its replicas start; it takes no traffic until every one answers /ping
#   serving      it takes the traffic (canary: a share of it, beside the serving one)
#   draining     a newer version took its traffic (replaced, or promoted over it); it stops after the drain time
#   retired      it served and was replaced (its reason says by what)
#   failed       it could not start or answer /ping, and was rolled back by mlpd (its reason says why)
#   rolled_back  someone rolled it back on purpose (its reason says who)
#   superseded   a newer version (or the alias moving back) replaced it before it took traffic
ENDED_REVISIONS = ("retired", "failed", "rolled_back", "superseded")
REVISION_STATES = (*LIVE_REVISIONS, "draining", *ENDED_REVISIONS)
NOT_ENDED_REVISIONS = frozenset(REVISION_STATES) - frozenset(ENDED_REVISIONS)  # live or draining: its model copy is kept

# The state machine of a revision: which state may follow which. Every change goes through
# mlpd.serving.deployments.revision_transition (a compare-and-set on the states this table allows before the
# target, with its event row), so no caller keeps its own list. Who causes each: the serving pass
# switches a rolling revision in (serving, or canary), fails it (rolled back by mlpd), supersedes it
# (a newer rollout, or the followed alias moving back), drains what it replaces and retires what
# drained; a member promotes a canary (the serving one drains) or rolls back a canary or rollout.
REVISION_TRANSITIONS: dict[str, frozenset[str]] = {
    "rolling": frozenset({"serving", "canary", "failed", "rolled_back", "superseded"}),
    "canary": frozenset({"serving", "draining", "rolled_back"}),
    "serving": frozenset({"draining"}),
    "draining": frozenset({"retired"}),
    **{state: frozenset() for state in ENDED_REVISIONS},
}


def revision_may_follow(to: str) -> tuple[str, ...]:
    """The states a revision may be in for a transition to `to`."""
    return tuple(state for state, nexts in REVISION_TRANSITIONS.items() if to in nexts)
RESTART_WINDOW = 600.0  # crashes of a slot within this many seconds make its restart wait longer
MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class Revision:
    id: str
    seq: int
    state: str  # one of REVISION_STATES
    label: str  # for people: "version 3", "runs:/.../model"
    drain_until: float | None = None


@dataclass(frozen=True)
class Replica:
    job_id: str
    revision: str
    slot: int
    state: str  # the workload row's state (queued, starting, running, or terminal)
    healthy: bool
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    reason: str = ""

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class Action:
    """One step: start (a replica for revision/slot), restart (the same, after a crash), stop (job_id),
    switch (revision takes the traffic), fail (revision could not start: rolled back by mlpd), supersede (a newer
    rollout replaces one still rolling out), retire (revision is done)."""

    kind: str
    revision: str = ""
    slot: int = 0
    job_id: str = ""
    reason: str = ""


def restart_backoff(replicas: list[Replica], revision: str, slot: int, now: float) -> float:
    """Seconds to wait after a slot's last end before starting it again: 0 after one crash, then
    doubling (2, 4, ... up to a minute) while the slot keeps crashing within the window."""
    recent = [r for r in replicas if r.revision == revision and r.slot == slot and r.ended and (r.ended_at or 0) > now - RESTART_WINDOW]
    return 0.0 if len(recent) <= 1 else min(MAX_BACKOFF, 2.0 ** (len(recent) - 1))


def latest(replicas: list[Replica], revision: str, slot: int) -> Replica | None:
    """The slot's newest replica (earlier ones ended and were replaced)."""
    found = [r for r in replicas if r.revision == revision and r.slot == slot]
    return max(found, key=lambda r: (r.created_at, r.job_id)) if found else None


def plan(revisions: list[Revision], replicas: list[Replica], wanted: int, now: float, start_timeout: float) -> list[Action]:
    """The actions that bring one deployment closer to what it should be (see the module docstring)."""
    actions: list[Action] = []
    rolling = [r for r in revisions if r.state == "rolling"]
    newest_rolling = max(rolling, key=lambda r: r.seq) if rolling else None
    for rev in revisions:
        mine = [r for r in replicas if r.revision == rev.id]
        if rev.state == "rolling" and newest_rolling is not None and rev is not newest_rolling:
            actions.append(Action("supersede", rev.id, reason=f"superseded by {newest_rolling.label} before it took traffic"))
            continue
        if rev.state in LIVE_REVISIONS:
            actions += _live(rev, replicas, wanted, now, start_timeout)
            for extra in mine:
                if extra.slot >= wanted and not extra.ended:
                    actions.append(Action("stop", rev.id, extra.slot, extra.job_id, "scaled down"))
        elif rev.state == "draining":
            if rev.drain_until is None or now >= rev.drain_until:
                live = [r for r in mine if not r.ended]
                actions += [Action("stop", rev.id, r.slot, r.job_id, "replaced: its traffic moved to a newer version") for r in live]
                if not live:
                    actions.append(Action("retire", rev.id))
        else:  # ended (ENDED_REVISIONS): nothing of it should run
            actions += [Action("stop", rev.id, r.slot, r.job_id, f"{rev.label} was {rev.state.replace('_', ' ')}") for r in mine if not r.ended]
    return actions


def _live(rev: Revision, replicas: list[Replica], wanted: int, now: float, start_timeout: float) -> list[Action]:
    actions: list[Action] = []
    ready = 0
    for slot in range(wanted):
        r = latest(replicas, rev.id, slot)
        if r is None:
            actions.append(Action("start", rev.id, slot))
            continue
        if r.ended:
            if rev.state == "rolling":
                return [Action("fail", rev.id, reason=f"its replica {r.state} before answering /ping: {r.reason or 'no reason given'}")]
            if now - (r.ended_at or now) >= restart_backoff(replicas, rev.id, slot, now):
                actions.append(Action("restart", rev.id, slot, r.job_id, f"replica {slot} {r.state}: {r.reason or 'no reason given'}"))
            continue
        if rev.state == "rolling" and not r.healthy and r.state == "running" and r.started_at is not None \
                and now - r.started_at > start_timeout:
            return [Action("fail", rev.id, reason=f"it did not answer /ping within {start_timeout:g}s of starting")]
        if r.healthy and r.state == "running":
            ready += 1
    if rev.state == "rolling" and ready == wanted:
        actions.append(Action("switch", rev.id))
    return actions
