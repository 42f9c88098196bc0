"""Workspaces end to end: a real JupyterLab in a real container, a real OpenSSH server for the tunnel.

One daemon for the module (2 declared GPUs; idle timeout 8 s, checked every second), so the
culling case is quick; members whose workspaces must not be culled meanwhile get a longer
timeout from an admin, which is itself part of what is shown.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
import uuid

import pytest
import requests

from conftest import BIN, RunningDaemon, remove_containers
from helpers import free_port, needs_docker, new_user, wait_for, worker_passes_since

pytestmark = [needs_docker, pytest.mark.docker]


@pytest.fixture(scope="module")
def wsd(tmp_path_factory):
    base = tmp_path_factory.mktemp("ws")
    (base / "home").mkdir()
    cfg = base / "mlpd.toml"
    cfg.write_text('[workspaces]\nidle_timeout = "8s"\ncull_interval = 1.0\n[scheduler]\nreconcile_interval = 1.0\n')
    d = RunningDaemon(base / "state", base / "home", ["--declare-gpus", "2"], config_file=cfg)
    d.start()
    d.admin_token = d.add_user("root", admin=True)
    yield d
    d.stop()
    remove_containers(d)


def member(d, long_timeout=True):
    name, token = new_user(d, "w")
    if long_timeout:  # an admin allows this member longer than the host's 8 s
        r = d.cli("admin", "ws-idle-timeout", name, "1h")
        assert r.returncode == 0 and "after 1h idle" in r.stdout, r.stderr
    return name, token


def create(d, token, name, **body):
    r = d.api("POST", "/api/v1/workspaces", token, json={"name": name, **body})
    assert r.status_code == 201, r.text
    return ready(d, token, name)


def ready(d, token, name, timeout=120):
    def up():
        w = d.api("GET", f"/api/v1/workspaces/{name}", token).json()["workspace"]
        assert w["state"] != "stopped", w
        return w if w["ready"] else None
    return wait_for(up, timeout, 0.3, f"workspace {name} to answer")


def stopped(d, token, name, timeout=60):
    return wait_for(lambda: (w := d.api("GET", f"/api/v1/workspaces/{name}", token).json()["workspace"])["state"] == "stopped" and w,
                    timeout, 0.3, f"workspace {name} to stop")


def jupyter(w, path, method="GET", token=True, **kwargs):
    headers = {"Authorization": f"token {w['token']}"} if token else {}
    return requests.request(method, f"http://127.0.0.1:{w['port']}{path}", headers=headers, timeout=30, **kwargs)


def execute(w, kernel_id, code, wait=True, timeout=90):
    """Run code in a kernel through Jupyter's websocket API; its stdout (with wait)."""
    import websocket

    ws = websocket.create_connection(f"ws://127.0.0.1:{w['port']}/api/kernels/{kernel_id}/channels?token={w['token']}", timeout=timeout)
    msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
    ws.send(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": session, "msg_type": "execute_request", "version": "5.3", "date": ""},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    if not wait:
        # Once the kernel says it is busy with the cell, closing the socket no longer interrupts it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = json.loads(ws.recv())
            if (m.get("parent_header", {}).get("msg_id") == msg_id and m["msg_type"] == "status"
                    and m["content"]["execution_state"] == "busy"):
                break
        else:
            raise AssertionError(f"the kernel did not start the cell within {timeout}s")
        ws.close()
        return ""
    out, replied, idle = [], False, False
    while not (replied and idle):
        m = json.loads(ws.recv())
        if m.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = m["msg_type"]
        if kind == "stream":
            out.append(m["content"]["text"])
        elif kind == "error":
            raise AssertionError(f"{m['content']['ename']}: {m['content']['evalue']}")
        elif kind == "execute_reply":
            replied = True
        elif kind == "status" and m["content"]["execution_state"] == "idle":
            idle = True
    ws.close()
    return "".join(out)


def kernel(w):
    r = jupyter(w, "/api/kernels", "POST", json={"name": "python3"})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_a_home_survives_stop_start_and_recreate_and_the_server_needs_its_token(wsd):
    name, token = member(wsd)
    w = create(wsd, token, "lab")
    assert w["state"] == "running" and w["image"] == "mlpd/workspace:latest" and w["url"].endswith(f"?token={w['token']}")
    assert jupyter(w, "/api/kernels", token=False).status_code == 403
    assert jupyter(w, "/api/kernels?token=wrong", token=False).status_code == 403
    k = kernel(w)
    secret = uuid.uuid4().hex
    out = execute(w, k, f"import os, subprocess\nopen(os.path.expanduser('~/note.txt'), 'w').write('{secret}')\n"
                        "print(os.getcwd(), subprocess.run(['mlpd', 'whoami'], capture_output=True, text=True).stdout)")
    assert out.startswith("/home/mlpd ") and f"{name} (member)" in out  # the mlpd CLI, as its owner, never as more
    r = wsd.api("POST", "/api/v1/workspaces/lab/stop", token)
    assert r.status_code == 200
    w2 = stopped(wsd, token, "lab")
    assert w2["reason"] == f"stopped by {name}" and w2["gpus"]["indices"] == []
    # issue 22, break 7: another local account takes the stopped workspace's port, waiting for the owner's token
    import socket as _socket

    squatter = _socket.socket()
    # as servers do: without it the bind fails while a connection the stopped server closed is in TIME_WAIT
    squatter.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", w["port"]))
    squatter.listen()
    try:
        assert wsd.api("POST", "/api/v1/workspaces/lab/start", token, json={}).status_code == 200
        w3 = ready(wsd, token, "lab")
    finally:
        squatter.close()
    assert w3["port"] != w["port"] and w3["ssh_port"] != w["ssh_port"] and w3["session"] != w["session"]
    assert w3["token"] != w["token"]  # a token the squatter might have read is worth nothing now
    assert jupyter({**w3, "token": w["token"]}, "/api/kernels").status_code == 403
    assert execute(w3, kernel(w3), "print(open('/home/mlpd/note.txt').read())").strip() == secret
    assert wsd.api("DELETE", "/api/v1/workspaces/lab", token).status_code == 200
    assert wsd.api("GET", "/api/v1/workspaces/lab", token).status_code == 404
    w4 = create(wsd, token, "lab")
    assert execute(w4, kernel(w4), "print(open('/home/mlpd/note.txt').read())").strip() == secret
    listed = wsd.cli("ws", "--json", token=token)
    assert [x["name"] for x in json.loads(listed.stdout)["workspaces"]] == ["lab"]
    table = wsd.cli("ws", token=token).stdout
    row = next(line.split() for line in table.splitlines() if line.startswith("lab "))
    assert row[1] == "running" and (row[4] == "1h" or row[4].startswith("59m")), table  # time until culling, in the list
    wsd.api("DELETE", "/api/v1/workspaces/lab", token)


@pytest.fixture
def sshd(tmp_path):
    """A real OpenSSH server on a loopback port with a throwaway host key; the test's key may log in as this user."""
    if os.geteuid() != 0:
        pytest.skip("starting sshd for a user login needs root (CI runs as root)")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "user_key")], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "user_key.pub").read_text())
    os.makedirs("/run/sshd", exist_ok=True)
    port = free_port()
    cfg = tmp_path / "sshd_config"
    cfg.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp_path}/host_key\nAuthorizedKeysFile {tmp_path}/authorized_keys\n"
                   f"PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\n"
                   f"UsePAM no\nPidFile {tmp_path}/sshd.pid\nAllowTcpForwarding yes\n")
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for(lambda: subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True).returncode == 0, 20, 0.2, "sshd")
    yield port, tmp_path / "user_key"
    proc.terminate()
    proc.wait(timeout=10)


