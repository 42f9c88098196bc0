"""GPU-hours usage, quotas, teams and the Prometheus metrics."""

from __future__ import annotations

import csv
import io
import math
import time

from flask import Response, g, jsonify, request

from mlpd.scheduling import quotas
from mlpd.scheduling.accounting import GROUPINGS, busy_seconds, summarize
from mlpd.web import config, store
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body

area = Area("usage")  # registered by the app factory (mlpd.web.create_app)
route = area.route


def _time_arg(name: str, default: float) -> float:
    value = request.args.get(name)
    if not value:
        return default
    import datetime as dt

    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ApiError(400, "invalid_field", f"{name}: expected a finite unix time, a date or a date-time, got {value[:40]!r}")
        return number
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, "invalid_field", f"{name}: expected a date (2026-11-01), a date-time or a unix time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def busy_map(store_, allocs, until: float) -> dict:
    """Busy GPU-seconds per allocation from the utilization samples (absent where nothing was sampled)."""
    if not allocs or not store_.query_one("SELECT 1 FROM gpu_samples LIMIT 1"):
        return {}
    out = {}
    for a in allocs:
        end = a.end if a.end is not None else until
        rows = store_.query("SELECT at, utilization, resolution FROM gpu_samples WHERE gpu_uuid = ? AND at > ? AND at <= ? ORDER BY at",
                            [a.gpu_uuid, a.start, end + 3600])
        if rows:
            interval = rows[0]["resolution"]
            out[(a.object_id, a.gpu_uuid, a.start)] = busy_seconds([(r["at"], r["utilization"]) for r in rows], a.start, end, interval)
    return out


USAGE_COLUMNS = ("key", "gpu_hours", "busy_gpu_hours", "cost", "allocations")


def usage_rows(by: str, since: float, until: float, user: str | None = None, team: str | None = None) -> list[dict]:
    """GPU-hours from the ledger grouped `by`, as g.user may see them (members: only their own);
    the API and the web UI's usage page both read it here."""
    st, cfg = store(), config()
    if by not in GROUPINGS:
        raise ApiError(400, "invalid_field", f"by: expected one of {', '.join(GROUPINGS)}")
    if until <= since:
        raise ApiError(400, "invalid_field", "until: must be after since")
    if not g.user.is_admin:
        if (user and user != g.user.name) or team:
            raise ApiError(403, "forbidden", "members see their own usage only")
        user = g.user.name
    owners = None
    if user:
        owners = [user]
    if team:
        owners = quotas.team_members(st, team)
        if not owners and not st.query_one("SELECT 1 FROM teams WHERE name = ?", [team]):
            raise ApiError(404, "not_found", f"no such team {team!r}")
    allocs = quotas.allocations(st, since, owners)
    allocs = [a for a in allocs if a.start < until]
    teams = quotas.teams_of(st)
    if team and by == "team":
        teams = {u: [team] for u in owners or []}
    rows = summarize(allocs, since, until, by, teams, cfg["pricing.gpu_hour"], busy_map(st, allocs, until))
    return [{"key": r.key, "gpu_hours": r.gpu_hours, "busy_gpu_hours": r.busy_gpu_hours, "cost": r.cost, "allocations": r.allocations} for r in rows]


