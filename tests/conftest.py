"""Shared fixtures: real daemons on free ports with temporary state directories.

A session-wide daemon serves the tests that only need users and jobs; tests that
kill, restart or misconfigure a daemon start their own with ``make_daemon``.
Containers are cleaned up by the per-daemon label ``mlpd.instance``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

BIN = os.path.join(os.path.dirname(sys.executable), "mlpd")
# The shipped defaults, so that an /etc/mlpd/mlpd.toml on the test host (install.sh writes one) never leaks in.
SHIPPED_CONFIG = str(Path(__file__).resolve().parents[1] / "mlpd.toml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A free port whose next port is free too: a daemon's serving proxy takes the port after server.listen's (serving.listen "auto")."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue


def docker_available() -> bool:
    return shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0


# Tests that need Docker are skipped only on a developer machine without an engine; under CI
# (CI=true) they always run, so a missing engine fails them instead of hiding them.
needs_docker = pytest.mark.skipif(not docker_available() and os.environ.get("CI") != "true",
                                  reason="needs a Docker engine (tests/run.sh installs and starts one)")


class RunningDaemon:
    """A real `mlpd daemon` process and helpers to drive it like a user would."""

    def __init__(self, state_dir: Path, home: Path, extra_args: list[str] | None = None, config_file: Path | None = None):
        self.state_dir = state_dir
        self.home = home
        self.port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.port}"
        self.serving_url = f"http://127.0.0.1:{self.port + 1}"  # the serving proxy (serving.listen "auto")
        self.extra_args = extra_args or []
        self.config_file = config_file
        self.proc: subprocess.Popen | None = None
        self.log_path = state_dir.parent / f"daemon-{self.port}.log"
        self.admin_token: str | None = None

    # -- process
    def argv(self) -> list[str]:
        argv = [BIN, "daemon", "--state-dir", str(self.state_dir), "--listen", f"127.0.0.1:{self.port}"]
        if self.config_file:
            argv += ["--config", str(self.config_file)]
        return argv + self.extra_args

    def start(self, timeout: float = 60) -> "RunningDaemon":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).json().get("worker") == "ok":
                    return self
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon did not become healthy:\n{self.log_text()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if sig == signal.SIGKILL:
            # children die with their parent (PR_SET_PDEATHSIG); wait until the port is free again
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    requests.get(self.url + "/healthz", timeout=0.5)
                    time.sleep(0.2)
                except requests.RequestException:
                    break
        return self.proc.returncode if self.proc else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    # -- users
    def env(self, token: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
        env["MLPD_CONFIG"] = SHIPPED_CONFIG
        env["XDG_CONFIG_HOME"] = str(self.home / ".config")
        env["HOME"] = str(self.home)
        if token:
            env["MLPD_URL"], env["MLPD_TOKEN"] = self.url, token
        return env

    def host_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([BIN, *args, "--state-dir", str(self.state_dir)], capture_output=True, text=True, env=self.env(), timeout=60)

    def add_user(self, name: str, admin: bool = False) -> str:
        """Create a user on the host; return their token (the last line of output)."""
        result = self.host_cli("admin", "user", "add", name, *(["--admin"] if admin else []))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    def cli(self, *args: str, token: str | None = None, input: str | None = None, timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([BIN, *args], capture_output=True, text=True, env=self.env(token or self.admin_token), input=input, timeout=timeout, cwd=cwd)

    def api(self, method: str, path: str, token: str | None = None, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def instance_id(self) -> str:
        return (self.state_dir / "instance_id").read_text().strip()


def stop_serving_proxy(daemon: RunningDaemon) -> None:
    """Stop the daemon's serving proxy (it outlives the daemon by design), by the pid in its pidfile."""
    try:
        pid = int((daemon.state_dir / "run" / "serving" / "haproxy.pid").read_text().split()[0])
        if b"haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        pass


def remove_containers(daemon: RunningDaemon) -> None:
    stop_serving_proxy(daemon)
    try:
        instance = daemon.instance_id()
    except OSError:
        return
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=mlpd.instance={instance}"], capture_output=True, text=True).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


@pytest.fixture
def make_daemon(tmp_path_factory, request):
    """Start daemons of the test's own; stopped, their containers removed, and their log shown on failure."""
    started: list[RunningDaemon] = []

    def make(extra_args: list[str] | None = None, config_file: Path | None = None, start: bool = True, state_dir: Path | None = None) -> RunningDaemon:
        base = tmp_path_factory.mktemp("mlpd")
        d = RunningDaemon(state_dir or base / "state", base / "home", extra_args, config_file)
        (base / "home").mkdir(exist_ok=True)
        started.append(d)
        if start:
            d.start()
            d.admin_token = d.add_user("root", admin=True)
        return d

    yield make
    for d in started:
        d.stop()
        if docker_available():
            remove_containers(d)
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(f"\n--- daemon log ({d.url}) ---\n{d.log_text()}")


@pytest.fixture(scope="session")
def daemon(tmp_path_factory):
    """One daemon shared by the tests that only create their own users and jobs (2 declared GPUs)."""
    base = tmp_path_factory.mktemp("shared")
    (base / "home").mkdir()
    d = RunningDaemon(base / "state", base / "home", ["--declare-gpus", "2"])
    d.start()
    d.admin_token = d.add_user("root", admin=True)
    yield d
    d.stop()
    if docker_available():
        remove_containers(d)


# The tiers, by directory: tests/unit and tests/api (the app through its test client, in-memory
# runtime) and the in-memory half of tests/contract need no Docker engine and make up
# `./tests/run.sh --fast`; integration and browser drive a real daemon and engine. Marked here so
# that `-m fast`, `-m api` or `-m "not browser"` select what they say (see [tool.pytest] markers).
TIERS = {"unit": "unit", "api": "api", "contract": "contract", "integration": "integration", "browser": "browser"}
FAST_TIERS = {"unit", "api"}


def pytest_collection_modifyitems(config, items):
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        try:
            tier = TIERS.get(Path(str(item.fspath)).resolve().relative_to(tests_dir).parts[0])
        except ValueError:
            continue
        if tier is None:
            continue
        item.add_marker(getattr(pytest.mark, tier))
        if tier in FAST_TIERS or (tier == "contract" and item.get_closest_marker("docker") is None):
            item.add_marker(pytest.mark.fast)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def wait_for(predicate, timeout: float = 30, interval: float = 0.1, message: str = "condition"):
    """Poll until predicate() is truthy; return its value or fail with message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


def holds_for(predicate, seconds: float, interval: float = 0.1, message: str = "condition") -> None:
    """Check, again and again for `seconds`, that something stays true: how a test shows that
    something does NOT happen (a script that never runs, a process that stays down). It fails at
    the first check that does not hold, not after a sleep."""
    deadline = time.monotonic() + seconds
    while True:
        assert predicate(), f"{message} stopped holding"
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def new_user(daemon: "RunningDaemon", prefix: str = "u") -> tuple[str, str]:
    """A member with a unique name (prefix + 8 hex), created on the host; returns (name, token)."""
    import uuid

    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    return name, daemon.add_user(name)


def as_json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)
