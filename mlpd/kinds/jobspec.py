"""The job spec: what a user submits, validated once, here.

A spec arrives as ``mlpd run`` flags, a TOML file (``mlpd submit job.toml``) or
JSON over the HTTP API; all three become a mapping that :func:`parse_spec` turns
into a frozen :class:`JobSpec` or a :class:`SpecError` naming the offending field.
Anything that would give a job power over the host is refused by name
(:data:`FORBIDDEN`) rather than reported as merely unknown, so the user learns why.
"""

from __future__ import annotations

import difflib
import re
import shlex
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Callable, Mapping

from mlpd.units import (MIN_CPUS, MIN_MEMORY, MIN_SHM, NUMBER, typename, format_bytes, parse_duration, parse_memory)


class SpecError(ValueError):
    """A job spec that cannot be run: which field, and what is wrong with it."""

    def __init__(self, field: str, message: str):
        # Values are quoted back to the user; a hostile one must not make a megabyte error.
        field, message = field[:100], message if len(message) <= 1000 else message[:1000] + "..."
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec; build it with :func:`parse_spec`, not directly."""

    command: tuple[str, ...]
    image: str | None = None
    code: str | None = None
    gpus: int = 0
    gpu_share: float | None = None  # a share of one GPU below 1 (then gpus is 1): mlpd.scheduling.sharing
    gpu_model: str | None = None
    cpus: float | None = None
    memory: int | None = None
    # Read-only view so a frozen spec is really frozen; left out of hash() as mappings are unhashable.
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    time_limit: float | None = None
    priority: int = 0
    name: str | None = None
    experiment: str | None = None
    requirements: str | None = None  # the text of a requirements.txt: the job runs in image + these (mlpd.runtime.environments)
    priority_class: str | None = None  # a class of scheduler.priority_classes; None: the default class
    shm: int | None = None  # bytes of /dev/shm, within the memory limit; None: jobs.shm_size (see shm_size)
    on: str | None = None  # where it runs: "local" (this host) or "slurm" (a Slurm cluster); None: slurm.default_on, fixed at submit

    @property
    def gpu_demand(self) -> float:
        """What it counts against concurrent-GPU quotas: its share of one GPU, or its whole GPUs."""
        return self.gpu_share if self.gpu_share else float(self.gpus)

    def to_dict(self) -> dict:
        """Return a JSON-able dict with every field; ``parse_spec`` accepts it back unchanged."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["command"] = list(self.command)
        out["env"] = dict(self.env)
        return out


_MOUNTS = "not allowed: host mounts are not available; ship code with the job (code directory) and write results to /outputs"
_NAMESPACES = "not allowed: jobs cannot join host namespaces; mlpd sets up the container's network, PID and IPC itself"
_DEVICES = "not allowed: ask for GPUs with 'gpus' (and 'gpu_model'); mlpd assigns devices itself"
# A dict rather than a set so each refusal carries its reason; `key in FORBIDDEN` works the same.
FORBIDDEN: Mapping[str, str] = MappingProxyType({
    "privileged": "not allowed: mlpd never runs privileged containers",
    "volumes": _MOUNTS, "mounts": _MOUNTS, "binds": _MOUNTS,
    "devices": _DEVICES, "device_requests": _DEVICES,
    "cap_add": "not allowed: job containers run with every capability dropped",
    "security_opt": "not allowed: mlpd sets the container's security options (no-new-privileges, Docker's seccomp profile)",
    "network_mode": _NAMESPACES, "pid_mode": _NAMESPACES, "ipc_mode": _NAMESPACES,
    "user": "not allowed: mlpd chooses the user the container runs as",
    "runtime": "not allowed: mlpd picks the container runtime (nvidia when GPUs are requested)",
    "docker_socket": "not allowed: the Docker socket is never given to jobs; it is root on the host",
})

# mlpd sets these to the GPUs it allocates; a user value would point the job at
# someone else's GPU, so it is dropped with a warning rather than an error
# (specs copied from a workstation often carry them).
PLACES = ("local", "slurm")  # where a job may run (spec key 'on'); mlpd.runtime.slurm runs the second

STRIPPED_ENV = ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")

