"""Isolation at the edges (issue 22): one member's containers reach the daemon, never another's.

Real daemon, real Docker: every container mlpd starts is on its own bridge network with
inter-container traffic off, and host.docker.internal is where the daemon listens for them.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import json
import subprocess

from helpers import needs_docker, new_user, wait_for

pytestmark = needs_docker
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition

PROBE = """
import os, socket, sys, urllib.request
health = urllib.request.urlopen(os.environ["MLPD_URL"] + "/healthz", timeout=10).status
print("HEALTHZ", health, flush=True)
if len(sys.argv) > 1:
    try:
        socket.create_connection((sys.argv[1], 8000), timeout=5).close()
        print("NEIGHBOUR reached", flush=True)
    except OSError as exc:
        print("NEIGHBOUR unreachable", exc, flush=True)
else:
    server = socket.create_server(("0.0.0.0", 8000))
    print("LISTENING", flush=True)
    while True:
        server.accept()[0].close()
"""


def submit(daemon, token, command):
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": command})
    assert resp.status_code in (200, 201), resp.text
    return resp.json()["job"]["id"]


def logs(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text


def test_one_members_container_cannot_reach_anothers_but_both_reach_the_daemon(daemon):
    alice, alice_token = new_user(daemon)
    bob, bob_token = new_user(daemon)
    listener = submit(daemon, alice_token, ["python3", "-c", PROBE])
    try:
        wait_for(lambda: "LISTENING" in logs(daemon, alice_token, listener), 120, 0.5, "alice's job to listen")
        assert "HEALTHZ 200" in logs(daemon, alice_token, listener)
        inspect = json.loads(subprocess.run(["docker", "inspect", f"mlpd-job-{listener}"], capture_output=True, text=True).stdout)[0]
        networks = inspect["NetworkSettings"]["Networks"]
        assert list(networks) == ["mlpd-isolated"], list(networks)
        address = networks["mlpd-isolated"]["IPAddress"]
        prober = submit(daemon, bob_token, ["python3", "-c", PROBE, address])
        ended = wait_for(lambda: (j := daemon.api("GET", f"/api/v1/jobs/{prober}", bob_token).json()["job"])["state"] in TERMINAL and j,
                         120, 0.5, "bob's job to end")
        out = logs(daemon, bob_token, prober)
        assert ended["state"] == "succeeded", f"{ended['reason']}\n{out}"
        assert "HEALTHZ 200" in out and "NEIGHBOUR unreachable" in out, out
    finally:
        daemon.api("POST", f"/api/v1/jobs/{listener}/cancel", alice_token)
