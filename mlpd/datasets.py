"""Datasets: host directories an admin declares, mounted at /datasets/NAME in the jobs, notebook jobs
and workspaces of the users allowed to read them, read-only unless declared writable.

Declared two ways, listed together: `[datasets.NAME]` tables in mlpd.toml (`path`, `teams`, `users`,
`writable`), changed by editing the file and restarting, and `mlpd admin dataset add|rm` at run time
(the `datasets` table of the state database; every change an event). No teams and no users means
everyone. A member never names a mount in a spec: which datasets a container gets is read from these
declarations and the owner's teams when it starts.

A dataset's path is the admin's, but it must never hand a container the host's keys: `check_path`
refuses what does not exist or is not a directory, `/`, the state directory (tokens, every member's
home) and anything under or above it, /etc, /proc, /sys, /dev, /boot, /var/lib/docker and the Docker
socket's directory, also when a symlink leads there. The path is resolved when it is added and again
at every launch (`mounts_for`): a path that became one of those (a link swapped after the add) fails
the launch with the reason (DatasetRefused, which the kinds turn into the launch's RuntimeFailure)
and is never mounted; the resolved path is what is mounted.

Sizes are measured in the background by the worker (`measure`, with the homes and team folders, see
mlpd.disk_use), never on the request path.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from mlpd.errors import MlpdError
from mlpd.store import Store, record_event

MOUNT_ROOT = "/datasets"  # /datasets/NAME in the container
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# Host directories no dataset may be, be under, or contain (a container would read the host's secrets or devices).
SYSTEM_DIRS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/var/lib/docker")
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


class DatasetError(MlpdError):
    """A dataset that cannot be declared, removed or mounted; the message says why."""


@dataclass(frozen=True)
class Dataset:
    """One declared dataset. `source` is "mlpd.toml" or "admin" (added at run time)."""

    name: str
    path: str  # on the host, as declared (resolved again at every launch)
    teams: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    writable: bool = False
    source: str = "admin"
    added_by: str | None = None
    added_at: float | None = None

    @property
    def mount_path(self) -> str:
        return f"{MOUNT_ROOT}/{self.name}"

    def readable_by(self, user: str, teams: list[str] | tuple[str, ...]) -> bool:
        """Whether `user` (a member of `teams`) may read it: everyone when it names no team and no user."""
        if not self.teams and not self.users:
            return True
        return user in self.users or any(t in self.teams for t in teams)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": self.path, "mount_path": self.mount_path, "teams": list(self.teams), "users": list(self.users),
                "writable": self.writable, "source": self.source, "added_by": self.added_by, "added_at": self.added_at}


def check_name(name: Any) -> str:
    """A dataset's name: it becomes /datasets/NAME, so lowercase letters, digits, '.', '_', '-' (64 at most)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise DatasetError(400, "invalid_field", f"name: invalid dataset name {str(name)[:70]!r}: use a lowercase letter or digit, then "
                                                 "lowercase letters, digits, '.', '_' or '-' (at most 64)")
    return name


def docker_socket_dir(docker_host: str = "") -> str | None:
    """The directory of the Docker socket the daemon uses ('' = DOCKER_HOST or the local socket); None for a TCP engine."""
    host = docker_host or os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_DOCKER_SOCKET}"
    if not host.startswith("unix://"):
        return None
    return os.path.dirname(host[len("unix://"):]) or "/"


