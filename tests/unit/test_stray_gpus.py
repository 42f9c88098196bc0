"""Stray GPU use: detected from NVML's process list, recorded, and kept away from new work.

NVML cannot exist on this machine, so the GPU side is a test double, named as such;
the state database and the scheduler are the real ones.
"""

from mlpd.config import load_config
from mlpd.controller import plan_now
from mlpd.runtime.gpus import GpuInfo, GpuProcess
from mlpd.jobs import submit
from mlpd.kinds.jobspec import parse_spec
from mlpd.store import Store
from mlpd.scheduling.gpu_state import stray_gpus
from mlpd.workers.sampler import GpuSampler


class FakeNvmlInventoryForTests:
    """Stands in for NVML (no GPU here): two GPUs, the first used by a process outside mlpd."""

    kind = "nvml"

    def __init__(self):
        self.processes = {0: (GpuProcess(4242, 1 << 30),), 1: ()}

    def devices(self):
        return [GpuInfo(i, f"GPU-fake-{i}", "FakeGPU", 80 << 30, 1 << 30, 50, self.processes[i], False) for i in range(2)]


def test_stray_use_is_recorded_kept_from_new_work_and_cleared(tmp_path):
    store = Store(str(tmp_path / "mlpd.db"))
    store.migrate()
    config = load_config(None, {"server.state_dir": str(tmp_path)})
    inventory = FakeNvmlInventoryForTests()
    sampler = GpuSampler(store, inventory, interval=1.0)
    sampler.maybe_sample(now=1000.0)
    assert stray_gpus(store) == {"GPU-fake-0": [4242]}
    assert store.query("SELECT action, object_id FROM events WHERE action = 'gpu.stray_detected'") == [{"action": "gpu.stray_detected", "object_id": "GPU-fake-0"}]
    assert len(store.query("SELECT * FROM gpu_samples")) == 2

    spec, _ = parse_spec({"command": ["true"], "gpus": 1})
    job = submit(store, "alice", spec)
    plan, _, _ = plan_now(store, inventory, config, 1001.0)
    assert [p.gpu_uuids for p in plan.placements if p.job_id == job["id"]] == [("GPU-fake-1",)]  # not the stray one

    spec2, _ = parse_spec({"command": ["true"], "gpus": 2})
    two = submit(store, "alice", spec2)
    plan, _, _ = plan_now(store, inventory, config, 1001.0, explain=True)
    wait = [w for w in plan.waits if w.job_id == two["id"]][0]
    assert "GPU 0 in use outside mlpd" in wait.reason  # the stray GPU counts as unavailable

    inventory.processes[0] = ()
    sampler.maybe_sample(now=1010.0)
    assert stray_gpus(store) == {}
    assert store.query("SELECT action FROM events WHERE action = 'gpu.stray_ended'")
