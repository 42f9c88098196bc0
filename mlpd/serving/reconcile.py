"""The worker's serving pass: health checks, followed aliases, rollouts, rollbacks and restarts.

One pass (:meth:`ServingPass.run`, from the worker's reconcile loop) pings every running replica's
``/ping``, looks whether a followed alias moved, and carries out what the pure planner
(:func:`mlpd.serving.rollout.plan`) decides for each deployment: start replicas (a workload row each,
which the controller places and launches like any job), switch traffic, stop what drained, roll back
a version that did not start, restart a crashed replica. Every change is a compare-and-set in one
transaction with its event; a pass may run any number of times.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from typing import Any, Callable

from mlpd import jobs
from mlpd.jobs import TERMINAL_STATES
from mlpd.units import parse_duration
from mlpd.serving.deployments import (DeploymentError, add_revision, held_back, stop_replica, list_deployments, replica_spec, replicas, resolve, revision_label,
                          revision_transition, revisions, revisions_in)
from mlpd.serving.models import ModelError, ModelStore, parse_uri
from mlpd.serving.rollout import LIVE_REVISIONS, NOT_ENDED_REVISIONS, Action, Replica, Revision, plan
from mlpd.store import Store, record_event

log = logging.getLogger("mlpd.serving.deployments")
PING_TIMEOUT = 2.0


def allocate_port(store: Store, port_range: str, taken_now: set[int], bindable: Callable[[int], bool] | None = None) -> int:
    """A loopback port in serving.port_range that no live replica has and nothing listens on."""
    from mlpd.ports import port_free

    low, high = (int(x) for x in port_range.split("-"))
    ended = sorted(TERMINAL_STATES)
    taken = set(taken_now) | {r["port"] for r in store.query(
        f"SELECT r.port FROM deployment_replicas r JOIN jobs j ON j.id = r.job_id WHERE j.state NOT IN ({','.join('?' * len(ended))})", ended)}
    bindable = bindable or port_free
    candidates = [p for p in range(low, high + 1) if p not in taken]
    secrets.SystemRandom().shuffle(candidates)
    for port in candidates[:200]:
        if bindable(port):
            return port
    raise DeploymentError(503, "no_port", f"no free loopback port left in serving.port_range ({port_range}); remove unused deployments")


def ping(port: int, timeout: float = PING_TIMEOUT) -> str:
    """'' when the replica's scoring server answers /ping with 200, else why not."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/ping")
        resp = conn.getresponse()
        resp.read()
        return "" if resp.status == 200 else f"/ping answered {resp.status}"
    except (OSError, http.client.HTTPException) as exc:
        return f"/ping failed: {exc.__class__.__name__}: {exc}"[:300]
    finally:
        conn.close()


def _log_tail(state_dir: str, job_id: str, lines: int = 1) -> str:
    """The last lines of an ended replica's saved log (the daemon's own file): why a model failed to load."""
    path = os.path.join(jobs.job_dir(state_dir, job_id), "log")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - 8192))
        text = fh.read().decode("utf-8", "replace")
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(kept[-lines:])[:400]


