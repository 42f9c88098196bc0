"""Bob walks every route the embedded MLflow serves and tries to change alice's objects.

The routes are MLflow's own URL map (read in a subprocess, so this process never imports
mlflow.server), not a list kept by hand: a route MLflow adds in a new version is walked
the day mlpd upgrades. For every route and every method that may change state, bob (a
member) names alice's run, experiment, registered model, logged model and trace in every
way MLflow's handlers accept them: in the path, in the body under the protobuf name and
the JSON name (``run_id``/``runId``, ``run_uuid``/``runUuid``, ...), alone and beside his
own objects in another spelling, as a JSON key given twice, in the query string, and as
id spellings that Python's ``int()`` reads but SQLite does not (``0_7``, fullwidth digits).

Alice's objects are compared before and after, and after every request that reached
MLflow, straight from MLflow's SQLite file (read-only) and her artifact directories. The
test fails with every request that changed something, and every 2xx answer to a request
that named her objects, so a failure says which spelling of which route got through.
Bob logging new runs into her experiment is allowed (a team shares experiments): rows of
runs that are not alice's are left out of the comparison.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import requests

from helpers import needs_docker

pytestmark = needs_docker
API = "/mlflow/api/2.0/mlflow/"
API3 = "/mlflow/api/3.0/mlflow/"
ARTIFACTS = "/mlflow/api/2.0/mlflow-artifacts/artifacts/"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")
_ROUTE = re.compile(r"^/mlflow/(?:api|ajax-api)/(\d+\.\d+)/(?:mlflow|mlflow-artifacts)/(.*)$")
_VARIABLE = re.compile(r"<(?:([a-zA-Z_]+)(?:\([^)]*\))?:)?([a-zA-Z_][a-zA-Z0-9_]*)>")

# The environment mlpd.tracking.server.server_env() gives MLflow; the URL map is printed after a marker
# (MLflow may log to stdout while it imports).
URL_MAP_SCRIPT = r"""
import json, os, sys
tmp = sys.argv[1]
uri = "sqlite:///" + os.path.join(tmp, "x.db")
os.environ.update({
    "_MLFLOW_SERVER_FILE_STORE": uri, "_MLFLOW_SERVER_REGISTRY_STORE": uri,
    "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true", "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
    "_MLFLOW_SERVER_ARTIFACT_DESTINATION": os.path.join(tmp, "art"), "_MLFLOW_STATIC_PREFIX": "/mlflow",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
})
import mlflow.server
rules = []
for rule in mlflow.server.app.url_map.iter_rules():
    converters = getattr(rule, "_converters", {}) or {}
    rules.append({"rule": rule.rule, "methods": sorted(rule.methods or ()), "endpoint": rule.endpoint,
                  "arguments": {name: type(converters[name]).__name__ if name in converters else "?" for name in sorted(rule.arguments)}})
