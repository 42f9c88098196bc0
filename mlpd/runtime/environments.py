"""Job environments: a base image plus a requirements file, built once into a derived image.

A job that brings requirements (``mlpd run --requirements FILE``, a requirements.txt in its
code directory, or ``requirements`` in a job file) runs in ``mlpd/env:HASH``, where HASH
covers the base image's id, the requirements' text and the job uid: the first job with those
builds it, every later one reuses it. The build runs in the job's launch, so it counts as the
job's ``starting`` phase and never holds up other jobs' placement; its output goes to the job's ``build.log``, and a
failure fails the job with pip's own error lines as the reason.

How it is built: not with `docker build`, whose RUN steps would run pip (and so any package's build
backend, which is code a member chose) as root with Docker's default capabilities on the default
bridge, where it can sniff or spoof its neighbours. Instead the runtime runs a container from the base
image hardened exactly like the job's (the job uid, no capabilities, no-new-privileges, pids and memory
limits, mlpd's isolated network; :meth:`mlpd.runtime.protocol.Runtime.build_by_running`) in which pip installs
with its user scheme into PREFIX, a directory the job uid owns, and commits it: PYTHONUSERBASE=PREFIX
makes the base's python find the packages ahead of its own, PATH gains PREFIX/bin, and the image's user
is the job uid. The host's CA bundle is mounted read-only so pip reaches the index through a
TLS-inspecting proxy. The job uid is part of the environment's name, so changing jobs.container_user
builds anew. A base whose python cannot use a user scheme (a virtualenv) fails with pip's message.
In a workspace with requirements, what is already in the home's ~/.local stays importable (after the
environment's packages), but `pip install` in a session goes to PREFIX and lasts only that session:
lasting packages belong in the requirements.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from typing import Callable

from mlpd.runtime.protocol import CA_BUNDLE_MOUNT, BuildRequest, ImageMissing, Runtime, RuntimeFailure

log_module = logging.getLogger("mlpd.runtime.environments")
ENV_REPOSITORY = "mlpd/env"
MAX_REQUIREMENTS_BYTES = 64 * 1024
MAX_BUILD_LOG_BYTES = 16 * 2**20  # of a build's output in the job's build.log (pip's last lines are kept apart)
LABEL_BASE = "org.mlpd.env.base"
LABEL_REQUIREMENTS = "org.mlpd.env.requirements"

# Where an environment's packages go: pip's user scheme with this base, so the base's python finds them
# (its user site comes before the system's packages) and their commands are on the PATH.
PREFIX = "/opt/mlpd-env"
REQUIREMENTS_FILE = ".requirements.txt"  # in PREFIX while pip runs; removed before the commit
# PYTHONUSERBASE moves the user site from ~/.local to PREFIX; this .pth (in PREFIX's site) keeps what a
# person installed in their home (a workspace's persistent ~/.local) importable, after the environment.
HOME_PACKAGES_PTH = ('import os, site, sys; d = os.path.expanduser("~/.local/lib/python%d.%d/site-packages" % sys.version_info[:2]); '
                     'os.path.isdir(d) and site.addsitedir(d)')
BUILD_SCRIPT = f"""\
set -e
cert=/etc/ssl/certs/ca-certificates.crt; [ -s {CA_BUNDLE_MOUNT} ] && cert={CA_BUNDLE_MOUNT}
echo "mlpd: pip install as uid $(id -u), into {PREFIX}"
python3 -m pip install --user --break-system-packages --no-cache-dir --disable-pip-version-check --progress-bar off \\
  --no-warn-script-location --cert "$cert" -r {PREFIX}/{REQUIREMENTS_FILE}
rm -f {PREFIX}/{REQUIREMENTS_FILE}
site="$(python3 -c 'import site; print(site.getusersitepackages())')"
mkdir -p "$site"
echo {HOME_PACKAGES_PTH!r} > "$site/mlpd-home-packages.pth"
"""


class EnvironmentFailed(RuntimeFailure):
    """The environment could not be built; the message carries pip's error."""


def check_requirements(text: str) -> str | None:
    """Why a requirements text cannot be used (None when it can)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_REQUIREMENTS_BYTES:
        return f"is over {MAX_REQUIREMENTS_BYTES // 1024} KiB"
    if "\0" in text:
        return "contains a NUL character"
    if not any(line.strip() and not line.strip().startswith("#") for line in text.splitlines()):
        return "names no package"
    return None


def env_tag(base_image_id: str, requirements: str, user: str) -> str:
    """The derived image's name: the same base image, requirements and build uid give the same name."""
    normal = "\n".join(line.rstrip() for line in requirements.strip().splitlines())
    digest = hashlib.sha256(f"{base_image_id}\0{normal}\0{user}".encode()).hexdigest()[:16]
    return f"{ENV_REPOSITORY}:{digest}"


def pip_errors(lines: list[str]) -> str:
    """pip's own error lines from a build's output (what a person needs to fix the requirements)."""
    errors = [line.strip() for line in lines if re.match(r"\s*ERROR:", line)]
    return " / ".join(errors[-3:]) if errors else " / ".join(line.strip() for line in lines[-3:] if line.strip())