class ServingPass:
    """The worker's periodic serving work (one instance per worker process): health checks, alias
    follow-ups, rollouts and restarts. :meth:`run` is one pass; it returns whether a rollout or a
    drain is in progress (the loop then runs passes more often, so traffic switches within a second)."""

    def __init__(self, store: Store, config, wake: Callable[[str], None] = lambda reason: None,
                 check: Callable[[int], str] = ping):
        self.store, self.config, self.wake, self.check = store, config, wake, check

    def run(self, now: float | None = None) -> bool:
        busy = False
        for dep in list_deployments(self.store):
            try:
                busy |= self.run_one(dep, now or time.time())
            except Exception:
                log.exception("serving pass failed for deployment %s; trying again on the next pass", dep["name"])
        self.remove_unused_dirs()
        return busy

    def run_one(self, dep: dict[str, Any], now: float) -> bool:
        if dep["follow_alias"]:
            self.follow_alias(dep, now)
        self.check_health(dep, now)
        revs = revisions(self.store, dep["id"])
        reps = replicas(self.store, dep["id"])
        live_revs = [r for r in revs if r["state"] in NOT_ENDED_REVISIONS or
                     any(p["revision"] == r["id"] and p["state"] not in TERMINAL_STATES for p in reps)]
        actions = plan([Revision(r["id"], r["seq"], r["state"], revision_label(r), r["drain_until"]) for r in live_revs],
                       [Replica(p["job_id"], p["revision"], p["slot"], p["state"], bool(p["healthy"]), p["created_at"], p["started_at"],
                                p["ended_at"], p["reason"] or "") for p in reps],
                       dep["spec"]["replicas"], now, parse_duration(self.config["serving.start_timeout"]))
        by_id = {r["id"]: r for r in revs}
        taken: set[int] = set()
        for action in actions:
            self.apply(dep, by_id[action.revision], action, now, taken)
        return any(r["state"] in ("rolling", "draining") for r in revs)

    # -------------------------------------------------------------- looking
    def follow_alias(self, dep: dict[str, Any], now: float) -> None:
        """Roll out the version the followed alias points to now, once per move of the alias
        (followed_version is the alias's version last acted on: a version that failed is not retried
        until the alias moves again)."""
        ref = parse_uri(dep["model_uri"])
        version = ModelStore(self.config.state_dir).alias_version(ref.name or "", ref.alias or "")
        if version is None or version == dep["followed_version"]:
            return
        current = self.store.query_one("SELECT model_version FROM deployment_revisions WHERE id = ?", [dep["current"]]) if dep["current"] else None
        fields = None
        gated = ""
        if not (current and current["model_version"] == version):
            try:
                _, fields = resolve(self.config.state_dir, f"models:/{ref.name}/{version}")
            except ModelError as exc:
                fields = None
                refused = f"alias {ref.alias} moved to version {version}, which cannot be served: {exc.message}"
            if fields is not None:
                # A version that fails a quality gate is never rolled out: the one serving stays.
                gated = held_back(self.config.state_dir, dep["spec"].get("gates") or [], fields)
        with self.store.write() as db:
            if db.execute("SELECT 1 FROM deployments WHERE id = ? AND followed_version IS ?", [dep["id"], dep["followed_version"]]).fetchone() is None:
                return  # changed meanwhile (an update): the next pass looks again
            db.execute("UPDATE deployments SET followed_version = ?, updated_at = ? WHERE id = ?", [version, now, dep["id"]])
            rev_id = None
            if current and current["model_version"] == version:
                # The alias went back to what serves: drop a rollout in progress, if any.
                for rolling in revisions_in(db, dep["id"], ["rolling"]):
                    revision_transition(db, rolling, "superseded", "mlpd", f"alias {ref.alias} moved back to version {version}", now,
                                        ended_at=now)
            elif fields is None:
                db.execute("UPDATE deployments SET last_error = ? WHERE id = ?", [refused, dep["id"]])
            elif gated:
                db.execute("UPDATE deployments SET last_error = ? WHERE id = ?", [gated, dep["id"]])
                record_event(db, "mlpd", "deployment.held_back", "deployment", dep["id"], at=now, version=version, reason=gated)
            else:
                rev_id = add_revision(db, dep["id"], fields, now)
            record_event(db, "mlpd", "deployment.alias_moved", "deployment", dep["id"], at=now, alias=ref.alias, version=version, revision=rev_id)
        log.info("deployment %s: alias %s now points to version %s", dep["name"], ref.alias, version)

    def check_health(self, dep: dict[str, Any], now: float) -> None:
        """Ping every running replica; record what it said (an ended replica is unhealthy)."""
        for rep in replicas(self.store, dep["id"]):
            if rep["state"] == "running":
                error = self.check(rep["port"])
            elif rep["healthy"] or (rep["state"] in TERMINAL_STATES and rep["last_check_at"] is None):
                error = f"its container {rep['state']}"
            else:
                continue
            with self.store.write() as db:
                db.execute("""UPDATE deployment_replicas SET healthy = ?, last_check_at = ?, last_check_error = ?,
                              last_ok_at = CASE WHEN ? THEN ? ELSE last_ok_at END WHERE job_id = ?""",
                           [int(not error), now, error, int(not error), now, rep["job_id"]])

    # -------------------------------------------------------------- acting
    def apply(self, dep: dict[str, Any], rev: dict[str, Any], action: Action, now: float, taken: set[int]) -> None:
        label = revision_label(rev)
        if action.kind in ("start", "restart"):
            port = allocate_port(self.store, self.config["serving.port_range"], taken)
            taken.add(port)
            spec = replica_spec(dep, rev, self.config, action.slot)
            with self.store.write() as db:
                if not db.execute(f"SELECT 1 FROM deployment_revisions WHERE id = ? AND state IN ({','.join('?' * len(LIVE_REVISIONS))})",
                                  [rev["id"], *LIVE_REVISIONS]).fetchone():
                    return
                job_id = jobs.submit(None, dep["owner"], spec, now=now, kind="deployment", workload=dep["id"], db=db)["id"]
                db.execute("INSERT INTO deployment_replicas (job_id, deployment, revision, slot, port, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                           [job_id, dep["id"], rev["id"], action.slot, port, now])
                if action.kind == "restart":
                    tail = _log_tail(self.config.state_dir, action.job_id)
                    error = f"{label}: {action.reason}" + (f" (last log line: {tail})" if tail else "")
                    db.execute("UPDATE deployments SET restarts = restarts + 1, last_error = ?, updated_at = ? WHERE id = ?", [error, now, dep["id"]])
                    record_event(db, "mlpd", "deployment.replica_restarted", "deployment", dep["id"], at=now, slot=action.slot,
                                 old=action.job_id, new=job_id, reason=action.reason)
            log.info("deployment %s: %s replica %d of %s as %s on port %d", dep["name"], action.kind, action.slot, label, job_id, port)
            self.wake(f"deployment {dep['name']} replica")
        elif action.kind == "switch":
            drain_until = now + parse_duration(self.config["serving.drain"])
            canary = rev["canary_percent"]
            with self.store.write() as db:
                if not db.execute("SELECT 1 FROM deployment_revisions WHERE id = ? AND state = 'rolling'", [rev["id"]]).fetchone():
                    return
                # A new canary replaces an earlier one; a full switch ends any canary too.
                for old in revisions_in(db, dep["id"], ["canary"] if canary else ["serving", "canary"]):
                    revision_transition(db, old, "draining", "mlpd", f"replaced by {label}", now, drain_until=drain_until)
                revision_transition(db, rev["id"], "canary" if canary else "serving", "mlpd", at=now, switched_at=now)
                if canary:
                    db.execute("UPDATE deployments SET canary = ?, last_error = '', updated_at = ? WHERE id = ?", [rev["id"], now, dep["id"]])
                else:
                    db.execute("UPDATE deployments SET current = ?, canary = NULL, last_error = '', updated_at = ? WHERE id = ?",
                               [rev["id"], now, dep["id"]])
                record_event(db, "mlpd", "deployment.switched", "deployment", dep["id"], at=now, revision=rev["id"], model=rev["model_uri"],
                             canary=canary)
            log.info("deployment %s: %s %s (%s)", dep["name"], f"{canary}% of the traffic to" if canary else "traffic switched to", label,
                     rev["model_uri"])
        elif action.kind == "supersede":  # not an error: a newer rollout replaced it
            with self.store.write() as db:
                if revision_transition(db, rev["id"], "superseded", "mlpd", action.reason, now, only_from=["rolling"], ended_at=now):
                    record_event(db, "mlpd", "deployment.superseded", "deployment", dep["id"], at=now, revision=rev["id"], reason=action.reason)
        elif action.kind == "fail":
            with self.store.write() as db:
                if not db.execute("SELECT 1 FROM deployment_revisions WHERE id = ? AND state = 'rolling'", [rev["id"]]).fetchone():
                    return
                failed = [r["job_id"] for r in replicas(self.store, dep["id"]) if r["revision"] == rev["id"] and r["state"] in TERMINAL_STATES]
                tail = _log_tail(self.config.state_dir, failed[-1]) if failed else ""
                reason = action.reason + (f" (last log line: {tail})" if tail else "")
                revision_transition(db, rev["id"], "failed", "mlpd", reason, now, only_from=["rolling"], ended_at=now)
                what = "rolled back; the previous version keeps serving" if dep["current"] else "failed to start"
                db.execute("UPDATE deployments SET last_error = ?, updated_at = ? WHERE id = ?", [f"{label} {what}: {reason}", now, dep["id"]])
                record_event(db, "mlpd", "deployment.rolled_back", "deployment", dep["id"], at=now, revision=rev["id"], reason=reason)
            log.warning("deployment %s: %s %s: %s", dep["name"], label, "rolled back" if dep["current"] else "failed", reason)
        elif action.kind == "stop":
            stop_replica(self.store, action.job_id, "mlpd", action.reason)
            self.wake(f"deployment {dep['name']} stop")
        elif action.kind == "retire":
            with self.store.write() as db:
                if revision_transition(db, rev["id"], "retired", "mlpd", at=now, ended_at=now):
                    record_event(db, "mlpd", "deployment.retired", "deployment", dep["id"], at=now, revision=rev["id"])

    def remove_unused_dirs(self) -> None:
        """Remove the model copies of revisions that are over, and of removed deployments, once nothing of theirs runs."""
        root = os.path.join(self.config.state_dir, "serving")
        if not os.path.isdir(root):
            return
        ended = sorted(TERMINAL_STATES)
        live = f"j.state NOT IN ({','.join('?' * len(ended))})"
        kept = sorted(NOT_ENDED_REVISIONS)
        keep = {(r["deployment"], r["id"]) for r in self.store.query(
            f"""SELECT deployment, id FROM deployment_revisions WHERE state IN ({','.join('?' * len(kept))})
                UNION SELECT r.deployment, r.revision FROM deployment_replicas r JOIN jobs j ON j.id = r.job_id WHERE {live}""", kept + ended)}
        existing = {r["id"] for r in self.store.query("SELECT id FROM deployments")}
        running = {r["workload"] for r in self.store.query(f"SELECT DISTINCT j.workload FROM jobs j WHERE j.kind = 'deployment' AND {live}", ended)}
        for dep_id in os.listdir(root):
            dep_path = os.path.join(root, dep_id)
            if dep_id not in existing:
                if dep_id not in running:  # removed, and its last replica has stopped
                    shutil.rmtree(dep_path, ignore_errors=True)
                continue
            for rev_id in os.listdir(dep_path):
                if (dep_id, rev_id.split(".tmp-")[0]) not in keep:
                    shutil.rmtree(os.path.join(dep_path, rev_id), ignore_errors=True)
