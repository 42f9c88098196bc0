"""The Docker runtime: :class:`mlpd.runtime.protocol.Runtime` on the local Docker engine; the only module that imports docker."""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import ipaddress
import logging
import os
import re
import tarfile
import threading
from typing import Callable, Iterator

import docker
import docker.errors
from docker.types import DeviceRequest, Mount, Ulimit

from mlpd.runtime.protocol import (CA_BUNDLE_MOUNT, LABEL_ATTEMPT, LABEL_GPUS, LABEL_INSTANCE, LABEL_JOB, LABEL_KIND, LABEL_OWNER, BuildRequest,
                          ImageMissing, LaunchRequest, Phase, Runtime, RuntimeFailure, WorkloadStatus, container_env, container_name)

log = logging.getLogger("mlpd.runtime")

# Docker's container states, as phases: "created" never started; "paused" and "restarting" still hold the workload.
_PHASES = {"created": Phase.PENDING, "running": Phase.RUNNING, "paused": Phase.RUNNING, "restarting": Phase.RUNNING,
           "removing": Phase.EXITED, "exited": Phase.EXITED, "dead": Phase.EXITED}


def _ts(value: str | None) -> float | None:
    """Docker's RFC 3339 nanosecond timestamps; the zero time means 'never'."""
    if not value or value.startswith("0001-"):
        return None
    value = value.rstrip("Z")
    main, _, frac = value.partition(".")
    dt = _dt.datetime.fromisoformat(main).replace(tzinfo=_dt.timezone.utc)
    return dt.timestamp() + (float("0." + frac[:9]) if frac else 0.0)


# Every container mlpd starts (jobs, workspaces, replicas, environment builds) joins this bridge network,
# made by mlpd with inter-container traffic off: a container reaches the host (the daemon listens on the
# network's gateway for them, see server.container_listen), the package index and the internet, and no other
# container, whoever owns it. One network for the host, shared by every mlpd instance on the engine: ICC off
# isolates each container from all others, so nothing is gained by more (and Docker's address pools hold only
# about thirty bridge networks).
NETWORK = "mlpd-isolated"
MAX_BUILD_LINE = 16 * 1024  # bytes of one line of a build's output
LABEL_NETWORK = "org.mlpd.network"
_ICC = "com.docker.network.bridge.enable_icc"


def _client(base_url: str = ""):
    return docker.DockerClient(base_url=base_url) if base_url else docker.from_env()


def ensure_network(client) -> str:
    """Make mlpd's isolated network unless it exists (idempotent, safe to race); returns its gateway address.
    Raises RuntimeFailure when a network of that name lets containers talk to each other."""
    for attempt in range(2):
        found = sorted((n for n in client.networks.list(names=[NETWORK]) if n.name == NETWORK), key=lambda n: n.attrs.get("Created", ""))
        if found:
            network = client.networks.get(found[0].id)
            if (network.attrs.get("Options") or {}).get(_ICC) != "false":
                raise RuntimeFailure(f"the Docker network '{NETWORK}' lets containers reach each other (it was not made by mlpd); "
                                     f"remove it ('docker network rm {NETWORK}') and mlpd makes its own")
            gateway = _gateway(network.attrs)
            if gateway:
                return gateway
            raise RuntimeFailure(f"the Docker network '{NETWORK}' has no IPv4 gateway; remove it ('docker network rm {NETWORK}')")
        try:
            client.networks.create(NETWORK, driver="bridge", options={_ICC: "false"}, labels={LABEL_NETWORK: "isolated"},
                                   check_duplicate=True)
        except docker.errors.APIError as exc:
            if exc.status_code != 409 or attempt:  # 409: another process made it just now
                raise RuntimeFailure(f"cannot make the Docker network '{NETWORK}' ({exc.explanation or exc})") from None
    raise RuntimeFailure(f"cannot make the Docker network '{NETWORK}'")


def _gateway(attrs: dict) -> str | None:
    """A network's IPv4 gateway. Newer engines leave IPAM's Gateway out when it is the default; Docker
    then uses the first address of the subnet, so that is the answer."""
    for item in attrs.get("IPAM", {}).get("Config") or []:
        if item.get("Gateway") and ":" not in item["Gateway"]:
            return item["Gateway"]
        try:
            network = ipaddress.ip_network(item.get("Subnet", ""), strict=False)
        except ValueError:
            continue
        if network.version == 4:
            return str(next(network.hosts()))
    return None


