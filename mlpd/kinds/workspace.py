"""Workspaces: a user's JupyterLab server in a container, on pinned GPUs, with a persistent home.

A workspace is a named object of one owner (its spec, its Jupyter token, its loopback port);
each time it runs is a *session*: a workload row of kind ``workspace`` in the jobs table. So
the scheduler places it, the runtime starts it, the ledger books its GPUs (kind workspace) and
reconciliation finishes it exactly like a job: adding this kind added a spec and a launch
request, not a second controller.

Its state is its current session's: queued, starting, running; when the session has ended the
workspace is ``stopped`` (by its owner, culled for idleness, or because the server exited), and
``start`` runs a new session with the same home, and a new Jupyter token and loopback ports.

The pure parts (idle time, the culling decision, the view) take ``now``; reading Jupyter's API
is :func:`jupyter_activity`, the one place that talks to the server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import mlpd
from mlpd import jobs
from mlpd.errors import MlpdError
from mlpd.jobs import TERMINAL_STATES, JobState
from mlpd.kinds.jobspec import SpecError, parse_spec
from mlpd.kinds.base import Kind
from mlpd.ports import port_free
from mlpd.units import format_duration, parse_duration
from mlpd.runtime.protocol import LaunchRequest, RuntimeFailure
from mlpd.store import Store, record_event

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
JUPYTER_PORT = 8888
SSH_PORT = 2222  # sshd in the workspace, as the container user, when its owner registered keys
HOME = "/home/mlpd"  # the container user's home: the owner's persistent home is mounted here
SPEC_KEYS = ("gpus", "gpu_share", "gpu_model", "image", "requirements", "cpus", "memory")
BUSY_UTILIZATION = 5.0  # percent: a GPU at least this busy counts as activity


class WorkspaceError(MlpdError):
    """A workspace operation that cannot be done."""


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise WorkspaceError(400, "invalid_field", "name: expected 1-40 lowercase letters, digits and '-', starting with a letter or digit")
    return name


# Before JupyterLab: sshd as the container user on SSH_PORT, when the image has it and the owner has
# keys (mounted read-only at /etc/mlpd-ssh). Its host key lives in the home, so it stays the same
# across sessions. In plain sh, so that any image with JupyterLab works (without sshd: no SSH).
_START_SSHD = f"""
if [ -x /usr/sbin/sshd ] && [ -d /etc/mlpd-ssh ]; then
  mkdir -p "$HOME/.mlpd" && chmod 700 "$HOME/.mlpd"
  [ -f "$HOME/.mlpd/ssh_host_ed25519_key" ] || ssh-keygen -q -t ed25519 -N '' -f "$HOME/.mlpd/ssh_host_ed25519_key"
  printf '%s\\n' "Port {SSH_PORT}" "HostKey $HOME/.mlpd/ssh_host_ed25519_key" "AuthorizedKeysFile /etc/mlpd-ssh/authorized_keys" \\
    "PidFile /tmp/mlpd-sshd.pid" "UsePAM no" "PasswordAuthentication no" "KbdInteractiveAuthentication no" "StrictModes no" \\
    "PermitUserEnvironment no" "AllowTcpForwarding yes" "X11Forwarding no" "PrintMotd no" "Subsystem sftp internal-sftp" \\
    "SetEnv $(for v in MLPD_URL MLPD_TOKEN MLFLOW_TRACKING_URI MLFLOW_TRACKING_TOKEN MLFLOW_EXPERIMENT_NAME PYTHONPATH CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES; do printf '"%s=%s" ' "$v" "$(printenv "$v" | tr -d '"')"; done)" \\
    > /tmp/mlpd-sshd_config
  /usr/sbin/sshd -f /tmp/mlpd-sshd_config -E /tmp/mlpd-sshd.log && echo "mlpd: sshd listening on {SSH_PORT}"