ALLOWED = tuple(f.name for f in fields(JobSpec))
# The kernel refuses one argument or environment string over MAX_ARG_STRLEN (128 KiB with its NUL),
# and exec fails when all of them together pass ARG_MAX; mlpd keeps well inside both.
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_ARGS = 4096
MAX_ENV_VARS = 1024
MAX_EXEC_BYTES = 512 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Deliberately loose: registry[:port]/path[:tag][@digest]; Docker gives the precise error at pull time.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _whole(key: str, value: Any, low: int, high: int) -> int:
    """A whole number in [low, high]; integral floats pass because JSON clients send 2.0."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        value = int(value)  # CLI flags arrive as strings
    shown = repr(value) if isinstance(value, (str, float, int)) else typename(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(key, f"expected a whole number >= {low}, got {shown}")
    if value > high:
        raise SpecError(key, f"must be at most {high}, got {shown}")
    return value


def gpu_request(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`gpus` (whole GPUs, or a share of one GPU such as 0.5) and `gpu_share` as spec fields:
    {"gpus": 2} or {"gpus": 1, "gpu_share": 0.5}. A share asks for one GPU: `gpu_share` with
    `gpus` other than 1 (or a share in `gpus` too) is refused. Raises SpecError."""
    from mlpd.scheduling.sharing import ShareError, check_share, split_gpus

    try:
        gpus, share = split_gpus(raw["gpus"]) if raw.get("gpus") is not None else (None, None)
    except ShareError as exc:
        raise SpecError("gpus", str(exc)) from None
    if raw.get("gpu_share") is not None:
        if share is not None or gpus not in (None, 1):
            raise SpecError("gpu_share", f"a share is of one GPU: leave out gpus (or set it to 1), got gpus = {raw['gpus']!r}")
        try:
            share = check_share(raw["gpu_share"])
        except ShareError as exc:
            raise SpecError("gpu_share", str(exc)) from None
        gpus = 1
    out: dict[str, Any] = {"gpus": gpus or 0}
    if share is not None:
        out["gpu_share"] = share
    return out


def _string(key: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str):
        raise SpecError(key, f"expected a string, got {typename(value)}")
    if not value.strip():
        raise SpecError(key, "must not be empty")
    if len(value) > max_len:
        raise SpecError(key, f"must be at most {max_len} characters, got {len(value)}")
    return value


def _via(key: str, parse: Callable[[Any], Any], value: Any) -> Any:
    try:
        return parse(value)
    except ValueError as e:
        raise SpecError(key, str(e)) from None