print("URL-MAP " + json.dumps(rules))
"""


def mlflow_url_map(tmp_path: Path) -> list[dict[str, Any]]:
    """[{rule, methods, endpoint, arguments: {name: converter}}] of the MLflow app mlpd mounts."""
    result = subprocess.run([sys.executable, "-c", URL_MAP_SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("URL-MAP "))
    return json.loads(line[len("URL-MAP "):])


# ---------------------------------------------------------------- the two users and their objects


@dataclass
class Party:
    """A user and the objects they created through the API."""

    name: str
    token: str
    session: requests.Session
    experiment_id: str = ""
    experiment_name: str = ""
    run_id: str = ""
    model: str = ""  # registered model name
    logged_model: str = ""
    trace: str = ""
    assessment: str = ""


def call(base: str, party: Party, method: str, path: str, **kwargs) -> requests.Response:
    return party.session.request(method, base + path, timeout=60, allow_redirects=False, **kwargs)


def ok(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, f"{resp.request.method} {resp.url}: {resp.status_code}: {resp.text[:500]}"
    return resp.json() if resp.content.strip() else {}


def new_party(daemon, prefix: str) -> Party:
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    token = daemon.add_user(name)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return Party(name, token, session)


def iso_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def trace_body(trace_id: str, experiment_id: str, tags: dict[str, str], state: str, id_key: str = "trace_id") -> dict[str, Any]:
    """A StartTraceV3 body (MLflow 3 tracing clients send this to POST /api/3.0/mlflow/traces)."""
    now = iso_now()
    return {"trace": {"trace_info": {
        id_key: trace_id,
        "trace_location": {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {"experiment_id": experiment_id}},
        "request_time": now, "execution_duration": "1s", "state": state, "tags": tags, "trace_metadata": {"m": state},
        "assessments": [{"assessment_name": f"quality-{state}", "trace_id": trace_id, "create_time": now, "last_update_time": now,
                         "source": {"source_type": "HUMAN", "source_id": "someone"}, "feedback": {"value": state == "OK"}}],
    }}}


def set_up(base: str, party: Party) -> None:
    """An experiment, a run with a param, metric, tag, inputs and artifacts, a registered model with two
    versions, an alias and tags, a logged model with a tag, param, metric and artifact, and a trace."""
    p = party
    p.experiment_name = f"walk-{p.name}"
    p.experiment_id = ok(call(base, p, "POST", API + "experiments/create", json={
        "name": p.experiment_name, "tags": [{"key": "purpose", "value": "baseline"}]}))["experiment_id"]
    p.run_id = ok(call(base, p, "POST", API + "runs/create", json={
        "experiment_id": p.experiment_id, "start_time": int(time.time() * 1000), "run_name": f"{p.name}-run",
        "tags": [{"key": "note", "value": "baseline"}]}))["run"]["info"]["run_id"]
    ok(call(base, p, "POST", API + "runs/log-parameter", json={"run_id": p.run_id, "key": "lr", "value": "0.1"}))
    ok(call(base, p, "POST", API + "runs/log-metric", json={"run_id": p.run_id, "key": "acc", "value": 0.9, "timestamp": 1, "step": 0}))
    ok(call(base, p, "POST", API + "runs/log-inputs", json={"run_id": p.run_id, "datasets": [{
        "dataset": {"name": "train", "digest": "d1", "source_type": "local", "source": "{\"uri\": \"/data\"}"},
        "tags": [{"key": "mlflow.data.context", "value": "training"}]}]}))
    for rel, data in (("f.txt", b"alice's artifact\n"), ("dir/g.txt", b"alice's nested artifact\n")):
        ok(call(base, p, "PUT", f"{ARTIFACTS}{p.experiment_id}/{p.run_id}/artifacts/{rel}", data=data))
    p.model = f"walk-model-{p.name}"
    ok(call(base, p, "POST", API + "registered-models/create", json={"name": p.model, "tags": [{"key": "note", "value": "baseline"}]}))
    for _ in range(2):
        ok(call(base, p, "POST", API + "model-versions/create", json={"name": p.model, "source": f"runs:/{p.run_id}/model", "run_id": p.run_id}))
    ok(call(base, p, "POST", API + "registered-models/alias", json={"name": p.model, "alias": "prod", "version": "1"}))
    ok(call(base, p, "POST", API + "model-versions/set-tag", json={"name": p.model, "version": "1", "key": "validated", "value": "yes"}))
    p.logged_model = ok(call(base, p, "POST", API + "logged-models", json={
        "experiment_id": p.experiment_id, "name": f"{p.name}-lm", "source_run_id": p.run_id,
        "params": [{"key": "p", "value": "1"}], "tags": [{"key": "stage", "value": "dev"}]}))["model"]["info"]["model_id"]
    ok(call(base, p, "PUT", f"{ARTIFACTS}{p.experiment_id}/models/{p.logged_model}/artifacts/w.txt", data=b"alice's weights\n"))
    ok(call(base, p, "POST", API + "runs/outputs", json={"run_id": p.run_id, "models": [{"model_id": p.logged_model, "step": 0}]}))
    ok(call(base, p, "POST", API + "runs/log-metric", json={"run_id": p.run_id, "key": "lm_acc", "value": 0.8, "timestamp": 1,
                                                          "model_id": p.logged_model}))
    p.trace = "tr-" + uuid.uuid4().hex
    created = ok(call(base, p, "POST", API3 + "traces", json=trace_body(p.trace, p.experiment_id, {"k": "v"}, "OK")))
    p.assessment = created["trace"]["trace_info"]["assessments"][0]["assessment_id"]
    ok(call(base, p, "POST", API + "traces/link-to-run", json={"run_id": p.run_id, "trace_ids": [p.trace]}))


# ---------------------------------------------------------------- what "alice's objects unchanged" means


def _rows(conn: sqlite3.Connection, table: str, where: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = conn.execute(f"SELECT * FROM {table} WHERE {where}", params)
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _show(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in row.items())


def snapshot(state_dir: Path, alice: Party) -> dict[str, frozenset[str]]:
    """Every row of alice's objects in MLflow's SQLite file (read-only), and her artifact files.

    Rows that link her objects to a run that is not hers (bob's run using her model, bob's
    trace in her experiment) belong to that run and are left out. The Default experiment
    (no owner: admins only) is kept too.
    """
    conn = sqlite3.connect(f"file:{state_dir / 'mlflow' / 'mlflow.db'}?mode=ro", uri=True, timeout=30)
    try:
        run, exp, model, lm, trace = alice.run_id, int(alice.experiment_id), alice.model, alice.logged_model, alice.trace
        others = {r for (r,) in conn.execute("SELECT run_uuid FROM runs WHERE user_id IS NOT ?", [alice.name])}
        ids = [run, lm, trace]
        queries = {
            "runs": ("run_uuid = ?", [run]), "tags": ("run_uuid = ?", [run]), "params": ("run_uuid = ?", [run]),
            "metrics": ("run_uuid = ?", [run]), "latest_metrics": ("run_uuid = ?", [run]),
            "experiments": ("experiment_id IN (?, 0)", [exp]), "experiment_tags": ("experiment_id IN (?, 0)", [exp]),
            "registered_models": ("name = ?", [model]), "registered_model_tags": ("name = ?", [model]),
            "registered_model_aliases": ("name = ?", [model]), "model_versions": ("name = ?", [model]),
            "model_version_tags": ("name = ?", [model]),
            "logged_models": ("model_id = ?", [lm]), "logged_model_tags": ("model_id = ?", [lm]),
            "logged_model_params": ("model_id = ?", [lm]), "logged_model_metrics": ("model_id = ? OR run_id = ?", [lm, run]),
            "inputs": ("source_id IN (?, ?, ?) OR destination_id IN (?, ?, ?)", ids + ids),
            "entity_associations": ("source_id IN (?, ?, ?) OR destination_id IN (?, ?, ?)", ids + ids),
            "trace_info": ("request_id = ?", [trace]), "trace_tags": ("request_id = ?", [trace]),
            "trace_request_metadata": ("request_id = ?", [trace]), "trace_metrics": ("request_id = ?", [trace]),
            "assessments": ("trace_id = ?", [trace]), "spans": ("trace_id = ?", [trace]), "span_metrics": ("trace_id = ?", [trace]),
        }
        found: dict[str, list[dict[str, Any]]] = {}
        for table, (where, params) in queries.items():
            rows = _rows(conn, table, where, params)
            if table == "logged_model_metrics":
                rows = [r for r in rows if r["run_id"] not in others]
            elif table in ("inputs", "entity_associations"):
                rows = [r for r in rows if r["source_id"] not in others and r["destination_id"] not in others]
            found[table] = rows
        found["input_tags"] = [r for i in found["inputs"] for r in _rows(conn, "input_tags", "input_uuid = ?", [i["input_uuid"]])]
        out = {table: frozenset(_show(r) for r in rows) for table, rows in found.items()}
    finally:
        conn.close()
    out["artifacts"] = artifact_listing(state_dir / "mlflow" / "artifacts", alice)
    return out


def artifact_listing(root: Path, alice: Party) -> frozenset[str]:
    """Names, sizes and sha256 of everything under alice's run, logged model and trace directories."""
    entries: set[str] = set()
    e = alice.experiment_id
    for rel in (f"{e}/{alice.run_id}", f"{e}/models/{alice.logged_model}", f"{e}/traces/{alice.trace}"):
        for dirpath, dirnames, filenames in os.walk(root / rel):
            for d in dirnames:
                entries.add(f"{os.path.relpath(os.path.join(dirpath, d), root)}/")
            for f in filenames:
                path = os.path.join(dirpath, f)
                if os.path.islink(path):
                    entries.add(f"{os.path.relpath(path, root)} -> {os.readlink(path)}")
                    continue
                data = Path(path).read_bytes()
                entries.add(f"{os.path.relpath(path, root)} size={len(data)} sha256={hashlib.sha256(data).hexdigest()}")
    return frozenset(entries)