def bridge_gateway(base_url: str = "") -> str | None:
    """The host's address on mlpd's isolated network (made if missing): where host.docker.internal points
    in mlpd's containers, so the daemon's second address (server.container_listen "auto"). None when
    Docker cannot be asked."""
    try:
        client = _client(base_url)
        try:
            return ensure_network(client)
        finally:
            client.close()
    except (docker.errors.DockerException, RuntimeFailure) as exc:
        log.warning("cannot set up mlpd's Docker network (%s)", exc)
        return None


class DockerRuntime(Runtime):  # declared, so that mypy checks it against the Protocol
    """Job containers on the local Docker engine, labelled with this daemon's instance id."""

    def __init__(self, instance: str, base_url: str = "", gpu_mode: str = "auto"):
        self.instance = instance
        try:
            self.client = _client(base_url)
            self.client.ping()
        except docker.errors.DockerException as exc:
            raise RuntimeFailure(f"cannot reach the Docker engine ({exc}); is dockerd running?") from None
        self.gateway = ensure_network(self.client)  # host.docker.internal in every container
        runtimes = self.client.info().get("Runtimes", {}) or {}
        self.has_nvidia = "nvidia" in runtimes
        if gpu_mode == "nvidia" and not self.has_nvidia:
            raise RuntimeFailure("docker.gpu_runtime is 'nvidia' but the Docker engine has no NVIDIA runtime; install nvidia-container-toolkit")
        self.use_device_requests = self.has_nvidia and gpu_mode != "none"
        self._lock = threading.Lock()
        self.refused_ulimits: set[str] = set()  # resource limits this engine could not give a container (see start_job)

    # ------------------------------------------------------------ inspect
    def _state(self, c) -> WorkloadStatus:
        s = c.attrs.get("State", {})
        phase = _PHASES.get(s.get("Status", c.status), Phase.EXITED)
        return WorkloadStatus(
            id=c.id, name=c.name, job_id=c.labels.get(LABEL_JOB, ""), phase=phase,
            exit_code=s.get("ExitCode") if phase == Phase.EXITED else None,
            oom_killed=bool(s.get("OOMKilled")), started_at=_ts(s.get("StartedAt")), finished_at=_ts(s.get("FinishedAt")),
            error=s.get("Error", "") or "", labels=dict(c.labels),
        )

    def list_jobs(self) -> dict[str, WorkloadStatus]:
        """This daemon's workload containers (every kind), by job id."""
        # ignore_removed: a container removed between the list and its inspect is simply gone, not an error.
        found = self.client.containers.list(all=True, filters={"label": [f"{LABEL_INSTANCE}={self.instance}", LABEL_KIND]},
                                            ignore_removed=True)
        return {s.job_id: s for s in map(self._state, found)}

    def inspect(self, job_id: str) -> WorkloadStatus | None:
        try:
            return self._state(self.client.containers.get(container_name(job_id)))
        except docker.errors.NotFound:
            return None

    def image_present(self, image: str) -> bool:
        return self.image_id(image) is not None

    # ------------------------------------------------------------ act
    def _ensure_image(self, image: str, pull: bool) -> None:
        if self.image_present(image):
            return
        if not pull:
            raise ImageMissing(f"image '{image}' not found on this host; build it ('mlpd images build') or ask an admin to pull it")
        try:
            log.info("pulling %s", image)
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise ImageMissing(f"image '{image}' not found on this host and could not be pulled ({str(exc).splitlines()[0][:200]})") from None

    def start_job(self, req: LaunchRequest) -> WorkloadStatus:
        """Create and start the job's container, pinned to its GPUs; idempotent."""
        name = container_name(req.job_id)
        existing = self.inspect(req.job_id)
        if existing and existing.phase != Phase.PENDING:
            return existing
        self._ensure_image(req.image, req.pull)
        gpu_list = ",".join(req.gpu_uuids)
        env = container_env(req)
        volumes = {req.outputs_dir: {"bind": "/outputs", "mode": "rw"}}
        if req.code_dir:
            volumes[req.code_dir] = {"bind": "/code", "mode": "ro"}
        for host_path, container_path, read_only in req.mounts:
            volumes[host_path] = {"bind": container_path, "mode": "ro" if read_only else "rw"}
        kwargs = dict(
            image=req.image, command=list(req.command), name=name, detach=True, environment=env,
            labels={LABEL_INSTANCE: self.instance, LABEL_KIND: req.kind, LABEL_OWNER: req.owner, LABEL_JOB: req.job_id, LABEL_GPUS: gpu_list,
                    LABEL_ATTEMPT: str(req.attempt)},
            user=req.user, working_dir=req.workdir or ("/code" if req.code_dir else "/outputs"), volumes=volumes,
            ports={f"{cport}/tcp": (host_ip, host_port) for cport, host_ip, host_port in req.ports},
            init=True, privileged=False, security_opt=["no-new-privileges"], cap_drop=["ALL"], pids_limit=4096,
            network=NETWORK, extra_hosts={"host.docker.internal": self.gateway},  # not "host-gateway": that is docker0's
            log_config={"type": "json-file", "config": {"max-size": "50m", "max-file": "2"}},
        )
        if req.memory:
            kwargs.update(mem_limit=req.memory, memswap_limit=req.memory)
        if req.cpus:
            kwargs["nano_cpus"] = int(req.cpus * 1e9)
        if req.shm_size:
            kwargs["shm_size"] = req.shm_size
        ulimits = [u for u in req.ulimits if u[0] not in self.refused_ulimits]
        if ulimits:
            kwargs["ulimits"] = [Ulimit(name=name, soft=soft, hard=hard) for name, soft, hard in ulimits]
        if req.gpu_uuids and self.use_device_requests:
            kwargs["device_requests"] = [DeviceRequest(driver="nvidia", device_ids=list(req.gpu_uuids), capabilities=[["gpu"]])]
        try:
            if existing is None:
                self.client.containers.create(**{k: v for k, v in kwargs.items() if k != "detach"})
            container = self.client.containers.get(name)
            container.start()
            container.reload()
        except docker.errors.ImageNotFound as exc:
            self.remove(req.job_id)
            raise ImageMissing(f"image '{req.image}' not found: {exc.explanation}") from None
        except docker.errors.APIError as exc:
            # A DeviceRequest on an engine without the NVIDIA runtime fails here, after create.
            self.remove(req.job_id)
            refused = _refused_ulimits(str(exc.explanation or exc), ulimits)
            if refused:
                # An engine that may not raise a limit (dockerd without CAP_SYS_RESOURCE, or under a lower hard
                # limit of its own, as in a container) refuses every container asking for it: the work runs with
                # the engine's own limit instead, and engine_info says so.
                log.warning("the Docker engine cannot set the %s limit its containers ask for (%s); they get the engine's own",
                            ", ".join(refused), str(exc.explanation or exc)[:200])
                with self._lock:
                    self.refused_ulimits |= set(refused)
                return self.start_job(req)
            raise RuntimeFailure(f"the container could not start: {exc.explanation or exc}") from None
        return self._state(container)

    def stop(self, job_id: str, timeout: int = 10) -> None:
        """SIGTERM, then SIGKILL after timeout; a container that is gone or stopped is fine."""
        try:
            self.client.containers.get(container_name(job_id)).stop(timeout=timeout)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code not in (304, 404, 409):
                raise

    def terminate(self, job_id: str) -> None:
        """SIGTERM to the container's init (docker-init passes it to the command); returns at once."""
        try:
            self.client.containers.get(container_name(job_id)).kill(signal="SIGTERM")
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):  # 409: not running
                raise

    def remove(self, job_id: str) -> None:
        """Remove the container (force); idempotent."""
        try:
            self.client.containers.get(container_name(job_id)).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):
                raise

    def logs(self, job_id: str, follow: bool = False, timestamps: bool = False) -> Iterator[bytes]:
        """The container's combined output; with follow, until it exits. Empty if it is gone."""
        try:
            container = self.client.containers.get(container_name(job_id))
        except docker.errors.NotFound:
            return iter(())
        if follow:
            return container.logs(stream=True, follow=True, stdout=True, stderr=True, timestamps=timestamps)
        return iter([container.logs(stdout=True, stderr=True, timestamps=timestamps)])

    def processes(self, job_id: str) -> list[str]:
        """The command lines in the container (Docker's `top`); [] when it is gone or not running."""
        try:
            top = self.client.containers.get(container_name(job_id)).top()
        except docker.errors.NotFound:
            return []
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running
                return []
            raise
        column = len(top.get("Titles") or []) - 1
        return [row[column] for row in top.get("Processes") or [] if column >= 0]

    def save_logs(self, job_id: str, path: str) -> bool:
        """Copy the container's whole output to path (kept after the container is removed)."""
        try:
            data = self.client.containers.get(container_name(job_id)).logs(stdout=True, stderr=True, timestamps=True)
        except docker.errors.NotFound:
            return False
        with open(path + ".tmp", "wb") as fh:
            fh.write(data)
        os.replace(path + ".tmp", path)
        return True

    def watch(self, on_change: Callable[[str], None], stop: threading.Event) -> None:
        """Call on_change(job_id) on every start/die of this daemon's job containers (blocks; run in a thread)."""
        while not stop.is_set():
            try:
                events = self.client.events(decode=True, filters={"type": "container", "label": [f"{LABEL_INSTANCE}={self.instance}"], "event": ["start", "die", "destroy", "oom"]})
                for event in events:
                    on_change(event.get("Actor", {}).get("Attributes", {}).get(LABEL_JOB, ""))
                    if stop.is_set():
                        break
            except Exception as exc:  # the engine restarted or the stream broke: retry
                log.warning("Docker event stream broke (%s); reconnecting", exc)
                stop.wait(2)

    # ------------------------------------------------------------ images
    def list_images(self, prefix: str = "mlpd/") -> list[dict]:
        out = []
        for img in self.client.images.list():
            for tag in img.tags:
                if tag.startswith(prefix):
                    out.append({"tag": tag, "id": img.short_id, "size": img.attrs.get("Size"), "created": img.attrs.get("Created"),
                                "created_at": _ts(img.attrs.get("Created"))})
        return sorted(out, key=lambda x: x["tag"])

    def remove_image(self, image: str) -> bool:
        try:
            self.client.images.remove(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                return False  # a container (even a stopped one) still uses it
            raise

    def pull_image(self, image: str) -> None:
        """Pull an image from its registry; ImageMissing when it cannot be had."""
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise ImageMissing(f"image '{image}' could not be pulled ({str(exc).splitlines()[0][:200]})") from None

    def engine_info(self) -> dict:
        return {"version": self.client.version().get("Version", "?"), "nvidia": self.has_nvidia, "gateway": self.gateway,
                "refused_ulimits": sorted(self.refused_ulimits)}

    def image_id(self, image: str) -> str | None:
        try:
            return self.client.images.get(image).id
        except docker.errors.ImageNotFound:
            return None

    def image_labels(self, image: str) -> dict[str, str]:
        """The image's labels ({} when it is absent)."""
        try:
            return dict(self.client.images.get(image).labels or {})
        except docker.errors.ImageNotFound:
            return {}

    def build_image(self, path: str, tag: str, buildargs: dict[str, str], labels: dict[str, str] | None = None) -> Iterator[str]:
        """Build an image from a directory; yields progress lines; raises RuntimeFailure on error."""
        for chunk in self.client.api.build(path=path, tag=tag, buildargs=buildargs, labels=labels, rm=True, forcerm=True, decode=True):
            if "error" in chunk:
                raise RuntimeFailure(f"building {tag} failed: {chunk['error'].strip()}")
            if chunk.get("stream", "").strip():
                yield chunk["stream"].rstrip()

    def build_by_running(self, req: BuildRequest) -> Iterator[str]:
        """Run req.command in a hardened container from req.base, then commit it as req.tag (see BuildRequest).

        Not `docker build`: a Dockerfile's RUN steps run as whatever user the Dockerfile says, with Docker's
        default capabilities (NET_RAW among them), on the default bridge, none of which a member's build
        should have. Here the container is created like a job's: req.user, no capabilities, no-new-privileges,
        pids and memory limits, mlpd's isolated network. The committed image takes the base's configuration
        (command, entrypoint, working directory) with req.env, req.user and req.labels over it, and nothing of
        the build container's (its command, labels or mounts)."""
        try:
            base = self.client.images.get(req.base)
        except docker.errors.ImageNotFound:
            raise ImageMissing(f"image '{req.base}' not found on this host") from None
        config = base.attrs.get("Config") or {}
        base_env = dict(item.split("=", 1) for item in config.get("Env") or [] if "=" in item)
        path = base_env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        env = {k: v.replace("$PATH", path) for k, v in req.env.items()}
        name = "mlpd-build-" + hashlib.sha256(f"{self.instance}\0{req.tag}".encode()).hexdigest()[:16]
        self._remove_container(name)  # a leftover of a daemon stopped mid-build
        # A Mount, not volumes=: docker-py turns volumes into the config's Volumes too, which the commit would keep.
        mounts = [Mount(CA_BUNDLE_MOUNT, req.ca_bundle, type="bind", read_only=True)] if req.ca_bundle else []
        try:
            container = self.client.containers.create(
                image=req.base, command=list(req.command), name=name, environment=env, user=req.user, working_dir=req.directory,
                mounts=mounts, init=True, privileged=False, security_opt=["no-new-privileges"], cap_drop=["ALL"],
                pids_limit=req.pids, mem_limit=req.memory, memswap_limit=req.memory,
                network=NETWORK, extra_hosts={"host.docker.internal": self.gateway},
                log_config={"type": "json-file", "config": {"max-size": "50m", "max-file": "2"}})
        except docker.errors.APIError as exc:
            self._remove_container(name)
            raise RuntimeFailure(f"building {req.tag} failed: {exc.explanation or exc}") from None
        fired = threading.Event()
        timer = threading.Timer(req.timeout, _kill_quietly, (container, fired))
        timer.daemon = True
        try:
            container.put_archive("/", _directory_tar(req.directory, req.user, req.files))
            container.start()
            timer.start()
            pending = b""
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > MAX_BUILD_LINE:  # a line without end is passed on in pieces, never held whole
                    lines, pending = lines + [pending], b""
                for line in lines:
                    yield line[:MAX_BUILD_LINE].decode("utf-8", "replace").rstrip()
            if pending.strip():
                yield pending.decode("utf-8", "replace").rstrip()
            code = container.wait().get("StatusCode")
            timer.cancel()
            timed_out = fired.is_set()
            container.reload()
            if timed_out:
                raise RuntimeFailure(f"building {req.tag} failed: it took longer than {req.timeout / 60:g} minutes")
            if code != 0:
                why = " (out of memory: it may use %d MiB)" % (req.memory // 2**20) if container.attrs["State"].get("OOMKilled") else ""
                raise RuntimeFailure(f"building {req.tag} failed: the build exited with code {code}{why}")
            repository, _, tag = req.tag.rpartition(":")
            labels = {**(config.get("Labels") or {}), **req.labels}
            container.commit(repository=repository, tag=tag, conf={
                "Env": [f"{k}={v}" for k, v in {**base_env, **env}.items()], "User": req.user, "Labels": labels,
                "Cmd": config.get("Cmd"), "Entrypoint": config.get("Entrypoint"), "WorkingDir": config.get("WorkingDir") or "/"})
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"building {req.tag} failed: {exc.explanation or exc}") from None
        finally:
            timer.cancel()
            self._remove_container(name)

    def _remove_container(self, name: str) -> None:
        try:
            self.client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code not in (404, 409):
                raise


# runc's "error setting rlimit type N": the kernel's RLIMIT_* numbers of the limits mlpd asks for.
_RLIMIT_NAMES = {3: "stack", 7: "nofile", 8: "memlock"}


def _refused_ulimits(error: str, asked: list[tuple[str, int, int]]) -> list[str]:
    """The asked-for resource limits a failed start names as refused ([] when it failed for another reason)."""
    match = re.search(r"error setting rlimit type (\d+)", error)
    if not match:
        return []
    name = _RLIMIT_NAMES.get(int(match.group(1)))
    names = [u[0] for u in asked]
    return [name] if name in names else names


def _kill_quietly(container, fired: threading.Event) -> None:
    fired.set()  # first: the build's wait() returns as soon as the kill lands
    try:
        container.kill()
    except docker.errors.APIError:
        pass  # it ended just now


def _directory_tar(directory: str, user: str, files: tuple[tuple[str, str], ...]) -> bytes:
    """A tar of directory (0755) and its files (0600), all owned by user (numeric uid:gid), to unpack at /."""
    uid, gid = (int(x) for x in user.split(":"))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo(directory.strip("/"))
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
        tar.addfile(info)
        for name, text in files:
            data = text.encode()
            info = tarfile.TarInfo(f"{directory.strip('/')}/{name}")
            info.size, info.mode, info.uid, info.gid = len(data), 0o600, uid, gid
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
