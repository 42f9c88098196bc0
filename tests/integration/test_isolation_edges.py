"""Issue 22's breaks that a member's job reaches through the CLI: a real daemon, real Docker, the real `mlpd`."""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

from helpers import needs_docker, new_user, wait_for

pytestmark = needs_docker

TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition
# OSC 52 (write the clipboard), clear the screen, retitle the window, and a colour.
HOSTILE = r"print('before\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b[31mred\x1b[0m after', flush=True)"


def test_mlpd_logs_shows_a_jobs_escape_sequences_as_nothing_unless_raw(daemon):
    """Issue 22, break 11: `mlpd logs` wrote job output to the terminal raw, OSC 52 and screen clears included."""
    _, token = new_user(daemon, "esc")
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["python3", "-c", HOSTILE]})
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job"]["id"]
    wait_for(lambda: daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] in TERMINAL, 90, 0.2, "the job to end")
    shown = daemon.cli("logs", job_id, token=token)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert "before" in shown.stdout and "red after" in shown.stdout
    raw = daemon.cli("logs", "--raw", job_id, token=token)
    assert "\x1b]52;c;cm0gLXJmIH4K\x07" in raw.stdout  # the bytes, for whoever asks for them
    following = daemon.cli("run", "-f", "--", "python3", "-c", HOSTILE, token=token)
    assert "\x1b" not in following.stdout + following.stderr and "red after" in following.stdout