def diff(before: dict[str, frozenset[str]], after: dict[str, frozenset[str]]) -> list[str]:
    lines = []
    for table in sorted(set(before) | set(after)):
        old, new = before.get(table, frozenset()), after.get(table, frozenset())
        lines += [f"    {table}: - {row}" for row in sorted(old - new)]
        lines += [f"    {table}: + {row}" for row in sorted(new - old)]
    return lines


# ---------------------------------------------------------------- every way to name alice's objects


@dataclass
class World:
    alice: Party
    bob: Party
    tag: str  # unique suffix for names bob tries to take


# Body fields that name the object a request acts on, in every spelling MLflow's parser takes.
SPELLINGS = {
    "run": ("run_id", "runId", "run_uuid", "runUuid"),
    "experiment": ("experiment_id", "experimentId"),
    "registered_model": ("name",),
    "logged_model": ("model_id", "modelId"),
    "trace": ("trace_id", "traceId", "request_id", "requestId"),
    "trace_list": ("trace_ids", "traceIds", "request_ids", "requestIds"),
    "experiment_list": ("experiment_ids", "experimentIds"),
    # for routes without a Spec (mostly admin-only): the lists once each
    "trace_list_once": ("trace_ids", "request_ids"),
    "experiment_list_once": ("experiment_ids",),
}
SCALAR_SLOTS = ("run", "experiment", "registered_model", "logged_model", "trace")


def _fullwidth(digits: str) -> str:
    return "".join(chr(0xFF10 + int(c)) for c in digits)


def alice_values(w: World, slot: str) -> list[Any]:
    """Alice's id for the slot, first as it is, then spelled the ways a lookup might normalise."""
    a = w.alice
    e = a.experiment_id
    return {
        "run": [a.run_id, a.run_id.upper()],
        # Python's int() reads all of these as her experiment; SQLite's comparison only some.
        "experiment": [e, "0" + e, " " + e, e + " ", "+" + e, "0_" + e, _fullwidth(e), e + ".0", int(e)],
        "registered_model": [a.model, a.model.upper(), " " + a.model, a.model + " "],
        "logged_model": [a.logged_model, a.logged_model.upper()],
        "trace": [a.trace],
        "trace_list": [[a.trace], [w.bob.trace, a.trace]],
        "experiment_list": [[e], [w.bob.experiment_id, e]],
        "trace_list_once": [[a.trace]],
        "experiment_list_once": [[e]],
    }[slot]