fi
exec "$@"
"""


def jupyter_command() -> list[str]:
    """The server each session runs: JupyterLab on all of the container's interfaces (only the
    loopback port mlpd publishes reaches it), its token from JUPYTER_TOKEN, rooted at the home;
    sshd beside it, which reads the owner's registered keys at each login (a key added later works at once)."""
    return ["sh", "-c", _START_SSHD, "mlpd-workspace", "jupyter", "lab", "--ip=0.0.0.0", f"--port={JUPYTER_PORT}", "--no-browser", f"--ServerApp.root_dir={HOME}",
            "--ServerApp.allow_remote_access=True", "--ServerApp.password=", "--ServerApp.disable_check_xsrf=False"]


def parse_workspace_spec(data: dict[str, Any], default_image: str) -> dict[str, Any]:
    """Validate what a workspace asks for (the job spec's rules for the same fields); a dict to store.

    Anything else (mounts, user, privileged...) is refused with the job spec's reason.
    """
    body = {k: v for k, v in data.items() if k not in ("name", "wait")}
    try:
        spec, _ = parse_spec({**body, "command": jupyter_command()})
    except SpecError as exc:
        raise WorkspaceError(400, "invalid_field", str(exc)) from None
    extra = sorted(set(body) - set(SPEC_KEYS))
    if extra:
        raise WorkspaceError(400, "invalid_field", f"{extra[0]}: not a workspace setting; expected one of {', '.join(SPEC_KEYS)}")
    out = {k: getattr(spec, k) for k in SPEC_KEYS}
    out["image"] = out["image"] or default_image
    return out


def session_spec(ws_spec: dict[str, Any], name: str):
    """The job spec of one session of a workspace (no time limit: idle culling ends it)."""
    spec, _ = parse_spec({**{k: v for k, v in ws_spec.items() if v is not None}, "command": jupyter_command(), "name": f"ws-{name}"})
    return spec


