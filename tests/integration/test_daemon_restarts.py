"""A daemon process that keeps dying is restarted after 1, 2, 4 ... seconds, then left FATAL (supervisor's states).

A real daemon; its worker process is SIGKILLed each time it comes back, and `mlpd daemon --status`,
/healthz and the log tell the story as an admin would read it.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import requests

from conftest import holds_for, wait_for


def worker_pids(daemon_pid: int) -> list[int]:
    """The daemon's worker children (python -m mlpd.workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon_pid and b"mlpd.workers" in argv:
            found.append(int(entry.name))
    return found


def test_a_worker_that_keeps_dying_backs_off_then_is_fatal(make_daemon, tmp_path):
    config = tmp_path / "mlpd.toml"
    config.write_text("[server]\nrestart_fatal_after = 4\n")
    d = make_daemon(config_file=config)

    def status():
        return d.host_cli("daemon", "--status")

    first = status()
    assert first.returncode == 0 and first.stdout.splitlines()[1].split()[:2] == ["web", "RUNNING"], first.stdout
    assert "worker   RUNNING" in first.stdout
    killed_at, pid, seen_backoff = [], None, False
    for kill in range(4):
        pid = wait_for(lambda: (pids := worker_pids(d.proc.pid)) and pids[0] != pid and pids[0], 30, 0.05,
                       f"worker started again after kill {kill}")
        if killed_at:
            # the backoff: 1 s after the first quick exit, 2 s after the second, 4 s after the third
            assert time.monotonic() - killed_at[-1] >= 2 ** (kill - 1) - 0.1
        os.kill(pid, signal.SIGKILL)
        killed_at.append(time.monotonic())
        if kill == 2:  # a 4 s backoff: time enough to see it
            backoff = wait_for(lambda: "worker   BACKOFF" in (s := status()).stdout and s, 4, 0.1, "worker BACKOFF in --status")
            assert backoff.returncode == 0 and "killed by SIGKILL" in backoff.stdout, backoff.stdout
            assert requests.get(d.url + "/healthz", timeout=5).json()["children"]["worker"] == "backoff"
            seen_backoff = True
    assert seen_backoff
    fatal = wait_for(lambda: "worker   FATAL" in (s := status()).stdout and s, 10, 0.2, "worker FATAL in --status")
    assert fatal.returncode == 1, fatal
    line = next(x for x in fatal.stdout.splitlines() if "FATAL" in x)
    assert "4 times in a row" in line and "killed by SIGKILL" in line and "restart the daemon" in line
    health = requests.get(d.url + "/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["worker"] == "fatal" and health["children"]["worker"] == "fatal", health
    # longer than the last backoff was: a FATAL process stays down
    holds_for(lambda: worker_pids(d.proc.pid) == [], 3, 0.2, "no worker process")
    log = d.log_path.read_text(errors="replace")
    assert [m in log for m in ("restarting it in 1s", "restarting it in 2s", "restarting it in 4s")] == [True] * 3, log[-3000:]
    assert log.count("worker is FATAL") == 1 and "after" in log and "s: killed by SIGKILL)" in log
    with sqlite3.connect(f"file:{d.state_dir / 'mlpd.db'}?mode=ro", uri=True) as db:
        events = db.execute("SELECT actor, object_id FROM events WHERE action = 'daemon.child_fatal'").fetchall()
    assert events == [("mlpd", "worker")]
    assert d.stop() == 0  # SIGTERM still stops it cleanly
