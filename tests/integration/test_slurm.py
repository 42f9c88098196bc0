"""Jobs on a real one-node Slurm cluster (munged, slurmctld and slurmd from Debian's slurm-wlm,
started by the fixture without systemd), submitted through a real daemon with `mlpd run --on slurm`;
the batch script runs the container on the node with the real Docker engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from helpers import as_json, docker_available, new_user, wait_for
from mlpd.jobs import TERMINAL_STATES
from slurm_cluster import slurm_installed, start_cluster

# Skipped only on a developer machine without them; under CI (CI=true) a missing Slurm or Docker fails.
pytestmark = pytest.mark.skipif((not slurm_installed() or not docker_available()) and os.environ.get("CI") != "true",
                                reason="needs Slurm (apt-get install slurm-wlm munge; tests/run.sh does it) and a Docker engine")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with start_cluster(str(tmp_path_factory.mktemp("slurm")), gpus=2) as c:  # two stand-in GPUs (mknod, gres.conf)
        yield c


@pytest.fixture
def slurm_daemon(make_daemon, cluster, tmp_path, monkeypatch):
    """A daemon with [slurm] enabled, its shared directory a temporary one (this host is the node)."""
    monkeypatch.setenv("SLURM_CONF", cluster.conf)  # the daemon's sbatch, squeue and scancel find the cluster by it
    shared = tmp_path / "shared"
    shared.mkdir()
    config = tmp_path / "mlpd.toml"
    config.write_text(f'[slurm]\nenabled = true\nshared_dir = "{shared}"\n')
    d = make_daemon(config_file=config)
    d.shared = shared
    yield d
    for job in slurm_jobs(cluster, d):  # nothing a test started outlives it
        if job["job_state"] in ("PENDING", "RUNNING"):
            cluster.run("scancel", str(job["job_id"]), check=False)
    for job_dir in shared.glob("mlpd-*/*"):  # the jobs this daemon submitted: their containers, if any is left
        left = containers_of(job_dir.name)
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True)


def slurm_jobs(cluster, d) -> list[dict]:
    """The cluster's jobs this daemon submitted (by their comment), oldest first."""
    prefix = f"mlpd:{d.instance_id()}:"
    records = json.loads(cluster.run("squeue", "--states=all", "--json").stdout)["jobs"]
    return sorted((r for r in records if str(r.get("comment", "")).startswith(prefix)), key=lambda r: r["job_id"])


def slurm_job_of(cluster, d, job_id: str) -> dict | None:
    found = [r for r in slurm_jobs(cluster, d) if r["comment"].endswith(":" + job_id)]
    return found[-1] if found else None


def job(d, token, job_id):
    resp = d.api("GET", f"/api/v1/jobs/{job_id}", token)
    assert resp.status_code == 200, resp.text
    return resp.json()["job"]


def wait_state(d, token, job_id, states, timeout=90):
    states = {states} if isinstance(states, str) else set(states)
    return wait_for(lambda: (j := job(d, token, job_id))["state"] in states and j, timeout, 0.2, f"job {job_id} to be {states}")


def containers_of(job_id: str) -> list[str]:
    return subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.job_id={job_id}", "--filter", "label=mlpd.slurm_job_id"],
                          capture_output=True, text=True).stdout.split()


