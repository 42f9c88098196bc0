"""The unit install.sh writes, run by a real systemd: PID 1 of a container made from mlpd's own Debian
base (tests/fixtures/systemd), with this host's installed venv (read-only, at the same path), the
host's Docker engine socket, and a state directory at the same path on both sides (job containers
are the host engine's, so their bind mounts must name host paths).

systemd itself then applies every sandbox setting of the unit (ProtectSystem=strict, PrivateTmp,
the capability set, the system-call filter, ...); test_service.py only imitates the credentials with
setpriv. What is checked: `systemctl start` returns once the daemon says READY (Type=notify), it runs
as the mlpd user with no new privileges and CAP_DAC_OVERRIDE alone, answers /healthz, runs a job, and
`systemctl stop` (KillMode=mixed) leaves the job's container running for the next start to adopt.

Needs root, Docker, and what install.sh installs (the venv under /opt/mlpd, the system user mlpd,
the images): CI runs install.sh first; elsewhere it is skipped when they are missing.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import SHIPPED_CONFIG, free_port, needs_docker
from test_service import IN_CI, render_unit, unit_settings

pytestmark = needs_docker

IMAGE = "mlpd-test/systemd:bookworm"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "systemd"
SOCKET = "/var/run/docker.sock"
CAP_DAC_OVERRIDE = 1 << 1


def docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr or result.stdout}"
    return result


def prerequisites(venv_mlpd: str) -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    try:
        pwd.getpwnam("mlpd")
    except KeyError:
        missing.append("the system user mlpd")
    if not os.access(venv_mlpd, os.X_OK):
        missing.append(venv_mlpd)
    elif not os.path.realpath(os.path.join(os.path.dirname(venv_mlpd), "python")).startswith("/usr/bin/"):
        missing.append("a venv made from Debian's python3 (the container has the same at /usr/bin)")
    for image in ("mlpd/base:bookworm", "mlpd/train:latest"):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
            missing.append(f"the image {image}")
    return missing


def test_systemd_starts_the_unit_sandboxed_and_a_stop_leaves_its_jobs_running():
    venv_mlpd = unit_settings(render_unit())["ExecStart"][0].split()[0]  # install.sh's default prefix
    missing = prerequisites(venv_mlpd)
    if missing:
        if IN_CI:
            pytest.fail(f"CI runs install.sh first, yet this test lacks: {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)} (sudo ./install.sh)")
    docker("build", "-q", "-t", IMAGE, "--label", "mlpd-test=systemd", str(FIXTURE), timeout=600)

    user = pwd.getpwnam("mlpd")
    # Not under /tmp or /var/tmp: the unit's PrivateTmp gives the daemon empty ones of its own.
    top = Path(tempfile.mkdtemp(prefix="mlpd-systemd-test-", dir="/var/lib"))
    os.chmod(top, 0o755)
    state = top / "state"
    state.mkdir(mode=0o700)
    os.chown(state, user.pw_uid, user.pw_gid)
    unit = top / "mlpd.service"
    unit.write_text(render_unit(MLPD_STATE_DIR=str(state), MLPD_CONFIG_DIR=str(top)))
    port = free_port()
    config = top / "mlpd.toml"
    text = Path(SHIPPED_CONFIG).read_text()
    for key, value in (("state_dir", f'"{state}"'), ("listen", f'"127.0.0.1:{port}"'), ("container_listen", '""')):
        text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)  # listen: [server]'s (serving.listen stays auto)
    config.write_text(text)
    os.chmod(config, 0o644)
    url = f"http://127.0.0.1:{port}"
    prefix = str(Path(venv_mlpd).parents[2])  # /opt/mlpd
    name = f"mlpd-systemd-test-{uuid.uuid4().hex[:8]}"
    instance = None

    def inside(*argv: str, as_mlpd: bool = False, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        opts = ["-u", "mlpd"] if as_mlpd else []
        for k, v in (env or {}).items():
            opts += ["-e", f"{k}={v}"]
        return subprocess.run(["docker", "exec", *opts, name, *argv], capture_output=True, text=True, timeout=timeout)

    def journal() -> str:
        return inside("journalctl", "-u", "mlpd", "--no-pager", "-o", "cat").stdout

    try:
        docker("run", "-d", "--name", name, "--label", "mlpd-test=systemd",
               "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
               "--tmpfs", "/run", "--tmpfs", "/run/lock", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
               "-v", f"{prefix}:{prefix}:ro", "-v", f"{top}:{top}", "-v", f"{SOCKET}:{SOCKET}",
               "-v", f"{unit}:/etc/systemd/system/mlpd.service:ro", IMAGE)
        deadline = time.monotonic() + 60
        while inside("systemctl", "is-system-running").stdout.strip() not in ("running", "degraded"):
            assert time.monotonic() < deadline, docker("logs", name, check=False).stdout[-3000:]
            time.sleep(0.5)
        # the daemon's user as install.sh makes it on the host: same ids, and the group of the engine's socket
        docker_gid = os.stat(SOCKET).st_gid
        setup = inside("sh", "-ec", f"groupadd -g {docker_gid} docker; groupadd -g {user.pw_gid} mlpd; "
                                    f"useradd -r -u {user.pw_uid} -g mlpd -G docker -d /nonexistent -s /usr/sbin/nologin mlpd; "
                                    "systemctl daemon-reload")
        assert setup.returncode == 0, setup.stderr

        started = inside("systemctl", "start", "mlpd", timeout=200)  # Type=notify: returns once the daemon says READY=1
        assert started.returncode == 0, started.stderr + journal()[-4000:]
        assert inside("systemctl", "is-active", "mlpd").stdout.strip() == "active"
        main_pid = inside("systemctl", "show", "-p", "MainPID", "--value", "mlpd").stdout.strip()
        status = dict(line.split(":\t", 1) for line in inside("cat", f"/proc/{main_pid}/status").stdout.splitlines() if ":\t" in line)
        assert int(status["Uid"].split()[0]) == user.pw_uid and status["NoNewPrivs"].strip() == "1"
        assert int(status["CapEff"], 16) == CAP_DAC_OVERRIDE and int(status["CapBnd"], 16) == CAP_DAC_OVERRIDE
        users = {line.split()[0] for line in inside("ps", "-o", "uid=", "--ppid", main_pid).stdout.splitlines()}
        assert users == {str(user.pw_uid)}  # gunicorn and the worker run as mlpd too
        health = inside(f"{prefix}/venv/bin/python", "-c", f"import urllib.request; print(urllib.request.urlopen('{url}/healthz').read().decode())")
        assert json.loads(health.stdout)["worker"] == "ok", health.stderr
        log = journal()
        assert "mlpd daemon ready" in log and "reception only permitted" not in log, log[-4000:]
        instance = (state / "instance_id").read_text().strip()

        added = inside(venv_mlpd, "admin", "user", "add", "svc", "--admin", "--state-dir", str(state), as_mlpd=True)
        assert added.returncode == 0, added.stderr
        client = {"MLPD_URL": url, "MLPD_TOKEN": added.stdout.strip().splitlines()[-1], "HOME": "/tmp"}
        submitted = inside(venv_mlpd, "run", "--no-code", "--json", "--", "sleep", "300", env=client)
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["job"]["id"]

        def job() -> dict:
            shown = inside(venv_mlpd, "jobs", "show", job_id, "--json", env=client)
            assert shown.returncode == 0, shown.stderr
            return json.loads(shown.stdout)["job"]

        deadline = time.monotonic() + 90
        while (seen := job())["state"] != "running":  # one read per round: a second one may see it running
            assert time.monotonic() < deadline and seen["state"] in ("queued", "starting"), seen
            time.sleep(0.5)
        container = docker("ps", "-q", "--filter", f"label=mlpd.job_id={job_id}").stdout.strip()
        assert container

        stopped = inside("systemctl", "stop", "mlpd", timeout=60)  # KillMode=mixed: SIGTERM to the daemon alone
        assert stopped.returncode == 0, stopped.stderr
        assert inside("systemctl", "is-active", "mlpd").stdout.strip() == "inactive"
        assert inside("pgrep", "-u", str(user.pw_uid)).stdout.strip() == ""  # nothing of the unit is left
        assert docker("ps", "-q", "--filter", f"label=mlpd.job_id={job_id}").stdout.strip() == container  # the job runs on

        assert inside("systemctl", "start", "mlpd", timeout=200).returncode == 0
        assert job()["state"] == "running"  # adopted by the next start
        assert inside(venv_mlpd, "cancel", job_id, env=client).returncode == 0
        deadline = time.monotonic() + 60
        while (seen := job())["state"] == "running":
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)
        assert seen["state"] == "cancelled", seen
    finally:
        subprocess.run(["docker", "exec", name, "systemctl", "stop", "mlpd"], capture_output=True, timeout=60)
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        if instance:
            ids = docker("ps", "-aq", "--filter", f"label=mlpd.instance={instance}", check=False).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)
