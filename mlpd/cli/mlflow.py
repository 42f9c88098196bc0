"""`mlpd env`, `mlpd experiments`, `mlpd runs`, `mlpd models`: thin layers over the MLflow client.

They talk to the daemon's embedded MLflow (URL/mlflow) with the logged-in user's token,
exactly as a notebook does after ``eval "$(mlpd env)"``. mlflow is imported inside the
commands (it takes about two seconds), so the rest of the CLI stays fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import sys
from typing import Any, Iterator

import click

from mlpd.cli.common import json_option
from mlpd.output import emit_json, table, when


def _credentials() -> tuple[str, str]:
    from mlpd.client import NotLoggedIn, load_credentials

    url, token = load_credentials()
    if not url or not token:
        raise NotLoggedIn(f"not logged in: run 'mlpd login {url or 'http://HOST:PORT'}'", code="not_logged_in")
    return url.rstrip("/"), token


def tracking_env(url: str, token: str) -> dict[str, str]:
    """What a plain MLflow client needs to reach the daemon as this user."""
    return {"MLFLOW_TRACKING_URI": f"{url}/mlflow", "MLFLOW_TRACKING_TOKEN": token, "MLPD_URL": url, "MLPD_TOKEN": token}


@contextlib.contextmanager
def mlflow_client() -> Iterator[Any]:
    """An MlflowClient for the logged-in user; MLflow's errors become one-line ClientErrors."""
    from mlpd.client import ClientError

    url, token = _credentials()
    os.environ.update(tracking_env(url, token))
    # The client retries for minutes by default; a CLI should say at once that the daemon is down.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        yield MlflowClient(tracking_uri=f"{url}/mlflow", registry_uri=f"{url}/mlflow")
    except MlflowException as exc:
        raise ClientError(_message(str(exc)), code="mlflow_error") from None
    except OSError as exc:
        raise ClientError(f"cannot reach the mlpd daemon at {url}: is it running? ({exc.__class__.__name__})", code="unreachable") from None


def _message(text: str) -> str:
    """mlpd's own error message out of MLflow's 'Response body: {...}' text, else MLflow's first line."""
    match = re.search(r'"message":\s*"((?:[^"\\]|\\.)*)"', text)
    if match:
        try:
            return json.loads(f'"{match.group(1)}"')
        except ValueError:
            return match.group(1)
    return text.strip().splitlines()[0] if text.strip() else "MLflow error"


# ---------------------------------------------------------------- env


@click.command("env")
def env() -> None:
    """Print shell exports for MLflow clients: eval "$(mlpd env)".

    \b
    Sets MLFLOW_TRACKING_URI (the daemon's /mlflow), MLFLOW_TRACKING_TOKEN,
    MLPD_URL and MLPD_TOKEN for the logged-in user, so that plain
    mlflow.start_run() logs to the team's server as you.
    """
    url, token = _credentials()
    for name, value in tracking_env(url, token).items():
        click.echo(f"export {name}={shlex.quote(value)}")


# ---------------------------------------------------------------- experiments and runs


def _experiment_view(e) -> dict[str, Any]:
    return {"id": e.experiment_id, "name": e.name, "owner": e.tags.get("mlpd.owner", ""), "lifecycle_stage": e.lifecycle_stage,
            "artifact_location": e.artifact_location, "created_at": (e.creation_time or 0) / 1000 or None}


@click.command("experiments")
@click.option("--all", "show_all", is_flag=True, help="Include deleted experiments.")
@json_option
def experiments(show_all: bool, as_json: bool) -> None:
    """MLflow experiments on this daemon (everyone's: a team shares results)."""
    from mlflow.entities import ViewType

    with mlflow_client() as client:
        found = client.search_experiments(view_type=ViewType.ALL if show_all else ViewType.ACTIVE_ONLY, max_results=1000)
    rows = [_experiment_view(e) for e in found]
    if as_json:
        emit_json({"experiments": rows})
        return
    table([(r["id"], r["name"], r["owner"] or "-", when(r["created_at"]), r["lifecycle_stage"]) for r in rows],
          ["id", "name", "owner", "created", "state"])


def _run_view(r: dict[str, Any], experiments: dict[str, str]) -> dict[str, Any]:
    """A run as MLflow's REST API gives it (runs/search), with its experiment's name."""
    info, data = r.get("info", {}), r.get("data", {})
    tags = {t["key"]: t.get("value", "") for t in data.get("tags", [])}
    return {"run_id": info.get("run_id"), "experiment_id": info.get("experiment_id"),
            "experiment": experiments.get(info.get("experiment_id", ""), ""), "name": info.get("run_name"),
            "status": info.get("status", ""), "user": info.get("user_id", ""), "job_id": tags.get("mlpd.job_id"),
            "started_at": int(info.get("start_time") or 0) / 1000 or None, "ended_at": int(info.get("end_time") or 0) / 1000 or None,
            "metrics": {m["key"]: m["value"] for m in data.get("metrics", [])},
            "params": {p["key"]: p.get("value", "") for p in data.get("params", [])},
            "tags": {k: v for k, v in tags.items() if k.startswith("mlpd.")}}


