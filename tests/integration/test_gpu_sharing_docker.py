"""GPU sharing on a real daemon and a real Docker engine (docs/gpu-sharing.md): two half-GPU jobs run at
once in containers pinned to the same (declared) GPU; a whole-GPU job takes the other GPU and never the
shared one; `mlpd gpus` shows the shares and their holders. Four half-GPU workspaces (JupyterLab
answering in each) run on two GPUs, and a whole-GPU job waits until one GPU's two workspaces stop."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest

from helpers import as_json, holds_for, needs_docker, new_user, wait_for
from mlpd.jobs import TERMINAL_STATES
from test_workspaces import wsd  # noqa: F401  (a daemon of its own with 2 declared GPUs; removes its containers)

pytestmark = [needs_docker, pytest.mark.docker]


def job(daemon, token, job_id):
    resp = daemon.api("GET", f"/api/v1/jobs/{job_id}", token)
    assert resp.status_code == 200, resp.text
    return resp.json()["job"]


def wait_state(daemon, token, job_id, states, timeout=60):
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (j := job(daemon, token, job_id))["state"] in states and j, timeout, 0.05, f"job {job_id} to be {states}")


def container_env(job_id) -> dict[str, str]:
    out = subprocess.run(["docker", "inspect", f"mlpd-job-{job_id}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(e.split("=", 1) for e in json.loads(out.stdout)[0]["Config"]["Env"])


def test_two_half_gpu_jobs_run_at_once_pinned_to_the_same_gpu(daemon):
    _, token = new_user(daemon)
    cmd = ["sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES NVIDIA=$NVIDIA_VISIBLE_DEVICES; sleep 120"]
    started: list[str] = []
    try:
        a = as_json(daemon.cli("run", "--no-code", "--gpus", "0.5", "--json", "--", *cmd, token=token))["job"]["id"]
        started.append(a)
        b = as_json(daemon.cli("run", "--no-code", "--gpu-share", "--json", "--", *cmd, token=token))["job"]["id"]
        started.append(b)
        ja, jb = wait_state(daemon, token, a, "running"), wait_state(daemon, token, b, "running")
        assert ja["gpus"]["share"] == jb["gpus"]["share"] == 0.5
        assert ja["gpus"]["uuids"] == jb["gpus"]["uuids"] and len(ja["gpus"]["uuids"]) == 1
        gpu = ja["gpus"]["uuids"][0]
        for job_id in (a, b):  # what Docker says each container sees
            env = container_env(job_id)
            assert (env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"]) == (gpu, gpu)
        for job_id in (a, b):
            wait_for(lambda job_id=job_id: f"CUDA={gpu} NVIDIA={gpu}" in daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text,
                     30, 0.1, f"job {job_id}'s output")

        # A whole-GPU job goes to the other GPU, never the shared one.
        c = as_json(daemon.cli("run", "--no-code", "--gpus", "1", "--json", "--", "sh", "-c", "sleep 120", token=token))["job"]["id"]
        started.append(c)
        jc = wait_state(daemon, token, c, "running")
        assert jc["gpus"]["uuids"] != [gpu]

        shown = daemon.cli("gpus", token=token)
        assert shown.returncode == 0 and "shared 1 of 1 by 2" in shown.stdout and shown.stdout.count("(0.5 GPU)") == 2, shown.stdout
        listed = {g["uuid"]: g for g in as_json(daemon.cli("gpus", "--json", token=token))["gpus"]}
        assert listed[gpu]["shared"] is True and {h["job_id"] for h in listed[gpu]["holders"]} == {a, b}
        assert listed[jc["gpus"]["uuids"][0]]["shared"] is False
    finally:
        for job_id in started:
            daemon.api("POST", f"/api/v1/jobs/{job_id}/cancel", token)
        for job_id in started:
            wait_state(daemon, token, job_id, TERMINAL_STATES, timeout=60)
    # The ledger booked each half at 0.5 of its GPU, the whole job at 1.
    with sqlite3.connect(f"file:{daemon.state_dir / 'mlpd.db'}?mode=ro", uri=True) as db:
        booked = dict(db.execute(f"SELECT object_id, share FROM allocations WHERE object_id IN ({','.join('?' * len(started))})", started))
    assert booked == {a: 0.5, b: 0.5, c: 1.0}


def test_four_half_gpu_workspaces_run_on_two_gpus_and_a_whole_gpu_job_waits(wsd):  # noqa: F811
    from test_workspaces import member, ready

    name, token = member(wsd)
    labs = [f"half{i}" for i in range(4)]
    whole = None
    try:
        for lab in labs:
            r = wsd.api("POST", "/api/v1/workspaces", token, json={"name": lab, "gpus": 0.5})
            assert r.status_code == 201, r.text
        shown = [ready(wsd, token, lab, timeout=240) for lab in labs]  # JupyterLab answers in each
        by_gpu: dict[str, list[str]] = {}
        for w in shown:
            assert w["state"] == "running" and w["gpus"]["share"] == 0.5 and len(w["gpus"]["uuids"]) == 1
            by_gpu.setdefault(w["gpus"]["uuids"][0], []).append(w["session"])
            env = container_env_of(f"mlpd-job-{w['session']}")
            assert env["CUDA_VISIBLE_DEVICES"] == env["NVIDIA_VISIBLE_DEVICES"] == w["gpus"]["uuids"][0]
        assert sorted(len(v) for v in by_gpu.values()) == [2, 2]
        r = wsd.api("POST", "/api/v1/jobs", token, json={"command": ["sleep", "300"], "gpus": 1})
        assert r.status_code == 201, r.text
        whole = r.json()["job"]["id"]
        holds_for(lambda: job(wsd, token, whole)["state"] == "queued", 3, message="no whole GPU is free: the job waits")
        # Both workspaces on one GPU stop: that GPU is whole again and the job starts on it.
        gpu, sessions = next(iter(by_gpu.items()))
        for w in shown:
            if w["session"] in sessions:
                assert wsd.api("POST", f"/api/v1/workspaces/{w['name']}/stop", token).status_code == 200
        started = wait_state(wsd, token, whole, "running", timeout=120)
        assert started["gpus"]["uuids"] == [gpu]
    finally:
        if whole:
            wsd.api("POST", f"/api/v1/jobs/{whole}/cancel", token)
        for lab in labs:
            wsd.api("DELETE", f"/api/v1/workspaces/{lab}", token)


def container_env_of(container: str) -> dict[str, str]:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return dict(e.split("=", 1) for e in json.loads(out.stdout)[0]["Config"]["Env"])
