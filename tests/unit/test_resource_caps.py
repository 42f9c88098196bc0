"""Caps per member (issue 22, items 8): default CPU and memory limits on work that names none, and
each member's concurrent CPUs, memory and workloads, over every kind, on the in-memory runtime."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlpd import jobs

from mlpd.scheduling import quotas
from mlpd.config import load_config
from mlpd.controller import JobController, why_waiting
from mlpd.runtime.gpus import make_inventory
from mlpd.kinds.jobspec import parse_spec
from mlpd.units import host_limits, parse_memory
from mlpd.runtime.memory import MemoryRuntime
from mlpd.scheduling.resource_caps import CapLedger, ResourceCap, Use, effective_limits
from mlpd.store import Store
from mlpd.users import add_user

SHIPPED = str(Path(__file__).resolve().parents[2] / "mlpd.toml")
T0 = 1_800_000_000.0


class Clock:
    def __init__(self):
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def world(tmp_path, **overrides):
    cfg = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "server.container_listen": "", **overrides})
    store = Store(cfg.db_path)
    store.migrate()
    clock = Clock()
    runtime = MemoryRuntime("test", clock=clock)
    controller = JobController(store, cfg, runtime, make_inventory(0, "declared"), clock=clock)
    return cfg, store, clock, runtime, controller


def submit(store, clock, owner, command, **spec):
    parsed, _ = parse_spec({"command": command, **spec})
    clock.advance(0.001)
    return jobs.submit(store, owner, parsed, now=clock())["id"]


def test_work_that_names_no_limits_gets_the_default_cpu_and_memory_limits(tmp_path):
    cfg, store, clock, runtime, c = world(tmp_path)
    job = submit(store, clock, "alice", ["sleep", "60"])
    c.reconcile(now=clock())
    req = next(x.request for x in runtime.containers.values() if x.request.job_id == job)
    host_cpus, host_memory = host_limits()
    assert req.cpus == min(2.0, host_cpus) and req.memory == min(parse_memory("8g"), host_memory)


def test_a_default_larger_than_the_host_is_clamped_to_it():
    cfg = load_config(SHIPPED, overrides={"jobs.default_cpus": 4096, "jobs.default_memory": "100000g"})
    assert effective_limits({}, cfg, (8, 2**34)) == (8.0, 2**34)
    assert effective_limits({"cpus": 0.5, "memory": 2**20 * 64}, cfg, (8, 2**34)) == (0.5, 2**26)
    off = load_config(SHIPPED, overrides={"jobs.default_cpus": 0, "jobs.default_memory": ""})
    assert effective_limits({}, off, (8, 2**34)) == (None, None)


def test_twenty_cpu_only_jobs_of_one_member_run_only_up_to_their_caps_and_the_rest_wait_with_the_reason(tmp_path):
    cfg, store, clock, runtime, c = world(tmp_path, **{"quotas.max_jobs": 3, "jobs.default_cpus": 0.5,
                                                      "jobs.default_memory": "64m", "quotas.max_cpus": 100})
    ids = [submit(store, clock, "alice", ["sleep", "600"]) for _ in range(20)]
    other = submit(store, clock, "bob", ["sleep", "600"])
    c.reconcile(now=clock())
    states = [jobs.get(store, i)["state"] for i in ids]
    assert states.count("running") == 3 and states.count("queued") == 17
    assert jobs.get(store, other)["state"] == "running"  # another member's work is not held up
    wait, _ = why_waiting(store, make_inventory(0, "declared"), cfg, clock(), ids[-1])
    assert "concurrent workload quota of user alice: 3 running at most" in wait.reason
    # one ends: exactly one more starts
    running = [i for i in ids if jobs.get(store, i)["state"] == "running"]
    runtime.stop(running[0])
    c.reconcile(now=clock.advance(1))
    states = [jobs.get(store, i)["state"] for i in ids]
    assert states.count("running") == 3 and states.count("queued") == 16


def test_the_cpu_and_memory_caps_count_every_kind_and_the_defaults(tmp_path):
    cfg, store, clock, runtime, c = world(tmp_path, **{"quotas.max_jobs": 0, "quotas.max_cpus": 1, "jobs.default_cpus": 0.5,
                                                      "jobs.default_memory": "64m", "quotas.max_memory": "1g"})
    a, b, d = (submit(store, clock, "alice", ["sleep", "600"]) for _ in range(3))
    c.reconcile(now=clock())
    assert [jobs.get(store, i)["state"] for i in (a, b, d)] == ["running", "running", "queued"]
    wait, _ = why_waiting(store, make_inventory(0, "declared"), cfg, clock(), d)
    assert "concurrent CPU quota of user alice: 1 CPUs at most, 1 held by running work" in wait.reason
    cfg2, store2, clock2, runtime2, c2 = world(tmp_path / "2", **{"quotas.max_memory": "100m", "jobs.default_memory": "64m"})
    a2, b2 = (submit(store2, clock2, "alice", ["sleep", "600"]) for _ in range(2))
    c2.reconcile(now=clock2())
    assert [jobs.get(store2, i)["state"] for i in (a2, b2)] == ["running", "queued"]


def test_a_workspace_or_replica_row_counts_against_the_same_caps():
    ledger = CapLedger([ResourceCap("user alice", frozenset({"alice"}), cpus=4, memory=None, jobs=2)],
                       [Use("alice", 2, 0), Use("bob", 64, 0)])
    assert ledger.refusal(Use("alice", 2, 0)) is None
    ledger.take(Use("alice", 2, 0))
    assert "workload quota" in ledger.refusal(Use("alice", 0.1, 0))
    assert ledger.refusal(Use("carol", 999, 0)) is None
    assert ledger.refusal(Use("alice", 8, 0)).startswith("can never run: cpus: asks for 8 CPUs")


def test_admission_refuses_work_that_could_never_fit_and_in_refuse_mode_work_over_the_caps(tmp_path):
    cfg, store, clock, runtime, c = world(tmp_path, **{"quotas.max_cpus": 2, "quotas.max_jobs": 1, "jobs.default_memory": "64m"})
    add_user(store, "alice", "member", "admin")
    with pytest.raises(quotas.QuotaExceeded, match="cpus: asks for 4 CPUs but the concurrent CPU quota of user alice is 2"):
        quotas.admit_resources(store, cfg, "alice", [{"cpus": 4.0}])
    assert quotas.admit_resources(store, cfg, "alice", [{"cpus": 1.0}]) == []
    submit(store, clock, "alice", ["sleep", "600"], cpus=1)
    c.reconcile(now=clock())
    notes = quotas.admit_resources(store, cfg, "alice", [{"cpus": 1.0}])
    assert notes and "workload quota of user alice: 1 running at most" in notes[0] and "waits in the queue" in notes[0]
    refuse = load_config(SHIPPED, overrides={"server.state_dir": str(tmp_path / "state"), "quotas.max_jobs": 1,
                                             "quotas.over_quota": "refuse"})
    with pytest.raises(quotas.QuotaExceeded, match="1 running at most.*wait for your running work to end"):
        quotas.admit_resources(store, refuse, "alice", [{"cpus": 1.0}])
    # a deployment's replicas are admitted together
    with pytest.raises(quotas.QuotaExceeded):
        quotas.admit_resources(store, refuse, "bob", [{"cpus": 1.0}, {"cpus": 1.0}])


def test_a_job_whose_outputs_grow_over_the_cap_is_stopped_with_the_reason_and_its_outputs_kept(tmp_path):
    cfg, store, clock, runtime, c = world(tmp_path, **{"jobs.max_outputs_gb": 0.002})  # 2 MB
    big, small = submit(store, clock, "alice", ["sleep", "600"]), submit(store, clock, "alice", ["sleep", "600"])
    c.reconcile(now=clock())
    assert jobs.get(store, big)["state"] == "running"
    outputs = Path(jobs.job_dir(cfg.state_dir, big)) / "outputs"
    (outputs / "sub").mkdir()
    (outputs / "sub" / "data.bin").write_bytes(b"x" * 3_000_000)
    (Path(jobs.job_dir(cfg.state_dir, small)) / "outputs" / "ok.bin").write_bytes(b"x" * 100_000)
    c.reconcile(now=clock.advance(1))
    c.reconcile(now=clock.advance(1))
    row = jobs.get(store, big)
    assert row["state"] == "cancelled", row
    assert row["reason"].startswith("stopped by mlpd: its /outputs holds")
    assert "over the cap of 0.002 GB (jobs.max_outputs_gb)" in row["reason"] and "kept" in row["reason"]
    assert (outputs / "sub" / "data.bin").stat().st_size == 3_000_000  # nothing lost
    assert jobs.get(store, small)["state"] == "running"


def test_outputs_are_measured_without_following_links(tmp_path):
    from mlpd.disk import tree_size

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "big").write_bytes(b"x" * 2_000_000)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "outside")
    assert tree_size(str(tmp_path / "out")) < 100_000
    assert tree_size(str(tmp_path / "missing")) == 0


def test_per_user_and_per_team_caps_override_the_defaults_and_clear_back_to_them(tmp_path):
    cfg, store, clock, runtime, c = world(tmp_path, **{"quotas.max_cpus": 16, "quotas.max_jobs": 10})
    for name in ("alice", "bob"):
        add_user(store, name, "member", "admin")
    quotas.add_team(store, "vision", "admin")
    quotas.set_membership(store, "vision", "alice", True, "admin")
    quotas.set_membership(store, "vision", "bob", True, "admin")
    own = lambda u: next(q for q in quotas.quotas_for(store, cfg, u) if q.subject_kind == "user")  # noqa: E731
    assert (own("alice").max_cpus, own("alice").max_jobs) == (16.0, 10)
    quotas.set_caps(store, "user", "alice", "admin", max_cpus=4)
    quotas.set_caps(store, "user", "alice", "admin", max_jobs=0)  # 0 = unlimited; max_cpus stays
    assert (own("alice").max_cpus, own("alice").max_jobs, own("alice").max_memory) == (4.0, None, parse_memory("64g"))
    quotas.set_caps(store, "team", "vision", "admin", max_jobs=3)
    team = next(q for q in quotas.quotas_for(store, cfg, "bob") if q.subject_kind == "team")
    assert team.resource_cap == ResourceCap("team vision", frozenset({"alice", "bob"}), None, None, 3)
    quotas.set_caps(store, "user", "alice", "admin", clear=True)
    assert (own("alice").max_cpus, own("alice").max_jobs) == (16.0, 10)
    with pytest.raises(Exception, match="no such user"):
        quotas.set_caps(store, "user", "nobody", "admin", max_jobs=1)
    with pytest.raises(Exception, match="max_cpus: must be >= 0"):
        quotas.set_caps(store, "user", "bob", "admin", max_cpus=-1)
    # the team's cap holds the members' work together in the scheduler
    for owner in ("alice", "bob", "alice", "bob"):
        submit(store, clock, owner, ["sleep", "600"])
    c.reconcile(now=clock())
    assert len([j for j in jobs.in_states(store, [jobs.JobState.RUNNING])]) == 3


def test_0013_adds_the_resource_caps_table_and_nothing_else(tmp_path, monkeypatch):
    import sqlite3

    import mlpd.store as store_module

    migrations = list(store_module.MIGRATIONS)
    assert migrations[12][0] == "0013_resource_caps"
    monkeypatch.setattr(store_module, "MIGRATIONS", migrations[:12])
    Store(str(tmp_path / "a.db")).migrate()
    monkeypatch.setattr(store_module, "MIGRATIONS", migrations[:13])
    before = {r[0] for r in sqlite3.connect(tmp_path / "a.db").execute("SELECT name FROM sqlite_master")}
    Store(str(tmp_path / "a.db")).migrate()
    after = {r[0] for r in sqlite3.connect(tmp_path / "a.db").execute("SELECT name FROM sqlite_master")}
    assert after - before == {"resource_caps", "sqlite_autoindex_resource_caps_1"}


def test_work_held_by_its_owners_caps_neither_counts_as_waiting_for_the_host_nor_reserves_gpus():
    from mlpd.scheduling.scheduler import Gpu, QueuedJob, schedule, waiting_for_the_host

    caps = [ResourceCap("user alice", frozenset({"alice"}), cpus=None, memory=None, jobs=1)]
    running = [Use("alice", 1, 0)]
    queue = [QueuedJob("a1", "alice", 1, None, 0, T0, 3600, 0, 1.0, 0), QueuedJob("b1", "bob", 1, None, 0, T0 + 1, 3600, 0, 1.0, 0)]
    assert [j.id for j in waiting_for_the_host(queue, [], caps=caps, running=running)] == ["b1"]
    plan = schedule([Gpu("g0", 0, "m")], [], queue, T0 + 2, caps=caps, running=running, explain=True)
    assert [p.job_id for p in plan.placements] == ["b1"] and plan.head is None  # alice's job reserves nothing
    assert "concurrent workload quota of user alice" in next(w.reason for w in plan.waits if w.job_id == "a1")