def usage_csv(by: str, data: list[dict]) -> Response:
    """Usage rows as a CSV download (one header row: the grouping, then USAGE_COLUMNS)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([by, *USAGE_COLUMNS[1:]])
    for r in data:
        writer.writerow([r["key"], f"{r['gpu_hours']:.6f}", "" if r["busy_gpu_hours"] is None else f"{r['busy_gpu_hours']:.6f}",
                         "" if r["cost"] is None else f"{r['cost']:.4f}", r["allocations"]])
    return Response(buf.getvalue(), mimetype="text/csv")


@route("/usage", summary="GPU-hours from the ledger: ?by=user|team|day|kind|gpu_model&since=&until=&user=&team=&format=csv (members: themselves)")
def usage():
    now = time.time()
    cfg = config()
    by = request.args.get("by", "user")
    if by not in GROUPINGS:
        raise ApiError(400, "invalid_field", f"by: expected one of {', '.join(GROUPINGS)}")
    since = _time_arg("since", quotas.period_bounds(now, cfg["quotas.period"])[0])
    until = _time_arg("until", now)
    data = usage_rows(by, since, until, request.args.get("user"), request.args.get("team"))
    if request.args.get("format") == "csv":
        return usage_csv(by, data)
    return jsonify({"by": by, "since": since, "until": until, "currency": cfg["pricing.currency"], "rows": data})


@route("/quota", summary="Your quotas, usage this period and when it resets (admins: ?user=)")
def my_quota():
    user = request.args.get("user") if g.user.is_admin and request.args.get("user") else g.user.name
    cfg, now = config(), time.time()
    start, reset = quotas.period_bounds(now, cfg["quotas.period"])
    # the user's own usage this period, quota or not (a quota's row counts its team's members too)
    usage = {"period": cfg["quotas.period"], "period_start": start, "resets_at": reset,
             "gpu_hours_used": round(quotas.gpu_hours_used(store(), [user], start, now), 4), "gpus_held": quotas.held_gpus(store(), [user])}
    return jsonify({"user": user, "over_quota": cfg["quotas.over_quota"], "quotas": quotas.status(store(), cfg, user, now), "usage": usage})


@route("/fair-share", summary="Each user's standing in fair share: decayed usage and its factor, mean slowdown and its factor, queued GPU jobs, the score they add (members: themselves)")
def fair_share():
    from mlpd.controller import fair_share_now
    from mlpd.web.api_jobs import inventory

    cfg = config()
    rows = fair_share_now(store(), inventory(), cfg, time.time())
    if not g.user.is_admin:
        rows = [r for r in rows if r["user"] == g.user.name]
    return jsonify({"fair_share": cfg["scheduler.fair_share"], "users": rows,
                     "weights": {"fair_share": cfg["scheduler.weight_fair_share"], "slowdown": cfg["scheduler.weight_slowdown"]},
                     "half_lives": {"usage": cfg["scheduler.fair_share_half_life"], "slowdown": cfg["scheduler.slowdown_half_life"]}})


@route("/quotas", summary="Per-user and per-team quotas", admin=True)
def list_quotas():
    cfg = config()
    cpus, memory, count = quotas.default_caps(cfg)
    return jsonify({"defaults": {"period": cfg["quotas.period"], "gpu_hours": cfg["quotas.gpu_hours"] or None, "max_gpus": cfg["quotas.max_gpus"] or None,
                                 "over_quota": cfg["quotas.over_quota"], "max_cpus": cpus, "max_memory": memory, "max_jobs": count},
                    "quotas": store().query("SELECT subject_kind, subject, gpu_hours, max_gpus, updated_at FROM quotas ORDER BY subject_kind, subject"),
                    "caps": store().query("SELECT subject_kind, subject, max_cpus, max_memory, max_jobs, updated_at FROM resource_caps "
                                          "ORDER BY subject_kind, subject")})


CAP_KEYS = ("max_cpus", "max_memory", "max_jobs")


def _memory_cap(value) -> int | None:
    """A memory cap from the body: bytes or a size like "64g"; 0 = unlimited."""
    from mlpd.units import MIN_MEMORY, format_bytes, parse_memory

    if value is None or value in (0, "0"):
        return value if value is None else 0
    try:
        size = parse_memory(value)
    except ValueError as exc:
        raise ApiError(400, "invalid_field", f"max_memory: {exc}") from None
    if size < MIN_MEMORY:
        raise ApiError(400, "invalid_field", f"max_memory: at least {format_bytes(MIN_MEMORY)} (or 0 for unlimited), got {value!r}")
    return size


@route("/quotas", methods=("POST",), summary="Set a user's or team's quota (0 = unlimited; GPU fields both null clear them; "
       "CPU, memory and workload caps change only where given; clear = back to the defaults)", admin=True,
       body={"user": Field(str), "team": Field(str), "gpu_hours": Field((int, float)), "max_gpus": Field(int),
             "max_cpus": Field((int, float)), "max_memory": Field((str, int)), "max_jobs": Field(int), "clear": Field(bool)})
def set_quota():
    body = json_body()
    if bool(body.get("user")) == bool(body.get("team")):
        raise ApiError(400, "invalid_field", "user: give exactly one of user or team")
    kind, subject = ("user", body["user"]) if body.get("user") else ("team", body["team"])
    caps_given = any(body.get(k) is not None for k in CAP_KEYS)
    memory = _memory_cap(body.get("max_memory"))
    if body.get("clear") or not caps_given or "gpu_hours" in body or "max_gpus" in body:
        quotas.set_quota(store(), kind, subject, None if body.get("clear") else body.get("gpu_hours"),
                         None if body.get("clear") else body.get("max_gpus"), g.user.name)
    if body.get("clear"):
        quotas.set_caps(store(), kind, subject, g.user.name, clear=True)
    elif caps_given:
        quotas.set_caps(store(), kind, subject, g.user.name, body.get("max_cpus"), memory, body.get("max_jobs"))
    from mlpd.web.api_jobs import wake

    wake("quota changed")  # a raised quota lets waiting work start now
    return jsonify({"subject_kind": kind, "subject": subject, "gpu_hours": body.get("gpu_hours"), "max_gpus": body.get("max_gpus"),
                    "max_cpus": body.get("max_cpus"), "max_memory": memory, "max_jobs": body.get("max_jobs")})


@route("/teams", summary="Teams and their members")
def list_teams():
    return jsonify({"teams": quotas.list_teams(store())})


@route("/teams", methods=("POST",), summary="Create a team", admin=True, body={"name": Field(str, True)})
def add_team():
    body = json_body()
    quotas.add_team(store(), body["name"], g.user.name)
    return jsonify({"team": body["name"]}), 201


@route("/teams/<name>", methods=("DELETE",), summary="Remove a team (its members stay users)", admin=True)
def remove_team(name: str):
    quotas.remove_team(store(), name, g.user.name)
    return jsonify({"removed": name})


@route("/teams/<name>/members", methods=("POST",), summary="Add a user to a team", admin=True, body={"user": Field(str, True)})
def add_member(name: str):
    body = json_body()
    quotas.set_membership(store(), name, body["user"], True, g.user.name)
    return jsonify({"team": name, "members": quotas.team_members(store(), name)})


@route("/teams/<name>/members/<user>", methods=("DELETE",), summary="Remove a user from a team", admin=True)
def remove_member(name: str, user: str):
    quotas.set_membership(store(), name, user, False, g.user.name)
    return jsonify({"team": name, "members": quotas.team_members(store(), name)})