def run_on_slurm(d, token, *command: str, cwd=None, extra=()) -> str:
    out = d.cli("run", "--on", "slurm", *(["--no-code"] if cwd is None else []), *extra, "--json", "--", *command, token=token, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return as_json(out)["job"]["id"]


def test_a_job_on_slurm_runs_through_sbatch_with_its_code_outputs_and_log(slurm_daemon, cluster, tmp_path):
    d = slurm_daemon
    _, token = new_user(d)
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("import os\nprint('hello from the node', os.environ['MLPD_JOB_ID'], sorted(os.listdir('.')))\n"
                                      "open('/outputs/model.txt', 'w').write('weights')\n")
    j = run_on_slurm(d, token, "python3", "train.py", cwd=str(project), extra=("--time-limit", "10m", "--cpus", "1", "--memory", "512m"))
    done = wait_state(d, token, j, TERMINAL_STATES)
    assert done["state"] == "succeeded" and done["exit_code"] == 0, done
    record = slurm_job_of(cluster, d, j)  # it went through Slurm, with what the job asked for
    assert record["job_state"] == "COMPLETED"
    assert record["time_limit"] == 10 and record["memory_per_node"] == 512 and record["cpus"] == 1
    assert record["name"] == f"mlpd-{j[:12]}"
    logs = d.cli("logs", j, token=token)
    assert logs.returncode == 0 and f"hello from the node {j} ['train.py']" in logs.stdout, logs
    dest = tmp_path / "outs"
    got = d.cli("jobs", "outputs", j, "-o", str(dest), token=token)
    assert got.returncode == 0, got.stderr
    assert (dest / "model.txt").read_text() == "weights"
    assert containers_of(j) == []  # docker run --rm: nothing left on the node


def test_a_failing_job_on_slurm_fails_with_its_exit_code(slurm_daemon, cluster):
    d = slurm_daemon
    _, token = new_user(d)
    j = run_on_slurm(d, token, "sh", "-c", "echo about to fail; exit 7")
    done = wait_state(d, token, j, TERMINAL_STATES)
    assert done["state"] == "failed" and done["exit_code"] == 7, (done["reason"], done)
    assert "exited with code 7" in done["reason"]
    assert slurm_job_of(cluster, d, j)["job_state"] == "FAILED"
    assert "about to fail" in d.cli("logs", j, token=token).stdout


def test_cancel_scancels_and_the_container_is_gone(slurm_daemon, cluster):
    d = slurm_daemon
    name, token = new_user(d)
    j = run_on_slurm(d, token, "sleep", "300")
    wait_state(d, token, j, "running")
    wait_for(lambda: containers_of(j), 60, 0.2, "the job's container to run on the node")
    assert slurm_job_of(cluster, d, j)["job_state"] == "RUNNING"
    result = d.cli("cancel", j, token=token)
    assert result.returncode == 0, result.stderr
    done = wait_state(d, token, j, TERMINAL_STATES, timeout=60)
    assert done["state"] == "cancelled" and f"cancelled by {name}" in done["reason"], done
    assert slurm_job_of(cluster, d, j)["job_state"] == "CANCELLED"
    wait_for(lambda: containers_of(j) == [], 30, 0.2, "the cancelled job's container to be gone")


def test_mlpd_s_time_limit_stops_a_slurm_job(slurm_daemon, cluster):
    d = slurm_daemon
    _, token = new_user(d)
    j = run_on_slurm(d, token, "sleep", "300", extra=("--time-limit", "3s"))
    done = wait_state(d, token, j, TERMINAL_STATES, timeout=60)
    assert done["state"] == "timed_out" and "time limit of 3s" in done["reason"], done
    assert slurm_job_of(cluster, d, j)["time_limit"] == 1  # and Slurm's own limit, in whole minutes, was set
    wait_for(lambda: containers_of(j) == [], 30, 0.2, "the timed-out job's container to be gone")


def test_a_daemon_killed_while_a_slurm_job_runs_re_adopts_it_by_its_comment(slurm_daemon, cluster):
    d = slurm_daemon
    _, token = new_user(d)
    j = run_on_slurm(d, token, "sh", "-c", "sleep 6; echo finished")
    wait_state(d, token, j, "running")
    d.stop(signal.SIGKILL)
    d.start()
    done = wait_state(d, token, j, TERMINAL_STATES)
    assert done["state"] == "succeeded", done
    assert "finished" in d.cli("logs", j, token=token).stdout
    assert len([r for r in slurm_jobs(cluster, d) if r["comment"].endswith(":" + j)]) == 1  # submitted once, never twice


def test_slurm_refused_clearly_when_not_enabled_and_a_bad_place_refused(daemon):
    _, token = new_user(daemon)
    out = daemon.cli("run", "--on", "slurm", "--no-code", "--", "true", token=token)
    assert out.returncode != 0
    assert "this daemon does not run jobs on Slurm (slurm.enabled is false" in out.stderr and "--on local" in out.stderr
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "on": "mars"})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "on: expected where the job runs, 'local' or 'slurm', got 'mars'"
    bad = daemon.cli("run", "--on", "mars", "--no-code", "--", "true", token=token)
    assert bad.returncode == 2 and "'mars' is not one of 'local', 'slurm'" in bad.stderr
    before = daemon.api("GET", "/api/v1/jobs", token).json()["jobs"]
    assert before == []  # nothing was stored


