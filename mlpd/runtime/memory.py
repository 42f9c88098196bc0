"""An in-memory runtime: the second implementation of :class:`mlpd.runtime.protocol.Runtime`.

It exists so that the controller can be tested in milliseconds, with no Docker. It
passes the same contract suite as the Docker runtime (tests/contract), which is what
keeps it honest: where the two differ, the contract decides, and the contract is
checked against the real engine.

A workload "runs" a tiny subset of a shell, enough for tests to say what should happen:
``true``, ``false``, ``sleep N``, ``echo WORDS`` (with ``$VAR`` and ``${VAR}`` from the
container's environment), ``exit N``, ``ulimit -l``/``ulimit -s`` and ``df -B1 --output=size /dev/shm``
(from the request's ulimits and shm_size, as a shell in a container would print them), and
``sh -c "A; B; C"`` over those. A build
(:meth:`build_by_running`) runs its command in the same tiny shell, except that a program the
tiny shell does not know (pip, say) is taken to succeed with one line of output: nothing can be
installed in memory, and the controller only needs to see a build succeed or fail. Time comes
from ``clock`` (``time.time`` by default), so a test can move it by hand. Test hooks
do what the outside world does to containers: :meth:`vanish` (removed outside mlpd),
:meth:`leave_created` (a daemon killed between create and start), :meth:`oom_kill`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from mlpd.runtime.protocol import (LABEL_ATTEMPT, BuildRequest, ImageMissing, LaunchRequest, Phase, Runtime, RuntimeFailure, WorkloadStatus,
                                   container_env, container_name, format_timestamp)

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass
class _Container:
    id: str
    name: str
    instance: str
    request: LaunchRequest
    env: dict[str, str]
    phase: Phase = Phase.PENDING
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    output: list[tuple[float, str]] = field(default_factory=list)  # (when, line)
    steps: list[tuple[str, object]] = field(default_factory=list)  # what is left to run
    cursor: float = 0.0  # when the next step begins
    ignores_term: bool = False  # a process that neither ends nor exits on SIGTERM (only a stop ends it)


class MemoryRuntime(Runtime):  # declared, so that mypy checks it against the Protocol
    """Job containers as Python objects; the same behaviour the contract suite asks of Docker."""

    def __init__(self, instance: str = "memory", images: tuple[str, ...] = ("mlpd/train:latest",),
                 clock: Callable[[], float] | None = None):
        self.instance = instance
        self.clock = clock or time.time
        self.images: dict[str, dict[str, str]] = {image: {} for image in images}
        self.image_created: dict[str, float] = {}
        self.image_sizes: dict[str, int] = {}  # tests set sizes to exercise disk limits
        self.image_env: dict[str, dict[str, str]] = {}  # what a built image sets in its containers' environment
        self.build_requests: list[BuildRequest] = []  # every build_by_running, for tests to look at
        self.containers: dict[str, _Container] = {}
        self.has_nvidia = False
        self.gateway: str | None = None  # no network in memory; tests may set one
        self.refused_ulimits: set[str] = set()  # limits the engine cannot give (Docker: dockerd without CAP_SYS_RESOURCE); tests may set some
        self._lock = threading.RLock()
        self._listeners: list[Callable[[str], None]] = []
        self._serial = 0

    # ------------------------------------------------------------ the outside world (tests)
    def vanish(self, job_id: str) -> None:
        """The container is removed by someone else (docker rm -f outside mlpd)."""
        with self._lock:
            self.containers.pop(container_name(job_id), None)
        self._emit(job_id)

    def leave_created(self, req: LaunchRequest) -> None:
        """A container created but never started (the daemon died in between)."""
        with self._lock:
            self._create(req)

    def ignore_term(self, job_id: str) -> None:
        """The workload ignores SIGTERM (a trap that never exits): only stop() ends it."""
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is not None:
                c.ignores_term = True

    def oom_kill(self, job_id: str) -> None:
        """The kernel kills the workload for its memory limit."""
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c and c.phase == Phase.RUNNING:
                self._end(c, 137, oom=True)

    # ------------------------------------------------------------ inspect
    def _status(self, c: _Container) -> WorkloadStatus:
        return WorkloadStatus(id=c.id, name=c.name, job_id=c.request.job_id, phase=c.phase, exit_code=c.exit_code,
                              oom_killed=c.oom_killed, started_at=c.started_at, finished_at=c.finished_at,
                              labels={"mlpd.instance": c.instance, "mlpd.kind": c.request.kind, "mlpd.job_id": c.request.job_id,
                                      "mlpd.owner": c.request.owner, LABEL_ATTEMPT: str(c.request.attempt)})

    def list_jobs(self) -> dict[str, WorkloadStatus]:
        with self._lock:
            for c in list(self.containers.values()):
                self._advance(c)
            return {c.request.job_id: self._status(c) for c in self.containers.values() if c.instance == self.instance}

    def inspect(self, job_id: str) -> WorkloadStatus | None:
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is None:
                return None
            self._advance(c)
            return self._status(c)

    # ------------------------------------------------------------ act
    def start_job(self, req: LaunchRequest) -> WorkloadStatus:
        with self._lock:
            c = self.containers.get(container_name(req.job_id))
            if c is not None and c.phase != Phase.PENDING:
                self._advance(c)
                return self._status(c)
            if req.image not in self.images:
                if c is not None:
                    self.containers.pop(c.name, None)
                raise ImageMissing(f"image '{req.image}' not found on this host; build it ('mlpd images build') or ask an admin to pull it")
            taken = {(ip, port) for other in self.containers.values() if other.phase == Phase.RUNNING and other.name != container_name(req.job_id)
                     for _, ip, port in other.request.ports}
            clash = [f"{ip}:{port}" for _, ip, port in req.ports if (ip, port) in taken]
            if clash:
                if c is not None:
                    self.containers.pop(c.name, None)
                raise RuntimeFailure(f"the container could not start: port {clash[0]} is already allocated")
            c = c or self._create(req)
            c.phase, c.started_at = Phase.RUNNING, self.clock()
            c.cursor = c.started_at
            try:
                c.steps = _parse(req.command)
            except ValueError as exc:
                self.containers.pop(c.name, None)
                raise RuntimeFailure(f"the container could not start: {exc}") from None
            self._advance(c)
            status = self._status(c)
        self._emit(req.job_id)
        return status

    def _create(self, req: LaunchRequest) -> _Container:
        self._serial += 1
        c = _Container(id=f"mem{self.instance}{self._serial:08d}", name=container_name(req.job_id), instance=self.instance,
                       request=req, env={**self.image_env.get(req.image, {}), **container_env(req)})
        self.containers[c.name] = c
        return c

    def stop(self, job_id: str, timeout: int = 10) -> None:
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is None:
                return
            self._advance(c)
            if c.phase == Phase.RUNNING:
                # SIGTERM through the init process, as Docker reports it; SIGKILL after the timeout for one that ignores it
                self._end(c, 137 if c.ignores_term else 143)

    def terminate(self, job_id: str) -> None:
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is None:
                return
            self._advance(c)
            if c.phase == Phase.RUNNING and not c.ignores_term:
                self._end(c, 143)  # the default action of SIGTERM, as the init process reports it

    def remove(self, job_id: str) -> None:
        with self._lock:
            removed = self.containers.pop(container_name(job_id), None)
        if removed is not None:
            self._emit(job_id)

    def logs(self, job_id: str, follow: bool = False, timestamps: bool = False) -> Iterator[bytes]:
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is None:
                return iter(())
            self._advance(c)
            return iter([_joined(c.output, timestamps)])

    def processes(self, job_id: str) -> list[str]:
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is None:
                return []
            self._advance(c)
            return [" ".join(c.request.command)] if c.phase == Phase.RUNNING else []

    def save_logs(self, job_id: str, path: str) -> bool:
        with self._lock:
            c = self.containers.get(container_name(job_id))
            if c is None:
                return False
            data = _joined(c.output, True)
        with open(path + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(path + ".tmp", path)
        return True

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        with self._lock:
            self._listeners.append(on_change)
        stop.wait()
        with self._lock:
            self._listeners.remove(on_change)

    def _emit(self, job_id: str) -> None:
        for listener in list(self._listeners):
            listener(job_id)

    # ------------------------------------------------------------ images
    def image_present(self, image: str) -> bool:
        return image in self.images

    def list_images(self, prefix: str = "mlpd/") -> list[dict]:
        return [{"tag": t, "id": f"sha256:{abs(hash(t)) % 10**12:012d}", "size": self.image_sizes.get(t, 0), "created": None,
                 "created_at": self.image_created.get(t)} for t in sorted(self.images) if t.startswith(prefix)]

    def engine_info(self) -> dict:
        return {"version": "in-memory", "nvidia": self.has_nvidia, "gateway": self.gateway, "refused_ulimits": sorted(self.refused_ulimits)}

    def image_id(self, image: str) -> str | None:
        return "sha256:" + hashlib.sha256(image.encode()).hexdigest() if image in self.images else None

    def image_labels(self, image: str) -> dict[str, str]:
        return dict(self.images.get(image, {}))

    def build_image(self, path: str, tag: str, buildargs: dict[str, str], labels: dict[str, str] | None = None) -> Iterator[str]:
        if not os.path.isfile(os.path.join(path, "Dockerfile")):
            raise RuntimeFailure(f"building {tag} failed: no Dockerfile in {path}")
        yield f"Step 1/1 : (in memory) {tag}"
        self.images[tag] = dict(labels or {})
        self.image_created[tag] = self.clock()
        yield f"Successfully tagged {tag}"

    def build_by_running(self, req: BuildRequest) -> Iterator[str]:
        if req.base not in self.images:
            raise ImageMissing(f"image '{req.base}' not found on this host")
        self.build_requests.append(req)
        env = {k: v.replace("$PATH", "/usr/local/bin:/usr/bin:/bin") for k, v in req.env.items()}
        try:
            steps = _parse(req.command)
        except ValueError:
            steps = [("echo", f"(in memory) {' '.join(req.command)[:200]}")]
        took = 0.0
        for kind, arg in steps:
            if kind == "sleep":
                took += float(str(arg))
                if took > req.timeout:
                    raise RuntimeFailure(f"building {req.tag} failed: it took longer than {req.timeout / 60:g} minutes")
            elif kind == "echo":
                yield _expand(str(arg), env)
            elif kind == "exit" and int(str(arg)) != 0:
                raise RuntimeFailure(f"building {req.tag} failed: the build exited with code {arg}")
            elif kind == "exit":
                break
        with self._lock:
            self.images[req.tag] = {**self.images[req.base], **req.labels}
            self.image_env[req.tag] = {**self.image_env.get(req.base, {}), **env}
            self.image_created[req.tag] = self.clock()

    def remove_image(self, image: str) -> bool:
        with self._lock:
            if image not in self.images or any(c.request.image == image for c in self.containers.values()):
                return False
            del self.images[image]
            self.image_created.pop(image, None)
            self.image_env.pop(image, None)
            return True

    def pull_image(self, image: str) -> None:
        raise ImageMissing(f"image '{image}' not found on this host and could not be pulled (the in-memory runtime has no registry)")

    # ------------------------------------------------------------ the tiny shell
    def _advance(self, c: _Container) -> None:
        """Run the workload's steps up to the clock's now."""
        while c.phase == Phase.RUNNING and c.steps:
            kind, arg = c.steps[0]
            if kind == "sleep":
                until = c.cursor + float(str(arg))  # measured from the end of the step before
                if self.clock() < until:
                    return
                c.cursor = until
            elif kind == "echo":
                c.output.append((c.cursor, _expand(str(arg), c.env) + "\n"))
            elif kind == "ulimit":
                c.output.append((c.cursor, _ulimit(c.request, str(arg), self.refused_ulimits) + "\n"))
            elif kind == "shm":
                c.output.append((c.cursor, f"1B-blocks\n{c.request.shm_size or DOCKER_DEFAULT_SHM}\n"))
            elif kind == "exit":
                self._end(c, int(str(arg)))
                return
            c.steps.pop(0)
        if c.phase == Phase.RUNNING and not c.steps:
            self._end(c, 0)

    def _end(self, c: _Container, code: int, oom: bool = False) -> None:
        c.phase, c.exit_code, c.oom_killed = Phase.EXITED, code, oom
        c.finished_at = max(self.clock(), c.started_at or 0.0)
        c.steps = []
        self._emit(c.request.job_id)  # Docker's "die"


def _joined(output: list[tuple[float, str]], timestamps: bool) -> bytes:
    return "".join(f"{format_timestamp(t)} {line}" if timestamps else line for t, line in output).encode()


DOCKER_DEFAULT_SHM = 64 * 1024**2  # /dev/shm of a container that asks for no size
_ULIMIT_FLAGS = {"-l": "memlock", "-s": "stack"}  # in KiB, as a shell's ulimit prints them
_DEFAULT_ULIMITS = {"memlock": 8 * 1024**2, "stack": 8 * 1024**2}  # a Linux host's usual soft limits


def _ulimit(req: LaunchRequest, flag: str, refused: set[str]) -> str:
    """What `ulimit FLAG` prints in the workload's container: its soft limit in KiB, or unlimited."""
    name = _ULIMIT_FLAGS[flag]
    soft = next((soft for n, soft, _hard in req.ulimits if n == name and n not in refused), _DEFAULT_ULIMITS[name])
    return "unlimited" if soft < 0 else str(soft // 1024)


def _expand(text: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), text)


def _parse(command: tuple[str, ...]) -> list[tuple[str, object]]:
    """The steps of a command in the tiny shell; ValueError for anything else (as exec would fail)."""
    if list(command[:2]) == ["sh", "-c"] and len(command) >= 3:
        steps: list[tuple[str, object]] = []
        for statement in command[2].split(";"):
            words = shlex.split(statement)
            if words:
                steps += _parse(tuple(words))
        return steps
    program, args = command[0], list(command[1:])
    if program == "true":
        return []
    if program == "false":
        return [("exit", 1)]
    if program == "sleep" and len(args) == 1:
        return [("sleep", float(args[0]))]
    if program == "echo":
        return [("echo", " ".join(args))]
    if program == "exit":
        return [("exit", int(args[0]) if args else 0)]
    if program == "ulimit" and len(args) == 1 and args[0] in _ULIMIT_FLAGS:
        return [("ulimit", args[0])]
    if program == "df" and args == ["-B1", "--output=size", "/dev/shm"]:
        return [("shm", None)]
    raise ValueError(f'exec: "{program}": executable file not found in $PATH (the in-memory runtime runs only '
                     "true, false, sleep, echo, exit, ulimit -l/-s, df -B1 --output=size /dev/shm and sh -c over them)")