def forbidden_dirs(state_dir: str, docker_host: str = "") -> list[tuple[str, str]]:
    """(directory, why) pairs a dataset may not be, be under, or contain; each also as it resolves."""
    out = [(state_dir, "the state directory (tokens, every member's home and outputs)")]
    out += [(d, d) for d in SYSTEM_DIRS]
    for sock_dir in {d for d in (os.path.dirname(DEFAULT_DOCKER_SOCKET), docker_socket_dir(docker_host)) if d is not None}:
        out.append((sock_dir, "the Docker socket's directory"))
    resolved = [(os.path.realpath(d), why) for d, why in out]
    return list(dict.fromkeys(out + resolved))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_path(path: Any, state_dir: str, docker_host: str = "") -> str:
    """The directory a dataset at `path` mounts, resolved (symlinks followed), or DatasetError saying why
    it is refused: not absolute, missing, not a directory, `/`, or the same as, under or above the state
    directory, a system directory or the Docker socket's directory (also through a symlink)."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise DatasetError(400, "invalid_field", "path: expected the absolute path of a directory on the daemon's host")
    if not os.path.isabs(path):
        raise DatasetError(400, "invalid_path", f"path: {path[:200]!r} is not absolute; give the full path of a directory on the daemon's host")
    real = os.path.realpath(path)
    via = f" (through a symlink it resolves to {real})" if real != os.path.normpath(path) else ""
    if not os.path.exists(real):
        raise DatasetError(400, "invalid_path", f"path: {path} does not exist{via}")
    if not os.path.isdir(real):
        raise DatasetError(400, "invalid_path", f"path: {path} is not a directory{via}")
    if real == "/":
        raise DatasetError(400, "forbidden_path", f"path: {path} is the host's root directory{via}: a dataset must be a directory of data")
    for root, why in forbidden_dirs(os.path.realpath(state_dir), docker_host):
        if _within(real, root):
            raise DatasetError(400, "forbidden_path", f"path: {path} is {'' if real == root else 'under '}{why} ({root}){via}: "
                                                      "never mounted into containers")
        if _within(root, real):
            raise DatasetError(400, "forbidden_path", f"path: {path} contains {why} ({root}){via}: never mounted into containers")
    return real


# ------------------------------------------------------------------ declarations
def from_config(config) -> list[Dataset]:
    """The datasets of mlpd.toml's [datasets.NAME] tables (shape checked by mlpd.config)."""
    return [Dataset(name, t["path"], tuple(t.get("teams", ())), tuple(t.get("users", ())), bool(t.get("writable", False)), "mlpd.toml")
            for name, t in sorted(config["datasets"].items())]


def _from_row(row: dict[str, Any]) -> Dataset:
    return Dataset(row["name"], row["path"], tuple(json.loads(row["teams"])), tuple(json.loads(row["users"])), bool(row["writable"]),
                   "admin", row["added_by"], row["added_at"])


def declared(store: Store, config) -> list[Dataset]:
    """Every dataset, by name: mlpd.toml's, then those added at run time (a name in both: mlpd.toml's)."""
    out = {d.name: d for d in from_config(config)}
    for row in store.query("SELECT * FROM datasets ORDER BY name"):
        out.setdefault(row["name"], _from_row(row))
    return sorted(out.values(), key=lambda d: d.name)


def teams_of(store: Store, user: str) -> list[str]:
    """The teams `user` belongs to now."""
    return [r["team"] for r in store.query("SELECT team FROM team_members WHERE user = ? ORDER BY team", [user])]


def readable(store: Store, config, user: str) -> list[Dataset]:
    """The datasets `user` may read, by their teams now."""
    teams = teams_of(store, user)
    return [d for d in declared(store, config) if d.readable_by(user, teams)]


def _check_subjects(store: Store, teams: list[str], users: list[str]) -> None:
    for team in teams:
        if not store.query_one("SELECT 1 FROM teams WHERE name = ?", [team]):
            raise DatasetError(400, "invalid_field", f"teams: there is no team {team[:40]!r} ('mlpd admin team list')")
    for user in users:
        if not store.query_one("SELECT 1 FROM users WHERE name = ? AND removed_at IS NULL", [user]):
            raise DatasetError(400, "invalid_field", f"users: there is no user {user[:40]!r} ('mlpd admin user list')")


def add(store: Store, config, name: Any, path: Any, teams: list[str], users: list[str], writable: bool, actor: str) -> Dataset:
    """Declare a dataset at run time (audited); refused with the reason for a bad name or path, a name
    taken (here or in mlpd.toml), or an unknown team or user. Nothing is stored on refusal."""
    name = check_name(name)
    if any(d.name == name for d in from_config(config)):
        raise DatasetError(409, "exists", f"dataset {name!r} is declared in mlpd.toml ({config.source}); change it there")
    real = check_path(path, config.state_dir, config["docker.host"])
    teams, users = sorted(set(teams)), sorted(set(users))
    _check_subjects(store, teams, users)
    now = time.time()
    with store.write() as db:
        if db.execute("SELECT 1 FROM datasets WHERE name = ?", [name]).fetchone():
            raise DatasetError(409, "exists", f"dataset {name!r} exists already; remove it first ('mlpd admin dataset rm {name}')")
        db["datasets"].insert({"name": name, "path": path, "teams": json.dumps(teams), "users": json.dumps(users), "writable": int(bool(writable)),
                               "added_by": actor, "added_at": now})
        record_event(db, actor, "dataset.added", "dataset", name, path=path, resolved=real, teams=teams, users=users, writable=bool(writable))
    return Dataset(name, path, tuple(teams), tuple(users), bool(writable), "admin", actor, now)


