"""Data where the work is, in the controller's launch requests (in-memory runtime, real SQLite): /dev/shm
sized for the job and the deep-learning ulimits, and the owner's home at /home/mlpd in their jobs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlpd import jobs
from mlpd.config import load_config
from mlpd.controller import JobController
from mlpd.runtime.gpus import make_inventory
from mlpd.kinds.jobspec import parse_spec
from mlpd.runtime.memory import MemoryRuntime
from mlpd.runtime.protocol import DEEP_LEARNING_ULIMITS
from mlpd.store import Store

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
GIB = 1024**3


@pytest.fixture
def world(tmp_path):
    def make(**overrides):
        cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "", **overrides})
        store = Store(cfg.db_path)
        store.migrate()
        runtime = MemoryRuntime("test")
        controller = JobController(store, cfg, runtime, make_inventory(0, "declared"))

        def submit(owner, command, **spec):
            parsed, _ = parse_spec({"command": command, **spec})
            job = jobs.submit(store, owner, parsed)
            return controller.launch_request(jobs.get(store, job["id"]))

        return cfg, runtime, submit

    return make


def test_dev_shm_is_half_the_memory_limit_unless_the_job_asks_and_the_ulimits_are_nvidias(world):
    cfg, _, submit = world()
    req = submit("alice", ["true"], memory="4g")
    assert req.shm_size == 2 * GIB and req.ulimits == DEEP_LEARNING_ULIMITS
    assert dict((n, (s, h)) for n, s, h in req.ulimits) == {"memlock": (-1, -1), "stack": (67108864, 67108864)}
    assert submit("alice", ["true"], memory="4g", shm="3g").shm_size == 3 * GIB
    assert submit("alice", ["true"]).shm_size == 4 * GIB  # jobs.default_memory (8g) applies to work that names none


def test_a_configured_shm_size_is_used_within_the_memory_limit(world):
    _, _, submit = world(**{"jobs.shm_size": "2g"})
    assert submit("alice", ["true"], memory="4g").shm_size == 2 * GIB
    assert submit("alice", ["true"], memory="1g").shm_size == 1 * GIB


def test_work_without_a_memory_limit_gets_half_the_hosts_memory(world):
    from mlpd.units import host_limits

    _, _, submit = world(**{"jobs.default_memory": ""})
    assert submit("alice", ["true"]).shm_size == host_limits()[1] // 2


def test_a_job_mounts_its_owners_home_at_home_mlpd_and_never_anothers(world):
    cfg, runtime, submit = world()
    alice, bob = submit("alice", ["true"]), submit("bob", ["true"])
    homes = os.path.join(cfg.state_dir, "homes")
    assert alice.mounts == ((os.path.join(homes, "alice"), "/home/mlpd", False),) and alice.env["HOME"] == "/home/mlpd"
    assert bob.mounts == ((os.path.join(homes, "bob"), "/home/mlpd", False),)
    assert os.stat(os.path.join(homes, "alice")).st_mode & 0o777 in (0o700, 0o777)


def test_the_job_sees_its_shm_ulimits_and_home_when_it_runs(world):
    _, runtime, submit = world()
    req = submit("alice", ["sh", "-c", "df -B1 --output=size /dev/shm; ulimit -l; ulimit -s; echo $HOME"], memory="4g")
    runtime.start_job(req)
    assert b"".join(runtime.logs(req.job_id)).decode().split() == ["1B-blocks", str(2 * GIB), "unlimited", "65536", "/home/mlpd"]


def test_each_member_gets_the_folders_of_their_teams_and_no_others(world):
    from mlpd import users
    from mlpd.scheduling import quotas

    cfg, _, submit = world()
    store = Store(cfg.db_path)
    for name in ("alice", "bob", "carol"):
        users.add_user(store, name)
    for team in ("vision", "nlp"):
        quotas.add_team(store, team, "root")
    quotas.set_membership(store, "vision", "alice", True, "root")
    quotas.set_membership(store, "nlp", "alice", True, "root")
    quotas.set_membership(store, "vision", "bob", True, "root")
    teams = os.path.join(cfg.state_dir, "teams")

    def shared(owner):
        return [m for m in submit(owner, ["true"]).mounts if m[1].startswith("/shared/")]

    assert shared("alice") == [(os.path.join(teams, "nlp"), "/shared/nlp", False), (os.path.join(teams, "vision"), "/shared/vision", False)]
    assert shared("bob") == [(os.path.join(teams, "vision"), "/shared/vision", False)]
    assert shared("carol") == []
    quotas.set_membership(store, "vision", "bob", False, "root")
    assert shared("bob") == []  # read at each start: a member removed from a team no longer gets its folder


def test_a_workspace_session_gets_the_same_home_team_folders_shm_and_ulimits_as_a_job(world):
    from mlpd import users
    from mlpd.scheduling import quotas
    from mlpd.kinds import workspace as workspaces

    cfg, _, submit = world(**{"workspaces.port_range": "43000-43999"})
    store = Store(cfg.db_path)
    users.add_user(store, "alice")
    quotas.add_team(store, "vision", "root")
    quotas.set_membership(store, "vision", "alice", True, "root")
    port = workspaces.allocate_port(store, "43000-43999")
    ws = workspaces.create(store, "alice", "lab", {"gpus": 0, "image": "mlpd/train:latest"}, port,
                           workspaces.allocate_port(store, "43000-43999", exclude=[port]))
    controller = JobController(store, cfg, MemoryRuntime("test"), make_inventory(0, "declared"))
    req = controller.launch_request(jobs.get(store, ws["session"]))
    job = submit("alice", ["true"])
    assert req.kind == "workspace" and req.shm_size == 4 * GIB and req.ulimits == DEEP_LEARNING_ULIMITS
    mounted = {target: source for source, target, _ in req.mounts}
    assert mounted["/home/mlpd"] == dict((t, s) for s, t, _ in job.mounts)["/home/mlpd"]
    assert mounted["/shared/vision"] == os.path.join(cfg.state_dir, "teams", "vision")
