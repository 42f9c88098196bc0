"""DockerRuntime.start_job's short path (create, start, one inspect) keeps what the longer one did:
a container that an earlier try of the same launch created but never started is started, not
made again; one that runs already is returned as it is."""
from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from helpers import needs_docker
from mlpd.runtime.protocol import LaunchRequest, Phase, container_name

IMAGE = "mlpd/train:latest"
pytestmark = [needs_docker, pytest.mark.docker]


@pytest.fixture
def runtime():
    from mlpd.runtime.docker_engine import DockerRuntime

    rt = DockerRuntime(f"startpath{secrets.token_hex(4)}", "", "none")
    yield rt
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.instance={rt.instance}"],
                         capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def request(tmp_path, job_id):
    outputs = tmp_path / "out"
    outputs.mkdir()
    os.chmod(outputs, 0o777)
    return LaunchRequest(job_id=job_id, owner="alice", image=IMAGE, command=("sleep", "60"), env={}, gpu_uuids=(),
                         cpus=None, memory=None, user="1000:1000", code_dir=None, outputs_dir=str(outputs), pull=False)


def test_a_container_created_but_never_started_is_started_not_made_again(runtime, tmp_path):
    req = request(tmp_path, secrets.token_hex(6))
    made = subprocess.run(["docker", "create", "--name", container_name(req.job_id), "--label", f"mlpd.instance={runtime.instance}",
                           IMAGE, "sleep", "60"], capture_output=True, text=True, check=True).stdout.strip()
    assert runtime.inspect(req.job_id).phase == Phase.PENDING
    state = runtime.start_job(req)
    assert state.id == made and state.phase == Phase.RUNNING and state.started_at is not None
    again = runtime.start_job(req)  # running already: returned as it is
    assert again.id == made and again.phase == Phase.RUNNING and again.started_at == state.started_at
