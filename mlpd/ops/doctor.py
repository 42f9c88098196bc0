"""`mlpd doctor`: is this host ready to run mlpd's work, and if not, what to do about it.

Each check says ok, warn (work runs, but something is off) or fail (work is blocked), with
the detail it found and, when it is not ok, the fix. It runs on the host, beside the daemon:
it reads the configuration and the state directory and asks the container engine, NVML and
(when it runs) the daemon's /healthz, so it also works when the daemon does not start.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Callable

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_FREE_BYTES = 2 * 1024**3
LOW_FREE_BYTES = 10 * 1024**3
TEMP_DIRS = ("/tmp", "/var/tmp")  # the unit's PrivateTmp=yes hides both from the daemon


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def run_checks(config, runtime_factory: Callable | None = None) -> list[Check]:
    """Every check, in the order an admin would fix them."""
    checks: list[Check] = []
    runtime = None
    try:
        from mlpd.scheduling.gpu_state import read_instance_id
        from mlpd.runtime import connect

        instance = read_instance_id(config.state_dir) if os.path.exists(os.path.join(config.state_dir, "instance_id")) else "doctor"
        runtime = (runtime_factory or connect)(instance, config["docker.host"], config["docker.gpu_runtime"])
        info = runtime.engine_info()
        checks.append(Check("docker engine", OK, f"reachable, version {info.get('version', '?')}"))
    except Exception as exc:  # the engine's own words are the detail
        checks.append(Check("docker engine", FAIL, str(exc).splitlines()[0][:300],
                            "start it: 'systemctl start docker' (or 'sudo ./install.sh --engine-only'); jobs wait until it answers"))
    checks += _gpu_checks(config, runtime)
    if runtime is not None:
        checks += _image_checks(config, runtime)
        network = container_network_check(config["server.container_listen"], runtime.engine_info().get("gateway"))
        if network:
            checks.append(network)
    checks += _state_checks(config)
    checks.append(job_user_check(config["jobs.container_user"], _host_accounts(config["jobs.container_user"])))
    checks.append(_daemon_check(config))
    checks.append(front_check(config["server.front"], _find_nginx()))
    checks.append(_mlflow_check(config))
    systemd = _systemd_check()
    if systemd:
        checks.append(systemd)
    checks.append(_clock_check(config))
    checks.append(_scheduler_check(config))
    retention = _retention_check(config)
    if retention:
        checks.append(retention)
    return checks


def _scheduler_check(config) -> Check:
    """Fair share must not outweigh age: else a job of the user it favours least can wait without
    end behind others' work (the defaults: age 4000 against 3000 + 100)."""
    if not config["scheduler.fair_share"]:
        return Check("scheduler", OK, "fair share off: priority, age and expansion order the queue")
    fair = float(config["scheduler.weight_slowdown"]) + float(config["scheduler.weight_fair_share"])
    age = float(config["scheduler.weight_age"])
    if age < fair:
        return Check("scheduler", WARN,
                     f"scheduler.weight_age ({age:g}) is below fair share's weights (weight_slowdown + weight_fair_share "
                     f"= {fair:g}): a job of the user fair share favours least can wait past max_age "
                     f"({config['scheduler.max_age']}) behind others' work",
                     f"set scheduler.weight_age = {max(4000.0, fair):g} (and max_age = \"14d\", the defaults) in mlpd.toml, "
                     "then restart the daemon")
    return Check("scheduler", OK, f"fair share on (usage and slowdown); a job that waited {config['scheduler.max_age']} "
                                  "outranks any fair-share difference")


def _retention_check(config) -> Check | None:
    if not os.path.exists(os.path.join(config.state_dir, "mlpd.db")):
        return None
    from mlpd import retention
    from mlpd.store import Store

    try:
        due = retention.plan(Store(os.path.join(config.state_dir, "mlpd.db")), config.state_dir,
                             config["retention.job_days"], config["retention.code_days"])
    except Exception as exc:  # an older database (migrations run at the daemon's start)
        return Check("retention", WARN, f"cannot tell ({str(exc)[:200]})", "start the daemon once so that it migrates its database")
    return Check("retention", OK, f"due now: the files of {len(due.job_dirs)} ended jobs and {len(due.code)} code archives, "
                              f"{due.bytes / 1e6:.1f} MB (removed hourly; retention.job_days = {config['retention.job_days']:g}, "
                              f"code_days = {config['retention.code_days']:g})")


