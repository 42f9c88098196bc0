"""`mlpd ws`: workspaces (JupyterLab on pinned GPUs, with a persistent home, reached through SSH)."""

from __future__ import annotations

import getpass
import os
import shlex
import socket
import subprocess
import sys
import time

import click

from mlpd.cli.common import GPU_COUNT, gpus_wanted, logged_in_client, json_option
from mlpd.output import duration, emit_json, table, when
from mlpd.ports import port_free


def _duration(seconds) -> str:
    return duration(seconds)


def _print_list(items: list[dict], owners: bool = False) -> None:
    rows = []
    for w in items:
        gpus = ",".join(str(i) for i in w["gpus"]["indices"]) or (f"{w['gpus']['count']} wanted" if w["gpus"]["count"] else "-")
        idle = _duration(w["idle_seconds"]) if w["state"] == "running" else "-"
        cull = _duration(w["cull_in_seconds"]) if w["state"] == "running" else (w["reason"] or "-")
        rows.append(([w["owner"]] if owners else []) + [w["name"], w["state"], gpus, idle, cull, w["url"] if w["state"] == "running" else "-"])
    table(rows, (["OWNER"] if owners else []) + ["NAME", "STATE", "GPUS", "IDLE", "CULLED IN / WHY STOPPED", "URL (on the host; 'mlpd ws tunnel NAME' from elsewhere)"])


@click.group(invoke_without_command=True)
@click.option("--all", "all_users", is_flag=True, help="Everyone's workspaces (admins).")
@json_option
@click.pass_context
def ws(ctx, all_users, as_json):
    """Workspaces: your JupyterLab servers on pinned GPUs, with a home that persists.

    \b
    mlpd ws create lab --gpus 1      start one (fails at once if no GPU is free; --wait queues)
    mlpd ws                          list: state, GPUs, idle time, time until culling, URL
    mlpd ws tunnel lab --run         forward it to this machine over SSH and print the URL
    mlpd ws stop|start|rm lab        stop (home kept), start again, remove
    mlpd ws show|logs lab            its state and history; its JupyterLab output
    mlpd ws ssh-config lab           a ~/.ssh/config entry for VS Code or PyCharm
    """
    if ctx.invoked_subcommand is not None:
        return
    data = logged_in_client().get("/workspaces", params={"all": 1} if all_users else {})
    if as_json:
        emit_json(data)
        return
    if not data["workspaces"]:
        click.echo("No workspaces. Create one: mlpd ws create NAME [--gpus N]")
        return
    _print_list(data["workspaces"], owners=all_users)


def _wait_running(client, name: str, timeout: float = 600) -> dict:
    """Wait until the workspace's server answers its API (the daemon checks) or its session ends."""
    deadline, said = time.time() + timeout, ""
    while time.time() < deadline:
        w = client.get(f"/workspaces/{name}")["workspace"]
        if w["state"] == "stopped":
            raise click.ClickException(f"workspace {name} stopped: {w['reason'] or 'its server exited'}; see 'mlpd ws logs {name}'")
        if w["state"] == "running" and w.get("ready"):
            return w
        msg = f"{w['state']}" + (f" ({w['reason']})" if w["reason"] else "") + (", JupyterLab starting" if w["state"] == "running" else "")
        if msg != said:
            click.echo(f"workspace {name}: {msg}...", err=True)
            said = msg
        time.sleep(0.3)
    raise click.ClickException(f"workspace {name} is not up after {timeout:.0f} s; see 'mlpd ws logs {name}'")


@ws.command("create")
@click.argument("name")
@click.option("--gpus", type=GPU_COUNT, default=0, show_default=True,
              help="GPUs to pin to it, or a share of one GPU such as 0.5 (time-sliced with other small work).")
