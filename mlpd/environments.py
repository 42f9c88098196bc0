"""Job environments: a base image plus a requirements file, built once into a derived image.

A job that brings requirements (``mlpd run --requirements FILE``, a requirements.txt in its
code directory, or ``requirements`` in a job file) runs in ``mlpd/env:HASH``, where HASH
covers the base image's id and the requirements' text: the first job with that pair builds
it (pip install -r, with the host's CA bundle, as the train image is built), every later one
reuses it. The build runs in the job's launch, so it counts as the job's ``starting`` phase
and never holds up other jobs' placement; its output goes to the job's ``build.log``, and a
failure fails the job with pip's own error lines as the reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from typing import Callable, Iterator

from mlpd.runtime import ImageMissing, Runtime, RuntimeFailure

log_module = logging.getLogger("mlpd.environments")
ENV_REPOSITORY = "mlpd/env"
MAX_REQUIREMENTS_BYTES = 64 * 1024
LABEL_BASE = "org.mlpd.env.base"
LABEL_REQUIREMENTS = "org.mlpd.env.requirements"

DOCKERFILE = """\
# An mlpd job environment: the job's image plus its requirements (built by mlpd.environments).
ARG BASE
FROM ${BASE}
USER 0:0
COPY requirements.txt host-ca.cr[t] /tmp/mlpd-env/
RUN cert=/etc/ssl/certs/ca-certificates.crt; [ -f /tmp/mlpd-env/host-ca.crt ] && cert=/tmp/mlpd-env/host-ca.crt; \\
    python3 -m pip install --break-system-packages --no-cache-dir --disable-pip-version-check --progress-bar off \\
      --cert "$cert" -r /tmp/mlpd-env/requirements.txt \\
 && rm -rf /tmp/mlpd-env
USER 1000:1000
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


def env_tag(base_image_id: str, requirements: str) -> str:
    """The derived image's name: the same base image and requirements give the same name."""
    normal = "\n".join(line.rstrip() for line in requirements.strip().splitlines())
    digest = hashlib.sha256(f"{base_image_id}\0{normal}".encode()).hexdigest()[:16]
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

    def ensure(self, base: str, requirements: str, log_path: str, pull: bool = True,
               on_build: Callable[[str], None] = lambda tag: None) -> tuple[str, bool]:
        """(the environment's image, whether it was built now): built from base and requirements
        unless it exists already (on_build(tag) is called first then). Raises ImageMissing for a
        base that cannot be had, and EnvironmentFailed with pip's message when the build fails."""
        base_id = self.runtime.image_id(base)
        if base_id is None:
            if not pull:
                raise ImageMissing(f"image '{base}' not found on this host")
            self.runtime.pull_image(base)
            base_id = self.runtime.image_id(base) or base
        tag = env_tag(base_id, requirements)
        with self._lock(tag):
            self.last_used[tag] = self.clock()  # under the lock: a prune that follows sees this use
            if self.runtime.image_present(tag):
                return tag, False
            on_build(tag)
            log_module.info("building job environment %s from %s", tag, base)
            tail: list[str] = []
            with open(log_path, "a") as log, _context(requirements) as context:
                log.write(f"mlpd: building the environment {tag} (from {base} and the job's requirements)\n")
                try:
                    for line in self.runtime.build_image(context, tag, {"BASE": base},
                                                         labels={LABEL_BASE: base_id, LABEL_REQUIREMENTS: tag.rpartition(":")[2]}):
                        log.write(line + "\n")
                        log.flush()
                        tail = (tail + [line])[-50:]
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


@contextlib.contextmanager
def _context(requirements: str) -> Iterator[str]:
    from mlpd.image_catalog import build_context

    with tempfile.TemporaryDirectory(prefix="mlpd-env-") as tmp:
        with open(os.path.join(tmp, "Dockerfile"), "w") as fh:
            fh.write(DOCKERFILE)
        with open(os.path.join(tmp, "requirements.txt"), "w") as fh:
            fh.write(requirements.strip() + "\n")
        with build_context(tmp) as context:
            yield context
