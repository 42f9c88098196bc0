"""Whether a loopback port is free here: what the workspaces, the serving pass and `mlpd ws tunnel` ask."""

from __future__ import annotations

import socket


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on (or holds) host:port now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False
