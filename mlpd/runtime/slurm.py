"""Jobs on a Slurm cluster: the only module that runs sbatch, squeue and scancel.

A job whose spec says ``on = "slurm"`` is not placed by mlpd's scheduler: it is submitted with
``sbatch`` and Slurm places it. Its batch script runs the job's container with ``docker run`` on the
node Slurm chose, with the job's code, outputs and log in a directory under ``slurm.shared_dir``
(every node mounts it at the same path), and the same environment as a local job (MLflow, MLPD_*).

:class:`SlurmRuntime` answers the controller's :class:`mlpd.runtime.protocol.Runtime` calls for
such jobs; :class:`SplitRuntime` sends each job to the local engine or to Slurm by its spec's ``on``
(images, builds and everything not about one job stay with the local engine). The pure parts (the
sbatch arguments, the batch script, the state table) are functions tested without a cluster.

The link between an mlpd job and a Slurm job is the Slurm job's comment, ``mlpd:INSTANCE:JOB_ID``:
after a restart the daemon finds its jobs again with ``squeue``. States come from
``squeue --states=all --json`` (Slurm 22.05): no slurmdbd is needed, but an ended job is known to
Slurm only for MinJobAge; the batch script also writes the container's exit code beside its log,
which is what mlpd reads first.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from mlpd.runtime.protocol import LABEL_ATTEMPT, LABEL_GPUS, LaunchRequest, Phase, RuntimeFailure, WorkloadStatus, container_env

log = logging.getLogger("mlpd.slurm")

ON_SLURM, ON_LOCAL = "slurm", "local"
PLACES = (ON_LOCAL, ON_SLURM)
COMMAND_TIMEOUT = 30.0  # seconds one sbatch, squeue or scancel may take
STOP_GRACE = 10  # seconds the batch script gives the container between SIGTERM and SIGKILL (docker stop -t)
EXIT_FILE, LOG_FILE, SCRIPT_FILE, ID_FILE = "exit", "log", "job.sh", "slurm_job_id"


def runs_on_slurm(job: dict[str, Any]) -> bool:
    """Whether a job row is (or was) a Slurm job: its spec's ``on``, fixed when it was submitted."""
    return (job.get("spec") or {}).get("on") == ON_SLURM


@dataclass(frozen=True)
class SlurmSettings:
    """The [slurm] section, as the runtime needs it."""

    partition: str = ""
    account: str = ""
    shared_dir: str = ""
    sbatch_extra: tuple[str, ...] = ()
    daemon_address: str = ""  # what host.docker.internal is on the nodes; '' = the node itself (host-gateway)

    @classmethod
    def from_config(cls, config: Any) -> "SlurmSettings":
        return cls(config["slurm.partition"], config["slurm.account"], config["slurm.shared_dir"],
                   tuple(config["slurm.sbatch_extra"]), config["slurm.daemon_address"])


def comment_of(instance: str, job_id: str) -> str:
    """The Slurm job's comment that names its mlpd job (and the daemon that owns it)."""
    return f"mlpd:{instance}:{job_id}"


def job_of_comment(instance: str, comment: str) -> str | None:
    """The mlpd job id a comment names when this daemon owns it, else None."""
    prefix = f"mlpd:{instance}:"
    return comment[len(prefix):] if comment.startswith(prefix) and comment[len(prefix):] else None


def slurm_minutes(seconds: float) -> str:
    """A time limit in Slurm's --time form (whole minutes, rounded up, at least one)."""
    return str(max(1, math.ceil(seconds / 60)))