def bob_value(w: World, slot: str) -> Any:
    b = w.bob
    return {"run": b.run_id, "experiment": b.experiment_id, "registered_model": b.model, "logged_model": b.logged_model,
            "trace": b.trace}.get(slot) or ([b.trace] if slot.startswith("trace_list") else [b.experiment_id])


def id_variants(w: World, slot: str, full: bool = True) -> list[dict[str, Any]]:
    """Bodies' id fields naming alice's object: each spelling alone, and (full) each pair of spellings
    with alice's id in one and bob's in the other, in both orders."""
    names, alice, bob = SPELLINGS[slot], alice_values(w, slot), bob_value(w, slot)
    out = [{n: v} for n in names for v in (alice if full else alice[:1])]
    if full:
        for n1, n2 in itertools.combinations(names, 2):
            for x, y in ((alice[0], bob), (bob, alice[0])):
                out += [{n1: x, n2: y}, {n2: y, n1: x}]
    return out


def raw_twice(name: str, first: Any, second: Any, extra: dict[str, Any]) -> bytes:
    """A JSON object with `name` given twice (json.dumps cannot write one)."""
    items = [(name, first), (name, second), *extra.items()]
    return ("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in items) + "}").encode()


@dataclass
class Spec:
    """How to send a realistic request to one endpoint: the body fields that name its object (slots),
    the rest of a body that would really act (extra), and whole bodies that name alice's objects
    somewhere else than the slot (cross: bob's run logging to her logged model, ...)."""

    slots: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    cross: list[dict[str, Any]] = field(default_factory=list)
    generic: bool = False


