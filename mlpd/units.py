"""Durations and sizes as users write them (30m, 1h30m, 4GiB), Docker's smallest limits, and the
host's own size: the pure helpers the config, the job spec, quotas and the controller share."""

from __future__ import annotations

import math
import re
from typing import Any

MIN_MEMORY = 6 * 1024**2  # Docker refuses a smaller memory limit
MIN_CPUS = 0.01  # Docker's smallest CPU quota
MIN_SHM = 1024**2
NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_DURATION_PART = re.compile(rf"({NUMBER})\s*([dhms])")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_MEMORY = re.compile(rf"({NUMBER})\s*([kmgt]?)(i?b?)")
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def typename(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_duration(value: Any) -> float:
    """Return seconds from a number or a string like ``"90"``, ``"90s"``, ``"30m"``, ``"1h30m"``, ``"1.5d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(NUMBER, text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:(?:{NUMBER})\s*[dhms]\s*)+", text):
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
        else:
            raise ValueError(f"cannot read {value!r} as a duration; use seconds or e.g. 90s, 30m, 2h, 1d, 1h30m")
    else:
        raise ValueError(f"expected a duration such as 30m or a number of seconds, got {typename(value)}")
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    return seconds


def parse_memory(value: Any) -> int:
    """Return bytes from an int or a string like ``"512m"``, ``"4g"``, ``"4GiB"``, ``"1.5G"``, ``"100k"``.

    Units are binary (k = 1024), as Docker reads them, whether or not an ``i`` is written.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected bytes or a size such as 512m or 4GiB, got {typename(value)}")
    m = _MEMORY.fullmatch(value.strip().lower())
    # "ib" alone ("4ib") or "i" without a unit letter is not a size anyone means.
    if not m or (m.group(3).startswith("i") and not m.group(2)):
        raise ValueError(f"cannot read {value!r} as a size; use bytes or e.g. 512m, 4g, 4GiB, 1.5G")
    return int(float(m.group(1)) * _MEMORY_UNITS[m.group(2)])


def format_duration(seconds: float) -> str:
    """Render seconds compactly, largest units first: ``"1h30m"``, ``"45s"``, ``"2d3h"``."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if 0 < seconds < 1:
        return f"{seconds:.2g}s"
    rest, parts = round(seconds), []
    for unit, size in _DURATION_UNITS.items():
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


def format_bytes(n: int) -> str:
    """Render a byte count in binary units: ``"4.0 GiB"``, ``"512 MiB"``, ``"100 B"``."""
    value, unit = float(n), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{n} B"
    # One decimal only where it carries information (4.0 GiB vs 512 MiB).
    return f"{value:.1f} {unit}" if abs(value) < 10 else f"{value:.0f} {unit}"


def host_limits() -> tuple[int, int]:
    """(CPU count, bytes of memory) of this host: the most one job can be given."""
    import os

    return os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def shm_size(shm: int | None, memory_limit: int | None, configured: str, host_memory: int) -> int:
    """Bytes of /dev/shm a container gets: what its spec asks for (within its memory limit, see
    check_shm), else jobs.shm_size ("auto": half its memory limit; a size: that, at most the limit).
    Work without a memory limit counts the host's memory as its limit, as the host's own /dev/shm does."""
    limit = memory_limit if memory_limit else host_memory
    if shm is not None:
        return min(shm, limit)
    if configured == "auto":
        return limit // 2
    return min(parse_memory(configured), limit)
