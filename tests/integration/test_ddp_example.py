"""The DDP example (docs/examples/train_ddp.py, issue 25) run by torchrun inside a real mlpd job.

No GPU exists here, so it runs as the README's multi-GPU job does but on the CPU: two ranks with the
gloo backend (`--nproc-per-node=2 --cpu`), DataLoader workers passing batches through the job's
/dev/shm, and a free rendezvous port from `--standalone`. PyTorch comes from a dataset: the CPU wheel
this machine keeps on disk (`pip install torch==2.13.0`), installed once into a cache directory and
declared by the admin as a read-only dataset, so the test also shows a dataset carrying what a job
imports. What this cannot show (NCCL between real GPUs) is said in docs/data.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from helpers import as_json, needs_docker, new_user, wait_for
from mlpd.jobs import TERMINAL_STATES

pytestmark = [needs_docker, pytest.mark.docker]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
TORCH = Path(os.environ.get("MLPD_TEST_CACHE", Path.home() / ".cache" / "mlpd-tests")) / "torch-2.13.0-cpu"


@pytest.fixture(scope="session")
def torch_dir() -> Path:
    """torch 2.13.0 (CPU) and what it needs, for Python 3.11 (the training image's), installed once."""
    if not (TORCH / "torch" / "__init__.py").exists():
        partial = TORCH.with_name(TORCH.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(partial), "torch==2.13.0"],
                              capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
        partial.rename(TORCH)
    subprocess.run(["chmod", "-R", "a+rX", str(TORCH)], check=True)  # the container's uid reads it
    return TORCH


def test_torchrun_ddp_example_runs_two_ranks_with_gloo_in_a_job(daemon, torch_dir):
    user, token = new_user(daemon, "ddp")
    name = f"torch-{uuid.uuid4().hex[:6]}"
    r = daemon.cli("admin", "dataset", "add", name, str(torch_dir), "--user", user)
    assert r.returncode == 0, r.stderr
    try:
        command = (f"PYTHONPATH=/datasets/{name} python -m torch.distributed.run --standalone --nproc-per-node=2 "
                   "train_ddp.py --cpu --epochs 2 --rows 4096 && ls -l /outputs/ddp.pt")
        r = daemon.cli("run", "--memory", "4g", "--json", "--", "sh", "-c", command, token=token, cwd=str(EXAMPLES))
        job_id = as_json(r)["job"]["id"]

        def ended():
            j = daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]
            return j if j["state"] in TERMINAL_STATES else None

        j = wait_for(ended, 300, 0.5, "the DDP job to end")
        text = daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
        assert j["state"] == "succeeded", (j["reason"], text[-3000:])
        assert "ddp ok: world 2 backend gloo device cpu ranks agree True" in text, text[-3000:]
        assert "epoch 1 loss" in text and "/outputs/ddp.pt" in text
    finally:
        daemon.cli("admin", "dataset", "rm", name)
