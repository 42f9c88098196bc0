"""Workspaces: JupyterLab servers of one user, on pinned GPUs (see mlpd.kinds.workspace)."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import g, jsonify, request

from mlpd import disk_use, jobs

from mlpd.scheduling import quotas

from mlpd.kinds import workspace as workspaces
from mlpd.scheduling.gpu_state import drains, gpu_sharers
from mlpd.scheduling.sharing import demand
from mlpd.jobs import JobState
from mlpd.web import config, store
from mlpd.web.api_jobs import check_disk, inventory, logs_response, wake
from mlpd.web.errors import ApiError
from mlpd.web.routes import Area, Field, json_body

area = Area("workspaces")  # registered by the app factory (mlpd.web.create_app)
route = area.route

CREATE_BODY = {
    "name": Field(str, True, "1-40 lowercase letters, digits and '-'"),
    "gpus": Field((int, float), doc="GPUs to pin (default 0), or a share of one GPU such as 0.5 (docs/gpu-sharing.md)"),
    "gpu_share": Field((int, float), doc="a share of one GPU below 1, e.g. 0.5 (as gpus = 0.5)"),
    "gpu_model": Field(str, doc="only GPUs of this model"),
    "image": Field(str, doc="default workspaces.image (JupyterLab on the training image)"),
    "requirements": Field(str, doc="the text of a requirements.txt, installed into the image once (an environment)"),
    "cpus": Field((int, float), doc="CPU limit"),
    "memory": Field((int, str), doc="memory limit, e.g. '16g'"),
    "wait": Field(bool, doc="wait in the queue for GPUs instead of failing at once when they are not free"),
}
START_BODY = {"wait": Field(bool, doc="wait in the queue for GPUs instead of failing at once")}


def _owner() -> str:
    """Whose workspaces a request addresses: the caller's own; admins may name another's with ?owner=."""
    other = request.args.get("owner")
    if other and other != g.user.name:
        if not g.user.is_admin:
            raise ApiError(404, "not_found", "no such workspace")
        return other
    return g.user.name


def _get(name: str) -> dict:
    ws = workspaces.get(store(), _owner(), name)
    if ws is None:
        raise ApiError(404, "not_found", f"no workspace {name!r}; 'mlpd ws' lists yours")
    return ws


def view(ws: dict, now: float | None = None) -> dict:
    session = jobs.get(store(), ws["session"]) if ws["session"] else None
    return workspaces.view(ws, session, workspaces.idle_timeout(store(), config(), ws["owner"]), now or time.time())


def start_now_or_fail(ws: dict, wait: bool) -> None:
    """Without wait, a session the scheduler cannot place at once is withdrawn (nothing is left
    queued) and the error says what is free and who holds the rest."""
    if wait or not ws["spec"]["gpus"]:
        return
    from mlpd.controller import plan_now

    plan, _, gpus = plan_now(store(), inventory(), config(), time.time())
    if any(p.job_id == ws["session"] for p in plan.placements):
        return
    if not workspaces.withdraw_unplaced(store(), ws, bool(ws.get("_new")), "withdrawn: its GPUs were not free and it was not asked to wait"):
        return  # the worker placed it meanwhile
    holders = gpu_sharers(store())
    drained = drains(store(), config()["gpus.drained"], inventory().devices())
    free = [str(gpu.index) for gpu in gpus if gpu.uuid not in holders and gpu.uuid not in drained and not gpu.drained]
    held = []
    for gpu in gpus:
        if gpu.uuid in holders:
            hs = holders[gpu.uuid]
            if any(h["share"] < 1 for h in hs):  # shared by small work (docs/gpu-sharing.md)
                held.append(f"GPU {gpu.index} shared by " + " and ".join(f"{h['label']} ({h['share']:g})" for h in hs))
            else:
                held.append(f"GPU {gpu.index} held by {hs[0]['label']}")
        elif gpu.uuid in drained or gpu.drained:
            held.append(f"GPU {gpu.index} {drained.get(gpu.uuid) or gpu.drain_reason}")
    queued = jobs.in_states(store(), [JobState.QUEUED])
    ahead = f"; {len(queued)} queued workloads come first" if queued else ""
    wants = f"a {ws['spec']['gpu_share']:g} share of a GPU" if ws["spec"].get("gpu_share") else f"{ws['spec']['gpus']} GPUs"
    raise ApiError(409, "gpus_busy", f"asks for {wants} but only {len(free)} are free now"
                                     f" ({', '.join(free) or 'none'}); {'; '.join(held) or 'none held'}{ahead}. "
                                     "Wait for them with --wait (wait: true), or ask for fewer")


@route("/workspaces", methods=("POST",), summary="Create a workspace (and start it)", body=CREATE_BODY)
def create_workspace():
    ws, warnings = create_for_user(json_body())
    wake(f"submitted workspace {ws['id']}")
    return jsonify({"workspace": view(ws), "warnings": warnings}), 201


def create_for_user(data: dict) -> tuple[dict, list[str]]:
    """Create a workspace for g.user from a checked body (the API's and the web form's one path);
    MlpdError naming the field when it cannot be made, and nothing left behind."""
    name = workspaces.check_name(data.get("name"))
    spec = workspaces.parse_workspace_spec({k: v for k, v in data.items() if v is not None}, config()["workspaces.image"])
    from mlpd.web.api_jobs import check_admission

    check_admission(workspaces.session_spec(spec, name))
    check_disk()
    disk_use.refusal(store(), config(), g.user.name)  # quotas.home_gb / team_gb (DiskQuotaExceeded: 403)
    warnings = quotas.admit(store(), config(), g.user.name, demand(spec["gpus"], spec.get("gpu_share")), work=[spec])  # QuotaExceeded: 403
    port = workspaces.allocate_port(store(), config()["workspaces.port_range"])
    ssh_port = workspaces.allocate_port(store(), config()["workspaces.port_range"], exclude=[port])
    ws = workspaces.create(store(), g.user.name, name, spec, port, ssh_port)
    start_now_or_fail(dict(ws, _new=True), bool(data.get("wait")))
    return ws, warnings


@route("/workspaces", summary="List your workspaces (admins: ?all=1 for everyone's)")
def list_workspaces():
    owner = None if (g.user.is_admin and request.args.get("all")) else g.user.name
    now = time.time()
    return jsonify({"workspaces": [view(ws, now) for ws in workspaces.list_workspaces(store(), owner)]})


@route("/workspaces/<name>", summary="One workspace: state, GPUs, URL, idle time and time until culling, history")
def show_workspace(name: str):
    ws = _get(name)
    out = view(ws)
    out["ready"] = out["state"] == "running" and workspaces.server_answers(ws["port"], ws["token"])
    out["history"] = history(ws)
    return jsonify({"workspace": out})


def history(ws: dict) -> list[dict]:
    """The workspace's events, oldest first, details decoded."""
    import json

    rows = store().query("SELECT at, actor, action, detail FROM events WHERE object_kind = 'workspace' AND object_id = ? ORDER BY id", [ws["id"]])
    for r in rows:
        r["detail"] = json.loads(r["detail"])
    return rows


