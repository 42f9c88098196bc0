"""`mlpd serve` and `mlpd deployments`: registered models as local endpoints."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from mlpd.cli.common import logged_in_client, json_option
from mlpd.output import plural

SETTLED = ("serving", "canary", "failed", "rolled_back", "degraded", "unavailable")


def _emit(data: Any) -> None:
    from mlpd.output import emit_json

    emit_json(data)


def _version_text(rev: dict | None) -> str:
    if not rev:
        return "-"
    return f"{rev['model_name']} v{rev['version']}" if rev.get("version") else rev["model"]


def _summary(dep: dict) -> list[str]:
    lines = [f"{dep['name']}: {dep['state']}  ({dep['health']} replicas healthy)",
             f"  model     {dep['model']}" + (f"  (follows {dep['requested']})" if dep["follow_alias"] and dep.get("requested") else ""),
             f"  serving   {_version_text(dep['serving'])}"]
    if dep["rolling_out"]:
        lines.append(f"  rolling   {_version_text(dep['rolling_out'])} (waiting for /ping)")
    if dep.get("canary"):
        lines.append(f"  canary    {_version_text(dep['canary'])} takes {dep['canary']['percent']}% of the requests "
                     f"('mlpd deployments promote {dep['name']}' or 'rollback')")
    lines.append(f"  endpoint  {dep['endpoint']}  (auth: {dep['auth']})")
    if dep["restarts"]:
        lines.append(f"  restarts  {dep['restarts']}")
    if dep.get("last_change"):
        lines.append(f"  last      {dep['last_change']}")
    if dep["last_error"]:
        lines.append(f"  error     {dep['last_error']}")
    return lines


def _wait(client, name: str, timeout: float) -> dict:
    """Poll until the deployment settles (serving or failed), printing each new state on stderr."""
    deadline = time.monotonic() + timeout
    seen = None
    while True:
        dep = client.get(f"/deployments/{name}")["deployment"]
        now = (dep["state"], dep["rolling_out"] and dep["rolling_out"]["seq"])
        if now != seen:
            click.echo(f"  {dep['state']}" + (f": {dep['last_error']}" if dep["last_error"] and dep["state"] == "failed" else ""), err=True)
            seen = now
        if dep["state"] in SETTLED and not dep["rolling_out"]:
            return dep
        if time.monotonic() > deadline:
            click.echo(f"still {dep['state']} after {timeout:g}s; see 'mlpd deployments show {name}'", err=True)
            return dep
        time.sleep(1)


@click.command()
@click.argument("model_uri")
@click.option("--name", help="Deployment name: the endpoint is /serve/NAME/invocations (default: the model's name).")
@click.option("--gpus", type=int, default=0, show_default=True, help="GPUs per replica.")
@click.option("--gpu-model", help="Only GPUs of this model.")
@click.option("--cpus", type=float, help="CPU limit per replica.")
@click.option("--memory", help="Memory limit per replica, e.g. 4g.")
@click.option("--replicas", type=click.IntRange(1, 16), default=1, show_default=True, help="Replicas of each version.")
@click.option("--follow-alias/--no-follow-alias", default=None,
              help="Roll out the version the alias points to whenever it moves (default: on for models:/NAME@ALIAS).")
@click.option("--follow-foreign", is_flag=True, help="Follow the alias of a model another member owns (they then choose what it runs).")
@click.option("--auth", type=click.Choice(["token", "none"]), default="token", show_default=True,
              help="'token': callers send your mlpd token or the deployment's key; 'none': open to whoever reaches the daemon.")
@click.option("--gate", "gates", multiple=True, metavar="CONDITION",
              help="A quality gate on the version's source run, e.g. \"metrics.accuracy>=0.9\" (repeatable; all must hold): "
                   "a version that fails one is never rolled out.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it serves (or fails).")
@click.option("--timeout", type=float, default=900, show_default=True, help="With --wait, give up waiting after this many seconds.")
@json_option
def serve(model_uri, name, gpus, gpu_model, cpus, memory, replicas, follow_alias, follow_foreign, auth, gates, wait, timeout, as_json):
    """Serve an MLflow model (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model) at a stable endpoint.

    \b
    mlpd serve models:/churn@prod
    curl -H "Authorization: Bearer $MLPD_TOKEN" -H 'Content-Type: application/json' \\
         -d '{"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}' http://127.0.0.1:8471/serve/churn/invocations
    mlpd serve models:/churn@prod --gate "metrics.accuracy>=0.9"
    """
    client = logged_in_client()
    body = {"model": model_uri, "name": name, "gpus": gpus, "gpu_model": gpu_model, "cpus": cpus, "memory": memory,
            "replicas": replicas, "follow_alias": follow_alias, "auth": auth, "follow_foreign": follow_foreign or None,
            "gates": list(gates) or None}
    result = client.post("/deployments", {k: v for k, v in body.items() if v is not None})
    dep = result["deployment"]
    for note in result.get("warnings", []):
        click.echo(f"note: {note}", err=True)
    if not as_json:
        click.echo(f"deployment {dep['name']} created; serving {dep['rolling_out']['model'] if dep['rolling_out'] else dep['model']}", err=True)
    if wait:
        dep = _wait(client, dep["name"], timeout)
    if as_json:
        _emit({"deployment": dep, "key": result["key"]})
    else:
        click.echo("\n".join(_summary(dep)))
        click.echo(f"  key       {result['key']}  (shown once: clients may send it instead of your token)")
    if wait and dep["state"] == "failed":
        sys.exit(1)


@click.group(invoke_without_command=True)
@click.option("--all", "all_users", is_flag=True, help="Everyone's deployments (admins).")
@json_option
@click.pass_context
def deployments(ctx, all_users, as_json):
    """Your deployments: model and version, state, endpoint, health, replicas.

    \b
    Commands: show (what serves, input columns, an example request), logs, update (roll out another
    version, --canary P), promote, rollback, key (a new key for clients), rm."""
    if ctx.invoked_subcommand is not None:
        return
    rows = logged_in_client().get("/deployments", params={"all": 1} if all_users else None)["deployments"]
    if as_json:
        _emit({"deployments": rows})
        return
    if not rows:
        click.echo("no deployments; serve a model with 'mlpd serve models:/NAME@ALIAS'")
        return
    from mlpd.output import table

    table([[d["name"], *([d["owner"]] if all_users else []), _version_text(d["serving"]), d["state"], d["endpoint"], d["health"],
            d["restarts"]] for d in rows],
          ["NAME", *(["OWNER"] if all_users else []), "MODEL", "STATE", "ENDPOINT", "HEALTHY", "RESTARTS"])


def _echo_input(schema: dict | None) -> None:
    """The model's input columns and an example request that runs as written (MLPD_TOKEN set)."""
    if not schema:
        return
    if schema.get("inputs"):
        cols = ", ".join(f"{c['name'] or '(unnamed)'} ({c['type']}{'' if c.get('required', True) else ', optional'})" for c in schema["inputs"])
        click.echo(f"  input     {cols}")
    elif schema.get("note"):
        click.echo(f"  input     unknown: {schema['note']}")
    if schema.get("example") is not None:
        click.echo(f"  example   ({schema['note']})")
        click.echo(f"    {json.dumps(schema['example'], separators=(',', ':'))}")
        if schema.get("curl"):
            click.echo("  request   (export MLPD_TOKEN=your token, or the deployment's key, first)")
            click.echo(f"    {schema['curl']}")