def _command(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as e:
            raise SpecError("command", f"cannot split into arguments: {e}") from None
    if not isinstance(value, (list, tuple)):
        raise SpecError("command", f"expected a list of strings or a string, got {typename(value)}")
    if not value:
        raise SpecError("command", "must not be empty")
    if len(value) > MAX_ARGS:
        raise SpecError("command", f"has {len(value)} arguments; at most {MAX_ARGS}")
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise SpecError(f"command[{i}]", f"expected a string, got {typename(arg)} {arg!r}")
        if "\0" in arg:
            raise SpecError(f"command[{i}]", "contains a NUL character")
        if len(arg.encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES:
            raise SpecError(f"command[{i}]", f"is over the kernel's limit of {MAX_ARG_BYTES} bytes for one argument; "
                                             "pass large data in a file in the code directory")
    if not value[0].strip():
        raise SpecError("command[0]", "the program to run must not be empty")
    return tuple(value)


def _env(value: Any, warnings: list[str]) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise SpecError("env", f"expected a table of NAME = value, got {typename(value)}")
    if len(value) > MAX_ENV_VARS:
        raise SpecError("env", f"has {len(value)} variables; at most {MAX_ENV_VARS}")
    out: dict[str, str] = {}
    for name, val in value.items():
        key = f"env.{str(name)[:80]}"
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name) or len(name) > 256:
            raise SpecError(key, "invalid variable name; use letters, digits and _, not starting with a digit")
        if isinstance(val, bool):
            val = "true" if val else "false"  # how the user wrote it in TOML/JSON, not Python's "True"
        elif isinstance(val, (int, float)):
            val = str(val)
        elif not isinstance(val, str):
            raise SpecError(key, f"expected a string, number or boolean, got {typename(val)}")
        if "\0" in val:
            raise SpecError(key, "contains a NUL character")
        if len(name) + 1 + len(val.encode("utf-8", "surrogatepass")) > MAX_ARG_BYTES:
            raise SpecError(key, f"is over the kernel's limit of {MAX_ARG_BYTES} bytes for one variable; put large values in a file")
        if name in STRIPPED_ENV:
            warnings.append(f"env.{name} was removed: mlpd sets it to the GPUs it allocates")
            continue
        out[name] = val
    return MappingProxyType(out)


# In a job file the code is a directory (code_dir), not the API's digest of an uploaded archive.
FILE_KEYS = tuple("code_dir" if k == "code" else k for k in ALLOWED)


MAX_KEYS_REPORTED = 5  # unknown keys named (and close-match searched) in one error; the rest are counted
MAX_KEY_SHOWN = 40  # characters of an unknown key quoted back


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...] = ALLOWED) -> None:
    """Refuse forbidden keys (with the reason) and report the unknown keys at once: the first
    MAX_KEYS_REPORTED by name (with a close match each), the rest counted, so that a body full
    of keys costs a pass over them and a short message, not a search per key."""
    unknown: list[str] = []
    count = 0
    for key in data:
        if not isinstance(key, str):
            raise SpecError(repr(key)[:MAX_KEY_SHOWN], "keys must be strings")
        if key in FORBIDDEN:
            raise SpecError(key, FORBIDDEN[key])
        if key not in allowed:
            count += 1
            if len(unknown) < MAX_KEYS_REPORTED:
                unknown.append(key if len(key) <= MAX_KEY_SHOWN else key[:MAX_KEY_SHOWN] + "...")
    if not unknown:
        return
    hints = [f"did you mean '{close[0]}'{'' if count == 1 else f' for {key!r}'}?"
             for key in unknown if (close := difflib.get_close_matches(key, allowed, n=1))]
    hint = " ".join(hints) + " " if hints else ""
    what = "unknown key" if count == 1 else "unknown keys"
    more = f" and {count - len(unknown)} more" if count > len(unknown) else ""
    raise SpecError(", ".join(unknown) + more, f"{what}; {hint}allowed keys: {', '.join(allowed)}")


