"""The runtime interface: what the controller needs from a container engine, and nothing of Docker's.

A narrow interface (start, inspect, stop, terminate, remove, logs, processes, list by this
daemon's label, a watch for changes, images and environment builds) returning backend-neutral states, so that another backend
(Kubernetes, say) is an addition: :mod:`mlpd.runtime.docker_engine` is the real one and the
only module that imports docker; :mod:`mlpd.runtime.memory` is a second, in-memory
implementation for fast tests of the controller. One contract suite
(tests/contract/test_runtime_contract.py) runs against both.

Every operation is idempotent: starting a workload whose container exists returns it,
stopping or removing one that is gone is a no-op, and a failed start leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import enum
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

LABEL_INSTANCE = "mlpd.instance"
LABEL_KIND = "mlpd.kind"
LABEL_OWNER = "mlpd.owner"
LABEL_JOB = "mlpd.job_id"
LABEL_GPUS = "mlpd.gpu_uuids"
LABEL_ATTEMPT = "mlpd.attempt"


class RuntimeFailure(Exception):
    """A container operation failed; the message is for the workload's owner."""


class ImageMissing(RuntimeFailure):
    """The image is not on this host and could not be pulled."""


class Phase(str, enum.Enum):
    """Where a workload's container is, in any backend's terms."""

    PENDING = "pending"  # created, not started (a daemon that died between the two leaves this)
    RUNNING = "running"
    EXITED = "exited"    # ended: see exit_code, oom_killed and error


@dataclass(frozen=True)
class WorkloadStatus:
    """What the runtime says about one workload's container. A container that is gone is None."""

    id: str
    name: str
    job_id: str
    phase: Phase
    exit_code: int | None
    oom_killed: bool
    started_at: float | None
    finished_at: float | None
    error: str = ""
    labels: dict = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.phase == Phase.EXITED


@dataclass(frozen=True)
class LaunchRequest:
    """Everything needed to start one workload's container."""

    job_id: str
    owner: str
    image: str
    command: tuple[str, ...]
    env: dict[str, str]
    gpu_uuids: tuple[str, ...]
    cpus: float | None
    memory: int | None
    user: str
    code_dir: str | None
    outputs_dir: str
    pull: bool = True
    kind: str = "job"  # the workload kind (job, workspace, deployment): the container's mlpd.kind label
    ports: tuple[tuple[int, str, int], ...] = ()  # (container port, host address, host port) to publish
    mounts: tuple[tuple[str, str, bool], ...] = ()  # (host path, container path, read-only) beyond /outputs and /code
    workdir: str | None = None  # default: /code when there is code, else /outputs
    attempt: int = 1  # which run of the workload this is (a preempted job runs again): MLPD_ATTEMPT, label mlpd.attempt
    shm_size: int | None = None  # bytes of /dev/shm (a tmpfs counted in the memory limit); None: the engine's default (Docker: 64 MiB)
    ulimits: tuple[tuple[str, int, int], ...] = ()  # (name, soft, hard) resource limits, e.g. ("memlock", -1, -1); -1 = unlimited
    gpus: int = 0  # GPUs it asks for where the backend places it itself (Slurm: --gres=gpu:N); gpu_uuids are mlpd's own placement
    time_limit: float | None = None  # seconds, for a backend that enforces it itself (Slurm: --time); mlpd enforces it too


# The resource limits NVIDIA sets for PyTorch containers (--ulimit memlock=-1 --ulimit stack=67108864): NCCL
# and CUDA's pinned host memory lock pages, and a deep recursion (or a big model's graph) needs stack.
DEEP_LEARNING_ULIMITS = (("memlock", -1, -1), ("stack", 64 * 1024**2, 64 * 1024**2))


# A build's limits (BuildRequest): roomy enough for pip to compile an sdist, bounded like a job.
BUILD_MEMORY = 8 * 1024**3
BUILD_PIDS = 4096
BUILD_TIMEOUT = 2 * 3600.0  # seconds; a build that never ends would hold its job (and a launch thread) for ever


@dataclass(frozen=True)
class BuildRequest:
    """An image made by running a command in a container from base and committing what it wrote.

    The container is hardened like a job's (the request's non-root user, no capabilities,
    no-new-privileges, pids and memory limits, mlpd's isolated network): whatever the command
    runs (a package's build backend, say) has no more power than the job that asked for it.
    """

    base: str
    tag: str
    command: tuple[str, ...]
    user: str  # numeric uid:gid the command runs as; also the image's user
    directory: str  # made before the command runs, owned by user (where it installs); its working directory
    files: tuple[tuple[str, str], ...] = ()  # (name, text) put in directory before it runs, owned by user, mode 0600
    env: dict[str, str] = field(default_factory=dict)  # set while it runs and in the image; "$PATH" in a value is the base's PATH
    labels: dict[str, str] = field(default_factory=dict)  # the image's labels (the base's are kept)
    ca_bundle: str | None = None  # a host file mounted read-only at CA_BUNDLE_MOUNT while it runs
    memory: int = BUILD_MEMORY
    pids: int = BUILD_PIDS
    timeout: float = BUILD_TIMEOUT  # then the container is killed and the build fails


