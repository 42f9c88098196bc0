"""`mlpd datasets` (what you may read) and `mlpd admin dataset add|rm|list` (admins declare them).

A dataset is a host directory mounted at /datasets/NAME in the jobs, notebook jobs and workspaces of
the users allowed to read it, read-only unless declared writable (see mlpd.datasets). Talks to the
daemon over HTTP.
"""

from __future__ import annotations

from urllib.parse import quote

import click

from mlpd.cli.common import logged_in_client, json_option
from mlpd.output import emit_json, table, when


def size_text(size: int | None) -> str:
    """Bytes for people (GB with two decimals, MB below 1 GB); '-' when not measured yet."""
    if size is None:
        return "-"
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


@click.command("datasets")
@json_option
def datasets(as_json: bool) -> None:
    """The datasets you may read: name, path in your jobs and workspaces, size, writable.

    Sizes are measured in the background by the daemon ('-' until the first measurement)."""
    result = logged_in_client().get("/datasets")
    if as_json:
        emit_json(result)
        return
    if not result["datasets"]:
        click.echo("no datasets you may read (admins declare them: 'mlpd admin dataset add')")
        return
    table([(d["name"], d["path"], size_text(d["size_bytes"]), "yes" if d["writable"] else "no (read-only)") for d in result["datasets"]],
          ["name", "path", "size", "writable"])


@click.group("dataset")
def admin_dataset() -> None:
    """Datasets: host directories mounted at /datasets/NAME for the teams and users named (add, rm, list)."""


@admin_dataset.command("add")
@click.argument("name")
@click.argument("path")
@click.option("--team", "teams", multiple=True, help="A team whose members may read it (repeat for more).")
@click.option("--user", "users", multiple=True, help="A user who may read it (repeat for more).")
@click.option("--writable", is_flag=True, help="Mounted read-write (default: read-only).")
def dataset_add(name: str, path: str, teams: tuple[str, ...], users: tuple[str, ...], writable: bool) -> None:
    """Declare dataset NAME: the directory PATH on the daemon's host, at /datasets/NAME.

    No --team and no --user: everyone may read it. The path is checked now and at every launch."""
    done = logged_in_client().post("/admin/datasets", {"name": name, "path": path, "teams": list(teams), "users": list(users), "writable": writable})
    d = done["dataset"]
    who = ", ".join([*(f"team {t}" for t in d["teams"]), *d["users"]]) or "everyone"
    click.echo(f"dataset {d['name']}: {d['path']} at {d['mount_path']} ({'writable' if d['writable'] else 'read-only'}) for {who}, "
               "from their next job or workspace start")


@admin_dataset.command("rm")
@click.argument("name")
def dataset_rm(name: str) -> None:
    """Remove dataset NAME (running work keeps its mount until it ends; the files stay)."""
    logged_in_client().delete(f"/admin/datasets/{quote(name, safe='')}")
    click.echo(f"dataset {name} removed; running work keeps its mount until it ends, the files stay")


@admin_dataset.command("list")
@json_option
def dataset_list(as_json: bool) -> None:
    """Every dataset: host path, who may read it, writable, where declared, size, and any problem a launch would refuse."""
    result = logged_in_client().get("/admin/datasets")
    if as_json:
        emit_json(result)
        return
    table([(d["name"], d["path"], ", ".join([*(f"team:{t}" for t in d["teams"]), *d["users"]]) or "everyone",
            "yes" if d["writable"] else "no", d["source"], size_text(d["size_bytes"]), d["problem"] or "-") for d in result["datasets"]],
          ["name", "host path", "who", "writable", "declared in", "size", "problem"])


def disk_report(as_json: bool, all_users: bool) -> None:
    """`mlpd usage --disk`: your home and teams' folders (admins with --all: every one), size and limit."""
    result = logged_in_client().get("/usage/disk", params={"all": "1"} if all_users else {})
    if as_json:
        emit_json(result)
        return

    def limit(e):
        return "-" if e["limit_gb"] is None else f"{e['limit_gb']:g} GB" + (" (OVER: new work refused)" if e["over"] else "")

    if "homes" in result:
        table([("home", e["user"], size_text(e["size_bytes"]), limit(e), when(e["measured_at"])) for e in result["homes"]]
              + [("team", e["team"], size_text(e["size_bytes"]), limit(e), when(e["measured_at"])) for e in result["teams"]],
              ["what", "name", "size", "limit", "measured"])
        return
    h = result["home"]
    table([("home", h["path"], size_text(h["size_bytes"]), limit(h), when(h["measured_at"]))]
          + [(f"team {t['team']}", t["path"], size_text(t["size_bytes"]), limit(t), when(t["measured_at"])) for t in result["teams"]],
          ["what", "path", "size", "limit", "measured"])