def test_ws_stop_and_start_as_the_readme_chains_them_restart_it_every_time(wsd):
    name, token = member(wsd)
    w = create(wsd, token, "again", gpus=1)
    stop = wsd.cli("ws", "stop", "again", token=token)
    assert stop.returncode == 0 and "workspace again: stopped" in stop.stdout, stop.stderr
    shown = wsd.api("GET", "/api/v1/workspaces/again", token).json()["workspace"]
    assert shown["state"] == "stopped" and shown["gpus"]["indices"] == []  # stopped when stop returned, its GPU free
    start = wsd.cli("ws", "start", "again", token=token)
    assert start.returncode == 0 and "workspace again: running" in start.stdout, start.stderr
    # Without waiting for the stop, a start right after it waits for the stop on the daemon, then starts.
    before = wsd.api("GET", "/api/v1/workspaces/again", token).json()["workspace"]
    assert before["session"] != w["session"]
    quick = wsd.cli("ws", "stop", "--no-wait", "again", token=token)
    assert quick.returncode == 0 and "stopping" in quick.stdout, quick.stderr
    again = wsd.api("POST", "/api/v1/workspaces/again/start", token, json={})
    assert again.status_code == 200, again.text
    w3 = ready(wsd, token, "again")
    assert w3["session"] != before["session"] and w3["gpus"]["indices"]
    stopped_one = wsd.api("GET", f"/api/v1/jobs/{before['session']}", token).json()["job"]
    assert stopped_one["state"] == "cancelled" and stopped_one["reason"] == f"stopped by {name}"
    assert wsd.cli("ws", "stop", "again", token=token).returncode == 0
    assert wsd.cli("ws", "stop", "again", token=token).returncode == 0  # stopping a stopped one is a no-op
    wsd.api("DELETE", "/api/v1/workspaces/again", token)