def container_network_check(container_listen: str, gateway: str | None) -> Check | None:
    """Whether containers can reach the daemon: every container is on mlpd's network, where host.docker.internal
    is its gateway, so a server.container_listen set to another address (Docker's default bridge, 172.17.0.1,
    before mlpd had its own network) is one they cannot reach. None when there is no network to ask about."""
    if gateway is None:
        return None
    host = container_listen.rpartition(":")[0] if ":" in container_listen else container_listen
    if container_listen in ("auto", "") or host == gateway:
        return Check("container network", OK, f"containers are on mlpd-isolated (no traffic between them); they reach the "
                                              f"daemon as host.docker.internal = {gateway}")
    return Check("container network", WARN,
                 f"server.container_listen is {container_listen}, but containers are on mlpd-isolated, where host.docker.internal "
                 f"is {gateway}: they cannot reach the daemon (MLflow, the API)",
                 "set server.container_listen = \"auto\" in mlpd.toml and restart the daemon")


NO_LOGIN_SHELLS = ("nologin", "false")


def job_user_check(container_user: str, passwd: str) -> Check:
    """Whether the uid jobs run as (jobs.container_user) is a host account that can log in (passwd: the
    host's accounts as /etc/passwd text). Such an account shares the uid of every job and workspace
    process, so it can read their environments (/proc/PID/environ: MLPD_TOKEN, JUPYTER_TOKEN), signal
    them and open their files: that fails. An account with no login shell (nologin, false) is fine."""
    uid = container_user.split(":")[0]
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or fields[2] != uid:
            continue
        name, shell = fields[0], fields[6].strip() or "/bin/sh"  # an empty shell field means /bin/sh
        if os.path.basename(shell) in NO_LOGIN_SHELLS:
            return Check("job uid", OK, f"jobs run as uid {uid}, the account {name} (no login: {shell})")
        return Check("job uid", FAIL,
                     f"jobs run as uid {uid} (jobs.container_user), which is the login account {name} ({shell}): {name} can "
                     "read every job's and workspace's tokens (/proc/PID/environ) and signal their processes",
                     "run 'sudo ./install.sh' (it makes the no-login account mlpd-jobs and sets jobs.container_user to it), or set "
                     f"jobs.container_user to a uid no account uses (the default is {_default_job_user()}); then 'mlpd images build "
                     "--local' and restart the daemon")
    return Check("job uid", OK, f"jobs run as uid {uid}, which no host account uses")


def _default_job_user() -> str:
    from mlpd.config import SETTINGS_BY_KEY

    return SETTINGS_BY_KEY["jobs.container_user"].default


def _host_accounts(container_user: str) -> str:
    """/etc/passwd, plus the job uid's entry from the name service when only it knows (LDAP, SSSD)."""
    import pwd

    try:
        with open("/etc/passwd") as fh:
            text = fh.read()
    except OSError:
        text = ""
    try:
        entry = pwd.getpwuid(int(container_user.split(":")[0]))
        text += f"\n{entry.pw_name}:x:{entry.pw_uid}:{entry.pw_gid}:{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}"
    except (KeyError, ValueError):
        pass
    return text


def _gpu_checks(config, runtime) -> list[Check]:
    from mlpd.runtime.gpus import make_inventory

    out = []
    store = None
    db = os.path.join(config.state_dir, "mlpd.db")
    if os.access(db, os.R_OK):  # GPUs an admin declared at run time ('mlpd admin gpus declare') are in the state database
        from mlpd.store import Store

        store = Store(db)
    inventory = make_inventory(config["gpus.declare"], config["gpus.declared_model"], store)
    try:
        devices = inventory.devices()
    except Exception:  # an older database: the daemon migrates it at start
        inventory = make_inventory(config["gpus.declare"], config["gpus.declared_model"])
        devices = inventory.devices()
    if inventory.kind == "declared":
        out.append(Check("gpus", WARN, f"{len(devices)} declared GPUs: for trying mlpd, not real devices; GPU jobs run on them",
                         "on a machine with NVIDIA GPUs: 'mlpd admin gpus declare 0' (and gpus.declare = 0 in mlpd.toml)"))
    elif devices:
        names = ", ".join(f"{d.index}: {d.name} ({d.uuid})" for d in devices)
        out.append(Check("gpus", OK, f"NVML sees {len(devices)}: {names}"))
    else:
        out.append(Check("gpus", WARN, "no NVIDIA driver or no GPU (NVML finds none): CPU-only work runs, GPU jobs are refused",
                         "install the NVIDIA driver, or declare test GPUs to try mlpd without them: 'mlpd admin gpus declare 2'"))
    if devices and inventory.kind != "declared" and runtime is not None:
        if runtime.engine_info().get("nvidia"):
            out.append(Check("gpu pinning", OK, "the NVIDIA container runtime is installed: GPUs are pinned by UUID"))
        else:
            out.append(Check("gpu pinning", FAIL, "the engine has no NVIDIA runtime: containers cannot see the GPUs",
                             "install nvidia-container-toolkit and run 'nvidia-ctk runtime configure --runtime=docker', then restart docker"))
    return out


