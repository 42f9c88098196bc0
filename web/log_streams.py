"""Caps on live log streams: each holds a web thread for as long as its client follows.

Two caps keep the other requests served. Per user (server.log_streams_per_user), across every web
process: a stream holds an flock on one of that user's slot files under STATE_DIR/run/log-streams,
which the kernel releases when the process dies, so no count can leak. Per process: at most half
its threads (server.threads) follow logs at once, so each process keeps threads for everything else.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from typing import Callable


class StreamsBusy(Exception):
    """No slot is free: the message says which cap and how to go on."""


class StreamSlots:
    """The slots of one web process."""

    def __init__(self, state_dir: str, per_process: int):
        self.directory = os.path.join(state_dir, "run", "log-streams")
        self.per_process = max(1, per_process)
        self._process = threading.BoundedSemaphore(self.per_process)

    def acquire(self, user: str, per_user: int) -> Callable[[], None]:
        """Take a slot for user, or raise StreamsBusy; return the (idempotent) release."""
        if not self._process.acquire(blocking=False):
            raise StreamsBusy(f"this daemon process already follows {self.per_process} log streams (half of server.threads); "
                              "try again when one ends, or read the log without following")
        try:
            fh = self._user_slot(user, per_user)
        except BaseException:
            self._process.release()
            raise
        done = threading.Lock()

        def release() -> None:
            if done.acquire(blocking=False):
                fh.close()  # drops the flock
                self._process.release()

        return release

    def _user_slot(self, user: str, per_user: int):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        tag = hashlib.sha256(user.encode()).hexdigest()[:16]
        for i in range(per_user):
            fd = os.open(os.path.join(self.directory, f"{tag}.{i}"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fh = os.fdopen(fd, "r+b", buffering=0)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            return fh
        raise StreamsBusy(f"you already follow {per_user} log streams, the most one user may hold open "
                          "(server.log_streams_per_user); stop one (a 'mlpd logs -f' or a browser tab) or read without following")