def remove(store: Store, config, name: str, actor: str) -> dict[str, Any]:
    """Remove a dataset added at run time (audited). Running work keeps its mount until it ends; the files stay."""
    if any(d.name == name for d in from_config(config)):
        raise DatasetError(409, "in_config", f"dataset {name!r} is declared in mlpd.toml ({config.source}); remove it there and restart")
    with store.write() as db:
        row = db.execute("SELECT path FROM datasets WHERE name = ?", [name]).fetchone()
        if row is None:
            raise DatasetError(404, "not_found", f"no dataset {name[:64]!r} ('mlpd admin dataset list')")
        db.execute("DELETE FROM datasets WHERE name = ?", [name])
        db.execute("DELETE FROM disk_sizes WHERE kind = 'dataset' AND name = ?", [name])
        record_event(db, actor, "dataset.removed", "dataset", name, path=row[0])
    return {"removed": name}


def problem(dataset: Dataset, config) -> str | None:
    """Why the dataset would be refused at launch now (its path checked again), or None."""
    try:
        check_path(dataset.path, config.state_dir, config["docker.host"])
    except DatasetError as exc:
        return exc.message
    return None


# ------------------------------------------------------------------ launches
class DatasetRefused(Exception):
    """A dataset the owner may read was refused at launch (its path went bad); the message says which and why."""


def mounts_for(store: Store, config, owner: str) -> tuple[tuple[str, str, bool], ...]:
    """(resolved host path, /datasets/NAME, read-only) for each dataset the owner may read now, each
    path checked again; DatasetRefused naming the dataset when one is refused (nothing is mounted:
    the kinds turn it into the launch's RuntimeFailure)."""
    out = []
    for d in readable(store, config, owner):
        try:
            real = check_path(d.path, config.state_dir, config["docker.host"])
        except DatasetError as exc:
            raise DatasetRefused(f"dataset {d.name!r} was refused at launch and not mounted: {exc.message.removeprefix('path: ')}; "
                                 "an admin must fix or remove it ('mlpd admin dataset list')") from None
        out.append((real, d.mount_path, not d.writable))
    return tuple(out)


# ------------------------------------------------------------------ sizes
def sizes(store: Store, kind: str) -> dict[str, dict[str, Any]]:
    """name -> {"bytes", "measured_at"} of the last background measurement of that kind ('dataset', 'home', 'team')."""
    return {r["name"]: {"bytes": r["bytes"], "measured_at": r["measured_at"]}
            for r in store.query("SELECT name, bytes, measured_at FROM disk_sizes WHERE kind = ?", [kind])}


def listing(store: Store, config, user: str) -> list[dict[str, Any]]:
    """What `mlpd datasets` shows a user: the datasets they may read (name, path in the container, size, writable)."""
    measured = sizes(store, "dataset")
    return [{"name": d.name, "path": d.mount_path, "writable": d.writable,
             "size_bytes": measured.get(d.name, {}).get("bytes"), "size_measured_at": measured.get(d.name, {}).get("measured_at")}
            for d in readable(store, config, user)]


def admin_listing(store: Store, config) -> list[dict[str, Any]]:
    """Every dataset for admins: its declaration, size, and the reason it would be refused at launch now (problem)."""
    measured = sizes(store, "dataset")
    return [{**d.to_dict(), "size_bytes": measured.get(d.name, {}).get("bytes"),
             "size_measured_at": measured.get(d.name, {}).get("measured_at"), "problem": problem(d, config)}
            for d in declared(store, config)]
