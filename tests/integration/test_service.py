"""The service install.sh sets up (issue 16): its systemd unit passes `systemd-analyze verify`, and the
daemon, started the way that unit starts it (its user and groups, umask, environment, no new privileges,
no capabilities), answers /healthz, runs a job, and leaves the job's container running when it is
stopped the way systemd stops it (SIGTERM to the daemon alone, KillMode=mixed).

The second test needs root (to switch to the daemon's user) and install.sh's system user and venv:
CI runs install.sh before the tests; elsewhere it is skipped when they are missing.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from conftest import BIN, SHIPPED_CONFIG, free_port, needs_docker

ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI") == "true"


def render_unit(**settings: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
    env.update(settings)
    result = subprocess.run([str(ROOT / "install.sh"), "--print-unit"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def unit_settings(text: str) -> dict[str, list[str]]:
    """Each key of the unit's [Service] section with its values, in order."""
    section, out = "", {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def systemd_analyze() -> str | None:
    if shutil.which("systemd-analyze"):
        return shutil.which("systemd-analyze")
    if os.geteuid() == 0 and shutil.which("apt-get") and IN_CI:
        # only for this check: it works without systemd running as PID 1
        subprocess.run(["apt-get", "install", "-y", "-qq", "systemd"], capture_output=True, timeout=300,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("systemd-analyze")


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = systemd_analyze()
    if not analyze:
        pytest.skip("no systemd-analyze (apt-get install systemd)")
    # ExecStart must name an executable: point the prefix at this test run's venv
    prefix = tmp_path / "prefix"
    prefix.mkdir()
    (prefix / "venv").symlink_to(sys.prefix)
    state = tmp_path / "state"
    text = render_unit(MLPD_PREFIX=str(prefix), MLPD_STATE_DIR=str(state), MLPD_CONFIG_DIR=str(tmp_path / "etc"))
    unit = tmp_path / "mlpd.service"
    unit.write_text(text)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on settings it ignores (a misspelt key, a bad value): any message about our unit fails
    ours = [line for line in (result.stdout + result.stderr).splitlines() if "mlpd.service" in line]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr

    s = unit_settings(text)
    assert s["ExecStart"] == [f"{prefix}/venv/bin/mlpd daemon --config {tmp_path}/etc/mlpd.toml"]
    assert s["User"] == ["mlpd"] and s["SupplementaryGroups"] == ["docker"]
    assert s["ReadWritePaths"] == [str(state)]
    for key, value in {"Type": "notify", "KillMode": "mixed", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": "CAP_DAC_OVERRIDE",
                       "AmbientCapabilities": "CAP_DAC_OVERRIDE", "StandardOutput": "journal"}.items():
        assert s[key] == [value], key


def as_unit_argv(settings: dict[str, list[str]], exec_start: list[str]) -> list[str]:
    """What systemd would do with the unit's credentials and environment, with setpriv."""
    env = " ".join(settings.get("Environment", [])).split()
    caps = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in " ".join(settings["AmbientCapabilities"]).split()])
    bounding = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in " ".join(settings["CapabilityBoundingSet"]).split()])
    return ["setpriv", f"--reuid={settings['User'][0]}", f"--regid={settings['Group'][0]}",
            f"--groups={','.join(settings['SupplementaryGroups'])}", *(["--no-new-privs"] if settings["NoNewPrivileges"] == ["yes"] else []),
            f"--inh-caps={caps}", f"--ambient-caps={caps}", f"--bounding-set={bounding}",
            "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *env, *exec_start]


def process_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line for line in fh if line.startswith("Uid:")).split()[1])


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        with open(f"/proc/{pid}/status") as fh:
            pid = int(next(line for line in fh if line.startswith("PPid:")).split()[1])
        out.append(pid)
    return out


