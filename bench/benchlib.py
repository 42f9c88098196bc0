"""What the bench/ scripts share: a daemon of their own on a loopback port, timing statistics, Docker calls.

The scripts run as `python bench/NAME.py`, which puts bench/ on sys.path, so they `import benchlib`.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import os
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import requests

BIN = os.path.join(os.path.dirname(sys.executable), "mlpd")
IMAGE = "mlpd/train:latest"  # the shipped jobs.default_image
SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "mlpd.toml"
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition


def log(msg: str) -> None:
    """Print msg to stderr with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(xs: list[float]) -> float:
    """The median of xs; nan when empty."""
    return statistics.median(xs) if xs else float("nan")


def p90(xs: list[float]) -> float:
    """The 90th percentile of xs (inclusive, interpolated); nan when empty."""
    if not xs:
        return float("nan")
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=10, method="inclusive")[8]


def ms(x: float | None) -> str:
    """Seconds as whole milliseconds ("12 ms"); "n/a" for None or nan."""
    return "n/a" if x is None or x != x else f"{x * 1000:.0f} ms"


def ratio(a: float, b: float) -> float:
    """a / b; nan when b is zero or either is nan."""
    return a / b if b and a == a and b == b else float("nan")


def times(x: float) -> str:
    """A ratio as "1.23x"; "n/a" for nan."""
    return "n/a" if x != x else f"{x:.2f}x"


def print_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows as a Markdown table with the columns metric, value, baseline, ratio."""
    print("| metric | value | baseline | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def docker(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the docker CLI, capturing its output; raise on a non-zero exit when check is set."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def image_missing() -> bool:
    """True, after saying so on stderr, when IMAGE is not in the local Docker."""
    if docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return False
    print(f"error: image {IMAGE} is missing (mlpd images build --local)", file=sys.stderr)
    return True


class Daemon:
    """A real `mlpd daemon` of the benchmark's own: state, HOME and log under base, a free loopback port."""

    def __init__(self, base: Path, config_text: str | None = None, daemon_args: tuple[str, ...] = ()):
        self.base = base
        self.state_dir = base / "state"
        self.home = base / "home"
        self.home.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/api/v1"
        self.log_path = base / "daemon.log"
        self.argv = [BIN, "daemon", "--state-dir", str(self.state_dir), "--listen", f"127.0.0.1:{self.port}", *daemon_args]
        if config_text is not None:
            config = base / "mlpd.toml"
            config.write_text(config_text)
            self.argv += ["--config", str(config)]
        self.proc: subprocess.Popen | None = None
        self.instance = ""
        self.token = ""

    def env(self, token: str | None = None) -> dict[str, str]:
        """The environment for mlpd commands: no MLPD_* of ours, HOME under base; MLPD_URL/MLPD_TOKEN with a token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_")}
        env["HOME"] = str(self.home)
        env["XDG_CONFIG_HOME"] = str(self.home / ".config")
        if token:
            env["MLPD_URL"], env["MLPD_TOKEN"] = self.url, token
        return env

    def start(self, timeout: float = 90) -> None:
        """Start the daemon and wait until /healthz says its worker is ok."""
        log(f"starting daemon on {self.url} (state {self.state_dir})")
        self.log_fh = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self.log_fh, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).json().get("worker") == "ok":
                    break
            except (requests.RequestException, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError(f"daemon did not become healthy:\n{self.log_tail()}")
        self.instance = (self.state_dir / "instance_id").read_text().strip()

    def add_user(self, name: str, admin: bool = False) -> str:
        """Add a user with `mlpd admin user add --state-dir`; return its token."""
        argv = [BIN, "admin", "user", "add", name, *(["--admin"] if admin else []), "--state-dir", str(self.state_dir)]
        result = subprocess.run(argv, capture_output=True, text=True, env=self.env(), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"admin user add {name} failed: {result.stderr}")
        return result.stdout.strip().splitlines()[-1]

    def session(self, token: str | None = None) -> requests.Session:
        """A requests.Session that sends token (default: self.token) as its bearer token."""
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token or self.token}"
        return s

    def query(self, sql: str, params=()) -> list[tuple]:
        """Read the state database (read-only; the API lists a limited number of rows and costs the daemon)."""
        con = sqlite3.connect(f"file:{self.state_dir / 'mlpd.db'}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

    def state_counts(self) -> dict[str, int]:
        """Jobs per state, from the state database."""
        return dict(self.query("SELECT state, COUNT(*) FROM jobs GROUP BY state"))

    def log_tail(self, n: int = 4000) -> str:
        """The last n characters of the daemon's log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> int | None:
        """SIGTERM the daemon (SIGKILL its process group after 20 s); its exit status."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode if self.proc else None

    @contextmanager
    def running(self, keep: bool = False, labels: tuple[str, ...] = ()) -> Iterator[None]:
        """Start the daemon for the block; if the block fails, log the daemon's log tail; then clean up."""
        try:
            self.start()
            yield
        except BaseException:
            log("benchmark failed; daemon log tail:\n" + self.log_tail())
            raise
        finally:
            self.cleanup(keep, labels)

    def cleanup(self, keep: bool = False, labels: tuple[str, ...] = ()) -> None:
        """Stop the daemon, remove the containers of its instance (and any with the extra labels), delete base unless keep."""
        code = self.stop()
        if code not in (0, None):
            log(f"warning: the daemon exited {code} on SIGTERM")
        stop_serving_proxy(self.state_dir)
        if not self.instance:
            try:
                self.instance = (self.state_dir / "instance_id").read_text().strip()
            except OSError:
                pass
        removed = []
        for label in ([f"mlpd.instance={self.instance}"] if self.instance else []) + list(labels):
            ids = docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
            if ids:
                docker("rm", "-f", *ids, check=False)
                removed.append(f"{len(ids)} with {label}")
        if removed:
            log("removed leftover containers: " + ", ".join(removed))
        if not keep:
            shutil.rmtree(self.base, ignore_errors=True)