@click.option("--gpu-share", is_flag=True, help="Half of one GPU, shared with other small work (as --gpus 0.5).")
@click.option("--gpu-model", help="Only GPUs of this model.")
@click.option("--image", help="Image (default: the daemon's workspaces.image, JupyterLab on the training image).")
@click.option("--requirements", "requirements_file", type=click.Path(exists=True, dir_okay=False), help="A requirements.txt installed into the image (built once, reused).")
@click.option("--cpus", type=float, help="CPU limit.")
@click.option("--memory", help="Memory limit, e.g. 16g.")
@click.option("--wait", is_flag=True, help="If its GPUs are not free, wait in the queue (otherwise fail at once, saying who holds them).")
@click.option("--no-wait-ready", is_flag=True, help="Return once it is created, without waiting for JupyterLab to answer.")
@json_option
def create(name, gpus, gpu_share, gpu_model, image, requirements_file, cpus, memory, wait, no_wait_ready, as_json):
    """Create a workspace NAME and start it: JupyterLab with your home at /home/mlpd."""
    body = {"name": name, "gpus": gpus_wanted(gpus, gpu_share), "gpu_model": gpu_model, "image": image, "cpus": cpus, "memory": memory, "wait": wait}
    if requirements_file:
        with open(requirements_file, encoding="utf-8") as fh:
            body["requirements"] = fh.read()
    client = logged_in_client()
    data = client.post("/workspaces", {k: v for k, v in body.items() if v is not None})
    w = data["workspace"]
    for note in data.get("warnings", []):
        click.echo(f"note: {note}", err=True)
    if not no_wait_ready:
        w = _wait_running(client, name)
    if as_json:
        emit_json({"workspace": w})
        return
    click.echo(f"workspace {name}: {w['state']}" + (f" on GPU {','.join(map(str, w['gpus']['indices']))}" if w["gpus"]["indices"] else ""))
    click.echo(f"  on the host:   {w['url']}")
    click.echo(f"  from elsewhere: mlpd ws tunnel {name} --run")


@ws.command("start")
@click.argument("name")
@click.option("--wait", is_flag=True, help="If its GPUs are not free, wait in the queue.")
@json_option
def start(name, wait, as_json):
    """Start a stopped workspace again (same home; a new Jupyter token and loopback ports: see `mlpd ws tunnel`).
    A stop still under way is waited for first."""
    client = logged_in_client()
    client.post(f"/workspaces/{name}/start", {"wait": wait}, timeout=START_TIMEOUT)  # the daemon first waits for a stop in progress
    w = _wait_running(client, name)
    if as_json:
        emit_json({"workspace": w})
        return
    click.echo(f"workspace {name}: {w['state']}; {w['url']}")


START_TIMEOUT = 90  # seconds: a start waits on the daemon for a stop in progress (mlpd.kinds.workspace.STOP_WAIT) before it starts
STOP_TIMEOUT = 120.0  # seconds: the server gets SIGTERM and is killed after a few seconds


def _stop_and_wait(client, name: str) -> dict:
    """Stop the workspace and wait until it has stopped; its view."""
    w = client.post(f"/workspaces/{name}/stop")["workspace"]
    deadline = time.monotonic() + STOP_TIMEOUT
    while w["state"] != "stopped":
        if time.monotonic() >= deadline:
            raise click.ClickException(f"workspace {name} is still stopping after {STOP_TIMEOUT:.0f} s; see 'mlpd ws show {name}'")
        time.sleep(0.2)
        w = client.get(f"/workspaces/{name}")["workspace"]
    return w


@ws.command("stop")
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return at once, while the server is still being stopped.")
@json_option
def stop(name, no_wait, as_json):
    """Stop a workspace and return once it has stopped: its GPUs are freed; its home and settings stay
    (the next start gets a new token and ports)."""
    client = logged_in_client()
    if no_wait:
        w = client.post(f"/workspaces/{name}/stop")["workspace"]
    else:
        w = _stop_and_wait(client, name)
    if as_json:
        emit_json({"workspace": w})
        return
    if w["state"] == "stopped":
        click.echo(f"workspace {name}: stopped (start it again with 'mlpd ws start {name}')")
    else:
        click.echo(f"workspace {name}: stopping (a start now waits for the stop, then starts it again)")


@ws.command("rm")
@click.argument("name")
@json_option
def rm(name, as_json):
    """Remove a workspace (stopped first). Your home, shared by all your workspaces, stays."""
    client = logged_in_client()
    _stop_and_wait(client, name)  # so that 'mlpd ws rm lab && mlpd ws create lab --gpus 1' finds its GPUs free
    data = client.delete(f"/workspaces/{name}")
    if as_json:
        emit_json(data)
        return
    click.echo(f"workspace {name} removed (your home stays)")


@ws.command("show")
@click.argument("name")
@json_option
def show(name, as_json):
    """One workspace: state, GPUs, idle time, time until culling, history."""
    w = logged_in_client().get(f"/workspaces/{name}")["workspace"]
    if as_json:
        emit_json({"workspace": w})
        return
    click.echo(f"{w['name']}: {w['state']}" + (f" ({w['reason']})" if w["reason"] else ""))
    click.echo(f"  image {w['image']}, GPUs {w['gpus']['count']}" + (f" on {','.join(map(str, w['gpus']['indices']))}" if w["gpus"]["indices"] else ""))
    if w["state"] == "running":
        click.echo(f"  idle {_duration(w['idle_seconds'])}; culled after {_duration(w['idle_timeout'])} idle (in {_duration(w['cull_in_seconds'])})")
        click.echo(f"  {w['url']}")
    for e in w.get("history", []):
        click.echo(f"  {when(e['at'])}  {e['actor']:<10} {e['action']}" + (f"  {e['detail'].get('reason')}" if e["detail"].get("reason") else ""))


