"""`mlpd usage`, `mlpd quota`, and `mlpd admin quota|team`."""

from __future__ import annotations

from typing import Any

import click

from mlpd.cli.common import logged_in_client, json_option
from mlpd.output import emit_json, table, when


@click.command()
@click.option("--user", help="Only this user (admins; members always see themselves).")
@click.option("--team", help="Only this team's members (admins).")
@click.option("--since", help="Start: a date (2026-11-01), date-time or unix time (default: start of the quota period).")
@click.option("--until", help="End (default: now).")
@click.option("--by", type=click.Choice(["user", "team", "day", "kind", "gpu_model"]), default="user", show_default=True, help="Group by.")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="CSV for spreadsheets: key,gpu_hours,busy_gpu_hours,cost,allocations.")
@click.option("--disk", is_flag=True, help="Disk use of your home and your teams' folders instead (admins with --all: every one), "
              "as last measured, with quotas.home_gb / quotas.team_gb.")
@click.option("--all", "all_users", is_flag=True, help="With --disk: every home and team folder (admins).")
def usage(user, team, since, until, by, as_json, as_csv, disk, all_users):
    """GPU-hours allocated (and actually busy, where NVML samples exist), with cost where priced; --disk: disk use."""
    if disk:
        from mlpd.cli.datasets import disk_report

        disk_report(as_json, all_users)
        return
    params: dict[str, Any] = {"by": by}
    for key, value in (("user", user), ("team", team), ("since", since), ("until", until)):
        if value:
            params[key] = value
    c = logged_in_client()
    if as_csv:
        click.echo(c.request("GET", "/usage", params={**params, "format": "csv"}).text, nl=False)
        return
    result = c.get("/usage", params=params)
    if as_json:
        emit_json(result)
        return
    click.echo(f"GPU-hours by {by}, {when(result['since'])} to {when(result['until'])}")
    table([(r["key"], f"{r['gpu_hours']:.2f}", "-" if r["busy_gpu_hours"] is None else f"{r['busy_gpu_hours']:.2f}",
            "-" if r["cost"] is None else f"{r['cost']:.2f} {result['currency']}", r["allocations"]) for r in result["rows"]],
          [by, "gpu-hours", "busy", "cost", "allocations"])


def gpu_hours_text(hours: float) -> str:
    """GPU-hours for people: two decimals, and a short job's few seconds not shown as 0.00."""
    return f"{hours:.2f}" if hours >= 0.01 or hours == 0 else f"{hours:.2g}"


@click.command()
@click.option("--user", help="Another user's quota (admins).")
@json_option
def quota(user, as_json):
    """Your quotas, what you used this period and when it resets."""
    result = logged_in_client().get("/quota", params={"user": user} if user else {})
    if as_json:
        emit_json(result)
        return
    if not result["quotas"]:
        click.echo(f"{result['user']}: no quota")
        u = result.get("usage")
        if u:
            click.echo(f"GPU-hours used this {u['period']}: {gpu_hours_text(u['gpu_hours_used'])} (since {when(u['period_start'])}); "
                       f"GPUs held now: {u['gpus_held']}; the period resets {when(u['resets_at'])}")
        return
    from mlpd.units import format_bytes

    def held(q, used, limit, fmt=lambda v: f"{v:g}"):
        if used not in q:
            return "-"
        return f"{fmt(q[used])} / {fmt(q[limit]) if q[limit] else '-'}"

    table([(q["subject"], f"{gpu_hours_text(q['gpu_hours_used'])} / {q['gpu_hours_limit']:g}" if q["gpu_hours_limit"] else f"{gpu_hours_text(q['gpu_hours_used'])} / -",
            f"{q['gpus_held']} / {q['max_gpus']}" if q["max_gpus"] else f"{q['gpus_held']} / -",
            held(q, "cpus_held", "max_cpus"), held(q, "memory_held", "max_memory", format_bytes), held(q, "jobs_running", "max_jobs"),
            q["period"], when(q["resets_at"])) for q in result["quotas"]],
          ["quota of", "gpu-hours used/limit", "gpus held/max", "cpus held/max", "memory held/max", "running/max", "period", "resets"])


@click.group("quota")
def admin_quota():
    """Quotas per user and per team: set one, list them (and the defaults)."""


@admin_quota.command("set")
@click.option("--user", help="The user.")
@click.option("--team", help="The team (its members together).")
@click.option("--gpu-hours", type=float, help="GPU-hours per period (0 = unlimited).")
@click.option("--max-gpus", type=int, help="Most GPUs held at once (0 = unlimited).")
@click.option("--max-cpus", type=float, help="Most CPUs (by CPU limits) of running work at once: jobs, workspaces, replicas (0 = unlimited).")
@click.option("--max-memory", help="Most memory (by memory limits) of running work at once, e.g. 64g (0 = unlimited).")
@click.option("--max-jobs", type=int, help="Most workloads running at once: jobs, workspaces, replicas (0 = unlimited).")
@click.option("--clear", is_flag=True, help="Remove the quota and caps (back to the configured defaults).")
def quota_set(user, team, gpu_hours, max_gpus, max_cpus, max_memory, max_jobs, clear):
    """Set a quota; work waiting on it starts at once when it is raised. The CPU, memory and job
    caps change only where given; --gpu-hours and --max-gpus are set together (one left out = unlimited)."""
    if bool(user) == bool(team):
        raise click.UsageError("give exactly one of --user or --team")
    caps = {"max_cpus": max_cpus, "max_memory": max_memory, "max_jobs": max_jobs}
    if not clear and gpu_hours is None and max_gpus is None and all(v is None for v in caps.values()):
        raise click.UsageError("give --gpu-hours, --max-gpus, --max-cpus, --max-memory and/or --max-jobs (or --clear)")
    body = {"user": user} if user else {"team": team}
    if clear:
        body["clear"] = True
    else:
        if gpu_hours is not None or max_gpus is not None:
            body.update({"gpu_hours": gpu_hours, "max_gpus": max_gpus})
        body.update({k: v for k, v in caps.items() if v is not None})
    logged_in_client().post("/quotas", body)
    what = "cleared" if clear else " ".join(f"{k}={v}" for k, v in body.items() if k not in ("user", "team"))
    click.echo(f"quota of {'user ' + user if user else 'team ' + team}: {what}")