def specs(w: World) -> dict[str, Spec]:
    """Keyed "METHOD endpoint" or "METHOD version endpoint", endpoint as in MLflow's rule after /mlflow/."""
    a, b, t = w.alice, w.bob, w.tag
    now = int(time.time() * 1000)
    metric = {"key": "acc", "value": 0.0, "timestamp": 2, "step": 1}
    lm_metric = {"key": "lm_acc", "value": 0.1, "timestamp": 3, "step": 0}
    dataset = {"dataset": {"name": "bob-data", "digest": "b1", "source_type": "local", "source": "{}"}, "tags": []}
    run = lambda **extra: Spec(("run",), extra)  # noqa: E731
    experiment = lambda **extra: Spec(("experiment",), extra)  # noqa: E731
    model = lambda **extra: Spec(("registered_model",), extra)  # noqa: E731
    logged = lambda **extra: Spec(("logged_model",), extra)  # noqa: E731
    trace = lambda **extra: Spec(("trace",), extra)  # noqa: E731
    assessment = {"assessment_name": "bob", "source": {"source_type": "HUMAN", "source_id": b.name}, "feedback": {"value": False}}
    return {
        # a run, named in the body
        "POST runs/update": run(status="KILLED", end_time=1, run_name=f"taken-{t}"),
        "POST runs/delete": run(),
        "POST runs/restore": run(),
        "POST runs/log-metric": Spec(("run",), metric, [
            {"run_id": b.run_id, **lm_metric, "model_id": a.logged_model}, {"runId": b.run_id, **lm_metric, "modelId": a.logged_model}]),
        "POST runs/log-parameter": run(key=f"bob-{t}", value="1"),
        "POST runs/set-tag": run(key="note", value="bob"),
        "POST runs/delete-tag": run(key="note"),
        "POST runs/log-batch": Spec(("run",), {"metrics": [metric], "params": [{"key": f"bob-{t}", "value": "1"}],
                                              "tags": [{"key": "note", "value": "bob"}]},
                                    [{"run_id": b.run_id, "metrics": [{**lm_metric, "model_id": a.logged_model}]}]),
        "POST runs/log-model": run(model_json=json.dumps({"artifact_path": "bob", "flavors": {}, "run_id": b.run_id,
                                                          "utc_time_created": "2024-01-01 00:00:00.000000"})),
        "POST runs/log-inputs": Spec(("run",), {"datasets": [dataset]},
                                     [{"run_id": b.run_id, "models": [{"model_id": a.logged_model}]}]),
        "POST runs/outputs": Spec(("run",), {"models": [{"model_id": b.logged_model, "step": 0}]},
                                  [{"run_id": b.run_id, "models": [{"model_id": a.logged_model, "step": 0}]}]),
        "POST traces/link-to-run": Spec(("run",), {"trace_ids": [b.trace]},
                                        [{"run_id": b.run_id, "trace_ids": [a.trace]}, {"run_id": b.run_id, "traceIds": [a.trace]}]),
        "POST artifacts/presigned-upload-url": run(path="f.txt"),
        "POST artifacts/presigned-download-url": run(path="f.txt"),
        "POST runs/create": Spec(("experiment",), {"start_time": now, "run_name": f"bob-{t}"}),
        # an experiment
        "POST experiments/delete": experiment(),
        "POST experiments/restore": experiment(),
        "POST experiments/update": Spec(("experiment",), {"new_name": f"taken-{t}"}),
        "POST experiments/set-experiment-tag": experiment(key="purpose", value="bob"),
        "POST experiments/delete-experiment-tag": experiment(key="purpose"),
        "POST experiments/create": Spec((), {}, [{"name": a.experiment_name}, {"name": a.experiment_name, "tags": []}]),
        "POST logged-models": Spec(("experiment",), {"name": f"bob-{t}"},
                                   [{"experiment_id": b.experiment_id, "source_run_id": a.run_id},
                                    {"experimentId": b.experiment_id, "sourceRunId": a.run_id}]),
        "POST 2.0 traces": Spec(("experiment",), {"timestamp_ms": now, "request_metadata": [], "tags": [{"key": "k", "value": "bob"}]}),
        "POST 3.0 traces": Spec((), {}, [
            trace_body(a.trace, e, {"k": "bob", "bob": "1"}, "ERROR", key)
            for e in (a.experiment_id, b.experiment_id) for key in ("trace_id", "traceId")]),
        # a registered model, named `name`
        "POST registered-models/create": Spec((), {}, [{"name": a.model}, {"name": a.model, "tags": [{"key": "note", "value": "bob"}]}]),
        "POST registered-models/rename": model(new_name=f"taken-{t}"),
        "PATCH registered-models/update": model(description="bob"),
        "DELETE registered-models/delete": model(),
        "POST registered-models/set-tag": model(key="note", value="bob"),
        "DELETE registered-models/delete-tag": model(key="note"),
        "POST registered-models/alias": model(alias="prod", version="2"),
        "DELETE registered-models/alias": model(alias="prod"),
        "POST model-versions/create": Spec(("registered_model",), {"source": f"runs:/{b.run_id}/model", "run_id": b.run_id}, [
            {"name": b.model, "source": f"models:/{a.logged_model}", "model_id": a.logged_model},
            {"name": b.model, "source": f"models:/{a.logged_model}", "modelId": a.logged_model},
            {"name": b.model, "source": f"runs:/{a.run_id}/model", "run_id": a.run_id},
            {"name": b.model, "source": f"runs:/{a.run_id}/model", "runId": a.run_id},
            {"name": b.model, "source": f"mlflow-artifacts:/{a.experiment_id}/{a.run_id}/artifacts", "run_id": b.run_id}]),
        "PATCH model-versions/update": model(version="1", description="bob"),
        "POST model-versions/transition-stage": model(version="1", stage="Archived", archive_existing_versions=True),
        "DELETE model-versions/delete": model(version="2"),
        "POST model-versions/set-tag": model(version="1", key="validated", value="bob"),
        "DELETE model-versions/delete-tag": model(version="1", key="validated"),
        # a logged model, named in the path (and, for some handlers, in the body)
        "PATCH logged-models/<model_id>": logged(status=3),
        "DELETE logged-models/<model_id>": logged(),
        "PATCH logged-models/<model_id>/tags": logged(tags=[{"key": "stage", "value": "bob"}]),
        "DELETE logged-models/<model_id>/tags/<tag_key>": logged(),
        "POST logged-models/<model_id>/params": logged(params=[{"key": f"bob-{t}", "value": "1"}]),
        # a trace, named in the path
        "PATCH traces/<request_id>/tags": trace(key="k", value="bob"),
        "PATCH traces/<trace_id>/tags": trace(key="k", value="bob"),
        "DELETE traces/<request_id>/tags": trace(key="k"),
        "DELETE traces/<trace_id>/tags": trace(key="k"),
        "PATCH traces/<request_id>": trace(timestamp_ms=now, status="ERROR", request_metadata=[], tags=[{"key": "k", "value": "bob"}]),
        "POST traces/<trace_id>/assessments": Spec(("trace",), {"assessment": assessment},
                                                   [{"assessment": {**assessment, "trace_id": a.trace}}]),
        "PATCH traces/<trace_id>/assessments/<assessment_id>": trace(assessment=assessment, update_mask="feedback"),
        "DELETE traces/<trace_id>/assessments/<assessment_id>": trace(),
        "POST traces/delete-traces": Spec(("experiment",), {"max_timestamp_millis": now + 10**6}, [
            {"experiment_id": e, key: [a.trace]} for e in (a.experiment_id, b.experiment_id)
            for key in ("request_ids", "requestIds", "trace_ids", "traceIds")]),
        "POST traces/link-prompts": trace(prompt_versions=[{"name": a.model, "version": "1"}]),
    }


GENERIC = {"key": "k", "value": "bob", "tags": [{"key": "k", "value": "bob"}], "description": "bob", "version": "1", "alias": "prod",
           "status": "FAILED"}


