"""A nearly full state disk: new work is refused with a clear message, running work goes on, nothing is lost.

The state directory lives on a small tmpfs of the test's own, filled by a file the test writes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import needs_docker, wait_for

pytestmark = needs_docker
SHIPPED = Path(__file__).resolve().parents[2] / "mlpd.toml"


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(mount)], capture_output=True, text=True)
    assert done.returncode == 0, f"this test needs to mount a tmpfs (root): {done.stderr}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill_until(disk: Path, free_bytes: int) -> Path:
    import shutil

    filler = disk / "filler"
    with open(filler, "wb") as fh:
        while shutil.disk_usage(disk).free > free_bytes:
            fh.write(b"\0" * min(4 << 20, max(1 << 16, shutil.disk_usage(disk).free - free_bytes)))
            fh.flush()
    return filler


def test_a_full_disk_refuses_new_work_keeps_running_work_and_recovers(make_daemon, small_disk, tmp_path):
    config = tmp_path / "mlpd.toml"
    config.write_text(re.sub(r"(?m)^min_free_gb = .*$", "min_free_gb = 0.03", SHIPPED.read_text()))
    d = make_daemon(config_file=config, state_dir=small_disk / "state")
    job = lambda j: d.api("GET", f"/api/v1/jobs/{j}", d.admin_token).json()["job"]  # noqa: E731
    running = d.api("POST", "/api/v1/jobs", d.admin_token, json={"command": ["sh", "-c", "sleep 4; echo done"]}).json()["job"]["id"]
    wait_for(lambda: job(running)["state"] == "running", 60, 0.1, "a running job")
    filler = fill_until(small_disk, 20_000_000)  # under jobs.min_free_gb (30 MB)
    refused = d.api("POST", "/api/v1/jobs", d.admin_token, json={"command": ["true"]})
    assert refused.status_code == 507, refused.text
    assert refused.json()["error"]["code"] == "disk_full" and "nearly full" in refused.json()["error"]["message"]
    before = {j["id"] for j in d.api("GET", "/api/v1/jobs?all=1", d.admin_token).json()["jobs"]}
    assert before == {running}  # nothing half-stored
    wait_for(lambda: job(running)["state"] in ("succeeded", "failed"), 60, 0.2, "the running job to end")
    assert job(running)["state"] == "succeeded" and "done" in d.api("GET", f"/api/v1/jobs/{running}/logs", d.admin_token).text
    filler.unlink()  # an admin frees space: work goes on
    again = d.api("POST", "/api/v1/jobs", d.admin_token, json={"command": ["true"]})
    assert again.status_code == 201
    wait_for(lambda: job(again.json()["job"]["id"])["state"] == "succeeded", 60, 0.2, "the next job")