def sbatch_args(req: LaunchRequest, settings: SlurmSettings, instance: str, gpus: int, directory: str) -> list[str]:
    """The sbatch command line for a job (pure). GPUs are asked as a generic resource; the time limit
    becomes --time, the memory limit --mem (MiB), the CPU limit --cpus-per-task (rounded up); the
    site's sbatch_extra come last but before the script, so they may add to (not replace) these."""
    args = ["sbatch", "--parsable", f"--job-name=mlpd-{req.job_id[:12]}", f"--comment={comment_of(instance, req.job_id)}",
            f"--output={os.path.join(directory, LOG_FILE)}", "--open-mode=append", f"--chdir={directory}",
            "--export=NONE", "--ntasks=1", "--no-requeue"]
    if settings.partition:
        args.append(f"--partition={settings.partition}")
    if settings.account:
        args.append(f"--account={settings.account}")
    if gpus:
        args.append(f"--gres=gpu:{gpus}")
    if req.time_limit:
        args.append(f"--time={slurm_minutes(req.time_limit)}")
    if req.memory:
        args.append(f"--mem={max(1, math.ceil(req.memory / 1024**2))}M")
    if req.cpus:
        args.append(f"--cpus-per-task={max(1, math.ceil(req.cpus))}")
    return [*args, *settings.sbatch_extra, os.path.join(directory, SCRIPT_FILE)]


def container_name_on_node(job_id: str, attempt: int) -> str:
    return f"mlpd-slurm-{job_id}-{attempt}"


def batch_script(req: LaunchRequest, directory: str, code_dir: str | None, daemon_address: str = "") -> str:
    """The batch script (pure): runs the job's container on the node and waits for it.

    Slurm signals a cancelled or timed-out job's processes with SIGTERM (KillWait before SIGKILL);
    the trap stops the container, which Slurm's process tracking does not see (dockerd started it).
    SIGUSR1 (``scancel --signal=USR1 --batch``) passes SIGTERM to the job itself. The container's
    exit code is written beside its log, then is the script's own (Slurm's ExitCode)."""
    name = container_name_on_node(req.job_id, req.attempt)
    env = dict(container_env(req))
    for key in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        env.pop(key, None)  # Slurm says which GPUs this job has, on the node: set below from its CUDA_VISIBLE_DEVICES
    q = shlex.quote
    lines = ["#!/bin/bash", f"# written by mlpd for job {req.job_id} (attempt {req.attempt})", "set -u",
             f"cd {q(directory)} || exit 1"]
    lines += [f"export {k}={q(v)}" for k, v in sorted(env.items())]
    run = ["docker", "run", "--rm", "--name", name, "--init", "--label", f"mlpd.job_id={req.job_id}",
           "--label", '"mlpd.slurm_job_id=$SLURM_JOB_ID"', "--label", f"{LABEL_ATTEMPT}={req.attempt}",
           "--user", req.user, "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "4096",
           "--add-host", f"host.docker.internal:{daemon_address or 'host-gateway'}",
           "-v", f"{os.path.join(directory, 'outputs')}:/outputs:rw",
           "-w", req.workdir or ("/code" if code_dir else "/outputs")]
    if code_dir:
        run += ["-v", f"{code_dir}:/code:ro"]
    if req.memory:
        run += ["--memory", str(req.memory), "--memory-swap", str(req.memory)]
    if req.cpus:
        run += ["--cpus", f"{req.cpus:g}"]
    if req.shm_size:
        run += ["--shm-size", str(req.shm_size)]
    # No --ulimit: an engine that may not raise memlock refuses the whole container (the local runtime
    # learns that and retries without); on the nodes the engine's own default-ulimits apply (docs/slurm.md).
    for key in sorted(env):
        run += ["-e", key]
    quoted = " ".join(a if a.startswith('"') else q(a) for a in run)
    command = " ".join(q(a) for a in [req.image, *req.command])
    lines += [
        '# the GPUs Slurm gave this job (gres.conf), by the CUDA_VISIBLE_DEVICES it set here',
        'gpus=()',
        'if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "$CUDA_VISIBLE_DEVICES" != NoDevFiles ]; then',
        '  if docker info --format "{{json .Runtimes}}" 2>/dev/null | grep -q \'"nvidia"\'; then',
        '    # the container gets those devices only, numbered from 0 inside',
        '    gpus=(--gpus "\\"device=$CUDA_VISIBLE_DEVICES\\"")',
        '    n=$(echo "$CUDA_VISIBLE_DEVICES" | tr , "\\n" | wc -l)',
        '    export NVIDIA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES" CUDA_VISIBLE_DEVICES=$(seq -s , 0 $((n - 1)))',
        '  else  # no NVIDIA runtime on this node: only the variable, as docker.gpu_runtime = "none" does locally',
        '    export CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES=void',
        '  fi',
        'else',
        '  export CUDA_VISIBLE_DEVICES="" NVIDIA_VISIBLE_DEVICES=void',
        'fi',
        f"trap 'docker stop -t {STOP_GRACE} {q(name)} >/dev/null 2>&1' TERM",
        f"trap 'docker kill --signal TERM {q(name)} >/dev/null 2>&1' USR1",
        f'{quoted} -e CUDA_VISIBLE_DEVICES -e NVIDIA_VISIBLE_DEVICES "${{gpus[@]}}" {command} &',
        "pid=$!",
        "wait $pid; rc=$?",
        "while kill -0 $pid 2>/dev/null; do wait $pid; rc=$?; done  # a trapped signal ends a wait early",
        "# a container left behind (a cancel while docker run was still starting it) goes with the job",
        f"docker rm -f {q(name)} >/dev/null 2>&1",
        f"echo $rc > {EXIT_FILE}.tmp && mv {EXIT_FILE}.tmp {EXIT_FILE}",
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


# Slurm's job states (squeue's job_state) -> where the container is. Pending work has no container
# yet; what Slurm ended is EXITED, with the exit code and a reason read from Slurm's record.
PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "STOPPED"})
ENDED_REASONS = {
    "COMPLETED": "", "FAILED": "", "CANCELLED": "cancelled in Slurm (scancel)", "TIMEOUT": "Slurm's time limit",
    "NODE_FAIL": "its Slurm node failed", "PREEMPTED": "preempted by Slurm", "BOOT_FAIL": "its Slurm node failed to boot",
    "DEADLINE": "Slurm's deadline passed", "OUT_OF_MEMORY": "out of memory (Slurm)", "SPECIAL_EXIT": "Slurm's special exit",
    "REVOKED": "revoked by Slurm (federation)",
}