@ws.command("logs")
@click.argument("name")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming.")
@click.option("--raw", is_flag=True, help="The bytes as written, escape sequences included (default: shown as text).")
def logs(name, follow, raw):
    """The JupyterLab server's output (current or last session)."""
    from mlpd import termsafe

    client = logged_in_client()
    resp = client.request("GET", f"/workspaces/{name}/logs", stream=True, timeout=None if follow else 60, params={"follow": 1} if follow else {})
    out = termsafe.raw_stdout() if raw else sys.stdout.buffer
    for chunk in resp.iter_content(chunk_size=None):
        out.write(chunk)
        out.flush()


def _reach(name: str, ssh_user: str | None, ssh_host: str | None) -> tuple[dict, str, str]:
    """The workspace's tunnel facts from the daemon, your login and the host to SSH to (a note when it is not running).

    The host is --ssh-host, else the daemon's answer: server.ssh_host where an admin set it, else
    the name this client reached the daemon by (the host of MLPD_URL or the stored login)."""
    t = logged_in_client().get(f"/workspaces/{name}/tunnel")["tunnel"]
    if t["state"] != "running":
        click.echo(f"note: workspace {name} is {t['state']}; start it with 'mlpd ws start {name}'", err=True)
    return t, ssh_user or os.environ.get("USER") or getpass.getuser(), ssh_host or t["ssh_host"]


def on_the_daemons_host() -> bool:
    """Whether this client reaches the daemon on a loopback address: then it runs on this machine,
    and so do the workspaces, whose ports are bound to 127.0.0.1 here (no tunnel is needed)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(logged_in_client().url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refused(port: int) -> bool:
    """Whether nothing listens on this loopback port (a connection is refused)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


@ws.command("tunnel")
@click.argument("name")
@click.option("--run", "run_it", is_flag=True, help="Run the SSH tunnel now (until Ctrl-C) on a free local port.")
@click.option("--local-port", type=int, help="Local port (default: the workspace's port when printing, if free here; a free one with --run).")
@click.option("--ssh-user", default=None, help="Your login on the host (default: $USER).")
@click.option("--ssh-host", default=None, help="The host to SSH to (default: the daemon's server.ssh_host, else the host you reach the daemon by).")
@click.option("--ssh-port", type=int, help="SSH port on the host.")
@click.option("-i", "--identity", type=click.Path(dir_okay=False), help="SSH private key.")
@click.option("-o", "ssh_options", multiple=True, help="Extra ssh -o OPTION (repeatable).")
@json_option
def tunnel(name, run_it, local_port, ssh_user, ssh_host, ssh_port, identity, ssh_options, as_json):
    """Reach a workspace through SSH: prints the ssh command and the URL (with its token); --run runs it.

    On the daemon's own host (you reach the daemon on a loopback address) no tunnel is needed: it
    prints the workspace's URL (give --ssh-host to tunnel anyway, e.g. through a forwarded daemon port)."""
    t, user, host = _reach(name, ssh_user, ssh_host)
    if not ssh_host and on_the_daemons_host():
        if t["state"] == "running" and _refused(t["remote_port"]):
            # the daemon answers on loopback but its workspace port does not: this is not the daemon's host,
            # the daemon is reached through a forwarded port
            raise click.ClickException(f"the daemon is reached on a loopback address, but workspace {name}'s port "
                                       f"{t['remote_port']} does not answer here: if you reach the daemon through a "
                                       f"tunnel of your own, name its host: mlpd ws tunnel {name} --ssh-host HOST")
        url = f"http://127.0.0.1:{t['remote_port']}{t['path']}"
        if as_json:
            emit_json({"tunnel": dict(t, command=None, local_port=t["remote_port"], url=url, needed=False)})
            return
        click.echo(f"workspace {name} runs on this machine: no tunnel is needed", err=True)
        click.echo(f"open: {url}")
        return
    local = local_port or (t["remote_port"] if not run_it and port_free(t["remote_port"]) else free_local_port())
    argv = ["ssh", "-N", "-L", f"{local}:{t['remote_host']}:{t['remote_port']}"]
    if ssh_port:
        argv += ["-p", str(ssh_port)]
    if identity:
        argv += ["-i", identity]
    for option in ssh_options:
        argv += ["-o", option]
    argv += ["-o", "ExitOnForwardFailure=yes", f"{user}@{host}"]
    url = f"http://127.0.0.1:{local}{t['path']}"
    if as_json and not run_it:
        emit_json({"tunnel": dict(t, command=argv, local_port=local, url=url, needed=True)})
        return
    click.echo(("running: " if run_it else "") + " ".join(shlex.quote(a) for a in argv), err=run_it)
    click.echo(f"then open: {url}" if not run_it else f"open: {url}  (Ctrl-C ends the tunnel)", err=run_it)
    if not run_it:
        return
    if as_json:
        emit_json({"tunnel": dict(t, command=argv, local_port=local, url=url, needed=True)})
    sys.stdout.flush()
    sys.exit(run_forwarding_signals(argv))


