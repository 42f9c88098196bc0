"""Disk guards: the free-space reserve every write path keeps, and the size of a job's /outputs.

One free-space rule for every path that writes under the state directory (job submissions, code
archives, MLflow artifact uploads): a write is refused while it would leave less than
jobs.min_free_gb free (`free_space_refusal`). A job's /outputs is measured from file descriptors
(`tree_size`): the job writes there, so every name in it is hostile, and a link is counted as
itself, never followed.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def free_space_refusal(path: str, min_free_gb: float, incoming: int = 0, what: str = "new work") -> str | None:
    """A sentence for people when writing `incoming` bytes under `path` would leave less than
    min_free_gb free on its disk (None: room enough)."""
    free = shutil.disk_usage(path).free
    if free - incoming >= min_free_gb * 1e9:
        return None
    size = f" of {incoming / 1e6:.1f} MB" if incoming else ""
    return (f"the daemon's disk is nearly full ({free / 1e9:.2f} GB free under its state directory, jobs.min_free_gb = "
            f"{min_free_gb:g}); {what}{size} is refused until an admin frees space (old job outputs, images, artifacts); "
            "running jobs go on")


def tree_size(path: str, timeout: float = 60.0) -> int | None:
    """Bytes allocated on disk under a directory (hard links once; a sparse file counts what it
    takes), by GNU du: it walks relative to directory descriptors, never follows a link and has no
    depth limit, so a job cannot hide bytes behind a swapped link or a deep tree. 0 for a missing
    directory; None when it could not be measured (du missing or too slow)."""
    if not os.path.lexists(path):
        return 0
    try:
        done = subprocess.run(["du", "-s", "-x", "-B1", "--", path], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return int(done.stdout.split()[0])
    except (IndexError, ValueError):
        return None  # du printed nothing usable (e.g. the directory vanished)