CA_BUNDLE_MOUNT = "/etc/mlpd-host-ca.crt"


def container_name(job_id: str) -> str:
    return f"mlpd-job-{job_id}"


def container_env(req: LaunchRequest) -> dict[str, str]:
    """The container's environment: the request's, then what mlpd sets over it.

    Set last, over the user's env: the NVIDIA toolkit honours NVIDIA_VISIBLE_DEVICES even in an
    unprivileged container, so a user-set value would escape the allocation. Set first, under it:
    USER and LOGNAME, the owner's name, because the container's uid (jobs.container_user) need not be
    in an image's /etc/passwd, and Python's getpass.getuser() (which MLflow calls for every run) fails
    without either.
    """
    gpu_list = ",".join(req.gpu_uuids)
    return {"USER": req.owner, "LOGNAME": req.owner, **req.env, "CUDA_VISIBLE_DEVICES": gpu_list, "NVIDIA_VISIBLE_DEVICES": gpu_list or "void",
            "MLPD_JOB_ID": req.job_id, "MLPD_OUTPUTS": "/outputs", "MLPD_ATTEMPT": str(req.attempt)}


def attempt_of(status: WorkloadStatus) -> int:
    """Which attempt of its workload a container runs (label mlpd.attempt; 1 for containers made before it existed)."""
    value = status.labels.get(LABEL_ATTEMPT, "1")
    return int(value) if str(value).isdigit() else 1


class Runtime(Protocol):
    """A container engine as the controller sees it (see the module docstring)."""

    instance: str
    has_nvidia: bool
    refused_ulimits: set[str]  # see engine_info

    def start_job(self, req: LaunchRequest) -> WorkloadStatus:
        """Create and start the workload's container, pinned to its GPUs; idempotent.
        Raises ImageMissing or RuntimeFailure, leaving no container behind."""

    def inspect(self, job_id: str) -> WorkloadStatus | None:
        """The workload's container now, or None when there is none."""

    def list_jobs(self) -> dict[str, WorkloadStatus]:
        """This daemon's workload containers (by its instance label), by job id."""

    def stop(self, job_id: str, timeout: int = 10) -> None:
        """SIGTERM, then SIGKILL after timeout; a container that is gone or stopped is fine."""

    def terminate(self, job_id: str) -> None:
        """Send SIGTERM to the workload (its init passes it on) and return at once: a preempted job's
        cue to checkpoint. A container that is gone or not running is fine."""

    def remove(self, job_id: str) -> None:
        """Remove the container (forcibly); idempotent."""

    def logs(self, job_id: str, follow: bool = False, timestamps: bool = False) -> Iterator[bytes]:
        """The container's combined output; with follow, until it exits. Empty if it is gone. With
        timestamps, each line starts with when it was written (RFC 3339, UTC, then a space)."""

    def processes(self, job_id: str) -> list[str]:
        """The command lines of the processes running in the workload's container ([] when it is not running)."""

    def save_logs(self, job_id: str, path: str) -> bool:
        """Copy the container's whole output to path, each line with its timestamp (as logs(timestamps=True));
        False when the container is gone."""

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        """Call on_change(job_id) whenever one of this daemon's containers starts or ends; blocks until stop."""

    def engine_info(self) -> dict:
        """{"version": the engine's version, "nvidia": whether it has the NVIDIA container runtime, "gateway": the
        host's address on the network every container joins (what host.docker.internal is there), or None,
        "refused_ulimits": the resource limits (LaunchRequest.ulimits) the engine could not give a container
        so far, which its containers then get at the engine's own values}."""

    def image_present(self, image: str) -> bool: ...

    def image_id(self, image: str) -> str | None:
        """The image's content id (changes when it is rebuilt), or None when it is absent."""

    def list_images(self, prefix: str = "mlpd/") -> list[dict]: ...

    def image_labels(self, image: str) -> dict[str, str]: ...

    def build_image(self, path: str, tag: str, buildargs: dict[str, str], labels: dict[str, str] | None = None) -> Iterator[str]:
        """Build an image from a directory; yields progress lines; raises RuntimeFailure on error."""

    def build_by_running(self, req: BuildRequest) -> Iterator[str]:
        """Make req.tag by running req.command in a hardened container from req.base (see BuildRequest)
        and committing it with req.env, req.user and req.labels; yields the command's output lines.
        Raises RuntimeFailure when it exits non-zero (no image made); the container never outlives the call."""

    def pull_image(self, image: str) -> None:
        """Pull an image from its registry; raises ImageMissing when it cannot."""

    def remove_image(self, image: str) -> bool:
        """Remove an image; False (and nothing removed) when a container uses it or it is gone."""


def format_timestamp(t: float) -> str:
    """RFC 3339 in UTC with nanoseconds, as Docker stamps log lines: 2026-12-01T03:04:05.123456789Z."""
    whole = int(t)
    stamp = _dt.datetime.fromtimestamp(whole, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{int(round((t - whole) * 1e9)):09d}Z"