def test_ws_tunnel_run_forwards_a_local_port_to_jupyterlab_through_a_real_sshd(wsd, sshd):
    import getpass

    name, token = member(wsd)
    w = create(wsd, token, "tun")
    port, key = sshd
    # On the daemon's own host (MLPD_URL on loopback) no tunnel is needed: the URL works as it is.
    here = wsd.cli("ws", "tunnel", "tun", token=token)
    assert here.returncode == 0, here.stderr
    assert "no tunnel is needed" in here.stderr and "ssh" not in here.stdout
    assert here.stdout.strip() == f"open: http://127.0.0.1:{w['port']}/lab?token={w['token']}"
    # Told to tunnel anyway, it never offers the workspace's own port, which is taken on this host.
    printed = wsd.cli("ws", "tunnel", "tun", "--ssh-host", "127.0.0.1", token=token)
    assert printed.returncode == 0, printed.stderr
    shown_local = int(printed.stdout.split("ssh -N -L ", 1)[1].split(":", 1)[0])
    assert shown_local != w["port"] and f":127.0.0.1:{w['port']} " in printed.stdout and f"/lab?token={w['token']}" in printed.stdout
    for sig in (signal.SIGINT, signal.SIGTERM):
        local = free_port()
        proc = subprocess.Popen([BIN, "ws", "tunnel", "tun", "--run", "--local-port", str(local), "--ssh-host", "127.0.0.1",
                                 "--ssh-port", str(port), "--ssh-user", getpass.getuser(), "-i", str(key), "-o", "StrictHostKeyChecking=no",
                                 "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"],
                                env=wsd.env(token), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def through():
                try:
                    return requests.get(f"http://127.0.0.1:{local}/api/status", headers={"Authorization": f"token {w['token']}"}, timeout=3).ok
                except requests.RequestException:
                    assert proc.poll() is None, proc.stderr.read()
                    return False
            wait_for(through, 30, 0.3, "JupyterLab through the tunnel")
            assert requests.get(f"http://127.0.0.1:{local}/api/kernels", timeout=5).status_code == 403  # the tunnel is no way around the token
            ssh = children(proc.pid)
            assert ssh, "no ssh child"
        finally:
            proc.send_signal(sig)
            proc.wait(timeout=10)
        assert proc.returncode == 0, (sig, proc.returncode, proc.stderr.read())
        wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read() for pid in ssh),
                 10, 0.1, f"ssh to end with mlpd ws tunnel --run ({sig!r})")
    # A daemon on loopback whose running workspace does not answer here is one reached through a
    # tunnel of the user's own (played by pointing the row at a port nothing listens on): no "no tunnel needed".
    with sqlite3.connect(wsd.state_dir / "mlpd.db") as db:
        db.execute("UPDATE workspaces SET port = ? WHERE id = ?", [free_port(), w["id"]])
    elsewhere = wsd.cli("ws", "tunnel", "tun", token=token)
    assert elsewhere.returncode == 1 and "no tunnel is needed" not in elsewhere.stderr, elsewhere.stderr
    assert "--ssh-host HOST" in elsewhere.stderr and "does not answer here" in elsewhere.stderr, elsewhere.stderr
    wsd.api("DELETE", "/api/v1/workspaces/tun", token)


