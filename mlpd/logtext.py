"""Workload output as lines with timestamps: saved logs keep Docker's stamp on every line
("2026-12-01T03:04:05.123456789Z text"); people see them only when they ask (--timestamps),
and --since filters by them. Lines without a stamp (logs saved by older releases, an
environment's build log) pass through unchanged unless a --since asks for stamped lines."""

from __future__ import annotations

import datetime as _dt
import os
import re
from typing import Iterable, Iterator

STAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z ")


def stamp_of(line: bytes) -> tuple[float | None, int]:
    """(the line's time, length of its stamp prefix), or (None, 0) when it has none."""
    m = STAMP.match(line)
    if not m:
        return None, 0
    t = _dt.datetime.fromisoformat(m.group(1).decode()).replace(tzinfo=_dt.timezone.utc).timestamp()
    if m.group(2):
        t += float("0." + m.group(2).decode())
    return t, m.end()


def lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Whole lines (with their newline) from a stream of chunks; a last line without one at the end."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *done, pending = pending.split(b"\n")
        for line in done:
            yield line + b"\n"
    if pending:
        yield pending


def select(chunks: Iterable[bytes], timestamps: bool, since: float | None = None) -> Iterator[bytes]:
    """The lines at or after since (lines without a stamp only when since is None), stamped or not."""
    for line in lines(chunks):
        t, end = stamp_of(line)
        if since is not None and (t is None or t < since):
            continue
        yield line if timestamps or not end else line[end:]


def live_log_path(job_dir: str, attempt: int) -> str:
    """The file a running attempt's output is copied to by the worker (mlpd.workers.live_logs) and
    read from by log followers: Docker's stamped stream, the same bytes as the log saved at the end."""
    return os.path.join(job_dir, f"live-{attempt}.log")
