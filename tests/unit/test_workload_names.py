"""One name for every workload wherever a person reads it: a workspace by its name and owner, a
deployment's replica by the deployment and slot, a job by its name and id (as 'mlpd jobs' lists it).

Real SQLite, the real controller on the in-memory runtime, declared GPUs, a clock moved by hand."""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlpd import jobs

from mlpd.serving import deployments as serving

from mlpd.serving import reconcile as serving_pass

from mlpd.tracking import server as tracking

from mlpd.kinds import workspace as workspaces
from mlpd.config import load_config
from mlpd.controller import JobController, plan_now
from mlpd.scheduling.gpu_state import gpu_holders
from mlpd.runtime.gpus import make_inventory
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.store import Store
from mlpd.workload_names import WorkloadName, label, names_of

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0


def test_labels_read_as_people_name_the_workload():
    assert label("workspace", "6a1d27aa68d1", "nina", "lab") == "workspace lab (nina)"
    assert label("deployment", "0f0f0f0f0f0f", "omar", "iris", 1) == "deployment iris, replica 1"
    assert label("deployment", "0f0f0f0f0f0f", "omar", "iris", 1, with_owner=True) == "deployment iris, replica 1 (omar)"
    assert label("job", "8e946a850fbf", "nina") == "job 8e946a850fbf"
    assert label("job", "8e946a850fbf", "nina", "train", with_owner=True) == "job train (8e946a850fbf) of nina"
    assert WorkloadName("workspace", "6a1d27aa68d1", "nina", "lab").show_command() == "mlpd ws show lab"
    assert WorkloadName("deployment", "x", "omar", "iris", 0).show_command() == "mlpd deployments show iris"
    assert WorkloadName("job", "8e946a850fbf", "nina").show_command() == "mlpd jobs show 8e946a850fbf"


def test_a_gpu_held_by_a_workspace_or_a_replica_is_named_by_it_and_so_is_the_wait_it_causes(tmp_path, monkeypatch):
    monkeypatch.setattr(workspaces, "jupyter_command", lambda: ["sleep", "100000"])  # the in-memory runtime's shell
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "", "gpus.declare": 2})
    store = Store(cfg.db_path)
    store.migrate()
    inventory = make_inventory(2, "declared")
    controller = JobController(store, cfg, MemoryRuntime("test", clock=lambda: T0), inventory, clock=lambda: T0)
    ws = workspaces.create(store, "nina", "lab", workspaces.parse_workspace_spec({"gpus": 1}, "mlpd/train:latest"), 41000, 41001, now=T0)
    monkeypatch.setattr(serving, "scoring_command", lambda: ["sleep", "100000"])
    model = os.path.join(tracking.artifacts_dir(cfg.state_dir), "1", "models", "m-1", "artifacts")
    os.makedirs(model)
    Path(model, "MLmodel").write_text("version 1\n")
    with store.write() as db:
        db.execute("""INSERT INTO deployments (id, owner, name, model_uri, spec, key_hash, created_at, updated_at)
                      VALUES ('d1', 'omar', 'iris', 'models:/iris/1', ?, 'x', ?, ?)""",
                   [json.dumps(serving.parse_deployment_spec({"gpus": 1})), T0, T0])
        serving.add_revision(db, "d1", {"model_uri": "models:/iris/1", "model_name": "iris", "model_version": "1", "run_id": None,
                                         "location": "mlflow-artifacts:/1/models/m-1/artifacts", "requirements": None}, T0, None)
    serving_pass.ServingPass(store, cfg, check=lambda port: "").run(T0)
    replica = store.query("SELECT job_id FROM deployment_replicas")[0]["job_id"]
    controller.reconcile(T0)
    controller.reconcile(T0)
    assert {j["state"] for j in jobs.in_states(store, jobs.ACTIVE)} and len(jobs.in_states(store, jobs.ACTIVE)) == 2
    holders = gpu_holders(store)
    assert sorted(h["label"] for h in holders.values()) == ["deployment iris, replica 0 (omar)", "workspace lab (nina)"]
    assert {h["show"] for h in holders.values()} == {"mlpd ws show lab", "mlpd deployments show iris"}

    queued = jobs.submit(store, "nina", parse_spec({"command": ["true"], "gpus": 2, "name": "train"})[0], now=T0)["id"]
    plan, _, _ = plan_now(store, inventory, cfg, T0, explain=True)
    reason = next(w.reason for w in plan.waits if w.job_id == queued)
    assert "held by workspace lab (nina)" in reason and "held by deployment iris, replica 0 (omar)" in reason
    assert ws["session"][:8] not in reason and replica[:8] not in reason
    name = names_of(store, [jobs.get(store, queued)])[queued]
    assert name.label() == f"job train ({queued})"


def test_the_gpus_column_of_mlpd_jobs_is_a_count_with_the_gpus_held_named():
    from mlpd.cli.jobs import _gpus_text

    assert _gpus_text({"gpus": {"count": 0, "indices": [], "uuids": []}}) == "-"
    assert _gpus_text({"gpus": {"count": 1, "indices": [0], "uuids": ["u"]}}) == "1 (GPU 0)"  # not "0", which reads as none
    assert _gpus_text({"gpus": {"count": 2, "indices": [0, 3], "uuids": ["u", "v"]}}) == "2 (GPUs 0,3)"
    assert _gpus_text({"gpus": {"count": 2, "indices": [], "uuids": []}}) == "2"  # queued: none held yet