def children(pid: int) -> list[int]:
    """The pids whose parent is pid (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def test_ws_tunnel_names_the_host_the_client_reached_the_daemon_by(wsd):
    """Not this machine's own name (getfqdn: often 'localhost'), but the host of MLPD_URL, unless server.ssh_host is set."""
    import socket as _socket
    import threading

    name, token = member(wsd)
    w = create(wsd, token, "far")
    addr = next((a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
                 if "." in a and not a.startswith("127.")), None)
    if addr is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    # the daemon listens on loopback: a small forwarder stands in for reaching it from another machine
    listener = _socket.create_server((addr, 0))
    fwd_port = listener.getsockname()[1]

    def pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(_socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            up = _socket.create_connection(("127.0.0.1", wsd.port))
            threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
            threading.Thread(target=pipe, args=(up, conn), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        env = dict(wsd.env(token), MLPD_URL=f"http://{addr}:{fwd_port}")
        out = subprocess.run([BIN, "ws", "tunnel", "far", "--ssh-user", "nina"], capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode == 0, out.stderr
        assert f":127.0.0.1:{w['port']} " in out.stdout and out.stdout.split("\n")[0].endswith(f" nina@{addr}"), out.stdout
        assert "localhost" not in out.stdout
    finally:
        listener.close()
    wsd.api("DELETE", "/api/v1/workspaces/far", token)


def test_members_cannot_reach_each_others_workspaces_and_homes(wsd):
    alice, atok = member(wsd)
    bob, btok = member(wsd)
    w = create(wsd, atok, "lab")
    execute(w, kernel(w), "open('/home/mlpd/alice-only.txt', 'w').write('x')")
    for method, path in (("GET", "/lab"), ("POST", "/lab/stop"), ("POST", "/lab/start"), ("GET", "/lab/logs"), ("GET", "/lab/tunnel"),
                         ("DELETE", "/lab"), ("GET", f"/lab?owner={alice}"), ("GET", f"/lab/tunnel?owner={alice}")):
        r = wsd.api(method, f"/api/v1/workspaces{path}", btok, json={} if method == "POST" else None)
        assert r.status_code == 404, (method, path, r.text)
        assert w["token"] not in r.text
    assert all(x["owner"] == bob for x in wsd.api("GET", "/api/v1/workspaces?all=1", btok).json()["workspaces"])
    assert wsd.api("PUT", f"/api/v1/users/{bob}/workspace-idle-timeout", btok, json={"timeout": "99h"}).status_code == 403
    for bad in ({"mounts": ["/:/host"]}, {"volumes": {"/": "/host"}}, {"user": "0"}, {"privileged": True}):
        r = wsd.api("POST", "/api/v1/workspaces", btok, json={"name": "evil", **bad})
        assert r.status_code == 400, r.text
    assert wsd.api("GET", "/api/v1/workspaces/evil", btok).status_code == 404
    wb = create(wsd, btok, "lab")  # the same name is another workspace for another member
    homes = {}
    for who, x in ((alice, w), (bob, wb)):
        mounts = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Mounts}}", f"mlpd-job-{x['session']}"],
                                           capture_output=True, text=True, check=True).stdout)
        homes[who] = [m["Source"] for m in mounts if m["Destination"] == "/home/mlpd"]
        assert homes[who] == [str(wsd.state_dir / "homes" / who)]
        ports = subprocess.run(["docker", "port", f"mlpd-job-{x['session']}"], capture_output=True, text=True).stdout
        assert sorted(ports.split("\n")[:2]) == sorted([f"8888/tcp -> 127.0.0.1:{x['port']}", f"2222/tcp -> 127.0.0.1:{x['ssh_port']}"]), ports  # loopback only
    assert "alice-only.txt" not in execute(wb, kernel(wb), "import os; print(sorted(os.listdir('/home/mlpd')))")
    assert (wsd.state_dir / "homes" / alice / "alice-only.txt").exists()
    for tok in (atok, btok):
        wsd.api("DELETE", "/api/v1/workspaces/lab", tok)