# ------------------------------------------------------------------ rows
def _decode(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["spec"] = json.loads(row["spec"])
    return row


def get(store: Store, owner: str, name: str) -> dict[str, Any] | None:
    row = store.query_one("SELECT * FROM workspaces WHERE owner = ? AND name = ?", [owner, name])
    return _decode(row) if row else None


def by_id(store: Store, ws_id: str) -> dict[str, Any] | None:
    row = store.query_one("SELECT * FROM workspaces WHERE id = ?", [ws_id])
    return _decode(row) if row else None


def must_get(store: Store, ws_id: str) -> dict[str, Any]:
    """by_id() for a workspace that must be there (one just written): WorkspaceError 404 if it is gone."""
    ws = by_id(store, ws_id)
    if ws is None:
        raise WorkspaceError(404, "not_found", f"no workspace {ws_id}")
    return ws


def list_workspaces(store: Store, owner: str | None = None) -> list[dict[str, Any]]:
    if owner:
        return [_decode(r) for r in store.query("SELECT * FROM workspaces WHERE owner = ? ORDER BY name", [owner])]
    return [_decode(r) for r in store.query("SELECT * FROM workspaces ORDER BY owner, name")]


def allocate_port(store: Store, port_range: str, bindable: Callable[[int], bool] | None = None, exclude: Iterable[int] = ()) -> int:
    """A loopback port in the configured range that no workspace has and nothing listens on."""
    low, high = (int(x) for x in port_range.split("-"))
    taken = {p for r in store.query("SELECT port, ssh_port FROM workspaces") for p in (r["port"], r["ssh_port"])} | set(exclude)
    bindable = bindable or port_free
    candidates = [p for p in range(low, high + 1) if p not in taken]
    secrets.SystemRandom().shuffle(candidates)
    for port in candidates[:200]:
        if bindable(port):
            return port
    raise WorkspaceError(503, "no_port", f"no free loopback port left in workspaces.port_range ({port_range}); remove unused workspaces")


def create(store: Store, owner: str, name: str, spec: dict[str, Any], port: int, ssh_port: int, now: float | None = None) -> dict[str, Any]:
    """Store a new workspace and queue its first session; WorkspaceError 409 when the name is taken."""
    now = now or time.time()
    ws_id = secrets.token_hex(6)
    with store.write() as db:
        if db.execute("SELECT 1 FROM workspaces WHERE owner = ? AND name = ?", [owner, name]).fetchone():
            raise WorkspaceError(409, "exists", f"you already have a workspace {name!r}; start it with 'mlpd ws start {name}' or remove it first")
        db.execute("INSERT INTO workspaces (id, owner, name, spec, token, port, ssh_port, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   [ws_id, owner, name, json.dumps(spec), secrets.token_urlsafe(24), port, ssh_port, now, now])
        record_event(db, owner, "workspace.created", "workspace", ws_id, at=now, name=name, spec=spec)
        _new_session(db, owner, ws_id, name, spec, now)
    return must_get(store, ws_id)


def _new_session(db, owner: str, ws_id: str, name: str, spec: dict[str, Any], now: float) -> str:
    session = jobs.submit(None, owner, session_spec(spec, name), now=now, kind="workspace", workload=ws_id, db=db)["id"]
    db.execute("UPDATE workspaces SET session = ?, last_activity = NULL, updated_at = ? WHERE id = ?", [session, now, ws_id])
    return session


STOP_WAIT = 60.0  # seconds a start waits for a stopping session to end (the controller stops it within seconds)


def stopping(store: Store, ws: dict[str, Any]) -> bool:
    """Whether the workspace's session is being stopped: its cancel is requested and it has not ended yet."""
    session = ws.get("session") and jobs.get(store, ws["session"])
    return bool(session and session["state"] not in TERMINAL_STATES and session["cancel_requested_by"])


def wait_stopped(store: Store, ws: dict[str, Any], timeout: float = STOP_WAIT,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """The workspace once a stop in progress has ended (at once when none is); WorkspaceError 409
    'stopping' if it has not ended within timeout seconds. `mlpd ws stop lab && mlpd ws start lab`
    and a start pressed right after a stop need this: a start that found the session still running
    would keep it, and it would then end as stopped."""
    deadline = clock() + timeout
    while True:
        fresh = by_id(store, ws["id"]) or ws
        if not stopping(store, fresh):
            return fresh
        if clock() >= deadline:
            raise WorkspaceError(409, "stopping", f"workspace {ws['name']} is still stopping after {timeout:.0f} s; "
                                                  f"start it again in a moment ('mlpd ws start {ws['name']}')")
        sleep(0.2)


def start(store: Store, ws: dict[str, Any], actor: str, now: float | None = None, port_range: str | None = None,
          stop_wait: float = STOP_WAIT) -> dict[str, Any]:
    """Run a new session unless one is queued or running (idempotent); a session being stopped is
    waited for first (up to stop_wait seconds, see wait_stopped), and then a new one starts.

    Every session has a Jupyter token of its own, and (given port_range) loopback ports of its own:
    while a workspace is stopped another local account may bind its old port, and whoever answers
    there would receive the owner's token from their own bookmark; a token that changes with each
    session is worth nothing to them."""
    ws = wait_stopped(store, ws, stop_wait)
    now = now or time.time()
    ports = None
    if port_range:
        port = allocate_port(store, port_range, exclude=[ws["port"], ws["ssh_port"]])
        ports = (port, allocate_port(store, port_range, exclude=[ws["port"], ws["ssh_port"], port]))
    with store.write() as db:
        row = db.execute("SELECT session FROM workspaces WHERE id = ?", [ws["id"]]).fetchone()
        current = row[0] if row else None
        state = db.execute("SELECT state FROM jobs WHERE id = ?", [current]).fetchone() if current else None
        if state and state[0] not in TERMINAL_STATES:
            return must_get(store, ws["id"])
        db.execute("UPDATE workspaces SET token = ? WHERE id = ?", [secrets.token_urlsafe(24), ws["id"]])
        if ports:
            db.execute("UPDATE workspaces SET port = ?, ssh_port = ? WHERE id = ?", [*ports, ws["id"]])
        _new_session(db, ws["owner"], ws["id"], ws["name"], ws["spec"], now)
        record_event(db, actor, "workspace.started", "workspace", ws["id"], at=now)
    return must_get(store, ws["id"])


def stop(store: Store, ws: dict[str, Any], actor: str, reason: str) -> dict[str, Any]:
    """Stop the current session (its container gets SIGTERM from the controller); the reason is what
    the owner reads afterwards (e.g. 'stopped by alice', 'culled: idle 4h')."""
    session = ws["session"] and jobs.get(store, ws["session"])
    if session and session["state"] not in TERMINAL_STATES:
        try:
            jobs.request_cancel(store, session["id"], actor, reason=reason)
        except MlpdError as exc:
            if exc.status != 409:  # it ended meanwhile: nothing to stop
                raise
        with store.write() as db:
            record_event(db, actor, "workspace.stopped", "workspace", ws["id"], reason=reason)
    return must_get(store, ws["id"])


def remove(store: Store, ws: dict[str, Any], actor: str) -> None:
    """Stop the workspace and forget it; its owner's home stays (it is shared by all their workspaces)."""
    stop(store, ws, actor, f"removed by {actor}")
    with store.write() as db:
        db.execute("DELETE FROM workspaces WHERE id = ?", [ws["id"]])
        record_event(db, actor, "workspace.removed", "workspace", ws["id"], name=ws["name"], owner=ws["owner"])


# ------------------------------------------------------------------ the view
def idle_timeout(store: Store, config, owner: str) -> float:
    """Seconds of no activity after which the owner's workspaces are culled: the host's
    workspaces.idle_timeout, or the longer one an admin allowed this user."""
    row = store.query_one("SELECT ws_idle_timeout FROM users WHERE name = ? AND removed_at IS NULL", [owner])
    host = parse_duration(config["workspaces.idle_timeout"])
    return max(host, row["ws_idle_timeout"]) if row and row["ws_idle_timeout"] else host


def set_idle_timeout(store: Store, actor: str, user: str, seconds: float | None) -> None:
    """Let `user`'s workspaces idle longer than the host's workspaces.idle_timeout (None: the
    host's again); WorkspaceError 404 for a user who does not exist."""
    with store.write() as db:
        if not db.execute("UPDATE users SET ws_idle_timeout = ? WHERE name = ? AND removed_at IS NULL", [seconds, user]).rowcount:
            raise WorkspaceError(404, "not_found", f"no user {user!r}")
        record_event(db, actor, "user.ws_idle_timeout", "user", user, seconds=seconds)


def withdraw_unplaced(store: Store, ws: dict[str, Any], new: bool, reason: str) -> bool:
    """Withdraw a session that could not start at once (its owner did not ask to wait): the queued
    session is cancelled with `reason` (a transition, with its event), and a workspace created for
    it is removed. False when the session left the queue meanwhile (the worker placed it)."""
    if not jobs.transition(store, ws["session"], JobState.CANCELLED, actor=ws["owner"], reason=reason, ended_at=time.time(),
                           only_from=[JobState.QUEUED]):
        return False
    if new:
        with store.write() as db:
            db.execute("DELETE FROM workspaces WHERE id = ?", [ws["id"]])
            record_event(db, ws["owner"], "workspace.removed", "workspace", ws["id"], name=ws["name"], owner=ws["owner"], reason=reason)
    return True


def state_of(session: dict[str, Any] | None) -> str:
    if session is None:
        return "stopped"
    return session["state"] if session["state"] not in TERMINAL_STATES else "stopped"


def view(ws: dict[str, Any], session: dict[str, Any] | None, timeout: float, now: float) -> dict[str, Any]:
    """The stable JSON form of a workspace (the token is in it: only its owner and admins see it)."""
    state = state_of(session)
    running = state == "running"
    if session is not None and state in jobs.ACTIVE_STATES and session.get("cancel_requested_by"):
        state = "stopping"  # asked to stop, its container not yet gone: 'mlpd ws' says so rather than "running"
    last = last_active(ws, session)
    idle = max(0.0, now - last) if running and last else None
    out = {
        "id": ws["id"], "name": ws["name"], "owner": ws["owner"], "state": state,
        "reason": (session or {}).get("reason") or "",
        "session": session["id"] if session else None,
        "gpus": {"count": ws["spec"]["gpus"], "share": ws["spec"].get("gpu_share"), "indices": session["gpu_indices"] if session and state in jobs.ACTIVE_STATES else [],
                 "uuids": session["gpu_uuids"] if session and state in jobs.ACTIVE_STATES else []},
        "image": ws["spec"]["image"], "spec": ws["spec"], "port": ws["port"], "token": ws["token"],
        "url": f"http://127.0.0.1:{ws['port']}/lab?token={ws['token']}", "ssh_port": ws["ssh_port"],
        "idle_seconds": idle, "idle_timeout": timeout,
        "cull_in_seconds": max(0.0, timeout - idle) if idle is not None else None,
        "started_at": session["started_at"] if session else None, "ended_at": session["ended_at"] if session and state == "stopped" else None,
        "created_at": ws["created_at"],
    }
    return out


def last_active(ws: dict[str, Any], session: dict[str, Any] | None) -> float | None:
    """The last activity seen in the current session (never before it started)."""
    if session is None or session["started_at"] is None:
        return None
    return max(session["started_at"], ws["last_activity"] or 0.0)


# ------------------------------------------------------------------ culling
@dataclass(frozen=True)
class Activity:
    """What a check of a running workspace saw."""

    last: float | None  # the latest activity Jupyter reported (kernels, terminals, the server), epoch seconds
    busy: bool          # a kernel is executing, or one of its GPUs is busy: active now, whatever `last` says
    why: str = ""       # for the log


def cull_decision(last_seen: float | None, started: float, activity: Activity | None, timeout: float, now: float) -> tuple[float, bool]:
    """(the new last activity, whether to cull now). Pure.

    A busy kernel or GPU is activity now; an unreachable server (activity None) keeps what was
    last known, so a server that is still starting is judged from its session's start.
    """
    last = max(started, last_seen or 0.0)
    if activity is not None:
        if activity.busy:
            last = now
        elif activity.last:
            last = max(last, min(activity.last, now))
    return last, now - last >= timeout


def parse_jupyter_time(value: str | None) -> float | None:
    """Jupyter's ISO 8601 UTC timestamps ('2026-12-01T03:04:05.123456Z')."""
    if not value:
        return None
    from datetime import datetime, timezone

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()
    except ValueError:
        return None


def jupyter_activity(port: int, token: str, timeout: float = 3.0) -> Activity | None:
    """Read a running server's activity from its own REST API (status, kernels, terminals); None when it does not answer."""
    import requests

    # no_track_activity: these reads must not count as the activity they measure.
    base, headers, quiet = f"http://127.0.0.1:{port}/api", {"Authorization": f"token {token}"}, {"no_track_activity": "1"}
    try:
        status = requests.get(f"{base}/status", headers=headers, params=quiet, timeout=timeout).json()
        kernels = requests.get(f"{base}/kernels", headers=headers, params=quiet, timeout=timeout).json()
        terminals = requests.get(f"{base}/terminals", headers=headers, params=quiet, timeout=timeout)
        terminals = terminals.json() if terminals.ok else []
    except (requests.RequestException, ValueError):
        return None
    stamps = [parse_jupyter_time(status.get("last_activity"))]
    stamps += [parse_jupyter_time(k.get("last_activity")) for k in kernels]
    stamps += [parse_jupyter_time(t.get("last_activity")) for t in terminals if isinstance(t, dict)]
    busy = [k.get("id", "?") for k in kernels if k.get("execution_state") == "busy"]
    last = max((s for s in stamps if s), default=None)
    return Activity(last, bool(busy), f"kernel {busy[0]} busy" if busy else "")


def server_answers(port: int, token: str, timeout: float = 1.0) -> bool:
    """Whether the JupyterLab server on this loopback port answers its API with this token."""
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"},
                            params={"no_track_activity": "1"}, timeout=timeout).ok
    except requests.RequestException:
        return False


def gpus_busy(store: Store, gpu_uuids: Iterable[str], since: float) -> bool:
    """Whether NVML saw any of these GPUs busy since `since` (no samples on declared GPUs: never)."""
    uuids = list(gpu_uuids)
    if not uuids:
        return False
    row = store.query_one(f"SELECT MAX(utilization) AS u FROM gpu_samples WHERE at >= ? AND gpu_uuid IN ({','.join('?' * len(uuids))})",
                          [since, *uuids])
    return bool(row and row["u"] is not None and row["u"] >= BUSY_UTILIZATION)


def ssh_session_open(commands: Iterable[str]) -> bool:
    """Whether sshd serves a logged-in session (its per-connection process is titled 'sshd: USER@TTY')."""
    return any(c.startswith("sshd: ") and "@" in c for c in commands)


def cull_pass(store: Store, config, now: float | None = None,
              read_activity: Callable[[int, str], Activity | None] = jupyter_activity,
              processes: Callable[[str], list[str]] | None = None) -> list[str]:
    """Check every running workspace; record its last activity and stop those idle past their
    timeout (reason 'culled: idle 4h'). processes(session id) lists the container's command lines
    (an open SSH session is activity). Returns the culled workspaces' ids."""
    now = now or time.time()
    culled = []
    sample_window = 2 * float(config["gpus.sample_interval"]) + 1
    for ws in list_workspaces(store):
        session = jobs.get(store, ws["session"]) if ws["session"] else None
        if session is None or session["state"] != JobState.RUNNING.value or session["started_at"] is None:
            continue
        activity = read_activity(ws["port"], ws["token"])
        if gpus_busy(store, session["gpu_uuids"], now - sample_window):
            activity = Activity(activity.last if activity else None, True, "GPU busy")
        elif processes is not None and ssh_session_open(processes(session["id"])):
            activity = Activity(activity.last if activity else None, True, "SSH session open")
        timeout = idle_timeout(store, config, ws["owner"])
        last, cull = cull_decision(ws["last_activity"], session["started_at"], activity, timeout, now)
        with store.write() as db:
            db.execute("UPDATE workspaces SET last_activity = ? WHERE id = ?", [last, ws["id"]])
        if cull:
            stop(store, ws, "mlpd", f"culled: idle {format_duration(now - last)}")
            culled.append(ws["id"])
    return culled


# ------------------------------------------------------------------ the container
def home_dir(state_dir: str, owner: str, uid_gid: str) -> str:
    """The owner's persistent home (made on first use, owned by the container user). Only ever
    derived from the owner's name, which mlpd.users restricts to a safe set: one user's home is
    never another's."""
    from mlpd.users import check_name as check_user_name

    check_user_name(owner)
    from mlpd.team_folders import owned_directory

    root = os.path.join(state_dir, "homes")
    path = owned_directory(root, owner, uid_gid)
    if path is None:
        raise WorkspaceError(500, "bad_home", f"the home of {owner!r} is not a plain directory under {root}")
    return path


def _ports_still_free(store: Store, config, ws: dict[str, Any]) -> dict[str, Any]:
    """The workspace, with a port that something else took since it was chosen replaced by a free one."""
    port, ssh_port = ws["port"], ws["ssh_port"]
    if port_free(port) and port_free(ssh_port):
        return ws
    taken = [port, ssh_port]
    if not port_free(port):
        port = allocate_port(store, config["workspaces.port_range"], exclude=taken)
    if not port_free(ssh_port):
        ssh_port = allocate_port(store, config["workspaces.port_range"], exclude=taken + [port])
    with store.write() as db:
        db.execute("UPDATE workspaces SET port = ?, ssh_port = ? WHERE id = ?", [port, ssh_port, ws["id"]])
        record_event(db, "mlpd", "workspace.port_replaced", "workspace", ws["id"], old=[ws["port"], ws["ssh_port"]], new=[port, ssh_port])
    return must_get(store, ws["id"])


def launch_request(store: Store, config, job: dict[str, Any], base: LaunchRequest) -> LaunchRequest:
    """A session's container: the job's request plus the home, the owner's team folders (/shared/TEAM),
    the published loopback port, the Jupyter token, and the mlpd CLI (the daemon's package, read-only)."""
    ws = by_id(store, job["workload"])
    if ws is None:
        raise RuntimeFailure("its workspace was removed")

    from mlpd.kinds.sshkeys import write_authorized_keys

    from mlpd import datasets
    from mlpd.team_folders import TeamFolderError, mounts_for

    ws = _ports_still_free(store, config, ws)
    home = home_dir(config.state_dir, job["owner"], config["jobs.container_user"])
    try:
        teams = mounts_for(store, config.state_dir, job["owner"], config["jobs.container_user"])  # /shared/TEAM, as in jobs
        teams += datasets.mounts_for(store, config, job["owner"])  # /datasets/NAME, as in jobs (paths checked again now)
    except (TeamFolderError, datasets.DatasetRefused) as exc:
        raise RuntimeFailure(str(exc)) from None
    keys = write_authorized_keys(store, config.state_dir, job["owner"])
    env = {**base.env, "HOME": HOME, "JUPYTER_TOKEN": ws["token"], "MLPD_WORKSPACE": ws["name"],
           "PYTHONPATH": "/opt/mlpd-client", "SHELL": "/bin/bash"}
    return dataclasses.replace(
        base, kind="workspace", env=env, workdir=HOME,
        ports=((JUPYTER_PORT, "127.0.0.1", ws["port"]), (SSH_PORT, "127.0.0.1", ws["ssh_port"])),
        mounts=((home, HOME, False), (keys, "/etc/mlpd-ssh", True), (os.path.dirname(os.path.abspath(mlpd.__file__)), "/opt/mlpd-client/mlpd", True),
                *teams),
    )


class WorkspaceSession(Kind):
    """A workspace's session: JupyterLab and sshd in the owner's home until stopped or culled idle.
    Its token is its owner at their notebook, as a member, never as an admin."""

    name = "workspace"
    title = "workspace session"
    token_acts_as_member = True

    def launch_request(self, store, config, job, base):
        return launch_request(store, config, job, base)

    def workload_names(self, store, rows):
        ids = sorted({r["workload"] for r in rows if r.get("workload")})
        names = {w["id"]: w["name"] for w in store.query(
            f"SELECT id, name FROM workspaces WHERE id IN ({','.join('?' * len(ids))})", ids)} if ids else {}
        return {r["id"]: (names.get(r.get("workload") or ""), None) for r in rows}

    def label(self, name, with_owner):
        from mlpd.workload_names import short_id

        return f"workspace {name.name or short_id(name.job_id)} ({name.owner})"  # a workspace's name is its owner's

    def show_command(self, name):
        from mlpd.workload_names import short_id

        return f"mlpd ws show {name.name}" if name.name else f"mlpd jobs show {short_id(name.job_id)}"

    def page(self, name, owner_is_viewer):
        if not name.name:
            return None
        return ("ui.workspace", {"name": name.name, **({} if owner_is_viewer else {"owner": name.owner})})


KIND = WorkspaceSession()
