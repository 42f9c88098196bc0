"""Deployments: a model from mlpd's MLflow registry served by local containers behind a stable endpoint.

A deployment is a named object of one owner (a model URI, how many replicas, GPUs, whether it
follows an alias). Each model version it serves is a *revision*; each container of a revision
is a *replica*: a workload row of kind ``deployment`` in the jobs table, so the scheduler
places it, the runtime starts it (hardened and labelled like every container), the ledger
books its GPUs (kind deployment) and reconciliation finishes it exactly like a job. A replica
runs MLflow's own scoring server (``/ping``, ``/invocations``) on the model's files, which the
daemon copied out of its store into a directory the container mounts read-only, in an
environment built from the model's logged requirements (:mod:`mlpd.runtime.environments`). It gets no
credentials. Its port is published on 127.0.0.1 only.

Clients call ``/serve/NAME/invocations`` on the serving proxy (HAProxy at serving.listen, kept current by
the daemon: :mod:`mlpd.serving.front`), or on the daemon's own address (``mlpd.web.serving_proxy``, in
Python); either passes each request to a healthy replica of the current revision. Quality gates
(:mod:`mlpd.serving.gates`, ``spec["gates"]``) hold back a version whose source run fails them. The worker's pass
(:class:`mlpd.serving.reconcile.ServingPass`) checks every replica's ``/ping``, notices an alias that moved, and carries
out what :func:`mlpd.serving.rollout.plan` decides: start, switch traffic, drain, roll back,
restart. Traffic moves in one transaction (``deployments.current``), so a request sees either
the old revision or the new one, never neither.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from typing import Any, Iterable, Sequence, overload

from mlpd import jobs
from mlpd.errors import MlpdError
from mlpd.jobs import TERMINAL_STATES
from mlpd.kinds.jobspec import SpecError, parse_spec
from mlpd.units import parse_duration
from mlpd.runtime.protocol import LaunchRequest, RuntimeFailure
from mlpd.serving.models import ModelError, ModelStore, copy_model, parse_uri, read_store_file, serving_requirements
from mlpd.serving.rollout import REVISION_STATES, revision_may_follow
from mlpd.store import Store, record_event

log = logging.getLogger("mlpd.serving.deployments")
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
SERVER_PORT = 8080  # the scoring server's port inside the container
MODEL_DIR = "/model"
MAX_REPLICAS = 16
REPLICA_PRIORITY = 100  # the highest a job can have: a replica (a restart above all) is placed first
AUTH_MODES = ("token", "none")
SPEC_KEYS = ("gpus", "gpu_model", "cpus", "memory", "replicas", "auth", "gates")
KEY_PREFIX = "mlpdk_"


class DeploymentError(MlpdError):
    """A deployment operation that cannot be done."""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise DeploymentError(400, "invalid_field", "name: expected 1-40 lowercase letters, digits and '-', starting with a letter or digit")
    return name


def default_name(uri: str) -> str:
    """A deployment name from a model URI: the registered model's name, made a valid name."""
    ref = parse_uri(uri)
    base = ref.name or (f"run-{ref.run_id[:8]}" if ref.run_id else (ref.model_id or "model")[:14])
    name = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")[:40].strip("-")
    return name or "model"


def scoring_command() -> list[str]:
    """MLflow's pyfunc scoring server (what ``mlflow models serve --env-manager local`` runs), on all of
    the container's interfaces: only the loopback port mlpd publishes reaches it from the host."""
    return ["python3", "-m", "uvicorn", "--host", "0.0.0.0", "--port", str(SERVER_PORT), "--timeout-keep-alive", "75",
            "--no-access-log", "mlflow.pyfunc.scoring_server.app:app"]