@needs_docker
def test_the_daemon_as_its_unit_runs_it_answers_runs_a_job_and_leaves_containers_running_when_stopped():
    exec_start = unit_settings(render_unit())["ExecStart"][0].split()  # the installed venv, install.sh's default
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    try:
        user = pwd.getpwnam("mlpd")
    except KeyError:
        user = None
        missing.append("the system user mlpd")
    if not os.access(exec_start[0], os.X_OK):
        missing.append(exec_start[0])
    if missing:
        if IN_CI:
            pytest.fail(f"CI runs install.sh first, yet this test lacks: {', '.join(missing)}")
        pytest.skip(f"needs {', '.join(missing)} (sudo ./install.sh)")

    # Its own state directory (the user's, 0700) and config, where the daemon's user can reach them;
    # the unit is install.sh's, rendered for them
    top = Path(tempfile.mkdtemp(prefix="mlpd-service-test-", dir="/var/tmp"))
    os.chmod(top, 0o755)
    state = top / "state"
    state.mkdir(mode=0o700)
    os.chown(state, user.pw_uid, user.pw_gid)
    s = unit_settings(render_unit(MLPD_STATE_DIR=str(state), MLPD_CONFIG_DIR=str(top)))
    assert s["User"] == ["mlpd"] and s["WorkingDirectory"] == [str(state)]
    exec_start = s["ExecStart"][0].split()
    port = free_port()
    config = top / "mlpd.toml"
    shipped = Path(SHIPPED_CONFIG).read_text()
    config.write_text(re.sub(r'(?m)^state_dir = .*$', f'state_dir = "{state}"', re.sub(r'(?m)^listen = .*$', f'listen = "127.0.0.1:{port}"', shipped, count=1)))
    os.chmod(config, 0o644)
    argv = as_unit_argv(s, exec_start)
    url = f"http://127.0.0.1:{port}"
    log_path = top / "daemon.log"
    umask = int(s["UMask"][0], 8)

    def start() -> subprocess.Popen:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=s["WorkingDirectory"][0], stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=lambda: os.umask(umask))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
            try:
                if requests.get(url + "/healthz", timeout=1).json().get("worker") == "ok":
                    return proc
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.3)
        raise AssertionError("no answer on /healthz:\n" + log_path.read_text(errors="replace")[-4000:])

    def stop(proc: subprocess.Popen) -> int:
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: SIGTERM to the main process only
        return proc.wait(30)

    as_daemon_user = as_unit_argv(s, [])
    home = top / "home"
    home.mkdir()
    client_env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
    client_env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), MLPD_URL=url)
    code = top / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "train.py").write_text(
        "import os, time\n"
        "os.makedirs('/outputs/model', exist_ok=True)\n"
        "os.makedirs('/outputs/model/private', mode=0o700)\n"
        "open('/outputs/model/private/w.txt', 'w').write('weights')\n"
        "os.chmod('/outputs/model/private/w.txt', 0o600)\n"
        "print('started as uid', os.getuid(), flush=True)\n"
        "time.sleep(float(os.environ['SLEEP']))\n"
        "print('finished', sorted(os.listdir('pkg')), flush=True)\n")
    proc = None
    instance = None
    try:
        proc = start()
        daemon_uid = process_uid(proc.pid)
        assert daemon_uid == user.pw_uid
        children = subprocess.run(["ps", "-o", "uid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children and set(map(int, children)) == {user.pw_uid}
        instance = (state / "instance_id").read_text().strip()
        assert (state.stat().st_mode & 0o777) == 0o700 and state.stat().st_uid == user.pw_uid

        added = subprocess.run([*as_daemon_user, exec_start[0], "admin", "user", "add", "svc", "--state-dir", str(state)],
                               capture_output=True, text=True, timeout=60)
        assert added.returncode == 0, added.stderr
        client_env["MLPD_TOKEN"] = added.stdout.strip().splitlines()[-1]
        submitted = subprocess.run([BIN, "run", "--json", "--code", str(code), "--env", "SLEEP=12", "--", "python", "pkg/train.py"],
                                   capture_output=True, text=True, env=client_env, timeout=60)
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["job"]["id"]

        def job() -> dict:
            return requests.get(f"{url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {client_env['MLPD_TOKEN']}"}, timeout=10).json()["job"]

        deadline = time.monotonic() + 60
        while (seen := job())["state"] != "running":  # one read per round: a second one may see it running
            assert time.monotonic() < deadline and seen["state"] in ("queued", "starting"), seen
            time.sleep(0.5)
        container = subprocess.run(["docker", "ps", "-q", "--filter", f"label=mlpd.job_id={job_id}"], capture_output=True, text=True).stdout.strip()
        assert container
        # the job's processes are the engine's (containerd's) children, not the daemon's: stopping the unit leaves them
        job_pid = int(subprocess.run(["docker", "inspect", "-f", "{{.State.Pid}}", container], capture_output=True, text=True).stdout)
        assert proc.pid not in ancestors(job_pid)

        assert stop(proc) == 0, log_path.read_text(errors="replace")[-4000:]
        proc = None
        state_now = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}}", container], capture_output=True, text=True).stdout.strip()
        assert state_now == "running", "stopping the daemon stopped its job's container"

        proc = start()  # a restart (or an upgrade) picks the running job up and sees it to its end
        deadline = time.monotonic() + 90
        while (seen := job())["state"] in ("running", "starting"):
            assert time.monotonic() < deadline, seen
            time.sleep(0.5)
        assert seen["state"] == "succeeded", seen
        logs = subprocess.run([BIN, "logs", job_id], capture_output=True, text=True, env=client_env, timeout=60).stdout
        assert "started as uid 65200" in logs and "finished ['train.py']" in logs, logs
        # a file the job made private (uid 65200, 0600 in a 0700 directory) still reaches its owner
        got = subprocess.run([BIN, "jobs", "outputs", job_id], capture_output=True, text=True, env=client_env, cwd=top, timeout=60)
        assert got.returncode == 0, got.stderr
        assert (top / f"outputs-{job_id}" / "model" / "private" / "w.txt").read_text() == "weights", got.stdout + got.stderr
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if instance:
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.instance={instance}"], capture_output=True, text=True).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        if not os.environ.get("MLPD_KEEP_TEST_STATE"):
            shutil.rmtree(top, ignore_errors=True)