def _image_checks(config, runtime) -> list[Check]:
    from mlpd.runtime.image_catalog import SOURCE_LABEL, definitions, expected_source

    out = []
    nvidia = bool(config["images.extra"]) and bool(runtime.engine_info().get("nvidia"))
    for d in definitions(config, nvidia=nvidia):
        if not runtime.image_present(d.tag):
            out.append(Check(f"image {d.tag}", FAIL, "missing: jobs that use it fail", "build it: 'mlpd images build --local'"))
        elif runtime.image_labels(d.tag).get(SOURCE_LABEL) not in {expected_source(runtime, config, x) for x in (d, d.fallback) if x}:
            out.append(Check(f"image {d.tag}", WARN, f"built from other sources than this mlpd's images/{d.directory}",
                             "rebuild it: 'mlpd images build --local'"))
        else:
            out.append(Check(f"image {d.tag}", OK, "present and current"))
    return out


def _state_checks(config) -> list[Check]:
    out = []
    state = config.state_dir
    if not os.path.isdir(state):
        return [Check("state directory", FAIL, f"{state} does not exist", "start the daemon once ('mlpd daemon') or run install.sh")]
    mode = stat.S_IMODE(os.stat(state).st_mode)
    if not os.access(state, os.W_OK):
        out.append(Check("state directory", FAIL, f"{state} is not writable by this user", f"run as the daemon's user, or fix the owner of {state}"))
    elif mode & 0o077:
        out.append(Check("state directory", WARN, f"{state} has mode {mode:o}: other users can read tokens' hashes, code and outputs",
                         f"chmod 700 {state}"))
    else:
        out.append(Check("state directory", OK, f"{state} (mode {mode:o})"))
    real = os.path.realpath(state)
    scratch = next((t for t in TEMP_DIRS if real == t or real.startswith(t + "/")), None)
    if scratch:
        out.append(Check("state location", WARN, f"{state} is under {scratch}: the systemd unit (PrivateTmp) gives the daemon "
                         f"an empty {scratch} of its own, so the service cannot start on it, and {scratch} may be emptied at boot",
                         "set server.state_dir to a lasting directory (install.sh's default is /var/lib/mlpd)"))
    free = shutil.disk_usage(state).free
    gib = free / 1024**3
    if free < MIN_FREE_BYTES:
        out.append(Check("free disk", FAIL, f"{gib:.1f} GiB free under {state}", "free space: old job outputs (state/jobs), images ('docker image prune')"))
    elif free < LOW_FREE_BYTES:
        out.append(Check("free disk", WARN, f"{gib:.1f} GiB free under {state}", "free space before it runs out: job outputs, images"))
    else:
        out.append(Check("free disk", OK, f"{gib:.0f} GiB free under {state}"))
    return out


def _find_nginx() -> str | None:
    from mlpd.ops.front import find_nginx

    return find_nginx()


def front_check(setting: str, nginx: str | None) -> Check:
    """The web front (server.front): nginx takes the connections so that slow clients cannot hold the
    web threads; without it the daemon still runs, exposed to that."""
    if setting == "none":
        return Check("web front", WARN, "server.front = \"none\": gunicorn takes connections itself, so slow clients can hold every web thread",
                     "install nginx (apt-get install nginx-light) and set server.front = \"auto\"")
    if nginx is None:
        return Check("web front", FAIL if setting == "nginx" else WARN,
                     "no nginx is installed" + (": the daemon cannot start with server.front = \"nginx\"" if setting == "nginx"
                                                else ": gunicorn takes connections itself, so slow clients can hold every web thread"),
                     "install it: apt-get install nginx-light (install.sh does), then restart mlpd")
    return Check("web front", OK, f"nginx ({nginx}) in front of the web server")