def path_candidates(w: World, argument: str) -> list[str]:
    """Values for a path variable, by its name: alice's object of that kind, and bob's where a
    handler might act on a body field instead."""
    a, b = w.alice, w.bob
    e = a.experiment_id
    if argument == "model_id":
        return [a.logged_model, b.logged_model]
    if argument in ("trace_id", "request_id"):
        return [a.trace, b.trace]
    if argument == "tag_key":
        return ["stage", "mlpd.owner"]
    if argument == "assessment_id":
        return [a.assessment]
    if argument == "artifact_path":
        return [f"{e}/{a.run_id}/artifacts/f.txt", f"{e}/{a.run_id}/artifacts/new.txt", f"{e}/{a.run_id}/artifacts/dir/g.txt",
                f"{e}/{a.run_id}/artifacts/dir", f"{e}/{a.run_id}/artifacts", f"{e}/{a.run_id}",
                f"{b.experiment_id}/{a.run_id}/artifacts/f.txt", f"0{e}/{a.run_id}/artifacts/f.txt",
                f"{e}/models/{a.logged_model}/artifacts/w.txt", f"{b.experiment_id}/models/{a.logged_model}/artifacts/w.txt",
                f"{e}/traces/{a.trace}/artifacts/traces.json"]
    if argument == "workspace_name":
        return ["default"]
    return [a.run_id]  # webhook, dataset, issue, job ids...: alice has none; her run id stands in


@dataclass
class Attempt:
    method: str
    path: str
    rule: str
    json: Any = None
    data: bytes | None = None
    content_type: str = "application/json"
    params: list[tuple[str, str]] = field(default_factory=list)
    rank: int = 0
    chunked: bool = False  # the body sent with Transfer-Encoding: chunked (no Content-Length)

    def describe(self) -> str:
        query = "?" + urlencode(self.params) if self.params else ""
        body = json.dumps(self.json) if self.json is not None else repr(self.data) if self.data is not None else ""
        return f"{self.method} {self.path}{query} {'(chunked) ' if self.chunked else ''}{body[:600]}"


def rank(method: str, endpoint: str) -> int:
    """Walk order: what only adds or edits first, deletions and renames later, restores last, so
    that a change that got through does not hide the ones after it."""
    if endpoint.endswith("restore"):
        return 10
    for name, value in (("experiments/delete", 9), ("experiments/update", 8), ("registered-models/delete", 7),
                        ("registered-models/rename", 6), ("runs/delete", 5), ("model-versions/delete", 5)):
        if endpoint == name:
            return value
    if method == "DELETE" or "delete" in endpoint or (method == "PATCH" and endpoint == "logged-models/<model_id>"):
        return 4
    return 0


def fill(rule: str, values: dict[str, str]) -> str:
    return _VARIABLE.sub(lambda m: quote(values[m.group(2)], safe="/" if m.group(1) == "path" else ""), rule)


def attempts_for(w: World, spec_table: dict[str, Spec], rule: dict[str, Any], method: str) -> list[Attempt]:
    """Every request bob sends to one (rule, method), each naming one of alice's objects somewhere."""
    m = _ROUTE.match(rule["rule"])
    version, endpoint = (m.group(1), m.group(2)) if m else ("", rule["rule"])
    spec = spec_table.get(f"{method} {version} {endpoint}") or spec_table.get(f"{method} {endpoint}") or \
        Spec(SCALAR_SLOTS + ("trace_list_once", "experiment_list_once"), GENERIC, generic=True)
    order = rank(method, endpoint)
    # The same handler is served under several prefixes; the first (/api/) gets every spelling and
    # combination, the others (/ajax-api/) each spelling once: enough to catch a prefix mlpd forgot.
    full = not spec.generic and not rule["rule"].startswith("/mlflow/ajax-api/")
    out: list[Attempt] = []

    def add(path: str, **kwargs) -> None:
        out.append(Attempt(method, path, rule["rule"], rank=order, **kwargs))

    def bodies_naming_alice() -> list[dict[str, Any]]:
        bodies = [{**ids, **spec.extra} for slot in spec.slots for ids in id_variants(w, slot, full=full)]
        return bodies + [dict(body) for body in spec.cross]

    arguments = list(rule["arguments"])
    if "artifact_path" in arguments:  # the proxied artifact store: the path is the object
        for path in path_candidates(w, "artifact_path"):
            url = fill(rule["rule"], {"artifact_path": path})
            if method == "PUT":
                add(url, data=b"bob was here\n", content_type="application/octet-stream")
            elif method == "DELETE":
                add(url)
            else:
                add(url, json={"path": path.rsplit("/", 1)[-1], "num_parts": 1, "upload_id": "x", "parts": []})
        return out
    if endpoint == "upload-artifact":  # the UI's upload: the run is named in the query string
        a, b = w.alice.run_id, w.bob.run_id
        for params in ([("run_uuid", a)], [("run_uuid", a.upper())], [("run_uuid", b), ("run_uuid", a)], [("run_uuid", a), ("run_uuid", b)],
                       [("run_uuid", b), ("runUuid", a)], [("runUuid", a), ("run_uuid", b)], [("run_id", a), ("run_uuid", b)]):
            for name in ("f.txt", "new.txt", "dir/g.txt"):
                add(rule["rule"], params=[*params, ("path", name)], data=b"bob was here\n", content_type="application/octet-stream")
        return out
    if arguments:
        slot = spec.slots[0] if spec.slots and not spec.generic else ""
        alice_ids = {w.alice.run_id, w.alice.logged_model, w.alice.trace, w.alice.assessment}
        for combo in itertools.product(*(path_candidates(w, name) for name in arguments)):
            url = fill(rule["rule"], dict(zip(arguments, combo, strict=True)))
            if alice_ids & set(combo):  # alice's object in the path, bob's (or none) in the body
                add(url, json=dict(spec.extra))
                if slot:
                    add(url, json={SPELLINGS[slot][0]: bob_value(w, slot), **spec.extra})
            else:  # bob's object (or nobody's) in the path, alice's in the body or the query string
                for body in bodies_naming_alice():
                    add(url, json=body)
                if slot in SCALAR_SLOTS:
                    add(url, json=dict(spec.extra), params=[(SPELLINGS[slot][0], str(alice_values(w, slot)[0]))])
        return out

    for body in bodies_naming_alice():
        add(rule["rule"], json=body)
    if spec.generic:  # every object in the query string at once
        add(rule["rule"], json=dict(spec.extra), params=[(SPELLINGS[s][0], str(alice_values(w, s)[0])) for s in SCALAR_SLOTS])
    else:
        for slot in (s for s in spec.slots if s in SCALAR_SLOTS):
            canonical, alice, bob = SPELLINGS[slot][0], alice_values(w, slot)[0], bob_value(w, slot)
            for name in SPELLINGS[slot] if full else SPELLINGS[slot][:1]:
                # in the query string, with bob's object (or nothing) in the body
                add(rule["rule"], json={canonical: bob, **spec.extra}, params=[(name, str(alice))])
                add(rule["rule"], json=dict(spec.extra), params=[(name, str(alice))])
            # one key twice: whichever a parser keeps, it must be the one checked
            add(rule["rule"], data=raw_twice(canonical, bob, alice, spec.extra))
            if full:
                add(rule["rule"], data=raw_twice(canonical, alice, bob, spec.extra))
                # no Content-Length: a wrapper that reads only sized bodies would check an empty one
                add(rule["rule"], data=json.dumps({canonical: alice, **spec.extra}).encode(), chunked=True)
    if endpoint == "graphql" or rule["rule"].endswith("/graphql"):
        e, r = w.alice.experiment_id, w.alice.run_id
        for query in (f'query {{ mlflowGetRun(input: {{runId: "{r}"}}) {{ run {{ info {{ runId }} }} }} }}',
                      f'mutation {{ mlflowSearchRuns(input: {{experimentIds: ["{e}"]}}) {{ runs {{ info {{ runId }} }} }} }}',
                      'mutation { testMutation(inputString: "bob") { output } }'):
            add(rule["rule"], json={"query": query})
    return out