def test_an_idle_workspace_is_culled_and_frees_its_gpu_but_a_busy_kernel_is_not(wsd):
    name, token = member(wsd, long_timeout=False)  # the host's 8 s
    idle = create(wsd, token, "idle", gpus=1)
    busy = create(wsd, token, "busy")
    assert idle["gpus"]["indices"] and idle["idle_timeout"] == 8
    execute(busy, kernel(busy), "import time; time.sleep(25)", wait=False)
    culled = stopped(wsd, token, "idle", timeout=40)
    assert culled["reason"].startswith("culled: idle "), culled
    assert culled["gpus"]["indices"] == []
    gpus = wsd.api("GET", "/api/v1/gpus", token).json()
    assert not any(g.get("holder") and g["holder"].get("job_id") == idle["session"] for g in gpus["gpus"]), gpus
    # The busy one outlived the idle one's timeout while its cell ran...
    w = wsd.api("GET", "/api/v1/workspaces/busy", token).json()["workspace"]
    assert w["state"] == "running" and w["idle_seconds"] < 8, w
    time.sleep(6)
    assert wsd.api("GET", "/api/v1/workspaces/busy", token).json()["workspace"]["state"] == "running"
    # ...and is culled once the cell has ended and the timeout has passed.
    assert stopped(wsd, token, "busy", timeout=60)["reason"].startswith("culled: idle ")
    shown = wsd.cli("ws", token=token).stdout
    assert "culled: idle" in shown
    ended = wsd.api("POST", "/api/v1/workspaces/idle/start", token, json={})
    assert ended.status_code == 200
    assert ready(wsd, token, "idle")["state"] == "running"  # start brings it back
    for n in ("idle", "busy"):
        wsd.api("DELETE", f"/api/v1/workspaces/{n}", token)


