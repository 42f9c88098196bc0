"""`mlpd daemon`: the front (nginx), gunicorn (the Flask app) and the worker process, supervised in the foreground.

The front (mlpd.ops.front) takes the network connections and passes whole requests to gunicorn's
Unix socket, so that a slow or silent client holds no web thread; without one (server.front =
"none", or "auto" where nginx is not installed) gunicorn binds the addresses itself.

This module imports neither flask nor huey: it starts them as child processes.
The children get PR_SET_PDEATHSIG so that a daemon killed with SIGKILL does not
leave an orphaned server holding the port; the state database and Docker's
labels carry everything across such a crash.

A child that exits is started again after a backoff, and one that keeps exiting soon after its
start is FATAL and left alone (mlpd.ops.supervision decides; supervisor's BACKOFF and FATAL). The
children's states are published in the database (daemon_status "daemon.children") for
`mlpd daemon --status` and /healthz, and a FATAL child is also an event row.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import Any

from mlpd.ops import supervision
from mlpd.config import Config
from mlpd.store import MigrationError, Store, record_event, set_status

log = logging.getLogger("mlpd.ops.daemon")
RESOLVED_CONFIG_ENV = "MLPD_RESOLVED_CONFIG"  # mirrored in mlpd.web (which this module must not import)
PR_SET_PDEATHSIG = 1


class DaemonError(Exception):
    """The daemon cannot start, with a message for the admin."""


def _die_with(sig: int):
    def set_death_signal() -> None:
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        except OSError:
            pass

    return set_death_signal


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def acquire_state_lock(state_dir: str, wait: float = 30.0):
    """Hold an exclusive lock on the state directory for the daemon's life, or raise DaemonError.

    Every process that acts on the state directory holds this lock: the daemon and, through
    an inherited descriptor, its web and worker processes. When the daemon that holds it is
    gone (killed) but its processes are still exiting, wait for them rather than run a
    second controller beside them; when it is alive, refuse at once.
    """
    path = os.path.join(state_dir, "daemon.lock")
    fh = open(path, "a+")
    deadline = time.monotonic() + wait
    announced = False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            if _alive(holder):
                fh.close()
                raise DaemonError(f"another mlpd daemon (pid {holder}) is already running on state directory {state_dir}; stop it first") from None
            if time.monotonic() > deadline:
                fh.close()
                raise DaemonError(f"the mlpd daemon (pid {holder}) on state directory {state_dir} is gone, but processes it started "
                                  f"still hold {path} after {wait:.0f}s; stop them ('fuser -v {path}' lists them)") from None
            if not announced:
                log.warning("the previous daemon (pid %s) is gone but its processes still hold %s; waiting for them to exit", holder, path)
                announced = True
            time.sleep(0.2)
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh


def running_pid(state_dir: str) -> int | None:
    """The pid of the daemon on state_dir, or None: the lock tells whether one runs, not a pid file."""
    path = os.path.join(state_dir, "daemon.lock")
    try:
        fh = open(path)
    except FileNotFoundError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = fh.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fh, fcntl.LOCK_UN)
        return None


def stop_running(state_dir: str, timeout: float = 30) -> str:
    """SIGTERM the daemon on state_dir and wait until it and its processes have let go of the lock."""
    pid = running_pid(state_dir)
    if pid is None:
        return f"no mlpd daemon runs on {state_dir}"
    if pid > 0 and _alive(str(pid)):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(state_dir) is None:
            return f"stopped the mlpd daemon (pid {pid}); running jobs keep running and are picked up at the next start"
        time.sleep(0.2)
    raise DaemonError(f"the daemon (pid {pid}) did not stop within {timeout:.0f}s; see {os.path.join(state_dir, 'daemon.log')}")


def start_background(config: Config, argv: list[str], timeout: float = 90) -> str:
    """Start `mlpd daemon` detached (its own session, output to STATE_DIR/daemon.log); return once it answers."""
    state = config.state_dir
    if running_pid(state):
        raise DaemonError(f"an mlpd daemon already runs on {state} (pid {running_pid(state)}); 'mlpd daemon --stop' first")
    os.makedirs(state, mode=0o700, exist_ok=True)
    log_path = os.path.join(state, "daemon.log")
    with open(log_path, "ab") as log_fh:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{config['server.listen']}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path, errors="replace") as fh:
                tail = "".join(fh.readlines()[-5:])
            raise DaemonError(f"the daemon exited ({proc.returncode}):\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return f"mlpd daemon running in the background, pid {proc.pid}, on http://{config['server.listen']}; log in {log_path}"
        except OSError:
            pass
        time.sleep(0.2)
    raise DaemonError(f"the daemon did not answer on {url} within {timeout:.0f}s; see {log_path}")


def notify_systemd(message: str) -> None:
    """sd_notify without libsystemd: a datagram to $NOTIFY_SOCKET (Type=notify units)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("could not notify systemd: %s", exc)