def parse_deployment_spec(data: dict[str, Any]) -> dict[str, Any]:
    """Validate what a deployment asks for (GPUs, CPUs and memory by the job spec's rules); a dict to store."""
    extra = sorted(set(data) - set(SPEC_KEYS))
    if extra:
        raise DeploymentError(400, "invalid_field", f"{extra[0]}: not a deployment setting; expected one of {', '.join(SPEC_KEYS)}")
    replicas = data.get("replicas", 1)
    if replicas is None:
        replicas = 1
    if not isinstance(replicas, int) or isinstance(replicas, bool) or not 1 <= replicas <= MAX_REPLICAS:
        raise DeploymentError(400, "invalid_field", f"replicas: expected a whole number from 1 to {MAX_REPLICAS}")
    auth = data.get("auth") or "token"
    if auth not in AUTH_MODES:
        raise DeploymentError(400, "invalid_field", f"auth: expected one of {', '.join(AUTH_MODES)}")
    body = {k: data[k] for k in ("gpus", "gpu_model", "cpus", "memory") if data.get(k) is not None}
    try:
        spec, _ = parse_spec({**body, "command": scoring_command()})
    except SpecError as exc:
        raise DeploymentError(400, "invalid_field", str(exc)) from None
    from mlpd.serving.gates import parse_gates

    return {"gpus": spec.gpus, "gpu_model": spec.gpu_model, "cpus": spec.cpus, "memory": spec.memory, "replicas": replicas, "auth": auth,
            "gates": parse_gates(data.get("gates"))}


def held_back(state_dir: str, gates: list[str], fields: dict[str, Any]) -> str:
    """Why a resolved model version may not serve under these quality gates ('' when it may):
    'version 3 held back: metrics.accuracy 0.52 < 0.9'."""
    if not gates:
        return ""
    from mlpd.serving.gates import failures

    metrics, tags = ModelStore(state_dir).run_record(fields.get("run_id"))
    failed = failures(gates, metrics, tags)
    label = f"version {fields['model_version']}" if fields.get("model_version") else fields["model_uri"]
    return f"{label} held back: {'; '.join(failed)}" if failed else ""


def check_gates(state_dir: str, gates: list[str], fields: dict[str, Any]) -> None:
    """DeploymentError 409 (held_back) when the version fails a gate: it is never rolled out."""
    reason = held_back(state_dir, gates, fields)
    if reason:
        raise DeploymentError(409, "held_back", f"{reason} (the deployment's quality gates: {', '.join(gates)})")


def replica_spec(dep: dict[str, Any], rev: dict[str, Any], config, slot: int):
    """The workload spec of one replica: the scoring server, the deployment's resources, the model's requirements."""
    body: dict[str, Any] = {k: dep["spec"][k] for k in ("gpus", "gpu_model", "cpus", "memory") if dep["spec"].get(k) is not None}
    body.update(command=scoring_command(), name=f"serve-{dep['name']}-{slot}", priority=REPLICA_PRIORITY,
                image=config["jobs.default_image"])
    if rev.get("requirements"):
        body["requirements"] = rev["requirements"]
    spec, _ = parse_spec(body)
    return spec