def stop_serving_proxy(state_dir: Path) -> None:
    """Stop a daemon's serving proxy (haproxy outlives the daemon by design), by the pid in its pidfile."""
    try:
        pid = int((state_dir / "run" / "serving" / "haproxy.pid").read_text().split()[0])
        if b"haproxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError, IndexError):
        pass


class JobClient:
    """A session as the daemon's bench user (d.token), with the job calls the latency benchmarks make."""

    def __init__(self, d: Daemon):
        self.d = d
        self.s = d.session()

    def job(self, job_id: str) -> dict:
        """GET /api/v1/jobs/ID: the job, with its history."""
        r = self.s.get(f"{self.d.api}/jobs/{job_id}", timeout=30)
        r.raise_for_status()
        return r.json()["job"]

    def wait_ended(self, job_id: str, timeout: float, poll: float, container_poll: float) -> dict:
        """Poll until the job has ended and its container is gone; return the job with its history."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} still {job['state']} after {timeout}s")
            time.sleep(poll)
        while docker("ps", "-aq", "--filter", f"name=mlpd-job-{job_id}").stdout.strip():
            if time.monotonic() > deadline:
                raise RuntimeError(f"container of job {job_id} not removed")
            time.sleep(container_poll)
        return job


def parallel(d: Daemon, n: int, threads: int, call: Callable[[requests.Session], Any], tokens: list[str] | None = None,
             check: bool = False) -> dict:
    """n calls of call(session) from `threads` threads at once (a warmed Session each, tokens round-robin): timings, results, errors."""
    tokens = tokens or [d.token]
    sessions = []
    for i in range(threads):
        s = d.session(tokens[i % len(tokens)])
        s.get(f"{d.api}/whoami", timeout=30).raise_for_status()  # connect before the clock starts
        sessions.append(s)
    lock = threading.Lock()
    counter = iter(range(n))
    barrier = threading.Barrier(threads + 1)
    latencies: list[float] = []
    results: list = []
    errors: list[str] = []

    def client(s: requests.Session) -> None:
        barrier.wait()
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            try:
                value = call(s)
            except Exception as exc:  # report, do not hang the barrier
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)
                results.append(value)

    pool = [threading.Thread(target=client, args=(s,)) for s in sessions]
    for t in pool:
        t.start()
    started_wall = time.time()
    barrier.wait()
    t0 = time.perf_counter()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    for s in sessions:
        s.close()
    if check and errors:
        raise RuntimeError(f"{len(errors)} of {n} requests failed, e.g. {errors[0]}")
    return {"elapsed": elapsed, "started_wall": started_wall, "t0": t0, "latencies": latencies, "results": results, "errors": errors}