SLURM_GPU_MODEL = "slurm"  # the model the ledger books a Slurm job's GPUs under (Slurm's record names none)
_GRES_GPUS = re.compile(r"(?:^|,)gres[:/]gpu(?::[^:,=]+)?[:=](\d+)")


def gpus_of(record: dict[str, Any]) -> int:
    """How many GPUs a Slurm job has (its tres_per_node / tres_per_job, e.g. 'gres:gpu:2'), pure."""
    for key in ("tres_per_node", "tres_per_job"):
        m = _GRES_GPUS.search(str(record.get(key) or ""))
        if m:
            return int(m.group(1))
    return 0


def status_from_slurm(job_id: str, record: dict[str, Any], exit_file: int | None) -> WorkloadStatus:
    """A WorkloadStatus from one squeue --json job record (pure). exit_file is the code the batch
    script wrote (None when it wrote none: killed, or not ended); it wins over Slurm's, which is a wait
    status (code << 8 | signal)."""
    state = str(record.get("job_state") or "").upper()
    slurm_id = str(record.get("job_id", ""))
    started = record.get("start_time") or None
    ended = record.get("end_time") or None
    labels = {"slurm_job_id": slurm_id, "slurm_state": state, "slurm_reason": str(record.get("state_reason") or "")}
    gpus = gpus_of(record)
    if gpus and started:  # what the ledger books: Slurm's start and end, these GPUs (LABEL_GPUS, as a local container's)
        labels[LABEL_GPUS] = ",".join(f"slurm-{slurm_id}-gpu{i}" for i in range(gpus))
    if state in PENDING_STATES:
        reason = labels["slurm_reason"]
        return WorkloadStatus(slurm_id, f"slurm-{slurm_id}", job_id, Phase.PENDING, None, False, None, None,
                              f"waiting in Slurm ({state.lower()}: {reason})" if reason and reason != "None" else f"waiting in Slurm ({state.lower()})",
                              labels)
    if state in RUNNING_STATES or state not in ENDED_REASONS:
        return WorkloadStatus(slurm_id, f"slurm-{slurm_id}", job_id, Phase.RUNNING, None, False, started, None, "", labels)
    code = exit_file
    if code is None:
        raw = record.get("exit_code")
        code = (raw >> 8) & 0xFF if isinstance(raw, int) and raw & 0x7F == 0 else (128 + (raw & 0x7F) if isinstance(raw, int) else None)
    error = ENDED_REASONS[state]
    if state == "COMPLETED" and code is None:
        code = 0
    if code is None:
        code = 1 if state == "FAILED" else 143  # ended by a signal it did not outlive: as SIGTERM's exit
    return WorkloadStatus(slurm_id, f"slurm-{slurm_id}", job_id, Phase.EXITED, code, state == "OUT_OF_MEMORY",
                          started, ended, error if exit_file is None or state not in ("COMPLETED", "FAILED") else "", labels)


