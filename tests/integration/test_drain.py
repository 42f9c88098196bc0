"""Draining a GPU through the CLI, on a daemon of its own with one declared GPU."""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import signal

from helpers import as_json, needs_docker, wait_for

pytestmark = needs_docker
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition


def test_a_drained_gpu_lets_its_job_finish_takes_nothing_new_and_survives_a_restart(make_daemon):
    d = make_daemon(extra_args=["--declare-gpus", "1"])
    job = lambda j: d.api("GET", f"/api/v1/jobs/{j}", d.admin_token).json()["job"]  # noqa: E731
    holder = d.api("POST", "/api/v1/jobs", d.admin_token, json={"command": ["sleep", "3"], "gpus": 1}).json()["job"]["id"]
    wait_for(lambda: job(holder)["state"] == "running", 60, 0.1, "the holder to run")
    drained = d.cli("admin", "gpus", "drain", "0", "--reason", "fan noise")
    assert drained.returncode == 0 and "drained: fan noise" in drained.stdout, drained.stderr
    gpus = as_json(d.cli("gpus", "--json"))["gpus"]
    assert gpus[0]["drained"] and gpus[0]["drain_reason"] == "drained by root: fan noise"
    assert "fan noise" in d.cli("gpus").stdout
    wait_for(lambda: job(holder)["state"] in TERMINAL, 60, 0.2, "the holder to finish")
    assert job(holder)["state"] == "succeeded"  # running work finishes
    nxt = d.api("POST", "/api/v1/jobs", d.admin_token, json={"command": ["true"], "gpus": 1}).json()["job"]["id"]
    wait_for(lambda: job(nxt)["waiting"] is not None, 30, 0.2, "the next job to be explained")
    assert job(nxt)["state"] == "queued" and "fan noise" in job(nxt)["waiting"]["reason"]
    # a restart keeps the drain
    d.stop(signal.SIGTERM)
    d.start()
    assert job(nxt)["state"] == "queued" and as_json(d.cli("gpus", "--json"))["gpus"][0]["drained"]
    undrained = d.cli("admin", "gpus", "undrain", "0")
    assert undrained.returncode == 0, undrained.stderr
    wait_for(lambda: job(nxt)["state"] == "succeeded", 60, 0.2, "the next job to run once undrained")
    refused = d.cli("admin", "gpus", "drain", "7")
    assert refused.returncode != 0 and "no GPU '7'" in refused.stderr and "Traceback" not in refused.stderr
