"""Disk use of homes, team folders and datasets, measured in the background, and the disk quotas.

The worker measures every home (STATE_DIR/homes/USER), team folder (STATE_DIR/teams/TEAM) and
dataset every quotas.disk_measure_interval seconds (`measure`, a huey task, never on the request
path) with GNU du (mlpd.disk.tree_size: no link followed, one file system), and keeps the last
measurement of each in the disk_sizes table. `mlpd usage --disk`, the usage page and `mlpd
datasets` show them.

quotas.home_gb and quotas.team_gb (0 = none): a user whose home, or one of whose teams' folders,
was last measured over its limit gets new jobs and workspaces refused (`refusal`) with the size, the
limit and how to see what is large. Running work goes on and nothing is deleted: the quota stops
growth at the next start, it never takes data away.
"""

from __future__ import annotations

import os
import time
from typing import Any

from mlpd.errors import MlpdError
from mlpd.store import Store

DATASET_TIMEOUT = 900.0  # seconds du may take over one dataset (hundreds of GB of small files)
FOLDER_TIMEOUT = 300.0


class DiskQuotaExceeded(MlpdError):
    """New work refused: a home or team folder over quotas.home_gb / quotas.team_gb."""

    def __init__(self, message: str):
        super().__init__(403, "disk_quota_exceeded", message)


def _entries(root: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(root) if not n.startswith("."))
    except FileNotFoundError:
        return []


def measure(store: Store, config) -> dict[str, int]:
    """Measure every home, team folder and dataset now and record each (a size that could not be
    measured keeps the last one). Returns how many of each kind were measured."""
    from mlpd import datasets
    from mlpd.disk import tree_size

    found: list[tuple[str, str, int | None]] = []
    for kind, sub in (("home", "homes"), ("team", "teams")):
        root = os.path.join(config.state_dir, sub)
        for name in _entries(root):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path):
                found.append((kind, name, tree_size(path, FOLDER_TIMEOUT)))
    for d in datasets.declared(store, config):
        try:
            real = datasets.check_path(d.path, config.state_dir, config["docker.host"])
        except datasets.DatasetError:
            continue  # refused at launch too; its admin listing says why
        found.append(("dataset", d.name, tree_size(real, DATASET_TIMEOUT)))
    now = time.time()
    counts: dict[str, int] = {}
    with store.write() as db:
        for kind, name, size in found:
            if size is None:
                continue
            db["disk_sizes"].upsert({"kind": kind, "name": name, "bytes": size, "measured_at": now}, pk=("kind", "name"))
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def gb(size: int) -> str:
    """A size for people: GB with two decimals, MB below 0.1 GB."""
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def usage_of(store: Store, config, user: str) -> dict[str, Any]:
    """A user's home and their teams' folders: size, when measured, and the limit (None = no limit)."""
    from mlpd.datasets import sizes, teams_of

    homes, teams = sizes(store, "home"), sizes(store, "team")
    home_limit, team_limit = config["quotas.home_gb"] or None, config["quotas.team_gb"] or None
    return {
        "user": user,
        "home": {"path": "/home/mlpd", **_entry(homes.get(user), home_limit)},
        "teams": [{"team": t, "path": f"/shared/{t}", **_entry(teams.get(t), team_limit)} for t in teams_of(store, user)],
    }


def all_usage(store: Store, config) -> dict[str, Any]:
    """Every home and team folder measured (admins)."""
    from mlpd.datasets import sizes

    home_limit, team_limit = config["quotas.home_gb"] or None, config["quotas.team_gb"] or None
    return {"homes": [{"user": n, **_entry(v, home_limit)} for n, v in sorted(sizes(store, "home").items())],
            "teams": [{"team": n, **_entry(v, team_limit)} for n, v in sorted(sizes(store, "team").items())]}


def _entry(measured: dict[str, Any] | None, limit_gb: float | None) -> dict[str, Any]:
    size = measured["bytes"] if measured else None
    return {"size_bytes": size, "measured_at": measured["measured_at"] if measured else None, "limit_gb": limit_gb,
            "over": bool(limit_gb and size is not None and size > limit_gb * 1e9)}


def refusal(store: Store, config, user: str) -> None:
    """DiskQuotaExceeded when the user's home or one of their teams' folders was last measured over
    quotas.home_gb / quotas.team_gb; nothing otherwise. Running work is never touched."""
    use = usage_of(store, config, user)
    see = ("; see what is large with 'mlpd usage --disk', and in a running workspace with 'du -sh {path}/* | sort -h'. "
           "Running work goes on and nothing is deleted")
    if use["home"]["over"]:
        h = use["home"]
        raise DiskQuotaExceeded(f"your home (/home/mlpd) holds {gb(h['size_bytes'])}, over quotas.home_gb = {h['limit_gb']:g} GB: new jobs and "
                                f"workspaces are refused until it is under" + see.format(path="/home/mlpd"))
    for t in use["teams"]:
        if t["over"]:
            raise DiskQuotaExceeded(f"the folder of team {t['team']} ({t['path']}) holds {gb(t['size_bytes'])}, over quotas.team_gb = "
                                    f"{t['limit_gb']:g} GB: new jobs and workspaces of its members are refused until it is under"
                                    + see.format(path=t["path"]))
