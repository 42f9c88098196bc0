"""Training jobs end to end: a real daemon, a real Docker engine, real SQLite.

Each test creates its own users, so they share the session daemon (2 declared
GPUs) without seeing each other's jobs; tests that kill the daemon start their own.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import io
import json
import hashlib
import signal
import subprocess
import tarfile
import time

import pytest

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker

TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition



def submit(daemon, token, command, **spec):
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": command, **spec})
    assert resp.status_code == 201, resp.text
    return resp.json()["job"]["id"]


def job(daemon, token, job_id):
    resp = daemon.api("GET", f"/api/v1/jobs/{job_id}", token)
    assert resp.status_code == 200, resp.text
    return resp.json()["job"]


def wait_state(daemon, token, job_id, states, timeout=60):
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (j := job(daemon, token, job_id))["state"] in states and j, timeout, 0.05, f"job {job_id} to be {states}")


def container_of(job_id):
    out = subprocess.run(["docker", "inspect", f"mlpd-job-{job_id}"], capture_output=True, text=True)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


def assert_container_removed(job_id):
    wait_for(lambda: container_of(job_id) is None, 10, 0.1, f"job {job_id}'s container to be removed")


def logs(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text


@pytest.fixture
def cleanup(daemon):
    """Cancel the jobs a test leaves running so the shared GPUs are free for the next test."""
    jobs: list[tuple[str, str]] = []
    yield jobs
    for token, job_id in jobs:
        daemon.api("POST", f"/api/v1/jobs/{job_id}/cancel", token)
    for token, job_id in jobs:
        wait_state(daemon, token, job_id, TERMINAL, timeout=30)


def test_two_jobs_share_two_gpus_and_a_third_waits_then_starts_quickly(daemon, cleanup):
    _, token = new_user(daemon)
    cmd = ["sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES NVIDIA=$NVIDIA_VISIBLE_DEVICES; sleep {}"]
    a = as_json(daemon.cli("run", "--no-code", "--gpus", "1", "--time-limit", "1m", "--json", "--", *cmd[:2], cmd[2].format(3), token=token))["job"]["id"]
    b = as_json(daemon.cli("run", "--no-code", "--gpus", "1", "--time-limit", "1m", "--json", "--", *cmd[:2], cmd[2].format(30), token=token))["job"]["id"]
    cleanup.extend([(token, a), (token, b)])
    ja, jb = wait_state(daemon, token, a, "running"), wait_state(daemon, token, b, "running")
    assert len(ja["gpus"]["uuids"]) == len(jb["gpus"]["uuids"]) == 1
    assert ja["gpus"]["uuids"] != jb["gpus"]["uuids"]

    c = submit(daemon, token, ["sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES"], gpus=1)
    cleanup.append((token, c))
    shown = wait_for(lambda: (r := daemon.cli("jobs", "show", c, token=token)).returncode == 0 and "position 1" in r.stdout and r,
                     20, 0.2, f"job {c} to wait in position 1")
    assert "queued" in shown.stdout and "waiting:" in shown.stdout and "position 1" in shown.stdout
    assert f"job {a[:8]}" in shown.stdout or f"job {b[:8]}" in shown.stdout  # names the holder
    waiting = job(daemon, token, c)["waiting"]
    assert waiting["estimated_start"] is not None and {h["job_id"] for h in waiting["blocking"]} <= {a, b}
    # its place in the order: the terms of its priority score, as `mlpd jobs show` prints them
    prio = waiting["priority"]
    assert prio["priority_class"] == "default" and prio["reserved"] is True  # the only waiting job: the head
    assert prio["score"] == pytest.approx(sum(prio["terms"].values())) and {"priority", "age", "expansion"} <= set(prio["terms"])
    assert "priority:" in shown.stdout and "holds the reservation" in shown.stdout

    ended_a = wait_state(daemon, token, a, "succeeded")
    jc = wait_state(daemon, token, c, TERMINAL | {"running"})
    # It takes the GPU the first job freed, once that job has ended (how soon is measured in bench/, not asserted here).
    assert jc["started_at"] >= ended_a["ended_at"] - 0.5 and jc["gpus"]["uuids"] == ja["gpus"]["uuids"], (ended_a, jc)
    assert jc["gpus"]["uuids"] == ja["gpus"]["uuids"]  # it got the GPU that was freed
    jc = wait_state(daemon, token, c, "succeeded")
    seen = {x: logs(daemon, token, x) for x in (a, c)}
    assert f"CUDA={ja['gpus']['uuids'][0]} NVIDIA={ja['gpus']['uuids'][0]}" in seen[a]
    assert f"CUDA={jc['gpus']['uuids'][0]}" in seen[c]


def test_exit_code_is_recorded(daemon):
    _, token = new_user(daemon)
    j = submit(daemon, token, ["sh", "-c", "echo bye; exit 3"])
    done = wait_state(daemon, token, j, TERMINAL)
    assert done["state"] == "failed" and done["exit_code"] == 3
    assert "exited with code 3" in done["reason"]
    assert "bye" in logs(daemon, token, j)
    assert_container_removed(j)  # removed, log kept


def test_missing_image_fails_with_a_reason_naming_it(daemon):
    _, token = new_user(daemon)
    j = submit(daemon, token, ["true"], image="mlpd/does-not-exist:1")
    done = wait_state(daemon, token, j, TERMINAL)
    assert done["state"] == "failed" and "mlpd/does-not-exist:1" in done["reason"]
    assert_container_removed(j)


def test_time_limit_ends_timed_out(daemon):
    _, token = new_user(daemon)
    j = submit(daemon, token, ["sleep", "120"], time_limit="2s")
    done = wait_state(daemon, token, j, TERMINAL, timeout=40)
    assert done["state"] == "timed_out", done
    assert "time limit of 2s" in done["reason"]
    assert done["ended_at"] - done["started_at"] < 6  # stopped at the limit, not a reconcile tick later
    assert_container_removed(j)


def test_memory_limit_ends_failed_out_of_memory(daemon):
    _, token = new_user(daemon)
    j = submit(daemon, token, ["python3", "-c", "x = bytearray(512 * 1024 * 1024); print(len(x))"], memory="64m")
    done = wait_state(daemon, token, j, TERMINAL)
    assert done["state"] == "failed" and "out of memory" in done["reason"], done


def test_cancel_removes_the_container_and_frees_the_gpu(daemon, cleanup):
    name, token = new_user(daemon)
    j = submit(daemon, token, ["sleep", "300"], gpus=1)
    running = wait_state(daemon, token, j, "running")
    assert container_of(j)["State"]["Running"]
    result = daemon.cli("cancel", j, token=token)
    assert result.returncode == 0, result.stderr
    done = wait_state(daemon, token, j, TERMINAL, timeout=30)
    assert done["state"] == "cancelled" and f"cancelled by {name}" in done["reason"]
    assert_container_removed(j)
    gpus = daemon.api("GET", "/api/v1/gpus", token).json()["gpus"]
    held = [g for g in gpus if g["uuid"] == running["gpus"]["uuids"][0]][0]
    assert held["holder"] is None
    # a queued job is cancelled at once
    q = submit(daemon, token, ["true"], gpus=2, priority=-100)
    cleanup.append((token, q))


def test_logs_follow_streams_live_and_ends_with_the_job(daemon):
    _, token = new_user(daemon)
    j = submit(daemon, token, ["sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 1; done"])
    wait_state(daemon, token, j, "running")
    proc = subprocess.Popen([daemon.argv()[0], "logs", "-f", j], stdout=subprocess.PIPE, text=True, env=daemon.env(token))
    first = proc.stdout.readline()
    first_at = time.monotonic()
    assert first.strip().startswith("line")
    assert job(daemon, token, j)["state"] == "running"  # the line arrived while the job still runs
    rest = proc.stdout.read()
    assert proc.wait(30) == 0
    assert time.monotonic() - first_at > 1.0
    assert "line 4" in first + rest
    assert job(daemon, token, j)["state"] in TERMINAL


def test_code_is_shipped_read_only_and_outputs_come_back(daemon, tmp_path):
    _, token = new_user(daemon)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text(
        "import os\n"
        "print('files', sorted(os.listdir('.')))\n"
        "try:\n    open('x', 'w')\nexcept OSError as e:\n    print('read-only', e.errno)\n"
        "open('/outputs/model.txt', 'w').write('weights')\n")
    (project / ".gitignore").write_text("data/\n")
    (project / "data" / "big.bin").write_bytes(b"0" * 1000)
    out = daemon.cli("run", "--", "python3", "train.py", token=token, cwd=str(project))
    assert out.returncode == 0, out.stderr
    j = out.stdout.strip().splitlines()[-1]
    assert "uploaded" in out.stderr
    done = wait_state(daemon, token, j, TERMINAL)
    assert done["state"] == "succeeded", logs(daemon, token, j)
    text = logs(daemon, token, j)
    assert "files ['.gitignore', 'train.py']" in text and "read-only" in text
    again = daemon.cli("run", "--", "python3", "train.py", token=token, cwd=str(project))
    assert "already on the daemon" in again.stderr  # content-addressed: nothing uploaded twice
    dest = tmp_path / "outs"
    got = daemon.cli("jobs", "outputs", j, "-o", str(dest), token=token)
    assert got.returncode == 0, got.stderr
    assert (dest / "model.txt").read_text() == "weights"
    wait_state(daemon, token, again.stdout.strip().splitlines()[-1], TERMINAL)


def test_users_cannot_see_or_touch_each_others_jobs(daemon, cleanup):
    alice, ta = new_user(daemon, "alice")
    _, tb = new_user(daemon, "bob")
    j = submit(daemon, ta, ["sleep", "60"])
    cleanup.append((ta, j))
    wait_state(daemon, ta, j, "running")
    assert j not in [x["id"] for x in daemon.api("GET", "/api/v1/jobs", tb).json()["jobs"]]
    for method, path in [("GET", f"/api/v1/jobs/{j}"), ("GET", f"/api/v1/jobs/{j}/logs"),
                         ("GET", f"/api/v1/jobs/{j}/outputs"), ("POST", f"/api/v1/jobs/{j}/cancel")]:
        resp = daemon.api(method, path, tb)
        assert resp.status_code == 404, (path, resp.status_code)
        assert resp.json()["error"]["code"] == "not_found" and "sleep" not in resp.text
    assert job(daemon, ta, j)["state"] == "running"  # bob's cancel did nothing
    listing = daemon.cli("jobs", "--all", "--json", token=daemon.admin_token)
    assert j in [x["id"] for x in as_json(listing)["jobs"]]  # admins see all


def test_gpu_escape_hatches_are_refused_or_stripped(daemon):
    _, token = new_user(daemon)
    for key, value in [("privileged", True), ("volumes", ["/:/host"]), ("devices", ["/dev/nvidia0"])]:
        resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"], key: value})
        assert resp.status_code == 400 and resp.json()["error"]["message"].startswith(f"{key}: not allowed"), resp.text
    resp = daemon.api("POST", "/api/v1/jobs", token, json={
        "command": ["sh", "-c", "echo C=$CUDA_VISIBLE_DEVICES N=$NVIDIA_VISIBLE_DEVICES U=$(id -u)"], "gpus": 1,
        "env": {"NVIDIA_VISIBLE_DEVICES": "all", "CUDA_VISIBLE_DEVICES": "0,1"}})
    assert resp.status_code == 201
    assert any("NVIDIA_VISIBLE_DEVICES" in w for w in resp.json()["warnings"])
    j = resp.json()["job"]["id"]
    running = wait_state(daemon, token, j, TERMINAL | {"running"})
    uuid_ = running["gpus"]["uuids"][0]
    done = wait_state(daemon, token, j, TERMINAL)
    assert f"C={uuid_} N={uuid_} U=65200" in logs(daemon, token, j), logs(daemon, token, j)
    assert done["state"] == "succeeded"


def test_container_is_locked_down_and_labelled(daemon, cleanup):
    owner, token = new_user(daemon)
    j = submit(daemon, token, ["sleep", "60"], gpus=1, cpus=0.5, memory="256m")
    cleanup.append((token, j))
    running = wait_state(daemon, token, j, "running")
    c = container_of(j)
    host = c["HostConfig"]
    assert c["Config"]["User"] == "65200:65200" and host["Privileged"] is False and host["Init"] is True
    assert "no-new-privileges" in host["SecurityOpt"] and host["CapDrop"] == ["ALL"]
    assert host["Memory"] == 256 * 2**20 and host["NanoCpus"] == 5 * 10**8
    assert not any("docker.sock" in (m.get("Source") or "") for m in c["Mounts"])
    labels = c["Config"]["Labels"]
    assert labels["mlpd.owner"] == owner and labels["mlpd.job_id"] == j and labels["mlpd.kind"] == "job"
    assert labels["mlpd.gpu_uuids"] == running["gpus"]["uuids"][0]


def test_bad_input_is_refused_and_changes_nothing(daemon):
    _, token = new_user(daemon)
    before = len(daemon.api("GET", "/api/v1/jobs", token).json()["jobs"])
    cases = [({"command": ["true"], "gpus": 3}, "gpus: asks for 3 GPUs but this host has 2"),
             ({"command": ["true"], "memory": -1}, "memory:"),
             ({"command": ["true"], "gpus": 1, "gpu_model": "H100"}, "gpu_model:"),
             ({"command": []}, "command:"),
             ({"command": ["true"], "gpu": 1}, "did you mean 'gpus'")]
    for body, message in cases:
        resp = daemon.api("POST", "/api/v1/jobs", token, json=body)
        assert resp.status_code == 400 and message in resp.json()["error"]["message"], (body, resp.text)
    cli = daemon.cli("run", "--no-code", "--gpus", "3", "--", "true", token=token)
    assert cli.returncode != 0 and "asks for 3 GPUs" in cli.stderr
    assert len(daemon.api("GET", "/api/v1/jobs", token).json()["jobs"]) == before


def _archive(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("members, expected", [
    ([("../evil.py", "file", b"x")], ".."),
    ([("ok.py", "file", b"x"), ("link", "sym", "/etc/passwd")], "link"),
    ([("link", "sym", "../../outside")], "link"),
])
def test_hostile_code_archives_are_refused_and_nothing_is_stored(daemon, members, expected):
    _, token = new_user(daemon)
    body = _archive(members)
    digest = hashlib.sha256(body).hexdigest()
    resp = daemon.api("PUT", f"/api/v1/code/{digest}", token, data=body)
    assert resp.status_code == 400 and expected in resp.json()["error"]["message"], resp.text
    assert daemon.api("GET", f"/api/v1/code/{digest}", token).status_code == 404
    assert not (daemon.state_dir / "code" / digest).exists()


def test_upload_over_the_size_limit_is_refused(make_daemon, tmp_path):
    config = tmp_path / "mlpd.toml"
    config.write_text("[jobs]\nmax_code_mb = 1\n")
    d = make_daemon(config_file=config)
    _, token = new_user(d)
    import os

    body = os.urandom(2 * 1024 * 1024)
    digest = hashlib.sha256(body).hexdigest()
    resp = d.api("PUT", f"/api/v1/code/{digest}", token, data=body)
    assert resp.status_code == 413 and "1 MiB" in resp.json()["error"]["message"]
    assert not (d.state_dir / "code" / digest).exists()
    project = tmp_path / "p"
    project.mkdir()
    (project / "weights.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    out = d.cli("run", "--", "true", token=token, cwd=str(project))
    assert out.returncode != 0 and "limit" in out.stderr


def test_daemon_killed_with_sigkill_picks_up_jobs_on_restart(make_daemon):
    d = make_daemon(["--declare-gpus", "2"])
    _, token = new_user(d)
    short = submit(d, token, ["sleep", "3"], gpus=1)
    long = submit(d, token, ["sleep", "12"], gpus=1)
    doomed = submit(d, token, ["sleep", "120"])
    for j in (short, long, doomed):
        wait_state(d, token, j, "running")
    d.stop(signal.SIGKILL)
    # while the daemon is down: the short job ends, someone removes the doomed job's container
    wait_for(lambda: (c := container_of(short)) and not c["State"]["Running"], 20, 0.2, "the short job to end")
    finished_at = container_of(short)["State"]["FinishedAt"]
    subprocess.run(["docker", "rm", "-f", f"mlpd-job-{doomed}"], check=True, capture_output=True)
    assert container_of(long)["State"]["Running"]
    d.start()

    done = wait_state(d, token, short, TERMINAL)
    assert done["state"] == "succeeded" and done["exit_code"] == 0
    from mlpd.runtime.docker_engine import _ts

    assert abs(done["ended_at"] - _ts(finished_at)) < 0.01  # Docker's end time, not the restart time
    assert wait_state(d, token, doomed, TERMINAL)["state"] == "lost"
    assert "vanished" in job(d, token, doomed)["reason"]
    still = job(d, token, long)
    assert still["state"] == "running"
    gpus = d.api("GET", "/api/v1/gpus", token).json()["gpus"]
    holders = [g["holder"]["job_id"] for g in gpus if g["holder"]]
    assert holders == [long]  # nothing allocated twice, nothing leaked
    assert wait_state(d, token, long, TERMINAL, timeout=30)["state"] == "succeeded"
    assert all(g["holder"] is None for g in d.api("GET", "/api/v1/gpus", token).json()["gpus"])


def test_submit_a_spec_file_with_its_code_directory(daemon, tmp_path):
    _, token = new_user(daemon)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("import os; print('lr', os.environ['LR'], 'gpus', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    spec = tmp_path / "job.toml"
    spec.write_text('command = ["python3", "train.py"]\ncode_dir = "proj"\ngpus = 1\nname = "from-file"\ntime_limit = "5m"\n[env]\nLR = "0.01"\n')
    out = daemon.cli("submit", str(spec), token=token)
    assert out.returncode == 0, out.stderr
    j = out.stdout.strip().splitlines()[-1]
    done = wait_state(daemon, token, j, TERMINAL)
    assert done["state"] == "succeeded" and done["name"] == "from-file" and done["spec"]["time_limit"] == 300
    assert f"lr 0.01 gpus {done['gpus']['uuids'][0]}" in logs(daemon, token, j)
    bad = tmp_path / "bad.toml"
    bad.write_text('command = ["true"]\ngpus = "two"\n')
    refused = daemon.cli("submit", str(bad), token=token)
    assert refused.returncode != 0 and "bad.toml: gpus:" in refused.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("command = [\n")
    refused = daemon.cli("submit", str(broken), token=token)
    assert refused.returncode != 0 and "not valid TOML" in refused.stderr