@click.command("runs")
@click.option("--experiment", "-e", "experiment", help="Experiment name or id (default: all).")
@click.option("--limit", type=int, default=50, show_default=True, help="Show at most this many, newest first.")
@json_option
def runs(experiment: str | None, limit: int, as_json: bool) -> None:
    """MLflow runs, newest first, with their experiment, user and mlpd job.

    Plain calls to MLflow's REST API through mlpd's own client (no `import mlflow`: this answers in a
    fraction of a second)."""
    from mlpd.cli.common import logged_in_client

    client = logged_in_client()
    api = f"{client.url}/mlflow/api/2.0/mlflow"
    found = client.request("POST", f"{api}/experiments/search", json={"max_results": 1000}).json().get("experiments", [])
    names = {e["experiment_id"]: e["name"] for e in found}
    if experiment:
        ids = [i for i, n in names.items() if n == experiment] or ([experiment] if experiment in names else [])
        if not ids:
            raise click.ClickException(f"no experiment {experiment!r}; 'mlpd experiments' lists them")
    else:
        ids = list(names)
    body = {"experiment_ids": ids, "order_by": ["attributes.start_time DESC"], "max_results": max(1, min(limit, 1000))}
    rows = [_run_view(r, names) for r in client.request("POST", f"{api}/runs/search", json=body).json().get("runs", [])] if ids else []
    if as_json:
        emit_json({"runs": rows})
        return
    table([(r["run_id"], r["experiment"] or r["experiment_id"], r["name"] or "-", r["status"].lower(), r["user"], r["job_id"] or "-",
            when(r["started_at"]), _metrics_text(r["metrics"])) for r in rows],
          ["run", "experiment", "name", "status", "user", "job", "started", "metrics"])


def _metrics_text(metrics: dict[str, float]) -> str:
    text = ", ".join(f"{k}={v:g}" for k, v in sorted(metrics.items())[:4])
    return text + (", ..." if len(metrics) > 4 else "") or "-"


# ---------------------------------------------------------------- models


def _model_view(client, m) -> dict[str, Any]:
    versions = client.search_model_versions(f"name = '{m.name.replace(chr(39), chr(92) + chr(39))}'", max_results=200)
    aliases = dict(getattr(m, "aliases", {}) or {})
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(str(version), []).append(alias)
    return {
        "name": m.name, "owner": (m.tags or {}).get("mlpd.owner", ""), "description": m.description or "",
        "aliases": {alias: str(version) for alias, version in aliases.items()},
        "versions": [{"version": str(v.version), "run_id": v.run_id, "source": v.source, "status": v.status,
                      "aliases": sorted(by_version.get(str(v.version), [])), "created_at": (v.creation_timestamp or 0) / 1000 or None}
                     for v in sorted(versions, key=lambda v: int(v.version))],
        "updated_at": (m.last_updated_timestamp or 0) / 1000 or None,
    }


@click.group("models", invoke_without_command=True)
@json_option
@click.pass_context
def models(ctx: click.Context, as_json: bool) -> None:
    """Registered models with their versions and aliases; 'mlpd models alias' points an alias, 'mlpd models promote'
    moves one once the quality gates of the deployments that follow it pass."""
    if ctx.invoked_subcommand is not None:
        return
    with mlflow_client() as client:
        rows = [_model_view(client, m) for m in client.search_registered_models(max_results=1000)]
    if as_json:
        emit_json({"models": rows})
        return
    lines = []
    for m in rows:
        for v in m["versions"] or [{"version": "-", "run_id": None, "status": "", "aliases": []}]:
            lines.append((m["name"], v["version"], ",".join(f"@{a}" for a in v["aliases"]) or "-", (v["run_id"] or "-"), v["status"].lower() or "-", m["owner"] or "-"))
    table(lines, ["model", "version", "aliases", "run", "status", "owner"])


@models.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--alias", default="prod", show_default=True, help="The alias to move to VERSION.")
@json_option
def models_promote(name: str, version: str, alias: str, as_json: bool) -> None:
    """Point ALIAS of model NAME at VERSION once the quality gates of every deployment following it pass.

    A deployment that follows models:/NAME@ALIAS with gates (mlpd serve --gate) would hold the version
    back; then nothing moves and the reasons are printed."""
    from mlpd.cli.common import logged_in_client

    check = logged_in_client().get(f"/models/{name}/versions/{version}/gates", params={"alias": alias})
    if check["held_back"]:
        if as_json:
            emit_json({"promoted": False, **check})
        for held in check["held_back"]:
            click.echo(f"Error: deployment {held['deployment']}: {held['reason']}", err=True)
        click.echo(f"Error: models:/{name}@{alias} not moved; fix the version, or change the deployments' gates", err=True)
        sys.exit(1)
    with mlflow_client() as client:
        client.set_registered_model_alias(name, alias, version)
        model = _model_view(client, client.get_registered_model(name))
    if as_json:
        emit_json({"promoted": True, "model": model})
        return
    click.echo(f"models:/{name}@{alias} -> version {model['aliases'].get(alias, version)} (quality gates passed)")


@models.command("alias")
@click.argument("name")
@click.argument("version")
@click.argument("alias")
@json_option
def models_alias(name: str, version: str, alias: str, as_json: bool) -> None:
    """Point ALIAS of model NAME at VERSION (models:/NAME@ALIAS), moving it if it points elsewhere."""
    with mlflow_client() as client:
        client.set_registered_model_alias(name, alias, version)
        model = _model_view(client, client.get_registered_model(name))
    if as_json:
        emit_json({"model": model})
        return
    click.echo(f"models:/{name}@{alias} -> version {model['aliases'].get(alias, version)}")