def test_a_job_slurm_has_no_room_for_waits_with_slurm_s_reason_and_what_no_node_has_is_refused(slurm_daemon, cluster):
    d = slurm_daemon
    _, token = new_user(d)
    cpus = str(os.cpu_count())
    first = run_on_slurm(d, token, "sleep", "300", extra=("--cpus", cpus, "--memory", "256m"))  # the whole node
    wait_state(d, token, first, "running")
    second = run_on_slurm(d, token, "echo", "second", extra=("--cpus", cpus, "--memory", "256m"))
    shown = wait_for(lambda: (s := job(d, token, second))["reason"] == "waiting in Slurm (pending: Resources)" and s, 60, 0.2,
                     "Slurm's reason in the waiting job")
    assert shown["state"] == "starting" and shown["reason"] == "waiting in Slurm (pending: Resources)", shown
    assert slurm_job_of(cluster, d, second)["job_state"] == "PENDING"
    shown_cli = d.cli("jobs", "show", second, token=token)
    assert "waiting in Slurm (pending: Resources)" in shown_cli.stdout, shown_cli
    assert d.cli("cancel", first, token=token).returncode == 0  # (its container may still be starting)
    done = wait_state(d, token, second, TERMINAL_STATES)  # it starts once the first is gone
    wait_for(lambda: containers_of(first) == [], 30, 0.2, "the cancelled job's container to be gone")
    assert done["state"] == "succeeded" and "second" in d.cli("logs", second, token=token).stdout
    never = run_on_slurm(d, token, "true", extra=("--memory", "60g"))  # more memory than any node has (the fixture's node: 90% of this host's)
    failed = wait_state(d, token, never, TERMINAL_STATES)
    assert failed["state"] == "failed" and failed["reason"].startswith("sbatch refused the job: sbatch: error:"), failed
    over = d.cli("run", "--on", "slurm", "--no-code", "--cpus", "64", "--", "true", token=token)  # mlpd's quotas apply before sbatch
    assert over.returncode == 1 and "the concurrent CPU quota of user" in over.stderr


def test_a_job_slurm_has_forgotten_ends_with_the_exit_code_its_script_wrote(cluster, tmp_path, monkeypatch):
    """Slurm keeps an ended job for MinJobAge only; a daemon that was down longer finds the code the
    batch script wrote beside the log (the real squeue answers for a job id it does not know)."""
    from mlpd.runtime.protocol import Phase
    from mlpd.runtime.slurm import SlurmRuntime, SlurmSettings

    monkeypatch.setenv("SLURM_CONF", cluster.conf)
    rt = SlurmRuntime("inst", SlurmSettings(shared_dir=str(tmp_path)))
    directory = tmp_path / "mlpd-inst" / "job1" / "attempt-2"
    directory.mkdir(parents=True)
    (directory / "slurm_job_id").write_text("987654\n")  # an id this cluster never gave
    assert rt.inspect("job1") is None  # nothing written yet: no end to report
    (directory / "exit").write_text("5\n")
    status = rt.inspect("job1")
    assert status.phase == Phase.EXITED and status.exit_code == 5 and status.labels["mlpd.attempt"] == "2"
    assert status.finished_at == (directory / "exit").stat().st_mtime


def test_logs_follow_a_slurm_job_live_and_end_with_it(slurm_daemon, cluster):
    d = slurm_daemon
    _, token = new_user(d)
    j = run_on_slurm(d, token, "sh", "-c", "for i in 1 2 3 4; do echo line $i; sleep 1; done")
    wait_state(d, token, j, "running")
    proc = subprocess.Popen([d.argv()[0], "logs", "-f", j], stdout=subprocess.PIPE, text=True, env=d.env(token))
    first = proc.stdout.readline()
    assert first.strip().startswith("line"), first
    assert job(d, token, j)["state"] == "running"  # the line arrived while the job still runs
    rest = proc.stdout.read()
    assert proc.wait(60) == 0
    assert "line 4" in first + rest
    assert job(d, token, j)["state"] in TERMINAL_STATES


