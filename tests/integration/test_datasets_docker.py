"""Datasets and disk quotas (issue 25) on a real daemon and a real Docker engine: a dataset is read at
/datasets/NAME in a job and a workspace, writing there fails with EROFS unless it is declared writable,
a member outside its team sees neither the mount nor the entry, each refused path gets its message and
adds nothing, a link swapped after the add fails the launch; over quotas.home_gb a new job is refused
while a running one goes on."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from helpers import as_json, holds_for, needs_docker, new_user, wait_for
from mlpd.jobs import TERMINAL_STATES

pytestmark = [needs_docker, pytest.mark.docker]


def submit(daemon, token, command, **spec):
    r = daemon.api("POST", "/api/v1/jobs", token, json={"command": command, **spec})
    assert r.status_code == 201, r.text
    return r.json()["job"]["id"]


def job(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]


def finished(daemon, token, job_id, timeout=180):
    return wait_for(lambda: (j := job(daemon, token, job_id))["state"] in TERMINAL_STATES and j,
                    timeout, 0.2, f"job {job_id} to end")


def logs(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text


def names(daemon, token):
    return [d["name"] for d in as_json(daemon.cli("datasets", "--json", token=token))["datasets"]]


def data_dir(tmp_path, name, mode=0o755):
    d = tmp_path / name
    d.mkdir()
    (d / "hello.txt").write_text(f"hello from {name}\n")
    (d / "hello.txt").chmod(0o644)
    d.chmod(mode)  # the container's uid (jobs.container_user) reads, or writes, the mounted directory itself
    return d


def test_a_dataset_is_read_in_jobs_and_workspaces_of_its_team_only_and_is_read_only(daemon, tmp_path):
    ann, ann_token = new_user(daemon, "ds")
    _, cat_token = new_user(daemon, "ds")
    team, corpus, scratch = f"vis{uuid.uuid4().hex[:6]}", f"corpus-{uuid.uuid4().hex[:6]}", f"scratch-{uuid.uuid4().hex[:6]}"
    for args in (("add", team), ("member", "add", team, ann)):
        assert daemon.cli("admin", "team", *args).returncode == 0
    r = daemon.cli("admin", "dataset", "add", corpus, str(data_dir(tmp_path, "corpus")), "--team", team)
    assert r.returncode == 0 and f"at /datasets/{corpus} (read-only) for team {team}" in r.stdout, r.stderr
    r = daemon.cli("admin", "dataset", "add", scratch, str(data_dir(tmp_path, "scratch", 0o777)), "--user", ann, "--writable")
    assert r.returncode == 0, r.stderr

    assert {corpus, scratch} <= set(names(daemon, ann_token))
    assert corpus not in names(daemon, cat_token) and scratch not in names(daemon, cat_token)
    entry = next(d for d in as_json(daemon.cli("datasets", "--json", token=ann_token))["datasets"] if d["name"] == corpus)
    assert entry["path"] == f"/datasets/{corpus}" and entry["writable"] is False and set(entry) == {
        "name", "path", "writable", "size_bytes", "size_measured_at"}

    # read-only: the read works, the write fails with EROFS; the writable one takes a file
    first = submit(daemon, ann_token, ["sh", "-c", f"cat /datasets/{corpus}/hello.txt; touch /datasets/{corpus}/x 2>&1; "
                                                   f"echo written > /datasets/{scratch}/from-job.txt && echo wrote"])
    assert finished(daemon, ann_token, first)["state"] == "succeeded"
    text = logs(daemon, ann_token, first)
    assert "hello from corpus" in text and "Read-only file system" in text and "wrote" in text, text
    assert (tmp_path / "scratch" / "from-job.txt").read_text() == "written\n"
    assert not (tmp_path / "corpus" / "x").exists()

    # a member outside the team: no mount at all
    other = submit(daemon, cat_token, ["sh", "-c", "ls -A /datasets 2>/dev/null; echo end"])
    assert finished(daemon, cat_token, other)["state"] == "succeeded"
    assert logs(daemon, cat_token, other).split() == ["end"]

    # the same in a workspace
    r = daemon.api("POST", "/api/v1/workspaces", ann_token, json={"name": "lab"})
    assert r.status_code == 201, r.text
    try:
        def container():
            out = subprocess.run(["docker", "ps", "-q", "--filter", f"label=mlpd.owner={ann}", "--filter", "label=mlpd.kind=workspace"],
                                 capture_output=True, text=True).stdout.split()
            return out[0] if out else None

        cid = wait_for(container, 120, 0.3, "the workspace's container")
        probe = subprocess.run(["docker", "exec", cid, "sh", "-c", f"cat /datasets/{corpus}/hello.txt; touch /datasets/{corpus}/y"],
                               capture_output=True, text=True)
        assert "hello from corpus" in probe.stdout and probe.returncode != 0 and "Read-only file system" in probe.stderr, probe
    finally:
        daemon.api("DELETE", "/api/v1/workspaces/lab", ann_token)

    # removed: audited, gone from the next job
    assert daemon.cli("admin", "dataset", "rm", scratch).returncode == 0
    actions = [e["action"] for e in daemon.api("GET", f"/api/v1/events?object_id={scratch}", daemon.admin_token).json()["events"]]
    assert actions == ["dataset.removed", "dataset.added"]
    assert scratch not in names(daemon, ann_token)


def test_each_refused_path_gets_its_message_and_adds_nothing(daemon, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "to-etc").symlink_to("/etc")
    inside = next(p for p in sorted(daemon.state_dir.iterdir()) if p.is_dir() and not p.is_symlink())
    before = as_json(daemon.cli("admin", "dataset", "list", "--json"))
    for path, words in (("/", "the host's root directory"), ("/etc", "is /etc"), ("/proc", "is /proc"), ("/sys", "is /sys"),
                        ("/dev", "is /dev"), ("/boot", "is /boot"), ("/var/lib/docker", "is /var/lib/docker"),
                        ("/var/run", "the Docker socket's directory"), (str(daemon.state_dir), "the state directory"),
                        (str(inside), "under the state directory"),
                        (str(tmp_path / "nothing"), "does not exist"), (str(tmp_path / "file"), "is not a directory"),
                        (str(tmp_path / "to-etc"), "through a symlink it resolves to /etc")):
        r = daemon.cli("admin", "dataset", "add", f"bad-{uuid.uuid4().hex[:6]}", path)
        assert r.returncode != 0 and words in r.stderr, (path, r.stderr)
    assert as_json(daemon.cli("admin", "dataset", "list", "--json")) == before


def test_a_link_swapped_after_the_add_fails_the_launch_with_the_reason(daemon, tmp_path):
    _, token = new_user(daemon, "ds")
    user = daemon.api("GET", "/api/v1/whoami", token).json()["user"]["name"]
    real = data_dir(tmp_path, "real")
    (tmp_path / "link").symlink_to(real)
    name = f"swap-{uuid.uuid4().hex[:6]}"
    assert daemon.cli("admin", "dataset", "add", name, str(tmp_path / "link"), "--user", user).returncode == 0
    ok = submit(daemon, token, ["cat", f"/datasets/{name}/hello.txt"])
    assert finished(daemon, token, ok)["state"] == "succeeded" and "hello from real" in logs(daemon, token, ok)

    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("/etc")
    bad = submit(daemon, token, ["cat", f"/datasets/{name}/passwd"])
    j = finished(daemon, token, bad)
    assert j["state"] == "failed" and f"dataset '{name}' was refused at launch and not mounted" in j["reason"], j
    listed = next(d for d in as_json(daemon.cli("admin", "dataset", "list", "--json"))["datasets"] if d["name"] == name)
    assert "resolves to /etc" in listed["problem"]
    daemon.cli("admin", "dataset", "rm", name)


def test_over_the_home_quota_a_new_job_is_refused_and_a_running_one_goes_on(make_daemon, tmp_path):
    config = tmp_path / "mlpd.toml"
    config.write_text("[quotas]\nhome_gb = 0.001\ndisk_measure_interval = 10\n")
    daemon = make_daemon(config_file=config)
    _, token = new_user(daemon, "full")
    running = submit(daemon, token, ["sleep", "600"])
    wait_for(lambda: job(daemon, token, running)["state"] == "running", 120, 0.2, "the long job to run")
    filler = submit(daemon, token, ["sh", "-c", "head -c 3000000 /dev/urandom > /home/mlpd/big.bin"])
    assert finished(daemon, token, filler)["state"] == "succeeded"

    def over():
        return as_json(daemon.cli("usage", "--disk", "--json", token=token))["home"]["over"]

    wait_for(over, 60, 0.5, "the worker to measure the home over quotas.home_gb")
    r = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "disk_quota_exceeded", r.text
    message = r.json()["error"]["message"]
    assert message.startswith("your home (/home/mlpd) holds 3.") and "over quotas.home_gb = 0.001 GB" in message
    assert "mlpd usage --disk" in message and "nothing is deleted" in message
    r = daemon.cli("run", "--no-code", "--", "true", token=token)
    assert r.returncode != 0 and "over quotas.home_gb" in r.stderr
    holds_for(lambda: job(daemon, token, running)["state"] == "running", 2, 0.5, "the running job")
    assert daemon.cli("usage", "--disk", token=token).stdout.count("OVER") == 1
    daemon.api("POST", f"/api/v1/jobs/{running}/cancel", token)
    assert json.loads(daemon.cli("usage", "--disk", "--all", "--json").stdout)["homes"]
