"""Live logs: while a workload's container runs, the worker copies its output into a file the web reads.

A follower (GET /jobs/ID/logs?follow=1) then polls a file instead of holding a read on Docker's
log stream, so it notices at once when its client has gone and holds no engine connection. One
thread per running container appends Docker's stamped stream ("TIMESTAMP text" lines, the bytes
the controller saves as the job's log when it ends) to JOB_DIR/live-ATTEMPT.log. The saved log is
the same byte stream, so a reader that has read N bytes of the live file goes on at byte N of the
saved log once the job has ended. A worker restarted mid-job skips the bytes the file already holds.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Iterable

from mlpd import jobs
from mlpd.jobs import JobState
from mlpd.logtext import live_log_path

log = logging.getLogger("mlpd.workers")
FOLLOWED = (JobState.STARTING, JobState.RUNNING)


def copy_stream(chunks: Iterable[bytes], path: str) -> int:
    """Append the stream to path, skipping the bytes it already holds (the same stream, read before
    a restart); return the bytes written."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    written = 0
    with os.fdopen(fd, "ab", buffering=0) as fh:
        skip = os.fstat(fd).st_size
        for chunk in chunks:
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            fh.write(chunk)
            written += len(chunk)
    return written


class LiveLogs:
    """One copying thread per running workload attempt; ensure() starts those that are missing."""

    def __init__(self, state_dir: str):
        self.state_dir = state_dir
        self._threads: dict[tuple[str, int], threading.Thread] = {}
        self._lock = threading.Lock()

    def ensure(self, rows: list[dict], logs: Callable[..., Iterable[bytes]]) -> None:
        """Start a copier for each running row (job, workspace session) that has none alive.
        A copier ends when the container's stream ends; the next pass starts another if the row
        still runs (the container restarted, or it had not started yet)."""
        with self._lock:
            self._threads = {key: t for key, t in self._threads.items() if t.is_alive()}
            for row in rows:
                key = (row["id"], int(row["attempts"] or 1))
                if key in self._threads:
                    continue
                t = threading.Thread(target=self._copy, args=(key, logs), name=f"live-log-{key[0]}", daemon=True)
                self._threads[key] = t
                t.start()

    def running(self) -> int:
        """Copiers alive now."""
        with self._lock:
            return sum(1 for t in self._threads.values() if t.is_alive())

    def _copy(self, key: tuple[str, int], logs: Callable[..., Iterable[bytes]]) -> None:
        job_id, attempt = key
        try:
            copy_stream(logs(job_id, follow=True, timestamps=True), live_log_path(jobs.job_dir(self.state_dir, job_id), attempt))
        except Exception as exc:  # the engine went away or the disk is full: the next pass tries again
            log.warning("copying the live log of %s stopped: %s", job_id, exc)

    def follow_running(self, store, runtime) -> None:
        """Copy the output of every starting or running workload (each reconcile pass calls it)."""
        self.ensure(jobs.in_states(store, FOLLOWED), runtime.logs)