def test_a_workspace_wanting_busy_gpus_fails_at_once_naming_holders_or_waits_for_them(wsd):
    jobber, jtok = member(wsd)
    name, token = member(wsd)
    r = wsd.api("POST", "/api/v1/jobs", jtok, json={"command": ["sleep", "300"], "gpus": 2})
    assert r.status_code == 201
    job_id = r.json()["job"]["id"]
    wait_for(lambda: wsd.api("GET", f"/api/v1/jobs/{job_id}", jtok).json()["job"]["state"] == "running", 60, 0.2, "the job to run")
    refused = wsd.cli("ws", "create", "gpu", "--gpus", "1", token=token)
    assert refused.returncode == 1
    assert "only 0 are free" in refused.stderr and f"held by job {job_id[:12]} of {jobber}" in refused.stderr and "--wait" in refused.stderr
    assert wsd.api("GET", "/api/v1/workspaces/gpu", token).status_code == 404  # nothing was left behind
    waiting = subprocess.Popen([BIN, "ws", "create", "gpu", "--gpus", "1", "--wait", "--json"], env=wsd.env(token),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: wsd.api("GET", "/api/v1/workspaces/gpu", token).json().get("workspace", {}).get("state") == "queued", 30, 0.2, "queued")
    assert wsd.api("POST", f"/api/v1/jobs/{job_id}/cancel", jtok).status_code == 200
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    w = json.loads(out)["workspace"]
    assert w["state"] == "running" and len(w["gpus"]["indices"]) == 1
    usage = wsd.api("GET", "/api/v1/usage?by=kind", wsd.admin_token).json()
    assert "workspace" in json.dumps(usage)
    wsd.api("DELETE", "/api/v1/workspaces/gpu", token)


def test_a_killed_daemon_leaves_workspaces_running_reachable_and_booked_once(wsd):
    name, token = member(wsd)
    w = create(wsd, token, "keep", gpus=1)
    wsd.stop(signal.SIGKILL)
    killed_at = time.time()
    assert jupyter(w, "/api/status").ok  # the server does not depend on the daemon
    wsd.start()
    wait_for(lambda: worker_passes_since(wsd.state_dir, killed_at) >= 3, 60, 0.2, "three reconcile passes of the new worker")
    again = ready(wsd, token, "keep")
    assert again["session"] == w["session"] and again["state"] == "running" and again["gpus"] == w["gpus"]
    assert jupyter(w, "/api/status").ok
    db = sqlite3.connect(wsd.state_dir / "mlpd.db")
    rows = db.execute("SELECT kind, start, end FROM allocations WHERE object_id = ?", [w["session"]]).fetchall()
    assert len(rows) == 1 and rows[0][0] == "workspace" and rows[0][2] is None, rows
    wsd.api("DELETE", "/api/v1/workspaces/keep", token)
    stopped_row = wait_for(lambda: db.execute("SELECT start, end FROM allocations WHERE object_id = ? AND end IS NOT NULL",
                                              [w["session"]]).fetchone(), 30, 0.3, "the allocation to close")
    assert stopped_row[1] >= stopped_row[0]


def test_a_notebook_runs_as_a_job_with_its_parameters_and_an_mlflow_run(wsd, tmp_path):
    import tarfile

    name, token = member(wsd)
    code = tmp_path / "nb"
    code.mkdir()
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "epochs = 1\n", "outputs": [], "execution_count": None},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
         "source": "import mlflow\nwith mlflow.start_run() as run:\n    mlflow.log_param('epochs', epochs)\n"
                   "    mlflow.log_metric('loss', 1.0 / epochs)\nprint('trained', epochs, 'epochs')\n"},
    ]
    (code / "train.ipynb").write_text(json.dumps({"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                  "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}))
    r = wsd.cli("run", "--json", "--code", str(code), "train.ipynb", "--param", "epochs=2", token=token)
    assert r.returncode == 0, r.stderr
    job_id = json.loads(r.stdout)["job"]["id"]
    job = wait_for(lambda: (j := wsd.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"])["state"] in ("succeeded", "failed") and j,
                   180, 0.5, "the notebook job")
    assert job["state"] == "succeeded", wsd.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
    assert job["command"][:3] == ["papermill", "train.ipynb", "/outputs/train.ipynb"]
    out = wsd.api("GET", f"/api/v1/jobs/{job_id}/outputs", token)
    (tmp_path / "o.tgz").write_bytes(out.content)
    with tarfile.open(tmp_path / "o.tgz") as tar:
        executed = json.loads(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("train.ipynb"))).read())
    text = json.dumps(executed)
    assert "epochs = 2" in text and "trained 2 epochs" in text  # papermill's injected parameters, then the output
    runs = job["mlflow_runs"]
    assert len(runs) == 1
    got = wsd.api("GET", f"/mlflow/api/2.0/mlflow/runs/get?run_id={runs[0]['run_id']}", token).json()["run"]["data"]
    assert {"key": "epochs", "value": "2"} in got["params"]