def test_mlflow_runs_of_a_slurm_job_land_in_the_embedded_store(slurm_daemon, cluster, tmp_path):
    """The node reaches the daemon at slurm.daemon_address (here: this host's address on mlpd's Docker
    network, where the daemon listens for containers), with the job's MLflow token."""
    d = slurm_daemon
    gateway = subprocess.run(["docker", "network", "inspect", "mlpd-isolated", "-f", "{{range .IPAM.Config}}{{.Gateway}}{{end}}"],
                             capture_output=True, text=True, check=True).stdout.strip()
    d.stop()
    d.config_file.write_text(d.config_file.read_text() + f'daemon_address = "{gateway}"\n')
    d.start()
    name, token = new_user(d)
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("import mlflow\nwith mlflow.start_run():\n    mlflow.log_metric('loss', 0.25)\n")
    j = run_on_slurm(d, token, "python3", "train.py", cwd=str(project))
    done = wait_state(d, token, j, TERMINAL_STATES, timeout=120)
    assert done["state"] == "succeeded", (done["reason"], d.cli("logs", j, token=token).stdout)
    listed = as_json(d.cli("runs", "--experiment", f"jobs-{name}", "--json", token=token))["runs"]
    assert [(r["user"], r["job_id"], r["metrics"]) for r in listed] == [(name, j, {"loss": 0.25})]


def test_while_slurm_does_not_answer_a_submitted_job_waits_and_is_never_lost(cluster, tmp_path, monkeypatch):
    """squeue against a controller that is not there (the real client, a port nothing listens on):
    a job mlpd submitted stays pending with the reason, so the controller neither calls it lost nor
    submits it again; a job never submitted gets the failure."""
    import re

    from mlpd.runtime.protocol import Phase, RuntimeFailure
    from mlpd.runtime.slurm import SlurmRuntime, SlurmSettings

    from conftest import free_port

    dead = tmp_path / "slurm.conf"
    text = re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={free_port()}", open(cluster.conf).read())
    dead.write_text(text + "MessageTimeout=1\n")
    monkeypatch.setenv("SLURM_CONF", str(dead))
    rt = SlurmRuntime("inst", SlurmSettings(shared_dir=str(tmp_path)))
    directory = tmp_path / "mlpd-inst" / "job1" / "attempt-1"
    directory.mkdir(parents=True)
    (directory / "slurm_job_id").write_text("42\n")
    status = rt.inspect("job1")
    assert status.phase == Phase.PENDING and status.error.startswith("Slurm does not answer (squeue failed:"), status
    with pytest.raises(RuntimeFailure, match="squeue failed"):
        rt.inspect("never-submitted")


def test_on_a_two_gpu_node_two_1_gpu_jobs_run_at_once_each_on_its_own_gpu_and_a_third_waits(slurm_daemon, cluster):
    """The node's GPUs are stand-ins (character devices in gres.conf); this host's Docker has no NVIDIA
    runtime, so the container gets the CUDA_VISIBLE_DEVICES Slurm chose (the script's fallback)."""
    d = slurm_daemon
    _, token = new_user(d)
    small = ("--gpus", "1", "--cpus", "0.5", "--memory", "256m")
    first, second = (run_on_slurm(d, token, "sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES; sleep 300", extra=small) for _ in range(2))
    wait_state(d, token, first, "running")
    wait_state(d, token, second, "running")  # at once: one GPU each
    third = run_on_slurm(d, token, "sh", "-c", "echo CUDA=$CUDA_VISIBLE_DEVICES", extra=small)
    shown = wait_for(lambda: (r := d.cli("jobs", "show", third, token=token)).returncode == 0
                     and "waiting in Slurm (pending: Resources)" in r.stdout and r, 60, 0.2, "Slurm's reason in 'mlpd jobs show'")
    assert job(d, token, third)["state"] == "starting", shown.stdout
    assert [slurm_job_of(cluster, d, j)["tres_per_node"] for j in (first, second, third)] == ["gres:gpu:1"] * 3
    seen = {j: wait_for(lambda j=j: "CUDA=" in (text := d.cli("logs", j, token=token).stdout) and text, 30, 0.2, "the GPU line")
            for j in (first, second)}
    assert sorted(line.strip() for text in seen.values() for line in text.splitlines() if line.startswith("CUDA=")) == ["CUDA=0", "CUDA=1"]
    assert d.cli("cancel", first, token=token).returncode == 0
    done = wait_state(d, token, third, TERMINAL_STATES)  # it gets the GPU the first gave back
    assert done["state"] == "succeeded"
    assert d.cli("cancel", second, token=token).returncode == 0
    wait_state(d, token, second, TERMINAL_STATES)