def _daemon_check(config) -> Check:
    listen = config["server.listen"]
    host, _, port = listen.rpartition(":")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host.strip("[]")
    url = f"http://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            health = json.load(resp)
    except OSError as exc:
        return Check("daemon", WARN, f"nothing answers on {listen} ({getattr(exc, 'reason', exc)})",
                     "start it: 'systemctl start mlpd' or 'mlpd daemon --config FILE'")
    fatal = sorted(name for name, state in (health.get("children") or {}).items() if state == "fatal")
    if fatal:
        # A child that kept dying is not restarted again (mlpd.ops.supervision): nothing runs until someone acts.
        return Check("daemon", FAIL, f"answers on {listen} (version {health.get('version')}), but {', '.join(fatal)} kept dying "
                     "and is given up (FATAL): no job is reconciled or launched" if "worker" in fatal else
                     f"answers on {listen} (version {health.get('version')}), but {', '.join(fatal)} kept dying and is given up (FATAL)",
                     "read why in the daemon's log ('journalctl -u mlpd'), fix it, then 'systemctl restart mlpd'")
    if health.get("worker") != "ok":
        return Check("daemon", WARN, f"answers on {listen} (version {health.get('version')}), but its worker is {health.get('worker')}",
                     "see the daemon's log ('journalctl -u mlpd'): the worker reconciles and launches jobs")
    extra = config["server.container_listen"]
    return Check("daemon", OK, f"answers on {listen}, version {health.get('version')}, worker ok"
                 + (f"; containers reach it on {extra}" if extra and extra != "auto" else "; containers reach it on the gateway of mlpd's network (mlpd-isolated)"))


def _mlflow_check(config) -> Check:
    from mlpd.tracking import server as tracking

    path = tracking.db_path(config.state_dir)
    if not os.path.exists(path):
        return Check("mlflow store", WARN, f"{path} does not exist yet", "the daemon creates it at its first start")
    stamps = [n for n in os.listdir(tracking.mlflow_dir(config.state_dir)) if n.startswith(".schema-mlflow-")]
    from importlib.metadata import version

    expected = f".schema-mlflow-{version('mlflow')}"
    if expected not in stamps:
        return Check("mlflow store", WARN, f"{path} is at another MLflow's schema ({', '.join(stamps) or 'unknown'})",
                     "restart the daemon: it upgrades the store at start (keeping a copy)")
    try:
        import sqlite3

        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            runs = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    except Exception as exc:
        return Check("mlflow store", FAIL, f"{path} cannot be read: {exc}", "check the file's owner and the disk")
    return Check("mlflow store", OK, f"{path}: MLflow {version('mlflow')} schema, {runs} runs")


def _systemd_check() -> Check | None:
    if not (os.path.isdir("/run/systemd/system") and shutil.which("systemctl")):
        return None
    state = subprocess.run(["systemctl", "is-active", "mlpd"], capture_output=True, text=True).stdout.strip()
    if state == "active":
        return Check("systemd unit", OK, "mlpd.service is active")
    return Check("systemd unit", WARN, f"mlpd.service is {state or 'not installed'}", "sudo ./install.sh, or 'systemctl start mlpd'")


def _clock_check(config) -> Check:
    now = time.time()
    newest = None
    db = os.path.join(config.state_dir, "mlpd.db")
    if os.path.exists(db):
        import sqlite3

        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                newest = conn.execute("SELECT MAX(at) FROM events").fetchone()[0]
        except sqlite3.Error:
            newest = None
    if newest and newest - now > 60:
        return Check("clock", FAIL, f"the clock is {newest - now:.0f} s behind the newest event: GPU-hours and time limits would be wrong",
                     "set the time (enable NTP: 'timedatectl set-ntp true')")
    return Check("clock", OK, time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)))


def as_json(checks: list[Check]) -> dict:
    return {"ok": not any(c.status == FAIL for c in checks), "checks": [asdict(c) for c in checks]}