def check_port_free(listen: str, key: str = "server.listen") -> None:
    """Refuse to start when something already listens on our address (else /healthz would be answered by it)."""
    host, _, port = listen.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), int(port)))
        except OSError as exc:
            how = "choose another with --listen or server.listen" if key == "server.listen" else f"set {key} to another address, or \"\" for none"
            raise DaemonError(f"cannot listen on {listen}: {exc.strerror}; another program (or mlpd daemon) holds it, or the address is not this host's; {how}") from None


def resolve_container_listen(config: Config) -> Config:
    """server.container_listen as HOST:PORT ("auto": Docker's bridge gateway, the port of server.listen), or ""."""
    value = config["server.container_listen"]
    port = config["server.listen"].rpartition(":")[2]
    if value == "auto":
        from mlpd.runtime.docker_engine import bridge_gateway

        gateway = bridge_gateway(config["docker.host"])
        if not gateway:
            log.warning("no Docker bridge network found: job containers will not reach MLflow (server.container_listen)")
        value = f"{gateway}:{port}" if gateway else ""
    elif value and ":" not in value:
        value = f"{value}:{port}"
    return Config({**config.as_dict(), "server.container_listen": value}, config.source)


def ensure_instance_id(state_dir: str) -> str:
    """A random id for this state directory; its containers carry it as the mlpd.instance label."""
    path = os.path.join(state_dir, "instance_id")
    try:
        with open(path) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        import secrets

        value = secrets.token_hex(6)
        with open(path + ".tmp", "w") as fh:
            fh.write(value)
        os.replace(path + ".tmp", path)
        return value


def children_status(config: Config, daemon_pid: int) -> dict[str, dict[str, Any]] | None:
    """The children's states that the daemon with daemon_pid published, or None (another daemon's, or unreadable)."""
    # Read-only: `--status` often runs as root, and must neither write nor create files in the daemon's state.
    try:
        with contextlib.closing(sqlite3.connect(f"file:{urllib.parse.quote(config.db_path)}?mode=ro", uri=True, timeout=5)) as conn:
            row = conn.execute("SELECT value FROM daemon_status WHERE key = ?", [supervision.STATUS_KEY]).fetchone()
        value = json.loads(row[0]) if row else None
    except (sqlite3.Error, OSError, ValueError):
        return None
    if not isinstance(value, dict) or value.get("daemon_pid") != daemon_pid:
        return None
    return value["children"]


