"""A workload kind is one module: a fourth kind, defined here and registered with one line, is
scheduled, booked, reconciled and shown by the unchanged core (controller, scheduler, ledger, API,
names), with nothing of it named anywhere else.

"Evaluation" is a made-up batch kind: it gets a GPU like a job, its container gets an environment
variable and a read-only mount of its own, it is not preemptible, and when it ends its kind is told.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from app_client import api  # noqa: F401  (the fixture)
from mlpd import jobs
from mlpd.kinds import base as kinds
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.protocol import container_name
from mlpd.workload_names import name_of


class Evaluation(kinds.Kind):
    name = "evaluation"
    title = "evaluation"
    listed_with_jobs = True
    counts_slowdown = True
    ended_rows: list = []

    def launch_request(self, store, config, job, base):
        data = os.path.join(config.state_dir, "eval-data")
        os.makedirs(data, exist_ok=True)
        return dataclasses.replace(base, env={**base.env, "MLPD_EVALUATION": job["spec"]["name"] or ""},
                                   mounts=(*base.mounts, (data, "/eval-data", True)))

    def ended(self, store, config, job):
        self.ended_rows.append((job["id"], job["state"]))


@pytest.fixture
def evaluation():
    kind = kinds.register(Evaluation())  # the one registration line
    yield kind
    kinds.unregister(kind.name)


def test_a_fourth_kind_is_scheduled_booked_reconciled_and_shown_by_the_unchanged_core(api, evaluation):
    spec, _ = parse_spec({"command": ["sh", "-c", "echo scored; sleep 600"], "gpus": 1, "name": "holdout"})
    job_id = jobs.submit(api.store, api.member_name, spec, kind="evaluation")["id"]

    api.reconcile()  # scheduled and launched: it holds a GPU, in a container with what its kind added
    row = jobs.get(api.store, job_id)
    assert row["state"] in ("starting", "running") and len(row["gpu_uuids"]) == 1
    container = api.runtime.containers[container_name(job_id)]
    req = container.request
    assert req.kind == "evaluation" and req.env["MLPD_EVALUATION"] == "holdout"
    assert ("/eval-data", True) in [(target, ro) for _, target, ro in req.mounts]

    # Shown: named by its kind everywhere a person reads it, listed with jobs, its page and the API's view.
    assert name_of(api.store, row).label() == f"evaluation holdout ({job_id[:12]})"
    listed = api.call("GET", "jobs", api.member).get_json()["jobs"]
    assert job_id in [j["id"] for j in listed]
    shown = api.call("GET", f"jobs/{job_id}", api.member).get_json()["job"]
    assert shown["kind"] == "evaluation"
    gpus = api.call("GET", "gpus", api.member).get_json()["gpus"]
    assert [g["holder"]["label"] for g in gpus if g.get("holder")] == [f"evaluation holdout ({job_id[:12]}) of {api.member_name}"]

    container.steps = [("exit", "0")]  # its work is done: the in-memory container exits 0 at its next look
    api.reconcile()  # reconciled: its end recorded, its kind told, its GPU-hours booked
    row = jobs.get(api.store, job_id)
    assert row["state"] == "succeeded"
    assert evaluation.ended_rows == [(job_id, "succeeded")]
    booked = api.store.query("SELECT kind, object_id FROM allocations WHERE object_id = ?", [job_id])
    assert [(b["kind"], b["object_id"]) for b in booked] == [("evaluation", job_id)]
    usage = api.call("GET", "usage?by=kind", api.admin).get_json()
    assert "evaluation" in json.dumps(usage)


def test_an_unknown_kind_is_refused_by_name_and_adds_nothing(api):
    spec, _ = parse_spec({"command": ["true"]})
    before = api.store.query_one("SELECT COUNT(*) AS n FROM jobs")["n"]
    with pytest.raises(KeyError, match="unknown workload kind 'nonesuch'"):
        jobs.submit(api.store, api.member_name, spec, kind="nonesuch")
    assert api.store.query_one("SELECT COUNT(*) AS n FROM jobs")["n"] == before