# ------------------------------------------------------------------ rows
@overload
def _decode(row: dict[str, Any]) -> dict[str, Any]: ...
@overload
def _decode(row: None) -> None: ...
def _decode(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    row = dict(row)
    row["spec"] = json.loads(row["spec"])
    row["follow_alias"] = bool(row["follow_alias"])
    return row


def get(store: Store, name: str) -> dict[str, Any] | None:
    return _decode(store.query_one("SELECT * FROM deployments WHERE name = ?", [name]))


def by_id(store: Store, dep_id: str) -> dict[str, Any] | None:
    return _decode(store.query_one("SELECT * FROM deployments WHERE id = ?", [dep_id]))


def must_get(store: Store, dep_id: str) -> dict[str, Any]:
    """by_id() for a deployment that must be there (one just written): DeploymentError 404 if it is gone."""
    dep = by_id(store, dep_id)
    if dep is None:
        raise DeploymentError(404, "not_found", f"no deployment {dep_id}")
    return dep


def visible(store: Store, name: str, user_name: str, is_admin: bool) -> dict[str, Any] | None:
    """The deployment if this user may see it (their own; any for admins); None otherwise, as if absent."""
    dep = get(store, name) if isinstance(name, str) else None
    if dep is None or (not is_admin and dep["owner"] != user_name):
        return None
    return dep


def list_deployments(store: Store, owner: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Deployments by owner and name: one owner's, several owners' (a viewer's teams), or all."""
    if owner is not None and not isinstance(owner, str):
        owners = sorted(owner)
        return [_decode(r) for r in store.query(f"SELECT * FROM deployments WHERE owner IN ({','.join('?' * len(owners))}) "
                                                "ORDER BY owner, name", owners)]
    if owner:
        return [_decode(r) for r in store.query("SELECT * FROM deployments WHERE owner = ? ORDER BY name", [owner])]
    return [_decode(r) for r in store.query("SELECT * FROM deployments ORDER BY owner, name")]


def revisions(store: Store, dep_id: str) -> list[dict[str, Any]]:
    """A deployment's revisions, oldest first."""
    return store.query("SELECT * FROM deployment_revisions WHERE deployment = ? ORDER BY seq", [dep_id])


def replicas(store: Store, dep_id: str) -> list[dict[str, Any]]:
    """A deployment's replicas with their workload's state, oldest first."""
    return store.query("""SELECT r.*, j.state, j.reason, j.started_at, j.ended_at, j.gpu_indices
                          FROM deployment_replicas r JOIN jobs j ON j.id = r.job_id
                          WHERE r.deployment = ? ORDER BY r.created_at, r.slot""", [dep_id])


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(dep: dict[str, Any], presented: str) -> bool:
    """Whether a presented bearer value is this deployment's key (constant time)."""
    return presented.startswith(KEY_PREFIX) and hmac.compare_digest(dep["key_hash"], hash_key(presented))


# ------------------------------------------------------------------ changes
def resolve(store_state_dir: str, uri: str) -> tuple[Any, dict[str, Any]]:
    """(the parsed URI, the revision fields it resolves to now): ModelError 400/403/404 for a model
    that cannot be served. Members read every model in mlpd's MLflow (a team shares results), so
    whoever can read a model may serve it; its files must be in mlpd's own store."""
    ref = parse_uri(uri)
    models = ModelStore(store_state_dir)
    found = models.resolve(ref)
    requirements = serving_requirements(read_store_file(store_state_dir, found.location, "requirements.txt"))
    if read_store_file(store_state_dir, found.location, "MLmodel") is None:
        raise ModelError(404, "not_found", f"{found.uri} has no MLmodel file: it is not an MLflow model")
    return ref, {"model_uri": found.uri, "model_name": found.name, "model_version": found.version, "run_id": found.run_id,
                 "location": found.location, "requirements": requirements}


def check_follow(state_dir: str, ref, follow: bool, owner: str, follow_foreign: bool) -> str | None:
    """Whose versions a deployment that follows an alias will run (None when it follows nothing).

    Following an alias hands the choice of code to whoever moves it: the model's owner. When that is
    not the deployment's owner, a member could make a colleague's endpoint run their code by
    registering a version and moving the alias; so it is refused unless asked for by name
    (follow_foreign), and the answer says whose versions it will run."""
    if not follow:
        return None
    model_owner = ModelStore(state_dir).model_owner(ref.name)
    if model_owner != owner and not follow_foreign:
        whose = f"{model_owner}'s" if model_owner else "an admin's (it has no owner)"
        raise DeploymentError(403, "foreign_alias",
                              f"{ref.uri} is {whose} model: following its alias runs whatever version its owner points it at next. "
                              f"Pin a version (models:/{ref.name}/N, or --no-follow-alias), or pass --follow-foreign "
                              f"(follow_foreign: true) to accept {model_owner or 'an admin'}'s versions")
    return model_owner


def add_revision(db, dep_id: str, fields: dict[str, Any], now: float, canary: int | None = None) -> str:
    """A new revision (state rolling, the next seq) of the deployment, inside the caller's transaction; its id."""
    seq = (db.execute("SELECT MAX(seq) FROM deployment_revisions WHERE deployment = ?", [dep_id]).fetchone()[0] or 0) + 1
    rev_id = secrets.token_hex(6)
    db.execute("""INSERT INTO deployment_revisions (id, deployment, seq, model_uri, model_name, model_version, run_id, location,
                  requirements, canary_percent, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'rolling', ?)""",
               [rev_id, dep_id, seq, fields["model_uri"], fields["model_name"], fields["model_version"], fields["run_id"],
                fields["location"], fields["requirements"], canary, now])
    return rev_id


REVISION_FIELDS = ("drain_until", "switched_at", "ended_at")  # what a transition may set besides state and reason


def revision_transition(db_or_store, rev_id: str, to: str, actor: str = "mlpd", reason: str = "", at: float | None = None,
                        only_from: Iterable[str] | None = None, **fields: Any) -> bool:
    """Move a deployment revision to `to` if serving_rollout.REVISION_TRANSITIONS allows it from its
    current state: a compare-and-set that writes a ``revision.TO`` event on its deployment (with the
    revision, the state it left and the reason) in the same transaction. False when the revision is
    gone or in another state. only_from narrows the allowed states further (never widens them).

    db_or_store: a Store (the move is its own transaction) or the db of a transaction the caller
    holds, so that a traffic switch and the deployment row change together. reason, when given,
    replaces the revision's; fields may set drain_until, switched_at and ended_at.
    """
    if to not in REVISION_STATES:
        raise ValueError(f"not a revision state: {to!r}")
    if set(fields) - set(REVISION_FIELDS):
        raise ValueError(f"a revision transition sets only {', '.join(REVISION_FIELDS)}, not {sorted(set(fields) - set(REVISION_FIELDS))}")
    if isinstance(db_or_store, Store):
        with db_or_store.write() as db:
            return revision_transition(db, rev_id, to, actor, reason, at, only_from, **fields)
    db, at = db_or_store, at if at is not None else time.time()
    allowed = [s for s in revision_may_follow(to) if only_from is None or s in set(only_from)]
    row = db.execute("SELECT state, deployment FROM deployment_revisions WHERE id = ?", [rev_id]).fetchone()
    if row is None or row[0] not in allowed:
        return False
    sets = {"state": to, **({"reason": reason} if reason else {}), **fields}
    assignments = ", ".join(f"{k} = ?" for k in sets)
    # The state read above is checked again by the write itself: a caller's deferred transaction is a CAS too.
    if not db.execute(f"UPDATE deployment_revisions SET {assignments} WHERE id = ? AND state = ?", [*sets.values(), rev_id, row[0]]).rowcount:
        return False
    record_event(db, actor, f"revision.{to}", "deployment", row[1], at=at, revision=rev_id, reason=reason, **{"from": row[0]})
    return True


def revisions_in(db, dep_id: str, states: Iterable[str]) -> list[str]:
    """The ids of a deployment's revisions in these states, oldest first (inside the caller's transaction)."""
    states = list(states)
    return [r[0] for r in db.execute(f"SELECT id FROM deployment_revisions WHERE deployment = ? AND state IN ({','.join('?' * len(states))}) "
                                     "ORDER BY seq", [dep_id, *states]).fetchall()]


def create(store: Store, config, owner: str, name: str, uri: str, spec: dict[str, Any], follow_alias: bool | None = None,
           now: float | None = None, follow_foreign: bool = False) -> tuple[dict[str, Any], str]:
    """Store a new deployment and its first revision (the worker starts its replicas); returns (deployment,
    its key, shown once). DeploymentError 409 when the name is taken; ModelError when the model cannot be served."""
    now = now or time.time()
    ref, fields = resolve(config.state_dir, uri)
    follow = bool(ref.alias) if follow_alias is None else bool(follow_alias)
    if follow and not ref.alias:
        raise DeploymentError(400, "invalid_field", "follow_alias: the model URI names no alias (use models:/NAME@ALIAS)")
    check_gates(config.state_dir, spec.get("gates") or [], fields)
    follows = check_follow(config.state_dir, ref, follow, owner, follow_foreign)
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    dep_id = secrets.token_hex(6)
    with store.write() as db:
        if db.execute("SELECT 1 FROM deployments WHERE name = ?", [name]).fetchone():
            raise DeploymentError(409, "exists", f"a deployment named {name!r} exists (names are endpoints, one per daemon); "
                                                 "choose another with --name, or update it with 'mlpd deployments update'")
        db.execute("""INSERT INTO deployments (id, owner, name, model_uri, follow_alias, followed_version, spec, key_hash, created_at, updated_at)
                      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                   [dep_id, owner, name, uri, int(follow), fields["model_version"] if follow else None, json.dumps(spec), hash_key(key), now, now])
        rev_id = add_revision(db, dep_id, fields, now)
        record_event(db, owner, "deployment.created", "deployment", dep_id, at=now, name=name, model=uri, serves=fields["model_uri"],
                     revision=rev_id, spec=spec, follow_alias=follow, **({"follows_versions_of": follows} if follows not in (None, owner) else {}))
    return must_get(store, dep_id), key


def update(store: Store, config, dep: dict[str, Any], actor: str, uri: str | None = None, follow_alias: bool | None = None,
           now: float | None = None, canary: int | None = None, follow_foreign: bool = False) -> dict[str, Any]:
    """Roll out another model (or the same URI resolved again): a new revision that takes the traffic once
    healthy (with canary, that share of it, until promote or rollback). A rollout still in progress is superseded."""
    now = now or time.time()
    if canary is not None and (isinstance(canary, bool) or not isinstance(canary, int) or not 1 <= canary <= 99):
        raise DeploymentError(400, "invalid_field", "canary: expected the percentage of requests for the new version, 1 to 99")
    if canary is not None and dep["current"] is None:
        raise DeploymentError(409, "nothing_serves", "a canary needs a version that serves the rest of the traffic; update without --canary")
    uri = uri or dep["model_uri"]
    ref, fields = resolve(config.state_dir, uri)
    follow = bool(ref.alias) if follow_alias is None else bool(follow_alias)
    if follow and not ref.alias:
        raise DeploymentError(400, "invalid_field", "follow_alias: the model URI names no alias (use models:/NAME@ALIAS)")
    if uri != dep["model_uri"] or not dep["follow_alias"]:  # a deployment keeps what it was allowed to follow
        check_follow(config.state_dir, ref, follow, dep["owner"], follow_foreign)
    check_gates(config.state_dir, dep["spec"].get("gates") or [], fields)
    with store.write() as db:
        db.execute("UPDATE deployments SET model_uri = ?, follow_alias = ?, followed_version = ?, updated_at = ? WHERE id = ?",
                   [uri, int(follow), fields["model_version"] if follow else None, now, dep["id"]])
        rev_id = add_revision(db, dep["id"], fields, now, canary)
        record_event(db, actor, "deployment.update", "deployment", dep["id"], at=now, model=uri, serves=fields["model_uri"], revision=rev_id,
                     canary=canary)
    return must_get(store, dep["id"])


def promote(store: Store, config, dep: dict[str, Any], actor: str, now: float | None = None) -> None:
    """The canary takes all the traffic; the version it shared it with drains and stops. 409 without a canary."""
    now = now or time.time()
    drain_until = now + parse_duration(config["serving.drain"])
    with store.write() as db:
        row = db.execute("SELECT canary FROM deployments WHERE id = ?", [dep["id"]]).fetchone()
        if not row or not row[0]:
            raise DeploymentError(409, "no_canary", f"deployment {dep['name']} has no canary to promote")
        promoted = db.execute("SELECT model_version, model_uri FROM deployment_revisions WHERE id = ?", [row[0]]).fetchone()
        label = f"version {promoted[0]}" if promoted[0] else promoted[1]
        for old in revisions_in(db, dep["id"], ["serving"]):
            revision_transition(db, old, "draining", actor, f"replaced by {label} (promoted by {actor})", now, drain_until=drain_until)
        revision_transition(db, row[0], "serving", actor, f"promoted by {actor}", now, switched_at=now)
        db.execute("UPDATE deployments SET current = ?, canary = NULL, updated_at = ? WHERE id = ?", [row[0], now, dep["id"]])
        record_event(db, actor, "deployment.promoted", "deployment", dep["id"], at=now, revision=row[0])


def rollback(store: Store, dep: dict[str, Any], actor: str, now: float | None = None) -> str:
    """Drop the canary (or a rollout still waiting for /ping): its replicas stop, the serving version keeps
    all the traffic. Returns what was rolled back; 409 when there is nothing to roll back."""
    now = now or time.time()
    with store.write() as db:
        rows = db.execute("SELECT id, model_version, model_uri FROM deployment_revisions WHERE deployment = ? AND state IN ('canary', 'rolling')",
                          [dep["id"]]).fetchall()
        if not rows:
            raise DeploymentError(409, "nothing_to_roll_back", f"deployment {dep['name']} has no canary and no rollout in progress")
        labels = [f"version {r[1]}" if r[1] else r[2] for r in rows]
        for r in rows:
            revision_transition(db, r[0], "rolled_back", actor, f"rolled back by {actor}", now, only_from=["canary", "rolling"], ended_at=now)
        # A deliberate rollback is no error; and the deployment's model is again what serves (unless it follows an alias).
        serving_uri = db.execute("SELECT model_uri FROM deployment_revisions WHERE id = ?", [dep["current"]]).fetchone()
        db.execute("UPDATE deployments SET canary = NULL, last_error = '', model_uri = CASE WHEN follow_alias = 1 OR ? IS NULL "
                   "THEN model_uri ELSE ? END, updated_at = ? WHERE id = ?",
                   [serving_uri[0] if serving_uri else None, serving_uri[0] if serving_uri else None, now, dep["id"]])
        record_event(db, actor, "deployment.rolled_back", "deployment", dep["id"], at=now, revisions=[r[0] for r in rows], reason="by request")
    return ", ".join(labels)


def rotate_key(store: Store, dep: dict[str, Any], actor: str) -> str:
    """Replace the deployment's key; the old one stops working at once. Returns the new key (shown once)."""
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    with store.write() as db:
        db.execute("UPDATE deployments SET key_hash = ?, updated_at = ? WHERE id = ?", [hash_key(key), time.time(), dep["id"]])
        record_event(db, actor, "deployment.key_rotated", "deployment", dep["id"])
    return key


def remove(store: Store, config, dep: dict[str, Any], actor: str) -> None:
    """Stop every replica and forget the deployment; its endpoint answers 404 from now on."""
    for rep in replicas(store, dep["id"]):
        if rep["state"] not in TERMINAL_STATES:
            stop_replica(store, rep["job_id"], actor, f"deployment {dep['name']} removed by {actor}")
    with store.write() as db:
        db.execute("DELETE FROM deployment_metrics WHERE deployment = ?", [dep["id"]])
        db.execute("DELETE FROM deployment_monitor WHERE deployment = ?", [dep["id"]])
        db.execute("DELETE FROM deployment_replicas WHERE deployment = ?", [dep["id"]])
        db.execute("DELETE FROM deployment_revisions WHERE deployment = ?", [dep["id"]])
        db.execute("DELETE FROM deployments WHERE id = ?", [dep["id"]])
        record_event(db, actor, "deployment.removed", "deployment", dep["id"], name=dep["name"], owner=dep["owner"])
    # The replicas' containers may still read the model while they stop; the pass removes directories
    # of deployments that no longer exist once nothing of theirs runs (see remove_unused_dirs).


def stop_replica(store: Store, job_id: str, actor: str, reason: str) -> None:
    """Ask a replica's job to stop; one that is gone or has ended already is fine."""
    try:
        jobs.request_cancel(store, job_id, actor, reason=reason)
    except MlpdError as exc:
        if exc.status not in (404, 409):  # gone or ended meanwhile: nothing to stop
            raise


# ------------------------------------------------------------------ request metrics
# Upper bounds (seconds) of the endpoint's latency histogram; the last bucket is everything above.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def add_request_counts(store: Store, source: str, counts: dict[tuple[str, str], list]) -> None:
    """Add one web worker's counts ({(deployment, revision): [requests, errors, seconds, buckets]}) to its rows."""
    now = time.time()
    with store.write() as db:
        for (dep_id, rev_id), (requests, errors, seconds, buckets) in counts.items():
            row = db.execute("SELECT buckets FROM deployment_metrics WHERE deployment = ? AND revision = ? AND source = ?",
                             [dep_id, rev_id, source]).fetchone()
            if row is None:
                db.execute("""INSERT INTO deployment_metrics (deployment, revision, source, requests, errors, seconds, buckets, updated_at)
                              SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM deployments WHERE id = ?)""",
                           [dep_id, rev_id, source, requests, errors, seconds, json.dumps(buckets), now, dep_id])
            else:
                merged = [a + b for a, b in zip(json.loads(row[0]), buckets, strict=False)]
                db.execute("""UPDATE deployment_metrics SET requests = requests + ?, errors = errors + ?, seconds = seconds + ?, buckets = ?,
                              updated_at = ? WHERE deployment = ? AND revision = ? AND source = ?""",
                           [requests, errors, seconds, json.dumps(merged), now, dep_id, rev_id, source])


def request_metrics(store: Store, dep_id: str | None = None) -> list[dict[str, Any]]:
    """The endpoint's counts per deployment and revision, summed over web workers: requests, errors (answers of
    400 and above, the model's own included), total seconds to the replica's answer, and the histogram's bucket counts."""
    where, params = ("WHERE m.deployment = ?", [dep_id]) if dep_id else ("", [])
    rows = store.query(f"""SELECT m.deployment, m.revision, d.name, v.model_version, v.seq, m.requests, m.errors, m.seconds, m.buckets
                           FROM deployment_metrics m JOIN deployments d ON d.id = m.deployment
                           LEFT JOIN deployment_revisions v ON v.id = m.revision {where}""", params)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        item = out.setdefault((r["deployment"], r["revision"]), {
            "deployment": r["name"], "revision": r["seq"], "version": r["model_version"], "requests": 0, "errors": 0, "seconds": 0.0,
            "buckets": [0] * (len(LATENCY_BUCKETS) + 1)})
        item["requests"] += r["requests"]
        item["errors"] += r["errors"]
        item["seconds"] += r["seconds"]
        item["buckets"] = [a + b for a, b in zip(item["buckets"], json.loads(r["buckets"]), strict=False)]
    return sorted(out.values(), key=lambda x: (x["deployment"], x["revision"] or 0))


def latency_quantile(buckets: list[int], q: float) -> float | None:
    """The histogram's estimate of a latency quantile (the upper bound of the bucket it falls in); None without requests."""
    total = sum(buckets)
    if not total:
        return None
    seen = 0
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), buckets, strict=False):
        seen += count
        if seen >= q * total:
            return bound
    return float("inf")


# ------------------------------------------------------------------ the view
def revision_label(rev: dict[str, Any]) -> str:
    return f"version {rev['model_version']}" if rev.get("model_version") else rev["model_uri"]


def last_change(revs: list[dict[str, Any]]) -> str:
    """What last happened to the deployment's versions, as people say it: "version 2 rolled back by nina",
    "version 3 superseded by version 4 before it took traffic", "version 2 promoted by nina" ("" for none)."""
    ended = [r for r in revs if r["state"] in ("rolled_back", "superseded") and r["ended_at"]]
    promoted = [r for r in revs if r["reason"].startswith("promoted by") and r["switched_at"]]
    events = [(r["ended_at"], r) for r in ended] + [(r["switched_at"], r) for r in promoted]
    if not events:
        return ""
    _, rev = max(events, key=lambda e: e[0])
    return f"{revision_label(rev)} {rev['reason']}"


def state_of(dep: dict[str, Any], revs: list[dict[str, Any]], reps: list[dict[str, Any]]) -> tuple[str, int]:
    """(the deployment's state, its healthy replicas of the current revision)."""
    wanted = dep["spec"]["replicas"]
    healthy = sum(1 for r in reps if r["revision"] == dep["current"] and r["healthy"] and r["state"] == "running")
    rolling = any(r["state"] == "rolling" for r in revs)
    if dep["current"] is None:
        if rolling:
            return "starting", 0
        # Nothing ever served: say so as it happened (someone rolled the only version back), not as an error.
        return ("rolled_back" if revs and revs[-1]["state"] == "rolled_back" else "failed"), 0
    if rolling:
        return "rolling_out", healthy
    if dep.get("canary"):
        return "canary", healthy
    if healthy >= wanted:
        return "serving", healthy
    return ("unavailable" if healthy == 0 else "degraded"), healthy


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or seconds == float("inf") else round(seconds * 1000, 1)


def view(dep: dict[str, Any], revs: list[dict[str, Any]], reps: list[dict[str, Any]], base_url: str, detail: bool = False,
         metrics: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """The stable JSON form of a deployment (detail adds every revision, ended replicas and the endpoint's request counts)."""
    state, healthy = state_of(dep, revs, reps)
    by_id = {r["id"]: r for r in revs}
    current = by_id.get(dep["current"])
    rolling = next((r for r in reversed(revs) if r["state"] == "rolling"), None)

    def rev_view(r: dict[str, Any] | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {"id": r["id"], "seq": r["seq"], "model": r["model_uri"], "model_name": r["model_name"], "version": r["model_version"],
                "canary_percent": r["canary_percent"],
                "run_id": r["run_id"], "state": r["state"], "reason": r["reason"], "created_at": r["created_at"],
                "switched_at": r["switched_at"], "ended_at": r["ended_at"]}

    live = [r for r in reps if r["state"] not in TERMINAL_STATES]
    out = {
        # model: what serves now (a rollout or a canary is beside it); requested: what the deployment was
        # last asked to serve (an alias it follows, or the version being rolled out).
        "id": dep["id"], "name": dep["name"], "owner": dep["owner"], "model": current["model_uri"] if current else dep["model_uri"],
        "requested": dep["model_uri"], "follow_alias": dep["follow_alias"], "last_change": last_change(revs),
        "state": state, "endpoint": f"{base_url.rstrip('/')}/serve/{dep['name']}/invocations",
        "serving": rev_view(current), "rolling_out": rev_view(rolling),
        "canary": {**(rev_view(by_id[dep["canary"]]) or {}), "percent": by_id[dep["canary"]]["canary_percent"]} if dep.get("canary") in by_id else None,
        "health": f"{healthy}/{dep['spec']['replicas']}", "replicas": dep["spec"]["replicas"], "healthy_replicas": healthy,
        "restarts": dep["restarts"], "last_error": dep["last_error"], "auth": dep["spec"]["auth"], "spec": dep["spec"],
        "created_at": dep["created_at"], "updated_at": dep["updated_at"],
        "replica_list": [{"slot": r["slot"], "job_id": r["job_id"], "revision": by_id[r["revision"]]["seq"] if r["revision"] in by_id else None,
                          "version": by_id[r["revision"]]["model_version"] if r["revision"] in by_id else None,
                          "state": r["state"], "healthy": bool(r["healthy"]), "port": r["port"], "last_ok_at": r["last_ok_at"],
                          "last_check_error": r["last_check_error"], "gpus": json.loads(r["gpu_indices"] or "[]")} for r in live],
    }
    if detail:
        out["revisions"] = [rev_view(r) for r in revs]
        out["requests"] = [{**{k: m[k] for k in ("revision", "version", "requests", "errors")},
                            "mean_ms": round(1000 * m["seconds"] / m["requests"], 2) if m["requests"] else None,
                            "p50_ms_at_most": _ms(latency_quantile(m["buckets"], 0.5)), "p99_ms_at_most": _ms(latency_quantile(m["buckets"], 0.99))}
                           for m in metrics]
        out["history"] = [{"job_id": r["job_id"], "slot": r["slot"], "revision": by_id[r["revision"]]["seq"] if r["revision"] in by_id else None,
                           "state": r["state"], "reason": r["reason"], "started_at": r["started_at"], "ended_at": r["ended_at"]}
                          for r in reps if r["state"] in TERMINAL_STATES][-20:]
    return out


# ------------------------------------------------------------------ the container
def model_dir(state_dir: str, dep_id: str, rev_id: str) -> str:
    return os.path.join(state_dir, "serving", dep_id, rev_id, "model")


_copy_lock = threading.Lock()


def ensure_model_dir(state_dir: str, dep_id: str, rev_id: str, location: str) -> str:
    """The revision's copy of its model's files (copied from the store on first use; replicas share it)."""
    path = model_dir(state_dir, dep_id, rev_id)
    with _copy_lock:
        if os.path.isdir(path):
            return path
        os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o711)
        tmp = f"{path}.tmp-{secrets.token_hex(4)}"
        try:
            size = copy_model(state_dir, location, tmp)
            os.rename(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("copied model %s (%.1f MB) for deployment %s", location, size / 1e6, dep_id)
    return path


def launch_request(store: Store, config, job: dict[str, Any], base: LaunchRequest) -> LaunchRequest:
    """A replica's container: the model's files read-only at /model, the scoring server's port published on
    127.0.0.1, and no credentials."""
    import dataclasses

    rep = store.query_one("""SELECT r.port, r.revision, v.location, v.deployment FROM deployment_replicas r
                             JOIN deployment_revisions v ON v.id = r.revision WHERE r.job_id = ?""", [job["id"]])
    if rep is None:
        raise RuntimeFailure("its deployment was removed")
    try:
        path = ensure_model_dir(config.state_dir, rep["deployment"], rep["revision"], rep["location"])
    except ModelError as exc:
        raise RuntimeFailure(f"the model's files could not be copied from mlpd's store: {exc.message}") from None
    env = {k: v for k, v in base.env.items() if not k.startswith(("MLFLOW_", "MLPD_"))}
    env.update({"__pyfunc_model_path__": MODEL_DIR, "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "60", "GUNICORN_CMD_ARGS": ""})
    return dataclasses.replace(base, kind="deployment", env=env, workdir="/tmp", ports=((SERVER_PORT, "127.0.0.1", rep["port"]),),
                               mounts=((path, MODEL_DIR, True),))
