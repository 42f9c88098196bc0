"""`mlpd ws tunnel --run` ends its ssh when it is ended itself (SIGINT, SIGTERM, SIGHUP)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import wait_for


def children(pid: int) -> list[int]:
    """The direct children of a process (Linux /proc), none once it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


def catches_its_signals(pid: int) -> bool:
    """Whether the tunnel has installed its handlers. run_forwarding_signals installs them (INT, TERM,
    then HUP) only after it has started its child, and a signal before that ends it unforwarded: so
    a test waits for SIGHUP to be caught (Linux /proc SigCgt) before it signals."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            caught = next(int(line.split()[1], 16) for line in fh if line.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(caught >> (signal.SIGHUP - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_tunnel_is_passed_on_to_its_child_which_ends_with_it(tmp_path, sig):
    pidfile = tmp_path / "child"
    code = ("import sys; from mlpd.cli.ws import run_forwarding_signals; "
            f"sys.exit(run_forwarding_signals(['sh', '-c', 'echo $$ > {pidfile}; exec sleep 60']))")
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    child = int(pidfile.read_text())
    # Signalled before its exec, the shell (not sleep) would take the signal: wait for the exec.
    wait_for(lambda: b"sleep" in open(f"/proc/{child}/cmdline", "rb").read(), 20, 0.02, "the child to exec sleep")
    wait_for(lambda: catches_its_signals(proc.pid), 20, 0.02, "the tunnel to catch its signals")
    proc.send_signal(sig)
    assert proc.wait(timeout=10) == 0
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and "zombie" not in open(f"/proc/{child}/status").read():
        assert time.monotonic() < deadline, "the child outlived the tunnel"
        time.sleep(0.05)


def test_a_child_that_ignores_the_signal_is_killed_after_the_grace_period(tmp_path):
    code = ("import sys; from mlpd.cli.ws import run_forwarding_signals; "
            "sys.exit(run_forwarding_signals(['sh', '-c', 'trap \"\" TERM; sleep 20 & wait'], grace=0.5))")
    proc = subprocess.Popen([sys.executable, "-c", code])
    # The shell has set its trap once it has started its sleep: only then is the signal ignored.
    wait_for(lambda: any(children(c) for c in children(proc.pid)), 20, 0.05, "the child to trap TERM and sleep")
    wait_for(lambda: catches_its_signals(proc.pid), 20, 0.02, "the tunnel to catch its signals")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0 and time.monotonic() - started < 5
