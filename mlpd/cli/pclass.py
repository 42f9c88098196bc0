"""`mlpd admin priority-class grant|revoke|list`: who may use which priority class, at run time.

mlpd.toml's scheduler.priority_class_users names who may use a class; an admin adds to it here,
without editing the file or restarting the daemon (the grants live in the state database, and a
grant or a revocation counts for the next submit). Talks to the daemon over HTTP as an admin.
"""

from __future__ import annotations

import click

from mlpd.cli.common import logged_in_client
from mlpd.output import emit_json, table, when


def _quote(part: str) -> str:
    from urllib.parse import quote

    return quote(part, safe=":")


@click.group("priority-class")
def priority_class() -> None:
    """Priority classes: who may use which (grant, revoke, list); admins may use every class."""


@priority_class.command("grant")
@click.argument("user")
@click.argument("class_name", metavar="CLASS")
def grant(user: str, class_name: str) -> None:
    """Let USER (or team:NAME) submit work of class CLASS, from their next submit on."""
    done = logged_in_client().post(f"/admin/priority-classes/{_quote(class_name)}/grants", {"user": user})
    if not done["granted"]:
        click.echo(f"{user} may already use priority class {class_name!r} (granted before); nothing changed")
        return
    notes = [n for n, flag in (("mlpd.toml names them too", done["in_config"]), ("an admin: admins may use every class anyway", done["admin"])) if flag]
    click.echo(f"granted: {user} may use priority class {class_name!r} from their next submit on" + (f" ({'; '.join(notes)})" if notes else ""))


@priority_class.command("revoke")
@click.argument("user")
@click.argument("class_name", metavar="CLASS")
def revoke(user: str, class_name: str) -> None:
    """Take back USER's grant of CLASS (their queued work keeps its class; the next submit is checked without it)."""
    done = logged_in_client().delete(f"/admin/priority-classes/{_quote(class_name)}/grants/{_quote(user)}")
    note = " (an admin: they may still use every class)" if done["admin"] else ""
    click.echo(f"revoked: {user} may no longer use priority class {class_name!r}{note}")


def _who(cls: dict) -> str:
    if cls["open"]:
        return "everyone"
    granted = [f"{g['subject']} (granted by {g['granted_by']} {when(g['granted_at'])})" for g in cls["grants"]]
    return ", ".join(["admins", *cls["config_users"], *granted])


@priority_class.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output (stable).")
def list_classes(as_json: bool) -> None:
    """The classes, highest first: rank, default, preemptible, and who may use each (mlpd.toml and grants)."""
    result = logged_in_client().get("/admin/priority-classes")
    if as_json:
        emit_json(result)
        return
    table([(c["name"] + (" (default)" if c["default"] else ""), c["rank"], "yes" if c["preemptible"] else "no", _who(c))
           for c in result["classes"]], ["class", "rank", "preemptible", "who may use it"])
    for g in result["other_grants"]:
        click.echo(f"note: {g['subject']} holds a grant of {g['class']!r}, no longer a class in mlpd.toml "
                   f"(it counts for nothing: 'mlpd admin priority-class revoke {g['subject']} {g['class']}')")