@route("/workspaces/<name>/stop", methods=("POST",), summary="Stop a workspace (its home and settings stay; start brings it back)")
def stop_workspace(name: str):
    ws = workspaces.stop(store(), _get(name), g.user.name, f"stopped by {g.user.name}")
    wake(f"workspace {ws['id']} stopped")
    return jsonify({"workspace": view(ws)})


@route("/workspaces/<name>/start", methods=("POST",), summary="Start a stopped workspace (same home; a new Jupyter token and loopback ports)", body=START_BODY)
def start_workspace(name: str):
    data = json_body()
    ws = workspaces.wait_stopped(store(), _get(name))  # a stop in progress ends first: its GPUs are free again for the quota check
    check_disk()
    disk_use.refusal(store(), config(), ws["owner"])
    quotas.admit(store(), config(), ws["owner"], demand(ws["spec"]["gpus"], ws["spec"].get("gpu_share")), work=[ws["spec"]])
    before = ws["session"]
    ws = workspaces.start(store(), ws, g.user.name, port_range=config()["workspaces.port_range"])
    if ws["session"] != before:
        start_now_or_fail(ws, bool(data.get("wait")))
    wake(f"submitted workspace {ws['id']} (start)")
    return jsonify({"workspace": view(workspaces.must_get(store(), ws["id"]))})