def test_gpu_hours_of_a_slurm_job_are_booked_from_slurm_s_start_and_end(slurm_daemon, cluster):
    d = slurm_daemon
    name, token = new_user(d)
    j = run_on_slurm(d, token, "sleep", "3", extra=("--gpus", "2", "--cpus", "0.5", "--memory", "256m"))
    done = wait_state(d, token, j, TERMINAL_STATES)
    assert done["state"] == "succeeded", done
    record = slurm_job_of(cluster, d, j)
    slurm_seconds = 2 * (record["end_time"] - record["start_time"])  # two GPUs, Slurm's own whole-second times
    assert slurm_seconds >= 6
    rows = d.api("GET", "/api/v1/usage", token, params={"user": name, "since": 0, "by": "gpu_model"}).json()["rows"]
    assert [r["key"] for r in rows] == ["slurm"]
    assert abs(rows[0]["gpu_hours"] * 3600 - slurm_seconds) < 0.01, rows  # the API rounds GPU-hours to 6 places (3.6 ms)
    assert (done["started_at"], done["ended_at"]) == (record["start_time"], record["end_time"])
    listed = as_json(d.cli("usage", "--json", "--since", "2000-01-01", token=token))["rows"]
    assert [(r["key"], round(r["gpu_hours"] * 3600)) for r in listed] == [(name, slurm_seconds)]


def test_mlpd_gpus_shows_the_cluster_s_nodes_and_a_node_set_down(slurm_daemon, cluster):
    d = slurm_daemon
    _, token = new_user(d)
    nodes = as_json(d.cli("gpus", "--json", token=token))["slurm_nodes"]
    assert [(n["name"], n["gpus"], n["gpus_used"], n["cpus"]) for n in nodes] == [(cluster.node, 2, 0, os.cpu_count())]
    assert nodes[0]["state"] == "idle" and nodes[0]["partitions"] == ["main"]
    cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=down", "reason=fan broken")
    try:
        text = wait_for(lambda: "down" in (out := d.cli("gpus", token=token).stdout) and out, 30, 0.2, "the node down in 'mlpd gpus'")
        assert "Slurm nodes:" in text and "(fan broken)" in text and "0/2" in text, text
    finally:
        cluster.run("scontrol", "update", f"nodename={cluster.node}", "state=resume")
        wait_for(lambda: cluster.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", 30, 0.2, "the node back")


def test_mlpd_gpus_of_a_daemon_without_slurm_has_no_slurm_nodes(daemon):
    _, token = new_user(daemon)
    answer = as_json(daemon.cli("gpus", "--json", token=token))
    assert "slurm_nodes" not in answer and "Slurm nodes" not in daemon.cli("gpus", token=token).stdout


def test_cancelling_a_job_that_waits_in_slurm_s_queue_scancels_it_there(slurm_daemon, cluster):
    d = slurm_daemon
    name, token = new_user(d)
    whole = ("--cpus", str(os.cpu_count()), "--memory", "256m")
    first = run_on_slurm(d, token, "sleep", "300", extra=whole)
    wait_state(d, token, first, "running")
    waiting = run_on_slurm(d, token, "echo", "never", extra=whole)
    wait_for(lambda: job(d, token, waiting)["reason"] == "waiting in Slurm (pending: Resources)", 60, 0.2, "the job to wait in Slurm")
    assert d.cli("cancel", waiting, token=token).returncode == 0
    done = wait_state(d, token, waiting, TERMINAL_STATES, timeout=60)
    assert done["state"] == "cancelled" and f"cancelled by {name}" in done["reason"], done
    assert slurm_job_of(cluster, d, waiting)["job_state"] == "CANCELLED"
    assert d.cli("cancel", first, token=token).returncode == 0
    wait_state(d, token, first, TERMINAL_STATES)
    wait_for(lambda: containers_of(first) == [], 30, 0.2, "the cancelled job's container to be gone")
