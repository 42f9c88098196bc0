"""`mlpd admin report` (the platform report, docs/report.md) and `mlpd admin events` (the audit trail)."""

from __future__ import annotations

from typing import Any

import click

from mlpd.output import emit_json, table, when


def _hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 3600:.1f}h"


@click.command("report")
@click.option("--since", help="Start: a date (2026-11-01), a date-time or a unix time (default: 12 weeks back, or 6 months with --by month).")
@click.option("--until", help="End (default: now).")
@click.option("--by", type=click.Choice(["week", "month"]), default="week", show_default=True, help="Bucket of the per-period figures.")
@click.option("--json", "as_json", is_flag=True, help="The whole report as JSON (stable; docs/report.md).")
@click.option("--csv", "as_csv", is_flag=True, help="The whole report as CSV: section,key,field,value.")
def report_cmd(since: str | None, until: str | None, by: str, as_json: bool, as_csv: bool) -> None:
    """The platform report (admins): active users, new users and their time to a first success, outcomes
    and causes of failure, queue waits, GPU-hours per team, models, deployments, time to production."""
    from mlpd.cli.common import logged_in_client

    if as_json and as_csv:
        raise click.UsageError("--json and --csv: choose one")
    params: dict[str, Any] = {"by": by, **({"since": since} if since else {}), **({"until": until} if until else {})}
    c = logged_in_client()
    if as_csv:
        click.echo(c.request("GET", "/admin/report", params={**params, "format": "csv"}).text, nl=False)
        return
    rep = c.get("/admin/report", params=params)
    if as_json:
        emit_json(rep)
        return
    click.echo(f"platform report {when(rep['since'])} .. {when(rep['until'])}: {rep['active_users']} active users, "
               f"{len(rep['new_users'])} new, {rep['models_registered']} models registered, {rep['deployments_started']} deployments started")
    click.echo()
    table([(p["label"], p["active_users"], p["started"], p["queue_wait_p50"], p["queue_wait_p95"]) for p in rep["periods"]],
          [by, "active users", "started", "wait p50 s", "wait p95 s"])
    if rep["new_users"]:
        click.echo()
        table([(u["user"], when(u["created_at"]), _hours(u["seconds_to_first_success"])) for u in rep["new_users"]],
              ["new user", "account", "to first success"])
    click.echo()
    table([(k["kind"], k["ended"], k["succeeded"], k["failed"], k["cancelled"],
            "-" if k["success_rate"] is None else f"{k['success_rate']:.0%}") for k in rep["success_by_kind"]],
          ["kind", "ended", "ok", "not ok", "stopped by owner", "success rate"])
    if rep["failure_causes"]:
        click.echo()
        table([(c_["cause"], c_["count"]) for c_ in rep["failure_causes"]], ["cause of failure", "count"])
    click.echo()
    table([(k["kind"], f"{k['hours']:.1f}", k["culled_idle"], "-" if k["culled_share"] is None else f"{k['culled_share']:.0%}")
           for k in rep["runtime_by_kind"]], ["kind", "hours", "culled idle", "share"])
    click.echo()
    table([(t["team"], f"{t['gpu_hours']:.2f}", "-" if t["busy_gpu_hours"] is None else f"{t['busy_gpu_hours']:.2f}")
           for t in rep["gpu_hours_by_team"]], ["team", "GPU-h allocated", "GPU-h busy"])
    if rep["time_to_production"]:
        click.echo()
        table([(t["model"], when(t["first_run_at"]), when(t["first_served_at"]), f"{t['seconds'] / 86400:.1f}d")
               for t in rep["time_to_production"]], ["model", "first run", "first served", "time to production"])


@click.command("events")
@click.option("--user", help="Events done by this user or about them (their account, their jobs, tokens, memberships).")
@click.option("--kind", help="A kind of event: a family (job, user, team, deployment, quota, ...) or one action (job.queued).")
@click.option("--since", help="Only events at or after this date (2026-11-01), date-time or unix time.")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="At most this many, newest first.")
@click.option("--before", type=int, help="Only events older than this id (the next page: what the last page said).")
@click.option("--json", "as_json", is_flag=True, help="JSON: {events: [...], next_before} (stable).")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: id,at,actor,action,object_kind,object_id,label,detail.")
def events_cmd(user: str | None, kind: str | None, since: str | None, limit: int, before: int | None, as_json: bool, as_csv: bool) -> None:
    """The audit trail (admins), newest first: who changed what, when."""
    from mlpd.cli.common import logged_in_client

    if as_json and as_csv:
        raise click.UsageError("--json and --csv: choose one")
    params: dict[str, Any] = {"limit": limit}
    for key, value in (("user", user), ("kind", kind), ("since", since), ("before", before)):
        if value is not None and value != "":
            params[key] = value
    c = logged_in_client()
    if as_csv:
        click.echo(c.request("GET", "/events", params={**params, "format": "csv"}).text, nl=False)
        return
    data = c.get("/events", params=params)
    if as_json:
        emit_json(data)
        return
    import json

    table([(e["id"], when(e["at"]), e["actor"], e["action"], e.get("label", ""),
            " ".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in e["detail"].items() if v not in (None, "", []))[:100])
           for e in data["events"]], ["id", "when", "who", "what", "object", "detail"])
    if data["next_before"]:
        click.echo(f"(more: --before {data['next_before']})")
