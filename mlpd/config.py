"""Configuration: every key declared once here, documented in the shipped mlpd.toml.

The file is TOML, read with tomllib. Which file: ``--config FILE``, else the
``MLPD_CONFIG`` environment variable, else ``/etc/mlpd/mlpd.toml`` when it exists,
else the built-in defaults (a laptop: state under ~/.local/share/mlpd, loopback only).
An unknown key or a wrong value is a ConfigError naming the file, the key and
what is expected; ``mlpd daemon`` turns it into exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

SYSTEM_CONFIG = "/etc/mlpd/mlpd.toml"


class ConfigError(Exception):
    """A configuration file that cannot be used, with where and why."""

    def __init__(self, source: str, key: str | None, message: str):
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Setting:
    """One configuration key: its dotted name, type, default and documentation."""

    key: str
    type: type | tuple[type, ...]
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns an error message or None


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected HOST:PORT, e.g. 127.0.0.1:8470"
    return None


def _serving_listen(value: str) -> str | None:
    if value in ("auto", ""):
        return None
    return _listen(value) and 'expected HOST:PORT, "auto" (server.listen\'s host, the port after its port) or "" (no proxy)'


def _positive(value: float) -> str | None:
    return None if value > 0 else "expected a number > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "expected a number >= 0"


def _monitor_reference(value: int) -> str | None:
    return None if value == 0 or 100 <= value <= 100_000 else "expected 0 (off) or a whole number from 100 to 100000"


def _between(low: float, high: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"expected a number from {low:g} to {high:g}"

    return check


def _container_user(value: str) -> str | None:
    uid, sep, gid = value.partition(":")
    if not (uid.isdigit() and sep and gid.isdigit()):
        return "expected numeric UID:GID, e.g. '65200:65200' (a name could map to root inside an image)"
    if int(uid) == 0 or int(gid) == 0:
        return "job containers never run as root (uid 0 or gid 0); use e.g. '65200:65200'"
    return None


def _prices(value: dict) -> str | None:
    for model, price in value.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            return f"price of {model!r}: expected a number >= 0, got {price!r}"
    return None


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else "expected one of " + ", ".join(repr(c) for c in choices)

    return check


def _container_listen(value: str) -> str | None:
    if value in ("", "auto"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = value, "1"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected 'auto', '' (none), HOST or HOST:PORT, e.g. 172.17.0.1"
    return None


def _experiment_template(value: str) -> str | None:
    try:
        name = value.format(owner="alice")
    except (KeyError, IndexError, ValueError):
        return "expected a name in which only {owner} is filled in, e.g. 'jobs-{owner}'"
    return None if name.strip() else "expected a non-empty name"


def _memory(value: str) -> str | None:
    if value == "":
        return None
    from mlpd.units import MIN_MEMORY, format_bytes, parse_memory

    try:
        size = parse_memory(value)
    except ValueError as exc:
        return str(exc)
    return None if size >= MIN_MEMORY else f"must be at least {format_bytes(MIN_MEMORY)} (Docker's minimum), got {value!r}"


def _shm_size(value: str) -> str | None:
    if value == "auto":
        return None
    from mlpd.units import MIN_SHM, format_bytes, parse_memory

    try:
        size = parse_memory(value)
    except ValueError as exc:
        return f"expected 'auto' or a size; {exc}"
    return None if size >= MIN_SHM else f"must be 'auto' or at least {format_bytes(MIN_SHM)}, got {value!r}"


def _loopback_port_range(value: str) -> str | None:
    low, sep, high = value.partition("-")
    if not sep or not low.isdigit() or not high.isdigit() or not 1024 <= int(low) <= int(high) < 65536:
        return "expected LOW-HIGH ports from 1024 to 65535, e.g. '31000-31999'"
    return None


def _duration(value: str) -> str | None:
    if value == "":
        return None
    from mlpd.units import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        return str(exc)
    return None


def _duration_nonempty(value: str) -> str | None:
    return "expected a duration such as '4h' or '30m'" if value == "" else _duration(value)


def _port_range(value: str) -> str | None:
    import re

    m = re.fullmatch(r"(\d+)-(\d+)", value)
    if not m or not (1024 <= int(m.group(1)) <= int(m.group(2)) <= 65535):
        return "expected 'LOW-HIGH' with 1024 <= LOW <= HIGH <= 65535, e.g. '20000-29999'"
    return None


def _class_names(value: list) -> str | None:
    import re

    for name in value:
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", name):
            return f"expected class names (a-z, 0-9, _ and -, at most 32), got {name!r}"
    return None if len(set(value)) == len(value) else "a class is named twice"


def _image_name(value: str) -> str | None:
    return None if value.strip() and not any(c.isspace() for c in value) else f"expected 'auto', 'local' or an image name, got {value!r}"


def _optional_images(value: list) -> str | None:
    known = ("pytorch",)  # mlpd.runtime.image_catalog.EXTRAS
    for name in value:
        if name not in known:
            return f"expected a list of optional images ({', '.join(known)}), got {name!r}"
    return None


def _class_users(value: dict) -> str | None:
    for name, users in value.items():
        if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
            return f"{name}: expected a list of user names and 'team:NAME', got {users!r}"
    return None


def _datasets(value: dict) -> str | None:
    """The shape of [datasets.NAME] tables; the paths are checked on the host when work starts (mlpd.datasets)."""
    import re

    keys = {"path", "teams", "users", "writable"}
    for name, table in value.items():
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name) or name in (".", ".."):
            return f"{name!r}: expected a dataset name (lowercase letters, digits, '.', '_', '-'; at most 64)"
        if not isinstance(table, dict):
            return f"{name}: expected a table with path, teams, users, writable"
        if set(table) - keys:
            return f"{name}: unknown key {sorted(set(table) - keys)[0]!r} (expected path, teams, users, writable)"
        if not isinstance(table.get("path"), str) or not table["path"].startswith("/"):
            return f"{name}.path: expected the absolute path of a directory on this host"
        for key in ("teams", "users"):
            if not isinstance(table.get(key, []), list) or not all(isinstance(x, str) and x for x in table.get(key, [])):
                return f"{name}.{key}: expected a list of names"
        if not isinstance(table.get("writable", False), bool):
            return f"{name}.writable: expected true or false"
    return None


def _check_classes(values: dict[str, Any], source: str) -> None:
    """The priority class settings agree with each other (each key is checked alone first)."""
    classes = values["scheduler.priority_classes"]
    if not classes:
        raise ConfigError(source, "scheduler.priority_classes", "name at least one class")
    if values["scheduler.default_priority_class"] not in classes:
        raise ConfigError(source, "scheduler.default_priority_class",
                          f"{values['scheduler.default_priority_class']!r} is not in scheduler.priority_classes ({', '.join(classes)})")
    for key in ("scheduler.preemptible_classes", "scheduler.priority_class_users"):
        unknown = [c for c in values[key] if c not in classes]
        if unknown:
            raise ConfigError(source, key, f"{unknown[0]!r} is not in scheduler.priority_classes ({', '.join(classes)})")


SETTINGS: tuple[Setting, ...] = (
    Setting("server.listen", str, "127.0.0.1:8470", "Address the API and web UI listen on.", _listen),
    Setting("server.state_dir", str, "~/.local/share/mlpd", "Directory for the state database, logs, code and outputs."),
    Setting("server.workers", int, 2, "gunicorn worker processes (1-64).", _between(1, 64)),
    Setting("server.threads", int, 16, "Threads per gunicorn worker, 1-256 (log streams hold one each).", _between(1, 256)),
    Setting("server.log_level", str, "info", "Daemon log level.", _one_of("debug", "info", "warning", "error")),
    Setting("server.log_streams_per_user", int, 4, "Live log streams (logs -f, a log page) one user may follow at once, 1-64; more get 429.", _between(1, 64)),
    Setting("server.front", str, "auto", "The front that reads each request whole before a web thread sees it (slow clients time out there): 'nginx', 'none', or 'auto' = nginx when installed.", _one_of("auto", "nginx", "none")),
    Setting("server.container_listen", str, "auto", "Second address for job containers to reach the daemon (MLflow, API): 'auto' = the gateway of mlpd's Docker network (mlpd-isolated, which every container joins) on the port of server.listen, 'HOST' or 'HOST:PORT', '' = none.", _container_listen),
    Setting("server.restart_fatal_after", int, 5, "A daemon process (web, worker, front) that exits this many times in a row, each sooner than server.restart_stable_after after its start, is FATAL: not restarted until the daemon restarts (2-100). Restarts wait 1, 2, 4 ... 60 s.", _between(2, 100)),
    Setting("server.restart_stable_after", (int, float), 60.0, "Seconds a daemon process must run for its exit to count as a fresh start (the restart backoff begins again), 1 to 3600.", _between(1, 3600)),
    Setting("mlflow.default_experiment", str, "jobs-{owner}", "MLflow experiment of jobs that name none ({owner} is the job's owner).", _experiment_template),
    Setting("mlflow.max_artifact_mb", int, 1024, "Largest file one MLflow artifact upload may be, in MiB (1-1048576); the state directory's disk also keeps jobs.min_free_gb free.", _between(1, 1048576)),
    Setting("mlflow.allowed_hosts", list, [], "Extra Host header names the embedded MLflow accepts (e.g. this box's DNS name when server.listen is not loopback)."),
    Setting("scheduler.reconcile_interval", (int, float), 5.0, "Seconds between full reconciliations with Docker (0.1 to 3600).", _between(0.1, 3600)),
    Setting("scheduler.backfill", bool, True, "Let smaller jobs run ahead when they cannot delay the head of the queue."),
    Setting("scheduler.fair_share", bool, True, "Add each owner's fair-share factor (less recent GPU usage: higher) to a job's priority score."),
    Setting("scheduler.weight_priority", (int, float), 10000, "Priority score per point of a job's own priority (-100 to 100).", _non_negative),
    Setting("scheduler.weight_age", (int, float), 4000, "Priority score of a job that has waited scheduler.max_age (less in proportion).", _non_negative),
    Setting("scheduler.max_age", str, "14d", "Waiting time after which age adds no more to the priority score.", _duration),
    Setting("scheduler.weight_fair_share", (int, float), 100, "Priority score of a fair-share factor of 1 (an owner with no recent usage); 0.5 = their share used.", _non_negative),
    Setting("scheduler.weight_slowdown", (int, float), 3000, "Priority score of the slowdown factor of 1, the owner whose recent work was slowed down most by waiting (less in proportion; only with fair_share); 0 = off.", _non_negative),
    Setting("scheduler.slowdown_half_life", str, "21d", "Half-life of past jobs in the slowdown factor: a job that started a half-life ago counts half.", _duration_nonempty),
    Setting("scheduler.weight_expansion", (int, float), 1000, "Priority score of a job whose wait reached scheduler.max_expansion times its time limit (less in proportion).", _non_negative),
    Setting("scheduler.max_expansion", (int, float), 100, "Wait, in multiples of a job's time limit (10 min at least), after which expansion adds no more.", _between(1, 1e6)),
    Setting("scheduler.starvation_wait", str, "6h", "A job that has waited this long goes ahead of every other job of its class but the reservation holder, oldest first, whatever its score: it takes the next reservation, which bounds the longest wait (docs/scheduling.md); '0' = off.", _duration_nonempty),
    Setting("scheduler.weight_size", (int, float), 0, "Priority score of a job asking for all GPUs of one model with a time limit of scheduler.size_time or less (less in proportion to its GPUs, and to size_time / its time limit beyond it); 0 = off.", _non_negative),
    Setting("scheduler.size_time", str, "1h", "Time limit up to which a job's size counts in full in the job-size factor.", _duration_nonempty),
    Setting("scheduler.priority_classes", list, ["production", "default", "preemptible"], "Priority classes, highest first: a job of a higher class always goes ahead of one of a lower class.", _class_names),
    Setting("scheduler.default_priority_class", str, "default", "The class of jobs that name none (and of workspaces and deployments)."),
    Setting("scheduler.preemptible_classes", list, ["preemptible"], "Classes whose running jobs may be preempted by waiting work of a higher class (never workspaces or deployments).", _class_names),
    Setting("scheduler.priority_class_users", dict, {"production": []}, "Who may use a class: class = [user names and \"team:NAME\"]; admins may use every class, a class not named here is open to everyone.", _class_users),
    Setting("scheduler.preempt_after", str, "5m", "How long work of a higher class waits before it preempts preemptible jobs ('0' = at once).", _duration_nonempty),
    Setting("scheduler.preempt_grace", str, "60s", "Between SIGTERM and the stop of a preempted job: its time to write a checkpoint.", _duration_nonempty),
    Setting("gpus.declare", int, 0, "Declare this many GPUs on a machine without NVIDIA GPUs (development and tests).", _non_negative),
    Setting("gpus.declared_model", str, "declared", "Model name shown for declared GPUs."),
    Setting("gpus.drained", list, [], "GPU indices or UUIDs that take no new work."),
    Setting("gpus.share_max", int, 4, "At most this many shared workloads (--gpus 0.5) on one GPU, by time-slicing; their shares sum to 1 at most "
            "(docs/gpu-sharing.md). 1 = each share gets a GPU of its own.", _between(1, 64)),
    Setting("jobs.default_image", str, "mlpd/train:latest", "Image used when a job names none."),
    Setting("jobs.default_cpus", (int, float), 2, "CPU limit of work that sets none: jobs, notebook jobs, workspaces, model-serving replicas (0 = no limit; never more than the host has).", _non_negative),
    Setting("jobs.default_memory", str, "8g", "Memory limit of work that sets none, e.g. '8g': jobs, notebook jobs, workspaces, model-serving replicas ('' = no limit; never more than the host has).", _memory),
    Setting("jobs.shm_size", str, "auto", "Size of /dev/shm in jobs, notebook jobs and workspaces that ask for none: 'auto' (half the "
            "memory limit; of the host's memory for work without one) or a size such as '2g' (never more than the memory limit). "
            "A job asks for more with 'shm'.", _shm_size),
    Setting("jobs.default_time_limit", str, "", "Time limit for jobs that set none, e.g. '24h' ('' = no limit).", _duration),
    Setting("jobs.max_code_mb", int, 200, "Largest code archive a job may upload, in MiB (1-10240).", _between(1, 10240)),
    Setting("jobs.max_code_files", int, 20000, "Most members (files, directories, links) one code archive may hold (1-1000000).", _between(1, 1000000)),
    Setting("jobs.max_outputs_gb", (int, float), 50, "Most a running job's /outputs may hold, in GB: a job over it is stopped with the reason, its outputs kept (0 = no cap).", _non_negative),
    Setting("retention.job_days", (int, float), 30, "Logs and outputs of jobs that ended longer ago than this many days are removed (the job's record stays).", _between(0.01, 36500)),
    Setting("retention.code_days", (int, float), 30, "Code archives no job used for this many days (and no queued or running job uses) are removed.", _between(0.01, 36500)),
    Setting("environments.keep_days", (int, float), 30, "Job environments (mlpd/env:*) not used for this many days are removed.", _between(0.01, 3650)),
    Setting("environments.max_gb", (int, float), 50, "Most disk all job environments together may use, in GB; the least recently used go first.", _between(0.1, 100000)),
    Setting("jobs.min_free_gb", (int, float), 1, "Submissions are refused while the state directory's disk has less free space than this, in GB (running work goes on).", _between(0, 100000)),
    Setting("jobs.container_user", str, "65200:65200", "Numeric uid:gid every container of a member runs as: a uid no host account "
            "that can log in has (never root: uid and gid 0 are refused).", _container_user),
    Setting("workspaces.image", str, "mlpd/workspace:latest", "Image of workspaces that name none (JupyterLab on the training image; 'mlpd images build' builds it)."),
    Setting("workspaces.idle_timeout", str, "4h", "A workspace with no activity (kernels, terminals, the server, busy GPUs) this long is stopped and its GPUs freed; admins may allow a user longer.", _duration_nonempty),
    Setting("workspaces.cull_interval", (int, float), 60.0, "Seconds between idle checks of running workspaces (1 to 3600).", _between(1, 3600)),
    Setting("workspaces.port_range", str, "20000-29999", "Loopback ports workspaces' JupyterLab servers are published on ('LOW-HIGH').", _port_range),
    Setting("server.ssh_host", str, "", "The SSH host name users reach this machine by (for 'mlpd ws tunnel'); '' = the host name each client reaches the daemon by."),
    Setting("images.base", str, "mlpd/base:bookworm", "Base of mlpd's images: mlpd/base:* is built locally with debootstrap; any other name is pulled."),
    Setting("images.extra", list, [], "Optional images 'mlpd images build' also builds (and 'mlpd doctor' checks): \"pytorch\" (mlpd/pytorch:latest, several GB).", _optional_images),
    Setting("images.pytorch_base", str, "auto", "Base of mlpd/pytorch: 'auto' (a pinned CUDA base from a registry on a host with the NVIDIA runtime, else the training image), 'local' (always the training image), or an image name to pull.", _image_name),
    Setting("quotas.period", str, "month", "Period of GPU-hour quotas: day, week or month (UTC calendar).", _one_of("day", "week", "month")),
    Setting("quotas.gpu_hours", (int, float), 0, "Default GPU-hours per user per period (0 = unlimited); per-user and per-team quotas are set with 'mlpd admin quota'.", _non_negative),
    Setting("quotas.max_gpus", int, 0, "Default most GPUs one user may hold at once (0 = unlimited).", _non_negative),
    Setting("quotas.max_cpus", (int, float), 16, "Default most CPUs one user's running work (jobs, workspaces, replicas) may have at once, by their CPU limits (0 = unlimited).", _non_negative),
    Setting("quotas.max_memory", str, "64g", "Default most memory one user's running work may have at once, by their memory limits ('' = unlimited).", _memory),
    Setting("quotas.max_jobs", int, 10, "Default most workloads (jobs, workspaces, replicas) one user may run at once (0 = unlimited).", _non_negative),
    Setting("quotas.home_gb", (int, float), 0, "Most a user's home (/home/mlpd) may hold, in GB, as last measured: over it, their new jobs and workspaces are refused (running work goes on, nothing is deleted); 0 = no limit.", _non_negative),
    Setting("quotas.team_gb", (int, float), 0, "Most a team's folder (/shared/TEAM) may hold, in GB, as last measured: over it, its members' new jobs and workspaces are refused (running work goes on, nothing is deleted); 0 = no limit.", _non_negative),
    Setting("quotas.disk_measure_interval", (int, float), 600, "Seconds between the worker's measurements of homes, team folders and datasets (10 to 86400).", _between(10, 86400)),
    Setting("quotas.over_quota", str, "queue", "What happens to work over a quota: 'queue' (waits; over GPU-hours runs at the lowest priority) or 'refuse' (refused at submit).", _one_of("queue", "refuse")),
    Setting("scheduler.fair_share_half_life", str, "7d", "Half-life of past usage in fair share: among equal priorities, less recent usage goes first.", _duration),
    Setting("pricing.gpu_hour", dict, {}, "Price of one GPU-hour per GPU model, for cost reports, e.g. {\"NVIDIA H100 80GB HBM3\" = 2.5}.", _prices),
    Setting("pricing.currency", str, "USD", "Currency label of the prices."),
    Setting("metrics.public", bool, False, "Serve /metrics without a token (otherwise an admin token is needed)."),
    Setting("gpus.sample_interval", (int, float), 10.0, "Seconds between NVML utilization samples (real GPUs only).", _positive),
    Setting("gpus.avoid_stray", bool, True, "Give no new work to a GPU that a process outside mlpd is using."),
    Setting("docker.host", str, "", "Docker engine address ('' = DOCKER_HOST or the local socket)."),
    Setting("docker.gpu_runtime", str, "auto", "GPU pinning: 'auto' detects the NVIDIA runtime, 'nvidia' requires it, 'none' only sets CUDA_VISIBLE_DEVICES.", _one_of("auto", "nvidia", "none")),
    Setting("datasets", dict, {}, "Datasets declared in the file, one [datasets.NAME] table each: path (a host directory), teams and users "
            "(who may read it; none of either = everyone), writable (default false). Mounted at /datasets/NAME.", _datasets),
    Setting("slurm.enabled", bool, False, "Run jobs that ask for it ('mlpd run --on slurm', or slurm.default_on) on a Slurm cluster through sbatch (see docs/slurm.md)."),
    Setting("slurm.default_on", str, "local", "Where jobs that name no place run: 'local' (this host) or 'slurm' (needs slurm.enabled).", _one_of("local", "slurm")),
    Setting("slurm.partition", str, "", "Slurm partition jobs are submitted to ('' = the cluster's default)."),
    Setting("slurm.account", str, "", "Slurm account jobs are charged to ('' = the submitting user's default)."),
    Setting("slurm.shared_dir", str, "", "Absolute path every Slurm node mounts at the same path: each Slurm job's code, outputs, log and batch script live under it."),
    Setting("slurm.sbatch_extra", list, [], "Extra sbatch arguments for every Slurm job, e.g. [\"--qos=normal\"] (after mlpd's own)."),
    Setting("slurm.daemon_address", str, "", "The daemon host's address as the nodes reach it (host.docker.internal in a Slurm job's container); '' = the node itself (a one-node cluster on this host)."),
    Setting("serving.port_range", str, "31000-31999", "Loopback ports for model-serving replicas (LOW-HIGH); the stable endpoint is /serve/NAME on the daemon's address.", _loopback_port_range),
    Setting("serving.start_timeout", str, "5m", "How long a new model version may take from its container's start to answering /ping before it is rolled back.", _duration),
    Setting("serving.drain", str, "20s", "How long a replaced version keeps running after traffic moved off it, so requests in flight finish.", _duration),
    Setting("serving.listen", str, "auto", "Address of the serving proxy (HAProxy) that answers /serve/NAME/invocations: HOST:PORT, 'auto' = server.listen's host and the port after its port (127.0.0.1:8471 by default; no proxy when haproxy is not installed), '' = none (the daemon's own /serve path still answers).", _serving_listen),
    Setting("serving.max_body_mb", int, 64, "Largest request body the stable endpoint passes to a model, in MiB (1-4096).", _between(1, 4096)),
    Setting("serving.monitor_reference", int, 1000, "How many values of each numeric input feature of a model version, the first it is sent, make the reference its drift (population stability index) is measured against (100-100000); 0 = no monitoring of inputs and predictions.", _monitor_reference),
)

SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


class Config:
    """Resolved configuration: defaults, then the file, then command-line overrides."""

    def __init__(self, values: dict[str, Any], source: str):
        self._values = values
        self.source = source

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def as_dict(self) -> dict[str, Any]:
        """All keys with their resolved values."""
        return dict(self._values)

    @property
    def state_dir(self) -> str:
        return os.path.abspath(os.path.expanduser(self["server.state_dir"]))

    @property
    def db_path(self) -> str:
        return os.path.join(self.state_dir, "mlpd.db")

    def to_json(self) -> str:
        return json.dumps({"source": self.source, "values": self._values})

    @classmethod
    def from_json(cls, text: str) -> "Config":
        data = json.loads(text)
        return cls(data["values"], data["source"])


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        declared = SETTINGS_BY_KEY.get(key)
        if isinstance(value, dict) and not (declared and declared.type is dict):
            flat.update(_flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", list: "a list", dict: "a table"}
    if isinstance(t, tuple):
        return "a number" if set(t) == {int, float} else " or ".join(names[x] for x in t)
    return names[t]


def validate(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Check flattened keys and values against SETTINGS; return them unchanged."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        setting = SETTINGS_BY_KEY.get(key)
        if setting is None:
            import difflib

            close = difflib.get_close_matches(key, SETTINGS_BY_KEY, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(source, key, f"unknown key{hint}; see the documented mlpd.toml for every key")
        wrong_bool = isinstance(value, bool) and setting.type is not bool
        if wrong_bool or not isinstance(value, setting.type):
            raise ConfigError(source, key, f"expected {_type_name(setting.type)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(source, key, f"expected a finite number, got {value!r}")
        if setting.check and (problem := setting.check(value)):
            raise ConfigError(source, key, problem)
        values[key] = value
    return values


def config_path(explicit: str | None = None) -> str | None:
    """Which file to read: --config, then MLPD_CONFIG, then the system file if present."""
    if explicit:
        return explicit
    if os.environ.get("MLPD_CONFIG"):
        return os.environ["MLPD_CONFIG"]
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else None


def load_config(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate the configuration; overrides (from flags) win over the file."""
    path = config_path(path)
    raw: dict[str, Any] = {}
    source = path or "<built-in defaults>"
    if path:
        try:
            with open(path, "rb") as fh:
                raw = _flatten(tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError(path, None, "file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(path, None, f"not valid TOML: {exc}") from None
    values = {s.key: s.default for s in SETTINGS}
    values.update(validate(raw, source))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(validate(flags, "command line"))
    _check_classes(values, source)
    _check_slurm(values, source)
    return Config(values, source)


def _check_slurm(values: dict[str, Any], source: str) -> None:
    """[slurm] as a whole: a default of 'slurm' needs Slurm enabled, and Slurm needs a shared directory."""
    if values["slurm.default_on"] == "slurm" and not values["slurm.enabled"]:
        raise ConfigError(source, "slurm.default_on", "is 'slurm' but slurm.enabled is false; enable Slurm or set it to 'local'")
    if values["slurm.enabled"] and not os.path.isabs(values["slurm.shared_dir"]):
        raise ConfigError(source, "slurm.shared_dir", "must be an absolute path every Slurm node mounts (needed when slurm.enabled is true), "
                                                      f"got {values['slurm.shared_dir']!r}")
    extra = values["slurm.sbatch_extra"]
    if not all(isinstance(a, str) and a.startswith("--") for a in extra):
        raise ConfigError(source, "slurm.sbatch_extra", "expected a list of sbatch options such as \"--qos=normal\" (each starting with --)")
