"""Without systemd: `mlpd daemon --background`, `--status` and `--stop`, with a pid that is never stale."""

from __future__ import annotations

import os
import signal
import subprocess

import requests

from conftest import BIN, SHIPPED_CONFIG, free_port


def test_background_status_and_stop_use_the_lock_not_a_stale_pid(tmp_path):
    state, port = tmp_path / "state", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
    env.update(MLPD_CONFIG=SHIPPED_CONFIG, HOME=str(tmp_path))
    args = ["--state-dir", str(state), "--listen", f"127.0.0.1:{port}"]

    def mlpd(*extra):
        return subprocess.run([BIN, "daemon", *args, *extra], env=env, capture_output=True, text=True, timeout=120)

    assert mlpd("--status").returncode == 3
    started = mlpd("--background")
    assert started.returncode == 0 and "running in the background" in started.stdout, started.stderr
    try:
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        status = mlpd("--status")
        assert status.returncode == 0 and "running, pid" in status.stdout
        pid = int(status.stdout.split("pid ")[1].split()[0])
        again = mlpd("--background")
        assert again.returncode == 1 and "already runs" in again.stderr
        stopped = mlpd("--stop")
        assert stopped.returncode == 0 and "stopped the mlpd daemon" in stopped.stdout, stopped.stderr
        assert mlpd("--status").returncode == 3
        assert "no mlpd daemon" in mlpd("--stop").stdout
        # a daemon killed outright leaves its pid in the lock file, but the lock itself dies with it
        mlpd("--background")
        pid = int(mlpd("--status").stdout.split("pid ")[1].split()[0])
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if mlpd("--status").returncode == 3:
                break
        assert mlpd("--status").returncode == 3  # no stale pid
    finally:
        subprocess.run([BIN, "daemon", *args, "--stop"], env=env, capture_output=True, timeout=60)
