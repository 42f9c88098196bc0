"""Data where the work is (golden path 6), on a real daemon and a real Docker engine: /dev/shm and
ulimits sized for PyTorch DataLoader workers and NCCL, and a member's home in their jobs.

Docker gives a container 64 MiB of /dev/shm by default: a DataLoader worker or NCCL that passes
tensors through it dies with "bus error". mlpd sizes it from the memory limit (jobs.shm_size) and
sets NVIDIA's ulimits for PyTorch containers (memlock unlimited, a 64 MiB stack).
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import json
import subprocess

import pytest

from helpers import needs_docker, new_user, wait_for

pytestmark = [needs_docker, pytest.mark.docker]

GIB = 1024**3

# Four processes fill a 512 MiB shared array (a quarter each); then a pipeline of four workers passes
# 256 MiB through it in 16 MiB chunks, each stage reading the chunk the one before wrote, as a
# DataLoader's workers hand batches to the trainer through shared memory.
SHARED_MEMORY = r'''
import multiprocessing as mp
from multiprocessing import shared_memory
import numpy as np

N, Q = 512 * 2**20, 128 * 2**20
shm = shared_memory.SharedMemory(create=True, size=N)
whole = np.ndarray((N,), np.uint8, buffer=shm.buf)

def fill(i):
    s = shared_memory.SharedMemory(name=shm.name)
    a = np.ndarray((N,), np.uint8, buffer=s.buf)
    a[i * Q:(i + 1) * Q] = i + 1
    del a
    s.close()

procs = [mp.Process(target=fill, args=(i,)) for i in range(4)]
[p.start() for p in procs]
[p.join() for p in procs]
assert [p.exitcode for p in procs] == [0, 0, 0, 0], [p.exitcode for p in procs]
assert int(whole.sum(dtype=np.uint64)) == Q * (1 + 2 + 3 + 4)
print("four processes filled", N // 2**20, "MiB", flush=True)

HALF, CHUNK = 256 * 2**20, 16 * 2**20
def stage(k, inq, outq):
    s = shared_memory.SharedMemory(name=shm.name)
    a = np.ndarray((N,), np.uint8, buffer=s.buf)
    src, dst = (HALF, 0) if k % 2 == 0 else (0, HALF)
    while (c := inq.get()) is not None:
        lo = c * CHUNK
        if k == 0:
            a[dst + lo:dst + lo + CHUNK] = c
        else:
            a[dst + lo:dst + lo + CHUNK] = a[src + lo:src + lo + CHUNK] + 1
        outq.put(c)
    outq.put(None)
    del a
    s.close()

queues = [mp.Queue() for _ in range(5)]
workers = [mp.Process(target=stage, args=(k, queues[k], queues[k + 1])) for k in range(4)]
[w.start() for w in workers]
for c in range(HALF // CHUNK):
    queues[0].put(c)
queues[0].put(None)
done = []
while (c := queues[4].get()) is not None:
    done.append(c)
[w.join() for w in workers]
assert [w.exitcode for w in workers] == [0, 0, 0, 0], [w.exitcode for w in workers]
out = whole[HALF:].reshape(-1, CHUNK)
assert sorted(done) == list(range(16)) and all((out[c] == c + 3).all() for c in range(16))
print("a pipeline of four workers passed", HALF // 2**20, "MiB", flush=True)
del whole, out
shm.close()
shm.unlink()
'''

PROBE = ("dd if=/dev/zero of=/dev/shm/blob bs=1M count=1024 status=none && stat -c 'wrote %s' /dev/shm/blob "
         "&& rm /dev/shm/blob && echo memlock $(ulimit -l) stack $(ulimit -s) && python -c \"$SHARED\"")


def submit(daemon, token, command, **spec):
    r = daemon.api("POST", "/api/v1/jobs", token, json={"command": command, **spec})
    assert r.status_code == 201, r.text
    return r.json()["job"]["id"]


def finished(daemon, token, job_id, timeout=180):
    return wait_for(lambda: (j := daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"]
                    in TERMINAL_STATES and j, timeout, 0.2, f"job {job_id} to end")


def logs(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text


def engine_raises_memlock() -> bool:
    """Whether this Docker engine may give a container an unlimited memlock (dockerd with CAP_SYS_RESOURCE
    and no lower hard limit of its own); one in a container may not, and mlpd then runs work with its own."""
    r = subprocess.run(["docker", "run", "--rm", "--ulimit", "memlock=-1:-1", "mlpd/train:latest", "true"], capture_output=True, text=True)
    return r.returncode == 0


def test_a_job_writes_a_gib_to_dev_shm_and_shares_arrays_between_processes(daemon):
    _, token = new_user(daemon, "shm")
    job_id = submit(daemon, token, ["sh", "-c", PROBE], memory="4g", env={"SHARED": SHARED_MEMORY})
    j = finished(daemon, token, job_id)
    text = logs(daemon, token, job_id)
    assert j["state"] == "succeeded", (j["reason"], text)
    assert f"wrote {GIB}" in text
    assert "four processes filled 512 MiB" in text and "a pipeline of four workers passed 256 MiB" in text
    assert "stack 65536" in text
    if engine_raises_memlock():
        assert "memlock unlimited" in text
    else:  # as in a container without CAP_SYS_RESOURCE: the engine's own limit, and the daemon says why
        assert "memlock unlimited" not in text
        # said once per worker process, maybe long before this test: the whole log, not its tail
        assert "cannot set the memlock limit" in daemon.log_path.read_text(errors="replace")


def test_a_job_asks_for_its_shm_within_its_memory_limit(daemon):
    _, token = new_user(daemon, "shm")
    r = daemon.cli("run", "--no-code", "--memory", "1g", "--shm", "768m", "--json", "--", "df", "-B1", "--output=size", "/dev/shm",
                   token=token)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["job"]["id"]
    assert finished(daemon, token, job_id)["state"] == "succeeded"
    assert str(768 * 2**20) in logs(daemon, token, job_id)

    r = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "memory": "4g", "shm": "5g"})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "shm: asks for 5.0 GiB of shared memory (/dev/shm) but its memory limit is 4.0 GiB"), r.text
    r = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "shm": "9g"})
    assert r.status_code == 400 and "the default memory limit (jobs.default_memory) is 8.0 GiB" in r.json()["error"]["message"], r.text
    r = daemon.cli("run", "--no-code", "--memory", "1g", "--shm", "2g", "--", "true", token=token)
    assert r.returncode != 0 and "shm: asks for 2.0 GiB" in r.stderr, r.stderr


def test_a_members_home_is_in_their_jobs_and_never_in_anothers(daemon):
    alice, alice_token = new_user(daemon, "home")
    _, bob_token = new_user(daemon, "home")
    first = submit(daemon, alice_token, ["sh", "-c", 'echo "prepared by $USER" > $HOME/prepared.txt; echo home=$HOME'])
    assert finished(daemon, alice_token, first)["state"] == "succeeded"
    assert "home=/home/mlpd" in logs(daemon, alice_token, first)
    on_host = daemon.state_dir / "homes" / alice / "prepared.txt"
    assert on_host.read_text() == f"prepared by {alice}\n"

    second = submit(daemon, alice_token, ["cat", "/home/mlpd/prepared.txt"])
    assert finished(daemon, alice_token, second)["state"] == "succeeded"
    assert f"prepared by {alice}" in logs(daemon, alice_token, second)

    other = submit(daemon, bob_token, ["sh", "-c", "ls -A /home/mlpd; test ! -e /home/mlpd/prepared.txt && echo not-there"])
    assert finished(daemon, bob_token, other)["state"] == "succeeded"
    text = logs(daemon, bob_token, other)
    assert "not-there" in text and "prepared" not in text.replace("not-there", "")


def test_prepared_in_the_workspace_trained_as_a_job_with_the_workspaces_shm_and_ulimits(daemon):
    alice, token = new_user(daemon, "ws")
    r = daemon.api("POST", "/api/v1/workspaces", token, json={"name": "lab"})
    assert r.status_code == 201, r.text
    try:
        def container():
            out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=mlpd.owner={alice}", "--filter", "label=mlpd.kind=workspace"],
                                 capture_output=True, text=True).stdout.split()
            return out[0] if out else None

        cid = wait_for(container, 120, 0.3, "the workspace's container")
        probe = subprocess.run(["docker", "exec", cid, "sh", "-c",
                                "echo features > /home/mlpd/features.csv; df -B1 --output=size /dev/shm | tail -1; ulimit -s"],
                               capture_output=True, text=True)
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split() == [str(4 * GIB), "65536"]  # half the default memory limit (8g); NVIDIA's stack
        config = json.loads(subprocess.run(["docker", "inspect", cid], capture_output=True, text=True).stdout)[0]["HostConfig"]
        assert config["ShmSize"] == 4 * GIB
        assert {u["Name"] for u in config["Ulimits"]} >= {"stack"}
    finally:
        daemon.api("DELETE", "/api/v1/workspaces/lab", token)
    job_id = submit(daemon, token, ["cat", "/home/mlpd/features.csv"])
    assert finished(daemon, token, job_id)["state"] == "succeeded"
    assert "features" in logs(daemon, token, job_id)


def test_team_folders_are_shared_by_their_members_and_hidden_from_others(daemon):
    import uuid

    ann, ann_token = new_user(daemon, "team")
    ben, ben_token = new_user(daemon, "team")
    _, cat_token = new_user(daemon, "team")
    vision, nlp = f"vision{uuid.uuid4().hex[:6]}", f"nlp{uuid.uuid4().hex[:6]}"
    for args in (("add", vision), ("add", nlp), ("member", "add", vision, ann), ("member", "add", vision, ben), ("member", "add", nlp, ann)):
        r = daemon.cli("admin", "team", *args)
        assert r.returncode == 0, r.stderr

    first = submit(daemon, ann_token, ["sh", "-c", f"echo labels > /shared/{vision}/labels.txt && ls /shared"])
    assert finished(daemon, ann_token, first)["state"] == "succeeded"
    assert sorted(logs(daemon, ann_token, first).split()) == sorted([vision, nlp])  # a member of two teams gets both
    second = submit(daemon, ben_token, ["sh", "-c", f"cat /shared/{vision}/labels.txt; ls /shared"])
    assert finished(daemon, ben_token, second)["state"] == "succeeded"
    assert logs(daemon, ben_token, second).split() == ["labels", vision]
    third = submit(daemon, cat_token, ["sh", "-c", "ls -A /shared 2>/dev/null; echo end"])
    assert finished(daemon, cat_token, third)["state"] == "succeeded"
    assert logs(daemon, cat_token, third).split() == ["end"]