def children_lines(children: dict[str, dict[str, Any]], now: float) -> list[str]:
    """One line per child for `mlpd daemon --status`, as supervisorctl status has them (no pids: scripts read the daemon's)."""
    lines = []
    for name, child in children.items():
        state, last = child["state"], supervision.exit_text(child.get("last_exit"))
        if state == supervision.RUNNING:
            detail = f"up {_duration(now - child['since'])}" if child.get("since") else ""
        elif state == supervision.BACKOFF:
            detail = f"exited soon after starting ({last}); restarting in {_duration(max(0.0, child['restart_at'] - now))}"
        else:
            detail = (f"exited {child['quick_exits']} times in a row soon after starting (the last: {last}); "
                      "not restarted: see the daemon's log, fix the cause, then restart the daemon")
        lines.append(f"  {name:<8} {state:<8} {detail}".rstrip())
    return lines


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Daemon:
    """Starts, watches and stops the daemon's processes."""

    def __init__(self, config: Config):
        self.config = config
        self.children: dict[str, subprocess.Popen] = {}
        self.states: dict[str, supervision.ChildState] = {}
        self.store = Store(config.db_path)  # opened at first use, after prepare() made the state directory
        self.policy = supervision.RestartPolicy(config["server.restart_fatal_after"], config["server.restart_stable_after"])
        self.stopping = False
        self.env: dict[str, Any] = {}
        self.front: str | None = None  # the nginx binary when a front runs
        self.serving_front: Any = None  # mlpd.serving.front.ServingFront when serving.listen has a proxy

    def prepare(self) -> None:
        """State directory, lock, migrations and the resolved config for the children."""
        state = self.config.state_dir
        os.makedirs(state, mode=0o700, exist_ok=True)
        self.lock = acquire_state_lock(state)
        check_port_free(self.config["server.listen"])
        ensure_instance_id(state)
        try:
            applied = Store(self.config.db_path).migrate()
        except MigrationError as exc:  # a newer database, or a migration that failed (and changed nothing)
            raise DaemonError(str(exc)) from None
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self.config = resolve_container_listen(self.config)
        if bind := self.container_bind():
            check_port_free(bind, "server.container_listen")
        from mlpd.tracking.server import TrackingError, ensure_store

        try:
            ensure_store(state)  # before gunicorn forks: workers never race on MLflow's migrations
        except TrackingError as exc:
            raise DaemonError(str(exc)) from None
        run_dir = os.path.join(state, "run")
        os.makedirs(run_dir, exist_ok=True)
        self.prepare_front(run_dir)
        self.prepare_serving_front()
        resolved = os.path.join(run_dir, "config.json")
        with open(resolved + ".tmp", "w") as fh:
            fh.write(self.config.to_json())
        os.replace(resolved + ".tmp", resolved)
        # NOTIFY_SOCKET stays with the daemon: it alone tells systemd it is ready (NotifyAccess=main).
        # gunicorn would send its own READY=1 (journal: "reception only permitted for main PID").
        self.env = {**{k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"},
                    RESOLVED_CONFIG_ENV: resolved, "PYTHONUNBUFFERED": "1"}

    def prepare_front(self, run_dir: str) -> None:
        """Choose the front (server.front) and write its configuration; DaemonError when it cannot run."""
        from mlpd.ops import front

        try:
            self.front = front.choose(self.config["server.front"])
            if self.front is None:
                if self.config["server.front"] == "auto":
                    log.warning("no nginx installed (apt-get install nginx-light): gunicorn takes the connections itself, "
                                "so slow or silent clients can hold every web thread (server.front)")
                return
            listens = [self.config["server.listen"], *([self.container_bind()] if self.container_bind() else [])]
            max_body_mb = max(self.config["jobs.max_code_mb"] + 1, self.config["serving.max_body_mb"])
            self.front_conf = front.write_config(run_dir, listens, max_body_mb, self.config["server.log_level"],
                                                 self.config["mlflow.max_artifact_mb"])
            self.web_socket = front.socket_path(run_dir)
        except front.FrontError as exc:
            raise DaemonError(str(exc)) from None

    def prepare_serving_front(self) -> None:
        """The serving proxy at serving.listen (mlpd.serving.front): adopted when one of ours runs, else its
        address checked now and the proxy started with the first deployment; DaemonError when it cannot run."""
        from mlpd.serving import front as serving_front

        setting = self.config["serving.listen"]
        listen = serving_front.resolve_listen(setting, self.config["server.listen"]) if setting else ""
        binary = serving_front.find_haproxy() if listen else None
        if listen and binary is None:
            if setting != "auto":
                raise DaemonError(f"serving.listen is {setting!r} but haproxy is not installed: install it (apt-get install haproxy) "
                                  "or set serving.listen = \"\" (then models are served through the daemon's own /serve path)")
            log.warning("haproxy is not installed (apt-get install haproxy): models are served through the daemon's own /serve path only, "
                        "which costs the daemon CPU per request and stops while it restarts (serving.listen)")
            listen = ""
        if listen and binary:
            self.serving_front = serving_front.ServingFront(self.config.state_dir, self.config.db_path, listen,
                                                            self.config["serving.max_body_mb"], binary)
            if self.serving_front.pid() is None:
                check_port_free(listen, "serving.listen")
            else:
                log.info("adopting the running serving proxy (haproxy, pid %s) on %s", self.serving_front.pid(), listen)
        self.config = Config({**self.config.as_dict(), "serving.listen": listen}, self.config.source)

    def tick_serving_front(self) -> None:
        """Keep the serving proxy running and current; a failure is logged and tried again on the next tick."""
        if self.serving_front is None:
            return
        try:
            self.serving_front.tick()
        except Exception as exc:  # the proxy must never take the daemon down
            now = time.monotonic()
            if now - getattr(self, "_serving_front_warned", 0.0) > 30:
                log.warning("the serving proxy could not be brought up to date: %s", exc)
                self._serving_front_warned = now

    def container_bind(self) -> str | None:
        """The second address gunicorn binds for job containers, if one is needed."""
        extra = self.config["server.container_listen"]
        listen_host = self.config["server.listen"].rpartition(":")[0].strip("[]")
        if not extra or extra == "auto" or listen_host in ("0.0.0.0", "::"):
            return None  # none asked for, or the main address already covers every interface
        return extra

    def _commands(self) -> dict[str, list[str]]:
        c = self.config
        gunicorn = [
            sys.executable, "-m", "gunicorn",
            "--worker-class", "gthread",
            "--workers", str(c["server.workers"]),
            "--threads", str(c["server.threads"]),
            *self._gunicorn_binds(),
            "--graceful-timeout", "5",
            "--timeout", "0",  # log streams are long-lived; gthread workers heartbeat on their own
            "--log-level", c["server.log_level"],
            "--error-logfile", "-",
            "--chdir", c.state_dir,
            "--control-socket", os.path.join(c.state_dir, "run", "gunicorn.ctl"),
            "mlpd.web.wsgi:app",
        ]
        commands = {"web": gunicorn, "worker": [sys.executable, "-m", "mlpd.workers"]}
        if self.front:
            from mlpd.ops.front import command

            commands["front"] = command(self.front, os.path.join(c.state_dir, "run"), self.front_conf)
        return commands

    def _gunicorn_binds(self) -> list[str]:
        if self.front:
            from mlpd.ops.front import GUNICORN_KEEPALIVE

            # only the front connects; the addresses are the front's
            return ["--bind", f"unix:{self.web_socket}", "--keep-alive", str(GUNICORN_KEEPALIVE)]
        return ["--bind", self.config["server.listen"], *(["--bind", self.container_bind()] if self.container_bind() else [])]

    def _start(self, name: str, argv: list[str]) -> None:
        # cwd is the state directory: `python -m` and gunicorn put the cwd first on sys.path, and a
        # source checkout there would shadow the installed package. Each child inherits the state
        # lock, so no new daemon starts until every process that acts here has exited. If the daemon
        # dies, the worker dies at once (SIGKILL: the database and Docker's labels carry its state);
        # gunicorn gets SIGTERM and takes its workers down with it.
        death = signal.SIGKILL if name == "worker" else signal.SIGTERM
        self.children[name] = subprocess.Popen(argv, env=self.env, cwd=self.config.state_dir, preexec_fn=_die_with(death),
                                               pass_fds=(self.lock.fileno(),))
        self.states[name] = supervision.started(self.states.get(name, supervision.ChildState(name)), time.monotonic())
        log.info("started %s (pid %d)", name, self.children[name].pid)

    def supervise(self, commands: dict[str, list[str]], now: float) -> None:
        """One look at the children: note the ones that exited, start the ones whose backoff is over."""
        changed = False
        for name, proc in list(self.children.items()):
            child = self.states[name]
            if child.state == supervision.RUNNING:
                code = proc.poll()
                if code is None:
                    continue
                ran = now - child.started_at
                child = self.states[name] = supervision.exited(child, code, now, self.policy)
                changed = True
                if child.state == supervision.FATAL:
                    self._fatal(child, ran)
                    continue
                log.warning("%s exited (%s) after %.1fs; restarting it in %.0fs (BACKOFF; %d of %d quick exits in a row before FATAL)",
                            name, supervision.exit_text(code), ran, (child.restart_at or now) - now, child.quick_exits, self.policy.fatal_after)
            if supervision.due(child, now) and not self.stopping:
                self._start(name, commands[name])
                changed = True
        if changed:
            self.publish()

    def _fatal(self, child: supervision.ChildState, ran: float) -> None:
        """Say once, in the log and as an event row, that a child is given up."""
        log.error("%s is FATAL: it exited %d times in a row, each within %gs of its start (the last after %.1fs: %s); "
                  "it is not restarted. See the messages above, fix the cause, then restart the daemon",
                  child.name, child.quick_exits, self.policy.stable_after, ran, supervision.exit_text(child.last_exit))
        # systemctl status shows it (the unit stays active: the other processes still work)
        notify_systemd(f"STATUS={child.name} is FATAL: not restarted after {child.quick_exits} quick exits; see the log")
        try:
            with self.store.write() as db:
                record_event(db, "mlpd", "daemon.child_fatal", "daemon", child.name, exits=child.quick_exits,
                             last_exit=child.last_exit)
        except sqlite3.Error as exc:
            log.warning("could not record that %s is FATAL in the database: %s", child.name, exc)

    def publish(self) -> None:
        """Write the children's states for `mlpd daemon --status` and /healthz (wall-clock times)."""
        offset = time.time() - time.monotonic()
        children = {}
        for name, child in self.states.items():
            children[name] = {"state": child.state, "quick_exits": child.quick_exits, "last_exit": child.last_exit,
                              "since": child.started_at + offset if child.state == supervision.RUNNING else None,
                              "restart_at": child.restart_at + offset if child.restart_at is not None else None}
        try:
            set_status(self.store, supervision.STATUS_KEY, {"daemon_pid": os.getpid(), "children": children})
        except sqlite3.Error as exc:
            log.warning("could not publish the processes' states in the database: %s", exc)

    def _stop(self, *_: Any) -> None:
        self.stopping = True

    def wait_healthy(self, timeout: float = 60) -> bool:
        """Poll /healthz until the web server answers."""
        url = f"http://{self.config['server.listen']}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            if any(p.poll() is not None for p in self.children.values()):
                return False
            time.sleep(0.2)
        return False

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; restart a child that exits, with a backoff, until it is FATAL; return the exit code."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        commands = self._commands()
        for name, argv in commands.items():
            self._start(name, argv)
        self.publish()
        if not self.wait_healthy():
            if not self.stopping:
                log.error("the web server did not come up on %s; see the messages above", self.config["server.listen"])
                self.shutdown()
                return 1
        else:
            log.info("mlpd daemon ready on http://%s (state %s)", self.config["server.listen"], self.config.state_dir)
            notify_systemd("READY=1")
        while not self.stopping:
            time.sleep(0.5)
            if not self.stopping:
                self.supervise(commands, time.monotonic())
                self.tick_serving_front()
        notify_systemd("STOPPING=1")
        self.shutdown()
        log.info("mlpd daemon stopped")
        return 0

    def shutdown(self, grace: float = 8.0) -> None:
        """SIGTERM every child, wait, then SIGKILL what is left."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.children.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