@deployments.command("show")
@click.argument("name")
@json_option
def deployments_show(name, as_json):
    """A deployment: versions, replicas and their health, restarts, the last error."""
    dep = logged_in_client().get(f"/deployments/{name}")["deployment"]
    if as_json:
        _emit({"deployment": dep})
        return
    click.echo("\n".join(_summary(dep)))
    click.echo(f"  replicas: (logs: 'mlpd deployments logs {dep['name']} --slot N' or '--job ID')")
    for r in dep["replica_list"]:
        health = "healthy" if r["healthy"] else (r["last_check_error"] or "not checked yet")
        click.echo(f"    replica {r['slot']}  v{r['version'] or '?'}  {r['state']:<8} 127.0.0.1:{r['port']}  {health}  (--job {r['job_id']})")
    _echo_input(dep.get("input"))
    click.echo("  versions:")
    for rev in reversed(dep["revisions"][-10:]):
        click.echo(f"    #{rev['seq']} {_version_text(rev):<24} {rev['state']:<9} {rev['reason']}")
    if dep.get("requests"):
        click.echo("  requests (through the endpoint):")
        for m in dep["requests"]:
            click.echo(f"    #{m['revision']} v{m['version'] or '?'}: {plural(m['requests'], 'request')}, {plural(m['errors'], 'error')}, mean {m['mean_ms']} ms, "
                       f"p50 <= {m['p50_ms_at_most']} ms, p99 <= {m['p99_ms_at_most']} ms")
    _echo_monitoring(dep.get("monitoring"))


def _echo_monitoring(rows: list[dict] | None) -> None:
    """The monitoring summary (mlpd.serving.monitoring): predictions and each feature's drift, per version."""
    if not rows:
        return
    click.echo("  monitoring (requests through the daemon's /serve path; docs/serving-monitoring.md):")
    for m in rows:
        preds = m["predictions"]
        parts = [f"{k} {v:.4g}" for k, v in preds["quantiles"].items()]
        parts += [f"{label}: {count}" for label, count in list(preds["labels"].items())[:10]]
        click.echo(f"    #{m['revision']} v{m['version'] or '?'}: {plural(m['requests'], 'request')}; predictions "
                   f"{', '.join(parts) or 'none yet'}")
        for f in m["features"]:
            if f["psi"] is None:
                click.echo(f"      {f['feature']:<20} reference {f['reference']} values so far")
            else:
                click.echo(f"      {f['feature']:<20} PSI {f['psi']:.3f} {f['level']:<6} ({f['since']} values against a reference of {f['reference']})")