@route("/workspaces/<name>", methods=("DELETE",), summary="Remove a workspace (stopped first; your home stays)")
def remove_workspace(name: str):
    ws = _get(name)
    workspaces.remove(store(), ws, g.user.name)
    wake(f"workspace {ws['id']} removed")
    return jsonify({"removed": ws["name"]})


@route("/workspaces/<name>/logs", summary="The JupyterLab server's output of the current session; ?follow=1 streams it", streaming=True)
def workspace_logs(name: str):
    ws = _get(name)
    if not ws["session"]:
        raise ApiError(404, "not_found", f"workspace {name!r} has not run yet")
    return logs_response(ws["session"], request.args.get("follow") in ("1", "true", "yes"))


@route("/workspaces/<name>/tunnel", summary="How to reach a workspace through SSH: host, loopback port, token")
def workspace_tunnel(name: str):
    ws = _get(name)
    # the name the client reached the daemon by (the host of its MLPD_URL) unless an admin set one: this
    # machine's own name (getfqdn) is often 'localhost' or one that only resolves here
    host = config()["server.ssh_host"] or urlsplit(request.host_url).hostname
    return jsonify({"tunnel": {"workspace": ws["name"], "ssh_host": host, "remote_host": "127.0.0.1", "remote_port": ws["port"],
                               "ssh_port": ws["ssh_port"], "token": ws["token"], "path": f"/lab?token={ws['token']}", "state": view(ws)["state"]}})


IDLE_BODY = {"timeout": Field(str, doc="e.g. '12h'; null or '' for the host's workspaces.idle_timeout")}


@route("/users/<user>/workspace-idle-timeout", methods=("PUT",), summary="Allow a user's workspaces a longer idle timeout", admin=True, body=IDLE_BODY)
def set_idle_timeout(user: str):
    from mlpd.units import parse_duration
    data = json_body()
    seconds = None
    if data.get("timeout"):
        try:
            seconds = parse_duration(data["timeout"])
        except ValueError as exc:
            raise ApiError(400, "invalid_field", f"timeout: {exc}") from None
    workspaces.set_idle_timeout(store(), g.user.name, user, seconds)
    return jsonify({"user": user, "idle_timeout": workspaces.idle_timeout(store(), config(), user)})


KEY_BODY = {"key": Field(str, True, "one OpenSSH public key line (the contents of a .pub file)")}


@route("/keys", summary="Your SSH public keys (for SSH into your workspaces)")
def list_keys():
    from mlpd.kinds import sshkeys

    return jsonify({"keys": sshkeys.list_keys(store(), g.user.name)})


@route("/keys", methods=("POST",), summary="Register an SSH public key (running workspaces accept it at once)", body=KEY_BODY,
       credentials=True)
def add_key():
    from mlpd.kinds import sshkeys

    key = sshkeys.add_key(store(), config().state_dir, g.user.name, json_body()["key"])
    return jsonify({"key": key}), 201


@route("/keys/<key_id>", methods=("DELETE",), summary="Remove one of your SSH keys (by id or fingerprint)", credentials=True)
def remove_key(key_id: str):
    from mlpd.kinds import sshkeys

    sshkeys.remove_key(store(), config().state_dir, g.user.name, key_id)
    return jsonify({"removed": key_id})
