"""Issue 22, isolation at the edges: the daemon keeps serving while clients abuse its connections.

Outcomes only (no timing asserts beyond generous timeouts): log followers that go away and
silent half-sent requests hold no web thread, so /healthz, another user's requests and an
admin's cancel still answer.
"""

from __future__ import annotations

import socket

import requests

from helpers import needs_docker, new_user, wait_for

pytestmark = needs_docker


def _follow_and_leave(port: int, path: str, token: str) -> socket.socket:
    """A client that asks to follow a log (like `curl -N -m 2`), then goes away without a word."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return s


def _answered(s: socket.socket) -> bytes:
    """The status line and headers the daemon sent on s (within the socket's 5 s timeout)."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(4096)
        assert chunk, f"the daemon closed a follower's connection without an answer: {got[:200]!r}"
        got += chunk
    assert got.startswith(b"HTTP/1.1 200") or got.startswith(b"HTTP/1.1 429"), got[:200]
    return got


def _silent_job(d, token: str) -> str:
    resp = d.api("POST", "/api/v1/jobs", token, json={"command": ["sleep", "300"]})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job"]["id"]
    wait_for(lambda: d.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] == "running", 60, 0.2, "the job to run")
    return job_id


def _still_serving(d, job_id: str, owner_token: str, other_token: str) -> None:
    """/healthz, another user's whoami and an admin's cancel answer within a generous 5 s each."""
    assert requests.get(d.url + "/healthz", timeout=5).status_code == 200
    who = requests.get(d.url + "/api/v1/whoami", headers={"Authorization": f"Bearer {other_token}"}, timeout=5)
    assert who.status_code == 200, who.text
    cancel = requests.post(f"{d.url}/api/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {d.admin_token}"}, timeout=5)
    assert cancel.status_code == 200, cancel.text
    wait_for(lambda: requests.get(f"{d.url}/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {owner_token}"},
                                  timeout=5).json()["job"]["state"] == "cancelled", 60, 0.2, "the job to be cancelled")


def test_log_followers_that_go_away_leave_the_daemon_serving(make_daemon):
    d = make_daemon()
    _, alice_token = new_user(d, "alice")
    _, bob_token = new_user(d, "bob")
    job_id = _silent_job(d, alice_token)
    # 40 followers of a silent job, each gone after a moment (break 5: every thread stayed blocked in Docker's log read)
    followers = [_follow_and_leave(d.port, f"/api/v1/jobs/{job_id}/logs?follow=1", alice_token) for _ in range(40)]
    for s in followers:
        _answered(s)  # each got its answer (a stream that opened, or 429 past the cap): its request is being served
    for s in followers:
        s.close()
    _still_serving(d, job_id, alice_token, bob_token)


def test_silent_half_sent_requests_hold_no_web_thread(make_daemon):
    d = make_daemon()
    _, alice_token = new_user(d, "alice")
    _, bob_token = new_user(d, "bob")
    job_id = _silent_job(d, alice_token)
    # 100 connections that send one byte of a request and then nothing (break 6), held meanwhile
    silent = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        s.sendall(b"G")
        silent.append(s)
    try:
        _still_serving(d, job_id, alice_token, bob_token)
    finally:
        for s in silent:
            s.close()


def test_open_log_streams_are_capped_per_user_with_a_clear_error(make_daemon):
    d = make_daemon()
    _, token = new_user(d, "carol")
    resp = d.api("POST", "/api/v1/jobs", token, json={"command": ["sleep", "300"]})
    job_id = resp.json()["job"]["id"]
    wait_for(lambda: d.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] == "running", 60, 0.2, "the job to run")
    url = f"{d.url}/api/v1/jobs/{job_id}/logs?follow=1"
    held = [requests.get(url, headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=10) for _ in range(4)]
    try:
        assert all(r.status_code == 200 for r in held)
        over = requests.get(url, headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=10)
        assert over.status_code == 429
        error = over.json()["error"]
        assert error["code"] == "too_many_streams" and "server.log_streams_per_user" in error["message"] and "4" in error["message"]
    finally:
        for r in held:
            r.close()
    # the streams' slots come back once their clients have gone
    def slot_free() -> bool:
        with requests.get(url, headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=10) as r:
            return r.status_code == 200

    wait_for(slot_free, 10, 0.3, "a slot to come back")
    d.api("POST", f"/api/v1/jobs/{job_id}/cancel", d.admin_token)