def run_forwarding_signals(argv: list[str], grace: float = 5.0) -> int:
    """Run argv until it exits; SIGINT, SIGTERM and SIGHUP to this process are passed on to it (and
    it is killed if it has not exited grace seconds later), so that ending `mlpd ws tunnel --run`
    ends its ssh too. 0 when it ended because of such a signal, else its own exit status."""
    import signal

    asked: list[int] = []
    holder: list[subprocess.Popen] = []

    def forward(signum, _frame):
        asked.append(signum)
        if holder and holder[0].poll() is None:
            holder[0].send_signal(signum)

    # The handlers go in before the child starts: a signal in between would end this process and leave ssh behind.
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    deadline = None
    try:
        proc = subprocess.Popen(argv)
        holder.append(proc)
        if asked:  # a signal came while it started: pass it on now
            proc.send_signal(asked[-1])
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if asked:
                    deadline = deadline or time.monotonic() + grace
                    if time.monotonic() >= deadline:
                        proc.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if asked else code


@ws.command("ssh-config")
@click.argument("name")
@click.option("--ssh-user", default=None, help="Your login on the host (default: $USER).")
@click.option("--ssh-host", default=None, help="The host to jump through (default: the daemon's server.ssh_host).")
@click.option("--ssh-port", type=int, help="SSH port on the host.")
@click.option("-i", "--identity", help="The private key of a key you registered with 'mlpd keys add' (IdentityFile).")
def ssh_config(name, ssh_user, ssh_host, ssh_port, identity):
    """A Host entry for ~/.ssh/config: SSH into the workspace itself (VS Code Remote-SSH, PyCharm), jumping through the host.

    Register your public key first: mlpd keys add ~/.ssh/id_ed25519.pub"""
    t, user, host = _reach(name, ssh_user, ssh_host)
    jump = f"{user}@{host}" + (f":{ssh_port}" if ssh_port else "")
    lines = [f"Host mlpd-{name}", "  HostName 127.0.0.1", f"  Port {t['ssh_port']}", "  User mlpd", f"  ProxyJump {jump}",
             f"  HostKeyAlias mlpd-{name}-{t['ssh_port']}"]
    if identity:
        lines.append(f"  IdentityFile {identity}")
    click.echo("\n".join(lines))


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def keys(ctx, as_json):
    """Your SSH public keys, for SSH into your workspaces ('mlpd ws ssh-config'): add one, rm one, or list them."""
    if ctx.invoked_subcommand is not None:
        return
    data = logged_in_client().get("/keys")
    if as_json:
        emit_json(data)
        return
    if not data["keys"]:
        click.echo("No keys. Add one: mlpd keys add ~/.ssh/id_ed25519.pub")
        return
    table([[k["id"], k["type"], k["fingerprint"], k["comment"], when(k["created_at"])] for k in data["keys"]],
          ["ID", "TYPE", "FINGERPRINT", "COMMENT", "ADDED"])


@keys.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
def keys_add(file, as_json):
    """Register the public key in FILE (e.g. ~/.ssh/id_ed25519.pub); running workspaces accept it at once."""
    if not file.endswith(".pub"):
        click.echo("note: this file does not end in .pub; only the public half of a key belongs here", err=True)
    with open(file, encoding="utf-8", errors="replace") as fh:
        text = fh.read(20000)
    data = logged_in_client().post("/keys", {"key": text})
    if as_json:
        emit_json(data)
        return
    click.echo(f"added key {data['key']['id']} ({data['key']['fingerprint']})")


@keys.command("rm")
@click.argument("key_id")
def keys_rm(key_id):
    """Remove a key (by ID or fingerprint)."""
    logged_in_client().delete(f"/keys/{key_id}")
    click.echo(f"removed key {key_id}")


@click.command("ws-idle-timeout")
@click.argument("user")
@click.argument("timeout", required=False)
def admin_idle_timeout(user, timeout):
    """Allow USER's workspaces a longer idle TIMEOUT (e.g. 12h) than the host's workspaces.idle_timeout; none resets it."""
    data = logged_in_client().request("PUT", f"/users/{user}/workspace-idle-timeout", json={"timeout": timeout or None}).json()
    click.echo(f"{user}: workspaces culled after {_duration(data['idle_timeout'])} idle")