def test_ssh_into_the_workspace_itself_through_the_host_with_a_registered_key(wsd, sshd, tmp_path):
    import getpass

    name, token = member(wsd)
    other, otoken = member(wsd)
    port, key = sshd
    w = create(wsd, token, "ide")  # issue 23 item 6: the first key, added while the workspace runs, works at once
    bad = wsd.cli("keys", "add", str(key), token=token)  # the private half is refused
    assert bad.returncode == 1 and "public key" in bad.stderr
    added = wsd.cli("keys", "add", f"{key}.pub", "--json", token=token)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["key"]["fingerprint"].startswith("SHA256:")
    evil = wsd.api("POST", "/api/v1/keys", token, json={"key": 'command="sh" ' + (tmp_path / "x").name})
    assert evil.status_code == 400
    cfg = wsd.cli("ws", "ssh-config", "ide", "--ssh-host", "127.0.0.1", "--ssh-port", str(port), "--ssh-user", getpass.getuser(),
                  "-i", str(key), token=token)
    assert cfg.returncode == 0, cfg.stderr
    assert f"Port {w['ssh_port']}" in cfg.stdout and f"ProxyJump {getpass.getuser()}@127.0.0.1:{port}" in cfg.stdout
    config = tmp_path / "ssh_config"
    config.write_text(cfg.stdout + f"\nHost *\n  IdentityFile {key}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                      "  BatchMode yes\n  LogLevel ERROR\n  ConnectTimeout 10\n")
    run = subprocess.run(["ssh", "-F", str(config), "mlpd-ide", "id -u; pwd; mlpd whoami; echo CUDA=$CUDA_VISIBLE_DEVICES"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "65200" and lines[1] == "/home/mlpd" and lines[2].startswith(f"{name} (member)") and lines[3] == "CUDA="
    # Another member's workspace (with an sshd for that member's own key) does not take this key.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other_key")], check=True)
    assert wsd.cli("keys", "add", str(tmp_path / "other_key.pub"), token=otoken).returncode == 0
    wo = create(wsd, otoken, "ide")
    cfg_other = wsd.cli("ws", "ssh-config", "ide", "--ssh-host", "127.0.0.1", "--ssh-port", str(port), "--ssh-user", getpass.getuser(),
                        token=otoken).stdout.replace("Host mlpd-ide", "Host other-ide")
    (tmp_path / "other").write_text(cfg_other + f"\nHost *\n  IdentityFile {key}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                                    "  BatchMode yes\n  LogLevel ERROR\n")
    denied = subprocess.run(["ssh", "-F", str(tmp_path / "other"), "other-ide", "true"], capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, (wo["ssh_port"], denied.stderr)
    assert wsd.cli("keys", "rm", json.loads(added.stdout)["key"]["id"], token=token).returncode == 0
    gone = subprocess.run(["ssh", "-F", str(config), "mlpd-ide", "true"], capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0  # a removed key no longer opens it, without a restart
    for tok in (token, otoken):
        wsd.api("DELETE", "/api/v1/workspaces/ide", tok)


def test_the_jupyterlab_terminal_runs_bash_in_the_home_with_mlflow_set(wsd):
    """Issue 23 item 5: JupyterLab had no terminal (terminalsAvailable false, /api/terminals 404)."""
    import websocket

    name, token = member(wsd)
    w = create(wsd, token, "term")
    created = jupyter(w, "/api/terminals", "POST")
    assert created.status_code == 200, created.text
    term = created.json()["name"]
    ws = websocket.create_connection(f"ws://127.0.0.1:{w['port']}/terminals/websocket/{term}?token={w['token']}", timeout=30)
    ws.send(json.dumps(["stdin", "echo SHELL=$0 HOME=$HOME PWD=$(pwd) URI=$MLFLOW_TRACKING_URI; mlpd whoami\r"]))
    out, deadline = "", time.monotonic() + 30
    while "(member)" not in out and time.monotonic() < deadline:
        msg = json.loads(ws.recv())
        if msg[0] == "stdout":
            out += msg[1]
    ws.close()
    assert "SHELL=/bin/bash" in out and "HOME=/home/mlpd PWD=/home/mlpd" in out and "URI=http" in out, out
    assert f"{name} (member)" in out, out
    listed = jupyter(w, "/api/terminals").json()
    assert [t["name"] for t in listed] == [term] and listed[0].get("last_activity")  # what culling reads as activity
    wsd.api("DELETE", "/api/v1/workspaces/term", token)


def test_a_workspace_with_requirements_runs_in_its_environment(wsd, tmp_path):
    name, token = member(wsd)
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(f"# workspace test {uuid.uuid4().hex}\nhumanize==4.17.0\n")
    made = wsd.cli("ws", "create", "envs", "--requirements", str(reqs), "--json", token=token, timeout=600)
    assert made.returncode == 0, made.stderr
    w = json.loads(made.stdout)["workspace"]
    assert w["spec"]["requirements"] == reqs.read_text()
    out = execute(w, kernel(w), "import humanize, jupyterlab; print(humanize.naturalsize(3000000), jupyterlab.__version__)")
    assert out.strip() == "3.0 MB 4.6.6"
    logs = wsd.cli("ws", "logs", "envs", token=token).stdout
    assert "humanize" in logs  # the environment's build log comes first
    wsd.api("DELETE", "/api/v1/workspaces/envs", token)


def test_an_admins_workspace_session_token_acts_as_a_member_mints_nothing_and_dies_with_the_session(wsd):
    """Issue 22, break 3: from inside an admin's workspace, POST /api/v1/tokens made a permanent admin token."""
    admin_name = f"a{uuid.uuid4().hex[:8]}"
    r = wsd.api("POST", "/api/v1/users", wsd.admin_token, json={"name": admin_name, "admin": True})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert wsd.cli("admin", "ws-idle-timeout", admin_name, "1h").returncode == 0
    w = create(wsd, token, "adminlab")
    out = execute(w, kernel(w), """
import json, os, urllib.request, urllib.error
def call(method, path, body=None):
    req = urllib.request.Request(os.environ["MLPD_URL"] + "/api/v1" + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": "Bearer " + os.environ["MLPD_TOKEN"], "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
print(json.dumps({"token": os.environ["MLPD_TOKEN"], "whoami": call("GET", "/whoami"), "mint": call("POST", "/tokens", {"label": "keep"}),
                  "list": call("GET", "/tokens")[0], "key": call("POST", "/keys", {"key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJx7 me"})[0],
                  "password": call("POST", "/password", {"old": "x", "new": "y" * 20})[0], "users": call("GET", "/users")[0],
                  "jobs": call("GET", "/jobs")[0]}))
""")
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["whoami"][0] == 200 and seen["whoami"][1]["user"]["role"] == "member", seen["whoami"]
    assert seen["mint"][0] == 403 and "workspace session" in seen["mint"][1]["error"]["message"], seen["mint"]
    assert (seen["list"], seen["key"], seen["password"], seen["users"]) == (403, 403, 403, 403), seen
    assert seen["jobs"] == 200  # a member's own work goes on from the notebook
    assert wsd.api("POST", "/api/v1/workspaces/adminlab/stop", token).status_code == 200
    stopped(wsd, token, "adminlab")
    assert wsd.api("GET", "/api/v1/whoami", seen["token"]).status_code == 401  # the session's token died with it
    wsd.api("DELETE", "/api/v1/workspaces/adminlab", token)
