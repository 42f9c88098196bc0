"""A job's /outputs as a .tar.gz stream, read without ever following a path the job can change.

The outputs directory is written by the job's code while (and after) it runs, so
every name in it is hostile: a file can be swapped for a symlink to a host path
between any check and any open. The archive is therefore built from file
descriptors: the tree is walked with ``openat`` relative to the directory's own
descriptor, each entry opened with O_NOFOLLOW (a link is skipped, never read
through), its type and size taken from ``fstat`` of the open descriptor, and its
bytes read from that descriptor. A file that vanishes or changes size during the
walk is skipped or cut to the size it had when opened; the stream is produced as
it is read (no temporary file to leave behind).
"""

from __future__ import annotations

import logging
import os
import queue
import stat
import tarfile
import threading
from typing import Iterator

log = logging.getLogger("mlpd.kinds.outputs")
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_MAX_DEPTH = 64


class _Aborted(Exception):
    """The reader went away: stop writing."""


class _QueueWriter:
    """A file-like object that hands each written block to the consuming generator."""

    def __init__(self, blocks: queue.Queue, stop: threading.Event):
        self.blocks, self.stop = blocks, stop

    def write(self, data: bytes) -> int:
        _put(self.blocks, self.stop, bytes(data))
        return len(data)


def _put(blocks: queue.Queue, stop: threading.Event, item) -> None:
    while True:
        if stop.is_set():
            raise _Aborted()
        try:
            blocks.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


class _Exactly:
    """Read exactly `size` bytes from a descriptor: cut what grew, pad with zeros what shrank."""

    def __init__(self, fd: int, size: int):
        self.fd, self.left = fd, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        if n <= 0:
            return b""
        data = os.read(self.fd, n)
        if not data:
            data = b"\0" * n  # the job truncated the file while it was read
        self.left -= len(data)
        return data


def _add_tree(tar: tarfile.TarFile, dir_fd: int, prefix: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        return
    try:
        names = sorted(entry.name for entry in os.scandir(dir_fd))
    except OSError:
        return  # the directory went away
    for name in names:
        try:
            fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # vanished, a symlink (ELOOP), or unreadable: never followed
        try:
            st = os.fstat(fd)
            rel = f"{prefix}{name}"
            if stat.S_ISDIR(st.st_mode):
                info = tarfile.TarInfo(rel)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(st.st_mtime)
                tar.addfile(info)
                _add_tree(tar, fd, rel + "/", depth + 1)
            elif stat.S_ISREG(st.st_mode):
                info = tarfile.TarInfo(rel)
                info.size, info.mtime = st.st_size, int(st.st_mtime)
                info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                tar.addfile(info, _Exactly(fd, st.st_size))
            # sockets, fifos and devices have no content to ship
        finally:
            os.close(fd)


def iter_tar_gz(directory: str) -> Iterator[bytes]:
    """Yield a .tar.gz of directory's regular files and folders, built as described above.

    Raises FileNotFoundError at once when directory is absent (or is itself a link).
    """
    root = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return _stream(directory, root)


def _stream(directory: str, root: int) -> Iterator[bytes]:
    blocks: queue.Queue = queue.Queue(maxsize=32)
    stop = threading.Event()

    def produce() -> None:
        try:
            with tarfile.open(fileobj=_QueueWriter(blocks, stop), mode="w|gz", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # a stream (w|) only writes
                _add_tree(tar, root, "", 0)
        except _Aborted:
            pass
        except Exception:
            log.exception("packing the outputs in %s failed", directory)
        finally:
            os.close(root)
            try:
                _put(blocks, stop, None)
            except _Aborted:
                pass

    threading.Thread(target=produce, name="outputs-tar", daemon=True).start()
    try:
        while (block := blocks.get()) is not None:
            yield block
    finally:
        stop.set()
