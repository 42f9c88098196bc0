"""Caps per member at the edges (issue 22, items 8 and 9), against a real daemon and Docker: the
effective limits a job gets, the workload cap refused at submit in refuse mode, MLflow artifact
uploads capped in size and by the disk's reserve, and code archives capped in members. Every
refusal is mlpd's JSON error and leaves nothing behind.

The state directory lives on a small tmpfs of the test's own, filled by a file the test writes."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from helpers import needs_docker, new_user, wait_for

pytestmark = needs_docker
SHIPPED = Path(__file__).resolve().parents[2] / "mlpd.toml"
API = "/mlflow/api/2.0/mlflow/"
ARTIFACTS = "/mlflow/api/2.0/mlflow-artifacts/artifacts/"


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
    with open(filler, "ab") as fh:
        while shutil.disk_usage(disk).free > free_bytes:
            fh.write(b"\0" * min(4 << 20, max(1 << 16, shutil.disk_usage(disk).free - free_bytes)))
            fh.flush()
    return filler


def raw_put(daemon, path, token, data):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    conn.request("PUT", path, body=data, headers={"Authorization": f"Bearer {token}"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body


def configured(tmp_path: Path, **values: str) -> Path:
    text = SHIPPED.read_text()
    for key, value in values.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    path = tmp_path / "mlpd.toml"
    path.write_text(text)
    return path


def test_uploads_over_the_artifact_cap_or_the_disk_reserve_and_archives_of_many_members_are_refused(make_daemon, small_disk, tmp_path):
    d = make_daemon(config_file=configured(tmp_path, min_free_gb="0.03", max_artifact_mb="1", max_code_files="1000"),
                    state_dir=small_disk / "state")
    name, token = new_user(d)
    experiment = d.api("POST", API + "experiments/create", token, json={"name": f"caps-{name}"}).json()["experiment_id"]
    run = d.api("POST", API + "runs/create", token, json={"experiment_id": experiment}).json()["run"]["info"]["run_id"]
    base = f"{ARTIFACTS}{experiment}/{run}/artifacts"
    stored = lambda: sorted(p.name for p in (small_disk / "state").rglob("*.bin"))  # noqa: E731

    status, body = raw_put(d, f"{base}/big.bin", token, b"x" * (2 << 20))
    assert status == 413, body[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "too_large" and "mlflow.max_artifact_mb" in error["message"] and "1 MiB" in error["message"]
    assert raw_put(d, f"{base}/ok.bin", token, b"y" * 500_000)[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=30)  # no length: it could not be capped before writing
    conn.request("PUT", f"{base}/chunked.bin", body=iter([b"c" * 1000] * 3), headers={"Authorization": f"Bearer {token}"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 411 and json.loads(resp.read())["error"]["code"] == "length_required"
    conn.close()
    filler = fill_until(small_disk, 30_500_000)  # 30.5 MB free; the reserve is 30 MB
    status, body = raw_put(d, f"{base}/full.bin", token, b"z" * 900_000)
    assert status == 507, body[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "disk_full" and "jobs.min_free_gb" in error["message"] and "artifact upload" in error["message"]
    assert stored() == ["ok.bin"]  # nothing half-written
    filler.unlink()
    assert raw_put(d, f"{base}/full.bin", token, b"z" * 900_000)[0] == 200

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(1001):
            tar.addfile(tarfile.TarInfo(f"f{i}"))
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    refused = d.api("PUT", f"/api/v1/code/{digest}", token, data=data)
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_archive" and "more than 1000 members" in refused.json()["error"]["message"]
    assert d.api("GET", f"/api/v1/code/{digest}", token).status_code == 404
    assert not list((small_disk / "state").rglob("*.partial"))


def test_work_without_limits_gets_the_defaults_and_the_workload_cap_refuses_at_submit(make_daemon, tmp_path):
    d = make_daemon(config_file=configured(tmp_path, max_jobs="1", over_quota='"refuse"'))
    name, token = new_user(d)
    first = d.api("POST", "/api/v1/jobs", token, json={"command": ["sleep", "30"]})
    assert first.status_code == 201, first.text
    job = first.json()["job"]
    assert job["limits"]["memory"] == 8 * 2**30 and job["limits"]["memory_default"] and job["limits"]["cpus_default"]
    wait_for(lambda: d.api("GET", f"/api/v1/jobs/{job['id']}", token).json()["job"]["state"] == "running", 60, 0.2, "the first job")
    inspect = subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}", f"mlpd-job-{job['id']}"],
                             capture_output=True, text=True)
    memory, nano = inspect.stdout.split()
    assert int(memory) == 8 * 2**30 and int(nano) == int(job["limits"]["cpus"] * 1e9)
    shown = d.cli("jobs", "show", job["id"], token=token)
    assert "8.0 GiB (default)" in shown.stdout, shown.stdout
    second = d.api("POST", "/api/v1/jobs", token, json={"command": ["true"]})
    assert second.status_code == 403, second.text
    assert second.json()["error"]["code"] == "quota_exceeded"
    assert "concurrent workload quota of user " + name in second.json()["error"]["message"]
    assert [j["id"] for j in d.api("GET", "/api/v1/jobs", token).json()["jobs"]] == [job["id"]]  # nothing stored
    mine = d.cli("quota", token=token)
    assert "RUNNING/MAX" in mine.stdout and re.search(r"\b1 / 1\b", mine.stdout), mine.stdout
    raised = d.cli("admin", "quota", "set", "--user", name, "--max-jobs", "2", "--max-memory", "32g")
    assert raised.returncode == 0, raised.stderr
    listed = d.cli("admin", "quota", "list")
    assert name in listed.stdout and "32 GiB" in listed.stdout, listed.stdout
    assert d.api("POST", "/api/v1/jobs", token, json={"command": ["true"]}).status_code == 201
    assert d.cli("admin", "quota", "set", "--user", name, "--clear").returncode == 0
    assert d.api("POST", "/api/v1/jobs", token, json={"command": ["true"]}).status_code == 403  # back to the default of 1