def plan(w: World, url_map: list[dict[str, Any]]) -> tuple[list[Attempt], set[tuple[str, str]]]:
    """Every attempt for every mutating (rule, method) of the URL map, in walk order."""
    table = specs(w)
    attempts: list[Attempt] = []
    pairs: set[tuple[str, str]] = set()
    for rule in url_map:
        if not rule["rule"].startswith("/mlflow"):
            continue
        for method in rule["methods"]:
            if method in MUTATING:
                pairs.add((rule["rule"], method))
                attempts += attempts_for(w, table, rule, method)
    attempts.sort(key=lambda a: a.rank)  # stable: the URL map's order within a rank
    return attempts, pairs


def send(base: str, bob: Party, attempt: Attempt) -> requests.Response:
    kwargs: dict[str, Any] = {"params": attempt.params or None}
    if attempt.data is not None:
        kwargs["data"] = iter([attempt.data]) if attempt.chunked else attempt.data
        kwargs["headers"] = {"Content-Type": attempt.content_type}
    elif attempt.json is not None:
        kwargs["json"] = attempt.json
    try:
        return call(base, bob, attempt.method, attempt.path, **kwargs)
    except requests.ConnectionError:
        # the server may close a kept-alive connection just as the next request goes out: once more, on a new one
        bob.session.close()
        return call(base, bob, attempt.method, attempt.path, **kwargs)


def refused_by_mlpd(resp: requests.Response) -> bool:
    """mlpd answers its own refusals in its error shape, before MLflow sees the request."""
    if not 400 <= resp.status_code < 500:
        return False
    try:
        body = resp.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and "code" in body["error"]


# ---------------------------------------------------------------- the walk


class Walk:
    """Sends bob's requests, and after each one that reached MLflow compares alice's objects with
    how they were just before it, so every change is pinned on the request that made it."""

    def __init__(self, base: str, bob: Party, state_dir: Path, alice: Party):
        self.base, self.bob, self.state_dir, self.alice = base, bob, state_dir, alice
        self.before = self.previous = snapshot(state_dir, alice)
        self.changes: list[tuple[str, list[str]]] = []
        self.successes: list[str] = []
        self.statuses: dict[int, int] = {}
        self.crashed: set[str] = set()
        self.sent = self.reached = 0

    def send(self, attempt: Attempt) -> requests.Response:
        resp = send(self.base, self.bob, attempt)
        self.sent += 1
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        if 200 <= resp.status_code < 300:
            self.successes.append(f"  {resp.status_code} {attempt.describe()[:250]} -> {resp.text[:80]!r}")
        elif resp.status_code >= 500:
            self.crashed.add(f"{attempt.method} {attempt.rule}")
        if not refused_by_mlpd(resp):
            self.reached += 1
            now = snapshot(self.state_dir, self.alice)
            if now != self.previous:
                self.changes.append((f"{resp.status_code} {attempt.describe()}", diff(self.previous, now)))
                self.previous = now
        return resp


