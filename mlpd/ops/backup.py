"""Backup and restore of a daemon's state: consistent while it runs, restored onto a stopped one.

What a backup holds: the state database and MLflow's database, each copied with SQLite's
online backup API (a consistent snapshot even while jobs log metrics; a file copy of a
database in WAL mode is not), the MLflow artifact store and the code archives (files that
are written once and never changed, copied as they are; an artifact being uploaded at
that moment may be missed, never half-copied into a database), job logs and outputs, and
the instance id (so the restored daemon still recognises its containers). huey's queue
and run files are not kept: the database is the source of intent.

A restore refuses to run while a daemon holds the state directory, and refuses to write
over a state directory that holds a database unless told to (`--force`), in which case the
old one is moved aside first, not deleted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sqlite3
import time
from typing import Iterator

MANIFEST = "mlpd-backup.json"
DATABASES = ("mlpd.db", os.path.join("mlflow", "mlflow.db"))
TREES = (os.path.join("mlflow", "artifacts"), "code", "jobs")


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


def _copy_database(src: str, dest: str) -> None:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source, sqlite3.connect(dest) as target:
        source.execute("PRAGMA busy_timeout = 30000")
        source.backup(target, pages=4096)  # in steps, so writers are never held up for long
    with sqlite3.connect(dest) as target:
        target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file in the backup


def _copy_tree(src: str, dest: str) -> int:
    """Copy regular files and folders (never following links); return the number of files."""
    count = 0
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path) or not os.path.isfile(path) or name.endswith(".partial"):
                continue
            try:
                shutil.copy2(path, os.path.join(dest, rel, name), follow_symlinks=False)
                count += 1
            except FileNotFoundError:
                continue  # removed while we walked (an ended job's retention): not part of the snapshot
    return count


def backup(state_dir: str, dest: str) -> Iterator[str]:
    """Back up state_dir into dest (a new or empty directory); yields progress lines."""
    state_dir = os.path.abspath(state_dir)
    if not os.path.exists(os.path.join(state_dir, "mlpd.db")):
        raise BackupError(f"{state_dir} holds no mlpd state (no mlpd.db); pass the daemon's state directory (--state-dir or --config)")
    if os.path.exists(dest) and os.listdir(dest):
        raise BackupError(f"{dest} is not empty; back up into a new directory")
    os.makedirs(dest, mode=0o700, exist_ok=True)
    os.chmod(dest, 0o700)
    started = time.time()
    for name in DATABASES:
        src = os.path.join(state_dir, name)
        if os.path.exists(src):
            _copy_database(src, os.path.join(dest, name))
            yield f"{name}: copied (online backup)"
    for name in TREES:
        src = os.path.join(state_dir, name)
        if os.path.isdir(src):
            yield f"{name}/: {_copy_tree(src, os.path.join(dest, name))} files"
    for name in os.listdir(os.path.join(state_dir, "mlflow")) if os.path.isdir(os.path.join(state_dir, "mlflow")) else []:
        if name.startswith(".schema-mlflow-"):
            shutil.copy2(os.path.join(state_dir, "mlflow", name), os.path.join(dest, "mlflow", name))
    if os.path.exists(os.path.join(state_dir, "instance_id")):
        shutil.copy2(os.path.join(state_dir, "instance_id"), os.path.join(dest, "instance_id"))
    import mlpd

    with open(os.path.join(dest, MANIFEST), "w") as fh:
        json.dump({"mlpd": mlpd.__version__, "state_dir": state_dir, "taken_at": started, "finished_at": time.time()}, fh, indent=2)
    yield f"backup of {state_dir} in {dest} ({time.time() - started:.1f}s)"


def restore(source: str, state_dir: str, force: bool = False) -> Iterator[str]:
    """Restore a backup into state_dir, which no daemon may hold; yields progress lines."""
    if not os.path.exists(os.path.join(source, MANIFEST)):
        raise BackupError(f"{source} is not an mlpd backup (no {MANIFEST})")
    state_dir = os.path.abspath(state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    lock = open(os.path.join(state_dir, "daemon.lock"), "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(f"a daemon runs on {state_dir}; stop it first ('systemctl stop mlpd')") from None
        if os.path.exists(os.path.join(state_dir, "mlpd.db")):
            if not force:
                raise BackupError(f"{state_dir} already holds state; restore with --force to move it aside first")
            aside = f"{state_dir}.before-restore-{int(time.time())}"
            os.makedirs(aside, mode=0o700)
            for name in os.listdir(state_dir):
                if name != "daemon.lock":
                    os.rename(os.path.join(state_dir, name), os.path.join(aside, name))
            yield f"the old state moved aside to {aside}"
        for name in os.listdir(source):
            if name == MANIFEST:
                continue
            src, dest = os.path.join(source, name), os.path.join(state_dir, name)
            if os.path.isdir(src):
                shutil.copytree(src, dest, symlinks=True)
            else:
                shutil.copy2(src, dest)
        os.chmod(state_dir, 0o700)
        with open(os.path.join(source, MANIFEST)) as fh:
            taken = json.load(fh)["taken_at"]
        yield f"restored the backup of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(taken))} into {state_dir}; start the daemon"
    finally:
        lock.close()