def parse_spec(data: Mapping[str, Any], job_file: bool = False) -> tuple[JobSpec, list[str]]:
    """Validate a raw mapping; return the spec and a list of warnings.

    Raises SpecError naming the field (dotted for nested items: ``env.1BAD``,
    ``command[2]``) for unknown keys (with the closest allowed key suggested),
    forbidden keys (with the reason), wrong types and bad values. Booleans are
    never accepted as numbers. ``None`` for an optional field means "the default".
    """
    if not isinstance(data, Mapping):
        raise SpecError("spec", f"expected a table/object of job settings, got {typename(data)}")
    _check_keys(data, FILE_KEYS if job_file else ALLOWED)
    # None means "not given" so JSON clients may send null and to_dict() output round-trips.
    raw = {k: v for k, v in data.items() if v is not None}
    if "command" not in raw:
        raise SpecError("command", "required: the program and arguments to run, e.g. ['python', 'train.py']")
    warnings: list[str] = []
    kw: dict[str, Any] = {"command": _command(raw["command"])}
    if "image" in raw:
        image = _string("image", raw["image"], 255)
        if not _IMAGE.fullmatch(image):
            raise SpecError("image", f"{image!r} does not look like an image reference, e.g. pytorch/pytorch:2.3.0-cuda12.1")
        kw["image"] = image
    if "code" in raw:
        code = raw["code"]
        if not isinstance(code, str) or not _DIGEST.fullmatch(code):
            raise SpecError("code", "expected the sha256 of an uploaded code archive (64 lowercase hex characters)")
        kw["code"] = code
    if "gpus" in raw or "gpu_share" in raw:
        kw.update(gpu_request(raw))
    if "gpu_model" in raw:
        kw["gpu_model"] = _string("gpu_model", raw["gpu_model"], 128)
    if "cpus" in raw:
        cpus = raw["cpus"]
        if isinstance(cpus, str) and re.fullmatch(rf"\s*(?:{NUMBER})\s*", cpus):
            cpus = float(cpus)  # CLI flags arrive as strings
        if isinstance(cpus, bool) or not isinstance(cpus, (int, float)) or not MIN_CPUS <= cpus <= 1024:
            raise SpecError("cpus", f"expected a number from {MIN_CPUS} to 1024, got {str(raw['cpus'])[:40]!r}")
        kw["cpus"] = float(cpus)
    if "memory" in raw:
        memory = _via("memory", parse_memory, raw["memory"])
        if memory < MIN_MEMORY:
            raise SpecError("memory", f"must be at least {format_bytes(MIN_MEMORY)}, got {raw['memory']!r}")
        kw["memory"] = memory
    if "shm" in raw:
        shm = _via("shm", parse_memory, raw["shm"])
        if shm < MIN_SHM:
            raise SpecError("shm", f"must be at least {format_bytes(MIN_SHM)}, got {raw['shm']!r}")
        if "memory" in kw:
            check_shm(shm, kw["memory"])
        kw["shm"] = shm
    if "env" in raw:
        kw["env"] = _env(raw["env"], warnings)
    exec_bytes = sum(len(a.encode("utf-8", "surrogatepass")) + 1 for a in kw["command"]) + \
        sum(len(k) + len(v.encode("utf-8", "surrogatepass")) + 2 for k, v in kw.get("env", {}).items())
    if exec_bytes > MAX_EXEC_BYTES:
        raise SpecError("command", f"the command and env together are {exec_bytes} bytes; at most {MAX_EXEC_BYTES} "
                                   "(put large data in files in the code directory)")
    if "time_limit" in raw:
        limit = _via("time_limit", parse_duration, raw["time_limit"])
        if limit <= 0:
            raise SpecError("time_limit", f"must be greater than zero, got {raw['time_limit']!r}")
        kw["time_limit"] = limit
    if "priority" in raw:
        kw["priority"] = _whole("priority", raw["priority"], -100, 100)
    if "priority_class" in raw:
        cls = raw["priority_class"]
        if not isinstance(cls, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,31}", cls):
            raise SpecError("priority_class", f"expected a class name such as 'production' or 'preemptible', got {str(cls)[:40]!r}")
        kw["priority_class"] = cls
    if "name" in raw:
        name = raw["name"]
        if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
            raise SpecError("name", f"expected 1-64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, got {name!r}")
        kw["name"] = name
    if "experiment" in raw:
        kw["experiment"] = _string("experiment", raw["experiment"], 255)
    if "on" in raw:
        if raw["on"] not in PLACES:
            raise SpecError("on", f"expected where the job runs, {' or '.join(repr(p) for p in PLACES)}, got {str(raw['on'])[:40]!r}")
        kw["on"] = raw["on"]
    if "requirements" in raw:
        from mlpd.runtime.environments import check_requirements

        text = raw["requirements"]
        if not isinstance(text, str):
            raise SpecError("requirements", f"expected the text of a requirements file, got {typename(text)}")
        problem = check_requirements(text)
        if problem:
            raise SpecError("requirements", problem)
        kw["requirements"] = text
    return JobSpec(**kw), warnings


def check_host_limits(spec: JobSpec, cpus: int, memory: int) -> None:
    """Refuse a spec asking for more CPUs or memory than the host has (it could never start)."""
    if spec.cpus is not None and spec.cpus > cpus:
        raise SpecError("cpus", f"asks for {spec.cpus:g} CPUs but this host has {cpus}")
    if spec.memory is not None and spec.memory > memory:
        raise SpecError("memory", f"asks for {format_bytes(spec.memory)} but this host has {format_bytes(memory)}")


def check_shm(shm: int | None, memory_limit: int | None, default: bool = False) -> None:
    """Refuse shared memory (/dev/shm) beyond the memory limit the container gets: what a job writes
    there is memory, counted in that limit, so more could never be used."""
    if shm is not None and memory_limit is not None and shm > memory_limit:
        which = "the default memory limit (jobs.default_memory)" if default else "its memory limit"
        raise SpecError("shm", f"asks for {format_bytes(shm)} of shared memory (/dev/shm) but {which} is "
                               f"{format_bytes(memory_limit)}; /dev/shm is memory of the job: ask for less, or for more memory")
