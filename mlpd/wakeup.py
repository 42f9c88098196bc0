"""Waking the worker's reconcile loop from another process: one datagram on a Unix socket.

The API wakes the loop after a submit or a cancel so that the scheduler acts within
milliseconds instead of at the next tick. A datagram to a socket in the state directory
(``run/wake.sock``, inside the 0700 state directory) costs one system call on each side,
needs no broker and no polling; if the worker is not listening the datagram is dropped
and the periodic pass does the work. The socket carries no data mlpd trusts: any
datagram only means "run a pass soon".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Callable

log = logging.getLogger("mlpd.wakeup")
_MAX_PATH = 107  # sun_path, less its terminating NUL


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, "run", "wake.sock")


def wake(state_dir: str, reason: str = "") -> bool:
    """Ask the worker for a reconcile pass now; False when no worker listens (the next tick will do)."""
    path = socket_path(state_dir)
    if len(path.encode()) > _MAX_PATH:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(reason.encode()[:256], path)
            return True
        except OSError:
            return False  # not listening, or its queue is full: a pass is coming anyway


class WakeListener:
    """The worker's end: calls on_wake(reason) for every datagram, from a thread of its own."""

    def __init__(self, state_dir: str, on_wake: Callable[[str], None]):
        self.path, self.on_wake = socket_path(state_dir), on_wake
        self.sock: socket.socket | None = None

    def start(self) -> bool:
        """Bind and listen; False (logged) when the path is too long for a Unix socket."""
        if len(self.path.encode()) > _MAX_PATH:
            log.warning("state directory path too long for %s; the API's wake-ups fall back to the periodic pass", self.path)
            return False
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        try:
            os.unlink(self.path)  # left by a worker that was killed; this worker holds the controller lock
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o600)
        threading.Thread(target=self._run, name="wake-listener", daemon=True).start()
        return True

    def _run(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(512)
            except OSError:
                return
            self.on_wake(data.decode(errors="replace"))

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
