"""The serving pass with the real controller on the in-memory runtime: real SQLite, declared GPUs, a clock
moved by hand. Replicas are placed on GPUs like jobs, booked in the ledger as kind deployment, switched,
drained, rolled back and restarted; the scoring server itself is a `sleep` here (the integration test
runs the real one) and /ping answers as the test says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlpd import jobs

from mlpd.serving import deployments as serving

from mlpd.serving import reconcile as serving_pass

from mlpd.tracking import server as tracking
from mlpd.config import load_config
from mlpd.controller import JobController
from mlpd.runtime.gpus import make_inventory
from mlpd.runtime.memory import MemoryRuntime
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0
LOCATION = "mlflow-artifacts:/1/models/m-{n}/artifacts"


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(serving, "scoring_command", lambda: ["sleep", "100000"])
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "", "gpus.declare": 2})
    store = Store(cfg.db_path)
    store.migrate()
    clock = {"now": T0}
    runtime = MemoryRuntime("test", clock=lambda: clock["now"])
    controller = JobController(store, cfg, runtime, make_inventory(2, "declared"), clock=lambda: clock["now"])
    unhealthy: set[int] = set()
    sp = serving_pass.ServingPass(store, cfg, check=lambda port: "/ping failed: refused" if port in unhealthy else "")
    for n in (1, 2, 3):
        model = os.path.join(tracking.artifacts_dir(cfg.state_dir), "1", "models", f"m-{n}", "artifacts")
        os.makedirs(model)
        Path(model, "MLmodel").write_text(f"version {n}\n")

    class World:
        def step(self, seconds: float = 1.0, passes: int = 1):
            for _ in range(passes):
                clock["now"] += seconds
                controller.reconcile(clock["now"])
                sp.run(clock["now"])
                controller.reconcile(clock["now"])

        def deploy(self, gpus: int = 1):
            spec = serving.parse_deployment_spec({"gpus": gpus})
            with store.write() as db:
                db.execute("""INSERT INTO deployments (id, owner, name, model_uri, spec, key_hash, created_at, updated_at)
                              VALUES ('d1', 'alice', 'churn', 'models:/churn/1', ?, 'x', ?, ?)""", [__import__("json").dumps(spec), T0, T0])
            self.roll(1)

        def roll(self, n: int, canary: int | None = None):
            with store.write() as db:
                serving.add_revision(db, "d1", {"model_uri": f"models:/churn/{n}", "model_name": "churn", "model_version": str(n), "run_id": None,
                                                 "location": LOCATION.format(n=n), "requirements": None}, clock["now"], canary)

        def dep(self):
            d = serving.by_id(store, "d1")
            return serving.view(d, serving.revisions(store, "d1"), serving.replicas(store, "d1"), "http://x", detail=True)

    w = World()
    w.store, w.cfg, w.runtime, w.clock, w.unhealthy = store, cfg, runtime, clock, unhealthy
    return w


def live(w):
    return [r for r in w.dep()["replica_list"]]


def assert_every_revision_change_is_an_event(w):
    """Replaying each revision's revision.* events from 'rolling', each a move the table allows from
    where the last one left it, ends in the state it has: no change of state went around the table."""
    import json

    from mlpd.serving.rollout import REVISION_TRANSITIONS

    events = w.store.query("SELECT action, detail FROM events WHERE object_kind = 'deployment' AND action LIKE 'revision.%' ORDER BY id")
    for rev in serving.revisions(w.store, "d1"):
        state = "rolling"
        for e in (e for e in events if json.loads(e["detail"])["revision"] == rev["id"]):
            to = e["action"].split(".", 1)[1]
            assert json.loads(e["detail"])["from"] == state and to in REVISION_TRANSITIONS[state], (rev["seq"], state, to)
            state = to
        assert state == rev["state"], (rev["seq"], state, rev["state"])


def test_a_replica_is_placed_on_a_gpu_booked_as_a_deployment_and_gets_no_credentials(world):
    world.deploy(gpus=1)
    world.step()
    assert world.dep()["state"] == "starting"  # running, not yet pinged: the next pass pings it and switches
    world.step()
    dep = world.dep()
    assert dep["state"] == "serving" and dep["serving"]["version"] == "1" and dep["health"] == "1/1"
    replica = dep["replica_list"][0]
    job = jobs.get(world.store, replica["job_id"])
    assert job["kind"] == "deployment" and job["workload"] == "d1" and job["priority"] == serving.REPLICA_PRIORITY and len(job["gpu_uuids"]) == 1
    booked = world.store.query("SELECT kind, owner, end FROM allocations WHERE object_id = ?", [replica["job_id"]])
    assert booked == [{"kind": "deployment", "owner": "alice", "end": None}]
    request = world.runtime.containers[f"mlpd-job-{replica['job_id']}"].request
    assert request.kind == "deployment" and request.ports == ((8080, "127.0.0.1", replica["port"]),)
    (host, target, read_only), = request.mounts
    assert target == "/model" and read_only and Path(host, "MLmodel").read_text() == "version 1\n"
    assert not [k for k in request.env if k.startswith(("MLFLOW_TRACKING", "MLPD_TOKEN"))]
    assert not world.store.query("SELECT 1 FROM tokens WHERE job_id = ?", [replica["job_id"]])


def test_a_new_version_takes_the_traffic_when_healthy_and_the_old_one_drains_then_stops(world):
    world.deploy()
    world.step(passes=2)
    old = live(world)[0]["job_id"]
    world.roll(2)
    world.step(passes=2)
    dep = world.dep()
    assert dep["serving"]["version"] == "2" and {r["version"] for r in dep["replica_list"]} == {"1", "2"}  # old drains
    assert [r["state"] for r in dep["revisions"]] == ["draining", "serving"]
    world.step(seconds=25, passes=2)  # past serving.drain (20s)
    dep = world.dep()
    assert [r["state"] for r in dep["revisions"]] == ["retired", "serving"] and [r["version"] for r in dep["replica_list"]] == ["2"]
    assert jobs.get(world.store, old)["state"] == "cancelled" and "replaced" in jobs.get(world.store, old)["reason"]
    assert world.store.query_one("SELECT end FROM allocations WHERE object_id = ?", [old])["end"] is not None
    assert not os.path.exists(serving.model_dir(world.cfg.state_dir, "d1", dep["revisions"][0]["id"]))  # its model copy is gone
    assert_every_revision_change_is_an_event(world)


def test_a_version_that_never_answers_is_rolled_back_and_the_old_one_keeps_serving(world):
    world.deploy()
    world.step(passes=2)
    world.roll(2)
    world.step()  # started, not yet pinged as unhealthy: make it so
    world.unhealthy.update(r["port"] for r in live(world) if r["version"] == "2")
    world.roll(3)  # supersedes 2
    world.step()
    world.unhealthy.update(r["port"] for r in live(world) if r["version"] == "3")
    world.step(seconds=301, passes=3)  # past serving.start_timeout (5m); then its replica is stopped
    dep = world.dep()
    assert dep["serving"]["version"] == "1" and dep["state"] == "serving"
    # Version 2 did not fail: version 3 replaced it before it took traffic. Version 3 failed.
    assert [r["state"] for r in dep["revisions"]] == ["serving", "superseded", "failed"]
    assert "did not answer /ping within 300s" in dep["revisions"][2]["reason"]
    assert dep["revisions"][1]["reason"] == "superseded by version 3 before it took traffic"
    assert dep["last_change"] == "version 2 superseded by version 3 before it took traffic"
    assert dep["last_error"].startswith("version 3 rolled back; the previous version keeps serving")
    assert [r["version"] for r in dep["replica_list"]] == ["1"]
    assert_every_revision_change_is_an_event(world)


def test_a_crashed_replica_is_restarted_and_the_restart_counted(world):
    world.deploy()
    world.step(passes=2)
    first = live(world)[0]["job_id"]
    world.runtime.oom_kill(first)
    world.step()
    dep = world.dep()
    assert dep["restarts"] == 1 and "out of memory" in dep["last_error"] and dep["replica_list"][0]["job_id"] != first
    world.step()
    assert world.dep()["state"] == "serving"


def test_removing_stops_every_replica_and_forgets_the_deployment(world):
    world.deploy()
    world.step(passes=2)
    job = live(world)[0]["job_id"]
    serving.remove(world.store, world.cfg, serving.by_id(world.store, "d1"), "alice")
    world.step(passes=2)
    assert serving.by_id(world.store, "d1") is None and jobs.get(world.store, job)["state"] == "cancelled"
    assert not os.path.exists(os.path.join(world.cfg.state_dir, "serving", "d1"))


def test_a_canary_shares_the_traffic_until_promoted_or_rolled_back(world):
    world.deploy()
    world.step(passes=2)
    world.roll(2, canary=20)
    world.step(passes=2)
    dep = world.dep()
    assert dep["state"] == "canary" and dep["canary"]["version"] == "2" and dep["canary"]["percent"] == 20 and dep["serving"]["version"] == "1"
    assert sorted(r["version"] for r in dep["replica_list"]) == ["1", "2"]  # both run; the proxy splits the requests
    serving.promote(world.store, world.cfg, serving.by_id(world.store, "d1"), "alice", now=world.clock["now"])
    world.step(seconds=25, passes=2)
    dep = world.dep()
    assert dep["state"] == "serving" and dep["serving"]["version"] == "2" and [r["version"] for r in dep["replica_list"]] == ["2"]
    world.roll(3, canary=50)
    world.step(passes=2)
    assert world.dep()["canary"]["version"] == "3"
    assert serving.rollback(world.store, serving.by_id(world.store, "d1"), "alice", now=world.clock["now"]) == "version 3"
    world.step(passes=2)
    dep = world.dep()
    assert dep["canary"] is None and dep["serving"]["version"] == "2" and [r["version"] for r in dep["replica_list"]] == ["2"]
    # A deliberate rollback says what happened, and is no error; the model named is the one that serves.
    assert dep["revisions"][-1]["state"] == "rolled_back" and dep["revisions"][-1]["reason"] == "rolled back by alice"
    assert dep["last_error"] == "" and dep["last_change"] == "version 3 rolled back by alice" and dep["state"] == "serving"
    assert dep["model"] == "models:/churn/2" and dep["requested"] == "models:/churn/2"
    assert [(r["version"], r["state"], r["reason"]) for r in dep["revisions"][:2]] == [
        ("1", "retired", "replaced by version 2 (promoted by alice)"), ("2", "serving", "promoted by alice")]
    with pytest.raises(serving.DeploymentError) as err:
        serving.promote(world.store, world.cfg, serving.by_id(world.store, "d1"), "alice")
    assert err.value.status == 409
    assert_every_revision_change_is_an_event(world)


def test_a_first_version_rolled_back_before_it_served_leaves_a_deployment_rolled_back_not_failed(world):
    world.deploy()
    world.step()  # rolling out, not yet answering
    assert serving.rollback(world.store, serving.by_id(world.store, "d1"), "alice", now=world.clock["now"]) == "version 1"
    world.step(passes=2)
    dep = world.dep()
    assert dep["state"] == "rolled_back" and dep["last_error"] == "" and dep["last_change"] == "version 1 rolled back by alice"
    assert dep["replica_list"] == []
    assert_every_revision_change_is_an_event(world)
