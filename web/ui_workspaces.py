"""The web UI's workspace pages: a member's JupyterLab workspaces (list, create, stop, start, remove),
with the tunnel command to copy, idle time and time until culling. Every action goes through the
same functions as the JSON API (web/api_workspaces.py, mlpd.kinds.workspace)."""

from __future__ import annotations

import socket
import time

from flask import g, redirect, render_template, request, url_for

from mlpd import jobs

from mlpd.kinds import workspace as workspaces
from mlpd.errors import MlpdError
from mlpd.web import config, store
from mlpd.web.ui import ui

FORM_FIELDS = ("name", "gpus", "image", "cpus", "memory")


def _mine(name: str) -> dict:
    """The caller's workspace NAME (admins: ?owner= another's); 404 otherwise, as if absent."""
    owner = request.args.get("owner") or request.form.get("owner") or g.user.name
    ws = workspaces.get(store(), owner, name) if owner == g.user.name or g.user.is_admin else None
    if ws is None:
        raise MlpdError(404, "not_found", f"no workspace {name!r}")
    return ws


def _tunnel(ws: dict, view: dict) -> dict:
    host = config()["server.ssh_host"] or request.host.rsplit(":", 1)[0].strip("[]") or socket.getfqdn()  # the host this browser reached
    return {"command": f"ssh -N -L {ws['port']}:127.0.0.1:{ws['port']} YOU@{host}", "url": view["url"], "cli": f"mlpd ws tunnel {ws['name']} --run"}


def _gpu_count(raw: str) -> int | float:
    """The form's GPUs: whole GPUs (2) or a share of one GPU (0.5); the spec checks the range."""
    number = float(raw)
    return int(number) if number.is_integer() else number


def _form(values: dict) -> tuple[dict, dict[str, str]]:
    """The API body a create form describes, and errors by field for what the form itself can tell."""
    errors: dict[str, str] = {}
    body: dict = {"name": values.get("name", "").strip(), "wait": values.get("wait") == "1"}
    for key, kind in (("gpus", _gpu_count), ("cpus", float)):
        raw = values.get(key, "").strip()
        if raw:
            try:
                body[key] = kind(raw)
            except ValueError:
                errors[key] = (f"expected a whole number or a share of one GPU such as 0.5, got {raw!r}" if key == "gpus"
                               else f"expected a number, got {raw!r}")
    for key in ("image", "memory"):
        if values.get(key, "").strip():
            body[key] = values[key].strip()
    return body, errors


@ui.route("/workspaces", methods=("GET", "POST"))
def workspace_list():
    from mlpd.web.api_jobs import wake
    from mlpd.web.api_workspaces import create_for_user, view

    values = {k: request.form.get(k, "") for k in (*FORM_FIELDS, "wait")} if request.method == "POST" else {}
    errors: dict[str, str] = {}
    if request.method == "POST":
        body, errors = _form(values)
        if not errors:
            try:
                ws, _ = create_for_user(body)
            except MlpdError as exc:
                field, _, rest = exc.message.partition(": ")
                if field in FORM_FIELDS and rest:
                    errors[field] = rest
                else:
                    errors["_form"] = exc.message
            else:
                wake(f"submitted workspace {ws['id']}")
                return redirect(url_for("ui.workspace", name=ws["name"]), code=303)
    everyone = g.user.is_admin and request.args.get("all") == "1"
    now = time.time()
    rows = [view(ws, now) for ws in workspaces.list_workspaces(store(), None if everyone else g.user.name)]
    return render_template("workspaces.html", rows=rows, values=values, errors=errors, everyone=everyone,
                           default_image=config()["workspaces.image"]), 400 if errors else 200


@ui.route("/workspaces/<name>")
def workspace(name: str):
    from mlpd.web.api_workspaces import history, view

    ws = _mine(name)
    v = view(ws)
    v["ready"] = v["state"] == "running" and workspaces.server_answers(ws["port"], ws["token"])
    session = jobs.get(store(), ws["session"]) if ws["session"] else None
    return render_template("workspace.html", ws=v, tunnel=_tunnel(ws, v), history=history(ws), session=session,
                           others=ws["owner"] != g.user.name)


def _act(name: str, action: str):
    from mlpd.web.api_jobs import wake

    ws = _mine(name)
    if action == "stop":
        workspaces.stop(store(), ws, g.user.name, f"stopped by {g.user.name}")
    elif action == "start":
        from mlpd.web.api_workspaces import start_now_or_fail
        from mlpd import disk_use
        from mlpd.scheduling import quotas
        from mlpd.scheduling.sharing import demand

        ws = workspaces.wait_stopped(store(), ws)  # a stop in progress ends first: its GPUs are free for the quota check
        disk_use.refusal(store(), config(), ws["owner"])
        quotas.admit(store(), config(), ws["owner"], demand(ws["spec"]["gpus"], ws["spec"].get("gpu_share")), work=[ws["spec"]])
        before = ws["session"]
        ws = workspaces.start(store(), ws, g.user.name, port_range=config()["workspaces.port_range"])
        if ws["session"] != before:
            start_now_or_fail(ws, request.form.get("wait") == "1")
    elif action == "remove":
        workspaces.remove(store(), ws, g.user.name)
        wake(f"workspace {ws['id']} removed")
        return redirect(url_for("ui.workspace_list"), code=303)
    wake(f"{'submitted ' if action == 'start' else ''}workspace {ws['id']} {action}")
    owner = {"owner": ws["owner"]} if ws["owner"] != g.user.name else {}
    return redirect(url_for("ui.workspace", name=ws["name"], **owner), code=303)


@ui.route("/workspaces/<name>/stop", methods=("POST",))
def workspace_stop(name: str):
    return _act(name, "stop")


@ui.route("/workspaces/<name>/start", methods=("POST",))
def workspace_start(name: str):
    return _act(name, "start")


@ui.route("/workspaces/<name>/remove", methods=("POST",))
def workspace_remove(name: str):
    return _act(name, "remove")