@deployments.command("logs")
@click.argument("name")
@click.option("--slot", type=int, default=0, show_default=True, help="Which replica (of the version serving, else the one rolling out).")
@click.option("--job", "job_id", help="A replica by its job id (any version, also one that ended).")
@click.option("-f", "--follow", is_flag=True, help="Stream live.")
@click.option("--raw", is_flag=True, help="The bytes as written, escape sequences included (default: shown as text).")
def deployments_logs(name, slot, job_id, follow, raw):
    """A replica's output: the scoring server's log (the environment's build first)."""
    params: dict[str, Any] = {"slot": slot}
    if job_id:
        params = {"job": job_id}
    if follow:
        params["follow"] = 1
    from mlpd import termsafe

    resp = logged_in_client().request("GET", f"/deployments/{name}/logs", params=params, stream=True, timeout=3600 * 24 if follow else 60)
    out = termsafe.raw_stdout() if raw else sys.stdout.buffer
    for chunk in resp.iter_content(chunk_size=None):
        out.write(chunk)
        out.flush()


@deployments.command("update")
@click.argument("name")
@click.option("--model", "model_uri", help="The model URI to roll out (default: the deployment's own, resolved again).")
@click.option("--follow-alias/--no-follow-alias", default=None, help="Follow the URI's alias from now on (default: on for models:/NAME@ALIAS).")
@click.option("--canary", type=click.IntRange(1, 99), help="Send this percentage of requests to the new version until 'promote' or 'rollback'.")
@click.option("--follow-foreign", is_flag=True, help="Follow the alias of a model another member owns (they then choose what it runs).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the new version serves or is rolled back.")
@click.option("--timeout", type=float, default=900, show_default=True, help="With --wait, give up waiting after this many seconds.")
@json_option
def deployments_update(name, model_uri, follow_alias, canary, follow_foreign, wait, timeout, as_json):
    """Roll out another version: it takes the traffic once it answers /ping; the old one then stops.
    A version that does not start is rolled back, and the old one keeps serving. With --canary P it
    takes P% of the requests until 'mlpd deployments promote' or 'rollback'."""
    client = logged_in_client()
    body = {"model": model_uri, "follow_alias": follow_alias, "canary": canary, "follow_foreign": follow_foreign or None}
    dep = client.post(f"/deployments/{name}/update", {k: v for k, v in body.items() if v is not None})["deployment"]
    rolling = dep["revisions"][-1]["seq"] if dep["revisions"] else None
    if wait:
        dep = _wait(client, name, timeout)
        dep = client.get(f"/deployments/{name}")["deployment"]
    if as_json:
        _emit({"deployment": dep})
        return
    click.echo("\n".join(_summary(dep)))
    if wait and rolling is not None:
        rev = next((r for r in dep["revisions"] if r["seq"] == rolling), None)
        if rev and rev["state"] == "failed":  # (superseded or rolled_back: someone chose it; not an error)
            click.echo(f"rolled back: {rev['reason']}", err=True)
            sys.exit(1)


@deployments.command("promote")
@click.argument("name")
@json_option
def deployments_promote(name, as_json):
    """The canary takes all the traffic; the version it shared it with drains and stops."""
    dep = logged_in_client().post(f"/deployments/{name}/promote")["deployment"]
    if as_json:
        _emit({"deployment": dep})
    else:
        click.echo("\n".join(_summary(dep)))


@deployments.command("rollback")
@click.argument("name")
@json_option
def deployments_rollback(name, as_json):
    """Drop the canary (or a rollout still in progress): its replicas stop, the serving version keeps all the traffic."""
    result = logged_in_client().post(f"/deployments/{name}/rollback")
    if as_json:
        _emit(result)
    else:
        click.echo(f"rolled back {result['rolled_back']}")
        click.echo("\n".join(_summary(result["deployment"])))


@deployments.command("rm")
@click.argument("name")
@json_option
def deployments_rm(name, as_json):
    """Remove a deployment: its replicas stop and its endpoint answers 404."""
    result = logged_in_client().delete(f"/deployments/{name}")
    if as_json:
        _emit(result)
    else:
        click.echo(f"removed {name}")


@deployments.command("key")
@click.argument("name")
@json_option
def deployments_key(name, as_json):
    """Replace the deployment's key (the old key stops working); prints the new one."""
    key = logged_in_client().post(f"/deployments/{name}/key")["key"]
    if as_json:
        _emit({"key": key})
    else:
        click.echo(key)