@admin_quota.command("list")
@json_option
def quota_list(as_json):
    """Quotas set per user and team, and the defaults."""
    result = logged_in_client().get("/quotas")
    if as_json:
        emit_json(result)
        return
    from mlpd.units import format_bytes

    d = result["defaults"]
    memory = lambda v: "-" if v is None else ("unlimited" if v == 0 else format_bytes(v))  # noqa: E731
    click.echo(f"defaults: gpu_hours={d['gpu_hours'] or '-'} per {d['period']}, max_gpus={d['max_gpus'] or '-'}, "
               f"max_cpus={format(d['max_cpus'], 'g') if d.get('max_cpus') else '-'}, max_memory={memory(d.get('max_memory'))}, max_jobs={d.get('max_jobs') or '-'}, "
               f"over quota: {d['over_quota']}")
    table([(q["subject_kind"], q["subject"], q["gpu_hours"], q["max_gpus"], when(q["updated_at"])) for q in result["quotas"]],
          ["kind", "subject", "gpu-hours", "max gpus", "updated"])
    if result.get("caps"):
        click.echo("caps (empty = the default, 0 = unlimited):")
        table([(c["subject_kind"], c["subject"], c["max_cpus"], memory(c["max_memory"]) if c["max_memory"] is not None else None,
                c["max_jobs"], when(c["updated_at"])) for c in result["caps"]], ["kind", "subject", "max cpus", "max memory", "max jobs", "updated"])


@click.group("team")
def admin_team():
    """Teams: add, rm, list, and their member add|rm; usage rolls up by team, and teams can have quotas."""


@admin_team.command("add")
@click.argument("name")
def team_add(name):
    """Create a team."""
    logged_in_client().post("/teams", {"name": name})
    click.echo(f"created team {name}")


@admin_team.command("rm")
@click.argument("name")
def team_rm(name):
    """Remove a team (its members stay users)."""
    logged_in_client().delete(f"/teams/{name}")
    click.echo(f"removed team {name}")


@admin_team.command("list")
@json_option
def team_list(as_json):
    """Teams and members."""
    result = logged_in_client().get("/teams")
    if as_json:
        emit_json(result)
        return
    table([(t["name"], ", ".join(t["members"]), when(t["created_at"])) for t in result["teams"]], ["team", "members", "created"])


@admin_team.group("member")
def team_member():
    """Team membership: add or rm a member."""


@team_member.command("add")
@click.argument("team")
@click.argument("user")
def member_add(team, user):
    """Add USER to TEAM."""
    members = logged_in_client().post(f"/teams/{team}/members", {"user": user})["members"]
    click.echo(f"{team}: {', '.join(members)}")


@team_member.command("rm")
@click.argument("team")
@click.argument("user")
def member_rm(team, user):
    """Remove USER from TEAM."""
    members = logged_in_client().delete(f"/teams/{team}/members/{user}")["members"]
    click.echo(f"{team}: {', '.join(members) or '(no members)'}")


@click.command("fair-share")
@json_option
def fair_share(as_json):
    """Each user's standing in fair share, as the scheduler weighs it next (members: themselves).

    \b
    usage       decayed GPU-hours (half-life scheduler.fair_share_half_life) and the factor 2^(-U/S)
    slowdown    mean bounded slowdown of recent GPU jobs and queued ones, and its factor
                (1 = the user whose work waited most for its length); queued GPU jobs that
                wait for the user's own quota ("N for quota") do not count
    score       what the two factors add to each of the user's queued jobs' priority score
    """
    result = logged_in_client().get("/fair-share")
    if as_json:
        emit_json(result)
        return
    if not result["fair_share"]:
        click.echo("fair share is off (scheduler.fair_share = false): priority, age and expansion order the queue")
    if not result["users"]:
        click.echo("no recent GPU usage, GPU jobs or queued GPU work")
        return
    table([(r["user"], f"{r['usage_gpu_hours']:.1f}", f"{r['usage_factor']:.2f}", f"{r['slowdown']:.1f}",
            f"{r['slowdown_factor']:.2f}", _queued(r), f"{r['score']:.0f}") for r in result["users"]],
          ["user", "usage (gpu-h)", "usage factor", "slowdown", "slowdown factor", "queued", "score"])


def _queued(row: dict) -> str:
    held = row.get("queued_for_quota", 0)
    return f"{row['queued']} ({held} for quota)" if held else str(row["queued"])