def chained(walk: Walk, w: World) -> None:
    """Bob's own experiment with its artifact location in alice's run directory, his own run in it, and
    an upload: his files would land among hers (locations are the daemon's to choose, not a member's)."""
    a = w.alice
    store = walk.state_dir / "mlflow" / "artifacts"
    locations = [f"mlflow-artifacts:/{a.experiment_id}/{a.run_id}/artifacts", f"mlflow-artifacts:/{a.experiment_id}/{a.run_id}",
                 f"file://{store}/{a.experiment_id}/{a.run_id}/artifacts", f"{store}/{a.experiment_id}/{a.run_id}/artifacts"]
    for i, (key, location) in enumerate(itertools.product(("artifact_location", "artifactLocation"), locations)):
        path = API + "experiments/create"
        created = walk.send(Attempt("POST", path, path, json={"name": f"bob-{w.tag}-at-{i}", key: location}))
        if created.status_code != 200:
            continue
        experiment_id = created.json()["experiment_id"]
        path = API + "runs/create"
        run = walk.send(Attempt("POST", path, path, json={"experiment_id": experiment_id}))
        if run.status_code != 200:
            continue
        run_id = run.json()["run"]["info"]["run_id"]
        path = "/mlflow/ajax-api/2.0/mlflow/upload-artifact"
        walk.send(Attempt("POST", path, path, params=[("run_uuid", run_id), ("path", "f.txt")], data=b"bob was here\n",
                          content_type="application/octet-stream"))
        path = f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/f.txt"
        walk.send(Attempt("PUT", path, path, data=b"bob was here\n", content_type="application/octet-stream"))


def test_no_mlflow_route_lets_a_member_change_another_members_objects(daemon, tmp_path):
    started = time.monotonic()
    url_map = mlflow_url_map(tmp_path)
    families = {m.group(0) for r in url_map for m in [re.match(r"/mlflow/(?:api|ajax-api)/\d+\.\d+/", r["rule"])] if m}
    assert {"/mlflow/api/2.0/", "/mlflow/ajax-api/2.0/", "/mlflow/api/3.0/"} <= families, families

    base = daemon.url
    alice, bob = new_party(daemon, "alice"), new_party(daemon, "bob")
    set_up(base, bob)
    set_up(base, alice)
    w = World(alice, bob, uuid.uuid4().hex[:8])

    walk = Walk(base, bob, daemon.state_dir, alice)
    for table in ("runs", "tags", "params", "metrics", "latest_metrics", "experiment_tags", "registered_models",
                  "registered_model_aliases", "model_versions", "model_version_tags", "logged_models", "logged_model_tags",
                  "logged_model_params", "logged_model_metrics", "inputs", "entity_associations", "trace_info", "trace_tags",
                  "assessments"):
        assert walk.before[table], f"alice's {table} rows were not found: the snapshot would compare nothing"
    assert len(walk.before["model_versions"]) == 2 and len([x for x in walk.before["artifacts"] if "sha256" in x]) == 3, walk.before

    attempts, pairs = plan(w, url_map)
    walked = {(a.rule, a.method) for a in attempts}
    assert walked == pairs, f"routes with no attempt: {sorted(pairs - walked)}"
    assert len(pairs) > 150 and len(attempts) > 200, (len(pairs), len(attempts))

    chained(walk, w)
    for attempt in attempts:
        walk.send(attempt)
    after = snapshot(daemon.state_dir, alice)
    print(f"walked {len(pairs)} (rule, method) pairs of {len(url_map)} rules with {walk.sent} requests "
          f"({walk.reached} reached MLflow) in {time.monotonic() - started:.0f}s; statuses {dict(sorted(walk.statuses.items()))}; "
          f"5xx from {sorted(walk.crashed)}")

    assert walk.statuses.get(401, 0) == 0, "bob's token was refused: the walk proved nothing"
    overall = diff(walk.before, after)
    changes, successes = walk.changes, walk.successes
    assert not changes and not overall, (
        f"bob changed alice's objects; {len(changes)} requests did:\n" + "\n".join(f"  {what[:300]}" for what, _ in changes)
        + "\n\nwhat each changed:\n" + "\n".join(f"  {what[:1000]}\n" + "\n".join(line[:400] for line in lines[:12])
                                                 for what, lines in changes)
        + "\n\nalice's objects before the walk against after it:\n" + "\n".join(line[:400] for line in overall or ["    (the same)"])
        + f"\n\n{len(successes)} of bob's requests were answered 2xx (each named alice's objects; most only read or\n"
        "created bob's own, which is allowed):\n" + "\n".join(successes))
