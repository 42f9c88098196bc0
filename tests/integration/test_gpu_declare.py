"""`mlpd admin gpus declare N`: test GPUs on a host without NVIDIA GPUs, at once, kept across a restart."""

from __future__ import annotations

import pytest

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = [needs_docker, pytest.mark.docker]


def test_an_admin_declares_gpus_without_a_restart_and_they_stay_declared(make_daemon):
    d = make_daemon()
    _, token = new_user(d)
    if as_json(d.cli("gpus", "--json"))["inventory"] == "nvml" and as_json(d.cli("gpus", "--json"))["gpus"]:
        refused = d.cli("admin", "gpus", "declare", "2")
        assert refused.returncode == 1 and "NVIDIA GPUs" in refused.stderr
        return  # a host with real GPUs: declaring is refused, which is the point
    too_many = d.cli("run", "--no-code", "--gpus", "1", "--", "true", token=token)
    assert too_many.returncode == 1 and "this host has 0" in too_many.stderr
    assert d.cli("admin", "gpus", "declare", "2", token=token).returncode == 1  # members cannot
    done = d.cli("admin", "gpus", "declare", "2", "--model", "Test GPU")
    assert done.returncode == 0 and "2 GPUs (declared)" in done.stdout, done.stderr
    listed = as_json(d.cli("gpus", "--json"))
    assert [(g["uuid"], g["name"]) for g in listed["gpus"]] == [("DECLARED-0000", "Test GPU"), ("DECLARED-0001", "Test GPU")]
    job = as_json(d.cli("run", "--no-code", "--gpus", "2", "--json", "--", "sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES", token=token))["job"]["id"]
    ran = wait_for(lambda: (j := d.api("GET", f"/api/v1/jobs/{job}", token).json()["job"])["state"] == "succeeded" and j, 60, 0.3, "the job")
    assert ran["gpus"]["uuids"] == ["DECLARED-0000", "DECLARED-0001"]  # the worker saw the declaration too
    # issue 23 item 2: doctor said "no NVIDIA driver or no GPU ... GPU jobs are refused" after a declaration
    import json

    doctor = {c["name"]: c for c in json.loads(d.host_cli("doctor", "--json", "--listen", f"127.0.0.1:{d.port}").stdout)["checks"]}
    assert "2 declared GPUs" in doctor["gpus"]["detail"] and "refused" not in doctor["gpus"]["detail"], doctor["gpus"]
    assert "mlpd admin gpus declare 0" in doctor["gpus"]["fix"]
    d.stop()
    d.start()
    assert len(as_json(d.cli("gpus", "--json"))["gpus"]) == 2
    assert d.cli("admin", "gpus", "declare", "0").returncode == 0
    assert as_json(d.cli("gpus", "--json"))["gpus"] == []
    assert d.cli("run", "--no-code", "--gpus", "1", "--", "true", token=token).returncode == 1  # no GPUs again