class SlurmRuntime:
    """The controller's runtime calls for Slurm jobs (see the module docstring)."""

    has_nvidia = False
    refused_ulimits: set[str] = set()

    def __init__(self, instance: str, settings: SlurmSettings, run: Callable[..., subprocess.CompletedProcess] | None = None):
        if not settings.shared_dir or not os.path.isabs(settings.shared_dir):
            raise RuntimeFailure("slurm.shared_dir must be an absolute path every Slurm node mounts")
        self.instance, self.settings = instance, settings
        self._run = run or _run
        self.base = os.path.join(settings.shared_dir, f"mlpd-{instance}")
        self._lock = threading.Lock()

    # ------------------------------------------------------------ files under shared_dir
    def directory(self, job_id: str, attempt: int = 1) -> str:
        return os.path.join(self.base, job_id, f"attempt-{attempt}")

    def _latest(self, job_id: str) -> str | None:
        root = os.path.join(self.base, job_id)
        try:
            attempts = sorted(int(n.split("-", 1)[1]) for n in os.listdir(root) if n.startswith("attempt-") and n[8:].isdigit())
        except FileNotFoundError:
            return None
        return os.path.join(root, f"attempt-{attempts[-1]}") if attempts else None

    @staticmethod
    def _read_int(path: str) -> int | None:
        try:
            with open(path) as fh:
                text = fh.read(32).strip()
        except OSError:
            return None
        return int(text) if text.lstrip("-").isdigit() else None

    # ------------------------------------------------------------ the Runtime calls
    def start_job(self, req: LaunchRequest) -> WorkloadStatus:
        """Submit the job with sbatch (once: a job Slurm knows already is returned as it is)."""
        existing = self.inspect(req.job_id)
        if existing is not None and (existing.labels.get(LABEL_ATTEMPT) or "1") == str(req.attempt):
            return existing
        directory = self.directory(req.job_id, req.attempt)
        os.makedirs(os.path.join(directory, "outputs"), exist_ok=True)
        os.chmod(os.path.join(directory, "outputs"), 0o777)  # the container's non-root uid writes here
        code = None
        if req.code_dir:
            code = os.path.join(directory, "code")
            if not os.path.isdir(code):
                shutil.copytree(req.code_dir, code + ".tmp", symlinks=True, dirs_exist_ok=True)
                os.replace(code + ".tmp", code)
        script = os.path.join(directory, SCRIPT_FILE)
        fd = os.open(script + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
        with os.fdopen(fd, "w") as fh:  # it holds the job's token: its owner (the daemon's user) only
            fh.write(batch_script(req, directory, code, self.settings.daemon_address))
        os.replace(script + ".tmp", script)
        gpus = len(req.gpu_uuids) or req.gpus
        done = self._run(sbatch_args(req, self.settings, self.instance, gpus, directory))
        if done.returncode != 0:
            raise RuntimeFailure(f"sbatch refused the job: {(done.stderr or done.stdout).strip()[:500]}")
        slurm_id = done.stdout.strip().split(";")[0]
        with open(os.path.join(directory, ID_FILE), "w") as fh:
            fh.write(slurm_id + "\n")
        log.info("job %s submitted to Slurm as %s", req.job_id, slurm_id)
        status = self.inspect(req.job_id)
        if status is None:  # submitted a moment ago: Slurm knows it, squeue may not show it yet
            return WorkloadStatus(slurm_id, f"slurm-{slurm_id}", req.job_id, Phase.PENDING, None, False, None, None,
                                  "submitted to Slurm", {"slurm_job_id": slurm_id, LABEL_ATTEMPT: str(req.attempt)})
        return status

    def _squeue(self, *extra: str) -> list[dict[str, Any]]:
        done = self._run(["squeue", "--states=all", "--json", *extra])
        if done.returncode != 0:
            if "Invalid job id" in (done.stderr or ""):
                return []
            raise RuntimeFailure(f"squeue failed: {(done.stderr or done.stdout).strip()[:300]}")
        try:
            answer = json.loads(done.stdout)
            errors, records = answer.get("errors") or [], list(answer.get("jobs") or [])
        except (ValueError, AttributeError, TypeError):
            raise RuntimeFailure("squeue --json answered something that is not its JSON") from None
        if errors:  # Slurm 22.05's squeue --json exits 0 when it cannot reach slurmctld, and says so here
            said = "; ".join(f"{e.get('source', '')}: {e.get('description', '')}" for e in errors if isinstance(e, dict))
            raise RuntimeFailure(f"squeue failed: {said[:300] or 'an error without a description'}")
        return records

    def _status(self, job_id: str, record: dict[str, Any]) -> WorkloadStatus:
        directory = record.get("current_working_directory") or ""
        attempt = os.path.basename(directory).split("-", 1)[-1] if os.path.basename(directory).startswith("attempt-") else "1"
        ended = str(record.get("job_state") or "").upper() in ENDED_REASONS
        status = status_from_slurm(job_id, record, self._read_int(os.path.join(directory, EXIT_FILE)) if ended and directory else None)
        status.labels[LABEL_ATTEMPT] = attempt
        return status

    def list_jobs(self) -> dict[str, WorkloadStatus]:
        """This daemon's Slurm jobs (by their comment) that have not ended, newest per mlpd job. Ended
        ones are left out (Slurm keeps them for MinJobAge, and nothing is left of them to remove):
        an active job not listed is looked up with inspect, which finds its end."""
        out: dict[str, WorkloadStatus] = {}
        for record in sorted(self._squeue(), key=lambda r: r.get("job_id") or 0):
            job_id = job_of_comment(self.instance, str(record.get("comment") or ""))
            if job_id and str(record.get("job_state") or "").upper() not in ENDED_REASONS:
                out[job_id] = self._status(job_id, record)
        return out

    def inspect(self, job_id: str) -> WorkloadStatus | None:
        """The job as Slurm has it. While Slurm does not answer, a job mlpd submitted is pending with
        that reason (never gone, so never lost, failed or submitted again); one it never submitted is None."""
        try:
            return self._inspect(job_id)
        except RuntimeFailure as exc:
            directory = self._latest(job_id)
            if directory is None:
                raise
            attempt = os.path.basename(directory).split("-", 1)[-1]
            return WorkloadStatus("", "slurm-?", job_id, Phase.PENDING, None, False, None, None,
                                  f"Slurm does not answer ({exc}); mlpd asks again", {LABEL_ATTEMPT: attempt, "slurm_state": ""})

    def _inspect(self, job_id: str) -> WorkloadStatus | None:
        directory = self._latest(job_id)
        slurm_id = self._read_int(os.path.join(directory, ID_FILE)) if directory else None
        if directory is not None and slurm_id is not None:
            for record in self._squeue(f"--jobs={slurm_id}"):
                if job_of_comment(self.instance, str(record.get("comment") or "")) == job_id:
                    return self._status(job_id, record)
            forgotten = self._forgotten(job_id, directory, slurm_id)
            if forgotten is not None:
                return forgotten
        for record in sorted(self._squeue(), key=lambda r: r.get("job_id") or 0, reverse=True):
            if job_of_comment(self.instance, str(record.get("comment") or "")) == job_id:
                return self._status(job_id, record)  # submitted but its id not written (a daemon killed in between)
        return None

    def _forgotten(self, job_id: str, directory: str, slurm_id: int) -> WorkloadStatus | None:
        """A job Slurm no longer knows (it ended longer than MinJobAge ago): ended with the exit code
        its batch script wrote, at the time it wrote it; None when it wrote none."""
        path = os.path.join(directory, EXIT_FILE)
        code = self._read_int(path)
        if code is None:
            return None
        attempt = os.path.basename(directory).split("-", 1)[-1]
        return WorkloadStatus(str(slurm_id), f"slurm-{slurm_id}", job_id, Phase.EXITED, code, False, None, os.stat(path).st_mtime,
                              "", {"slurm_job_id": str(slurm_id), "slurm_state": "", LABEL_ATTEMPT: attempt})

    def _slurm_id(self, job_id: str) -> str | None:
        status = self.inspect(job_id)
        return status.labels.get("slurm_job_id") if status is not None and not status.ended else None

    def stop(self, job_id: str, timeout: int = 10) -> None:
        """scancel: Slurm sends SIGTERM (the batch script stops the container), SIGKILL after KillWait."""
        slurm_id = self._slurm_id(job_id)
        if slurm_id:
            self._run(["scancel", slurm_id])
            deadline = time.monotonic() + timeout + STOP_GRACE
            while time.monotonic() < deadline:
                status = self.inspect(job_id)
                if status is None or status.ended:
                    return
                time.sleep(0.5)

    def terminate(self, job_id: str) -> None:
        slurm_id = self._slurm_id(job_id)
        if slurm_id:
            self._run(["scancel", "--signal=USR1", "--batch", slurm_id])

    def remove(self, job_id: str) -> None:
        """Cancel the job if Slurm still runs it (its files under shared_dir stay until save_logs took them)."""
        slurm_id = self._slurm_id(job_id)
        if slurm_id:
            self._run(["scancel", slurm_id])

    def logs(self, job_id: str, follow: bool = False, timestamps: bool = False) -> Iterator[bytes]:
        """The job's output as the batch script's log holds it (no timestamps: Slurm writes none)."""
        directory = self._latest(job_id)
        if directory is None:
            return
        path, offset = os.path.join(directory, LOG_FILE), 0
        while True:
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    while chunk := fh.read(65536):
                        offset += len(chunk)
                        yield chunk
            except FileNotFoundError:
                pass
            if not follow:
                return
            status = self.inspect(job_id)
            if status is None or status.ended:
                follow = False  # one more read: what it wrote last
                continue
            time.sleep(1.0)

    def processes(self, job_id: str) -> list[str]:
        return []  # on a node mlpd does not reach

    def save_logs(self, job_id: str, path: str) -> bool:
        """Copy the job's log from shared_dir to path, and its outputs beside it (the job's outputs dir)."""
        directory = self._latest(job_id)
        if directory is None or not os.path.exists(os.path.join(directory, LOG_FILE)):
            return False
        shutil.copyfile(os.path.join(directory, LOG_FILE), path + ".tmp")
        os.replace(path + ".tmp", path)
        outputs = os.path.join(os.path.dirname(path), "outputs")
        shutil.copytree(os.path.join(directory, "outputs"), outputs, symlinks=True, dirs_exist_ok=True)
        return True

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        stop.wait()  # Slurm has no event stream here: the reconcile interval polls squeue

    def engine_info(self) -> dict:
        return {"version": "slurm", "nvidia": False, "gateway": None, "refused_ulimits": []}


class SplitRuntime:
    """The local engine for local jobs, Slurm for Slurm jobs: ``where(job_id)`` says which
    (``"slurm"`` or anything else); images, builds and engine facts are the local engine's."""

    def __init__(self, local: Any, slurm: SlurmRuntime, where: Callable[[str], str | None]):
        self.local, self.slurm, self.where = local, slurm, where

    def __getattr__(self, name: str) -> Any:
        return getattr(self.local, name)  # images, builds, engine_info, instance, has_nvidia ...

    def _for(self, job_id: str) -> Any:
        return self.slurm if self.where(job_id) == ON_SLURM else self.local

    def start_job(self, req: LaunchRequest) -> WorkloadStatus:
        return self._for(req.job_id).start_job(req)

    def inspect(self, job_id: str) -> WorkloadStatus | None:
        return self._for(job_id).inspect(job_id)

    def list_jobs(self) -> dict[str, WorkloadStatus]:
        try:
            remote = self.slurm.list_jobs()
        except RuntimeFailure as exc:
            log.warning("cannot list Slurm jobs: %s", exc)
            remote = {}
        return {**remote, **self.local.list_jobs()}

    def stop(self, job_id: str, timeout: int = 10) -> None:
        self._for(job_id).stop(job_id, timeout=timeout)

    def terminate(self, job_id: str) -> None:
        self._for(job_id).terminate(job_id)

    def remove(self, job_id: str) -> None:
        self._for(job_id).remove(job_id)

    def logs(self, job_id: str, follow: bool = False, timestamps: bool = False) -> Iterator[bytes]:
        return self._for(job_id).logs(job_id, follow=follow, timestamps=timestamps)

    def processes(self, job_id: str) -> list[str]:
        return self._for(job_id).processes(job_id)

    def save_logs(self, job_id: str, path: str) -> bool:
        return self._for(job_id).save_logs(job_id, path)


_GRES_COUNT = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")


def _gpu_count(gres: str) -> int:
    m = _GRES_COUNT.search(gres or "")
    return int(m.group(1)) if m else 0


def nodes_from_sinfo(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The cluster's nodes from `sinfo --json` (pure): name, state (with its flags, e.g. 'idle+drain'),
    why (Slurm's reason), partitions, GPUs and CPUs with how many are in use; by name."""
    out = []
    for n in answer.get("nodes") or []:
        flags = [str(f).lower() for f in n.get("state_flags") or []]
        out.append({"name": str(n.get("name", "")), "state": "+".join([str(n.get("state", "")).lower(), *flags]),
                    "reason": str(n.get("reason") or ""), "partitions": list(n.get("partitions") or []),
                    "gpus": _gpu_count(str(n.get("gres") or "")), "gpus_used": _gpu_count(str(n.get("gres_used") or "")),
                    "cpus": int(n.get("cpus") or 0), "cpus_used": int(n.get("alloc_cpus") or 0)})
    return sorted(out, key=lambda n: n["name"])


def slurm_nodes(run: Callable[[list[str]], subprocess.CompletedProcess] | None = None) -> list[dict[str, Any]]:
    """The cluster's nodes and GPUs now (`sinfo --json`); RuntimeFailure when Slurm does not answer."""
    done = (run or _run)(["sinfo", "--json"])
    try:
        answer = json.loads(done.stdout) if done.returncode == 0 else {}
    except ValueError:
        answer = {}
    errors = answer.get("errors") if isinstance(answer, dict) else None
    if done.returncode != 0 or errors or not isinstance(answer, dict) or "nodes" not in answer:
        said = "; ".join(str(e.get("description", "")) for e in errors or [] if isinstance(e, dict)) or (done.stderr or "").strip()
        raise RuntimeFailure(f"sinfo failed: {said[:300] or 'no answer'}")
    return nodes_from_sinfo(answer)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise RuntimeFailure(f"{args[0]} is not installed on the daemon's host (Slurm's client commands are needed)") from None
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"{args[0]} did not answer within {COMMAND_TIMEOUT:g}s (is slurmctld up?)") from None


def place_of(store: Any) -> Callable[[str], str | None]:
    """where(job_id) for SplitRuntime: the job's spec's 'on' as the database holds it."""
    def where(job_id: str) -> str | None:
        row = store.query_one("SELECT json_extract(spec, '$.on') AS place FROM jobs WHERE id = ?", [job_id])
        return row["place"] if row else None

    return where


def with_slurm(local: Any, config: Any, instance: str, store: Any) -> Any:
    """The runtime the daemon uses: the local one alone, or split with Slurm when [slurm] is enabled."""
    if not config["slurm.enabled"]:
        return local
    return SplitRuntime(local, SlurmRuntime(instance, SlurmSettings.from_config(config)), place_of(store))