def environments_to_prune(images: list[dict], last_used: dict[str, float], now: float, keep_days: float,
                          max_bytes: float, grace: float = 3600.0) -> list[str]:
    """Which environment images to remove: those unused for keep_days, then the least recently used
    until the rest fit in max_bytes. One used within grace seconds is never removed (a job may be
    about to start with it). images: [{tag, size, created_at}]; last_used: {tag: when a job last used it}."""
    def used(image: dict) -> float:
        return max(last_used.get(image["tag"], 0.0), image.get("created_at") or 0.0)

    candidates = sorted((i for i in images if i["tag"].startswith(ENV_REPOSITORY + ":")), key=used)
    doomed = [i for i in candidates if now - used(i) > keep_days * 86400]
    kept = [i for i in candidates if i not in doomed]
    total = sum(i.get("size") or 0 for i in kept)
    for image in kept:  # least recently used first
        if total <= max_bytes:
            break
        if now - used(image) > grace:
            doomed.append(image)
            total -= image.get("size") or 0
    return [i["tag"] for i in doomed]


class EnvironmentBuilder:
    """Builds and reuses environments on one runtime; one build per environment at a time."""

    def __init__(self, runtime: Runtime, clock=None):
        import time

        self.runtime = runtime
        self.clock = clock or time.time
        self.last_used: dict[str, float] = {}  # this process's view; events carry it across restarts
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, tag: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(tag, threading.Lock())

    def ensure(self, base: str, requirements: str, log_path: str, user: str, pull: bool = True,
               on_build: Callable[[str], None] = lambda tag: None) -> tuple[str, bool]:
        """(the environment's image, whether it was built now): built from base and requirements as
        user (the job uid, numeric uid:gid) unless it exists already (on_build(tag) is called first then). Raises ImageMissing for a
        base that cannot be had, and EnvironmentFailed with pip's message when the build fails."""
        base_id = self.runtime.image_id(base)
        if base_id is None:
            if not pull:
                raise ImageMissing(f"image '{base}' not found on this host")
            self.runtime.pull_image(base)
            base_id = self.runtime.image_id(base) or base
        tag = env_tag(base_id, requirements, user)
        with self._lock(tag):
            self.last_used[tag] = self.clock()  # under the lock: a prune that follows sees this use
            if self.runtime.image_present(tag):
                return tag, False
            on_build(tag)
            log_module.info("building job environment %s from %s", tag, base)
            tail: list[str] = []
            request = build_request(base, tag, requirements, user, labels={LABEL_BASE: base_id, LABEL_REQUIREMENTS: tag.rpartition(":")[2]})
            with open(log_path, "a") as log:
                log.write(f"mlpd: building the environment {tag} (from {base} and the job's requirements)\n")
                written = 0
                try:
                    for line in self.runtime.build_by_running(request):
                        tail = (tail + [line])[-50:]
                        if written <= MAX_BUILD_LOG_BYTES:
                            written += len(line) + 1
                            log.write(line + "\n" if written <= MAX_BUILD_LOG_BYTES else
                                      f"mlpd: the build's output is over {MAX_BUILD_LOG_BYTES // 2**20} MiB; the rest is not kept\n")
                            log.flush()
                except RuntimeFailure as exc:
                    log.write(f"mlpd: {exc}\n")
                    raise EnvironmentFailed(f"building its environment failed: {pip_errors(tail) or exc} "
                                            "(the whole build output is in the job's build log)") from None
            return tag, True

    def prune(self, keep_days: float, max_gb: float, used_before: dict[str, float] | None = None) -> list[str]:
        """Remove environments per environments_to_prune; returns those removed. A removal happens under
        the environment's lock and only if it is still unused, so a job starting with it is never left
        without its image (an image a container still uses is kept by the runtime too)."""
        images = self.runtime.list_images(prefix=ENV_REPOSITORY + ":")
        last = {**(used_before or {})}
        for tag, at in self.last_used.items():
            last[tag] = max(last.get(tag, 0.0), at)
        removed = []
        for tag in environments_to_prune(images, last, self.clock(), keep_days, max_gb * 1e9):
            with self._lock(tag):
                if self.last_used.get(tag, 0.0) > last.get(tag, 0.0):
                    continue  # used since the decision
                if self.runtime.remove_image(tag):
                    removed.append(tag)
        return removed


def build_request(base: str, tag: str, requirements: str, user: str, labels: dict[str, str]) -> BuildRequest:
    """How an environment is built (see the module docstring): pip, as user, into PREFIX."""
    from mlpd.runtime.image_catalog import host_ca_bundle

    return BuildRequest(base=base, tag=tag, command=("sh", "-c", BUILD_SCRIPT), user=user, directory=PREFIX,
                        files=((REQUIREMENTS_FILE, requirements.strip() + "\n"),),
                        env={"PYTHONUSERBASE": PREFIX, "PATH": f"{PREFIX}/bin:$PATH"}, labels=labels, ca_bundle=host_ca_bundle())
