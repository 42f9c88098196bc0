"""What a new user reaches for in the first hour: id prefixes, run --follow, logs --tail, rerun, logout,
and `mlpd submit` shipping the job file's directory. Real daemon, real containers, the CLI as typed."""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import json

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition



def state(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]


def test_run_follow_prefixes_tail_and_rerun(daemon, tmp_path):
    _, token = new_user(daemon)
    (tmp_path / "count.py").write_text("for i in range(5):\n    print('line', i)\n")
    followed = daemon.cli("run", "--follow", "--", "python", "count.py", token=token, cwd=str(tmp_path), timeout=180)
    assert followed.returncode == 0, followed.stderr
    assert "line 4" in followed.stdout  # streamed until the job ended
    job_id = next(line for line in followed.stdout.splitlines() if len(line) == 12)
    wait_for(lambda: state(daemon, token, job_id)["state"] in TERMINAL, 60, 0.2, "the job to end")
    prefix = job_id[:5]
    shown = daemon.cli("jobs", "show", prefix, token=token)
    assert shown.returncode == 0 and job_id in shown.stdout, shown.stderr
    tail = daemon.cli("logs", "--tail", "2", prefix, token=token)
    assert tail.returncode == 0 and tail.stdout.splitlines() == ["line 3", "line 4"], tail.stdout
    nothing = daemon.cli("logs", "fffffffffff", token=token)
    assert nothing.returncode != 0 and "no job of yours starts with" in nothing.stderr and "Traceback" not in nothing.stderr
    again = as_json(daemon.cli("jobs", "rerun", prefix, "--json", token=token))["job"]
    assert again["id"] != job_id and again["spec"]["command"] == ["python", "count.py"] and again["spec"]["code"]
    wait_for(lambda: state(daemon, token, again["id"])["state"] == "succeeded", 120, 0.2, "the rerun to succeed")


def test_submit_ships_the_job_files_directory_and_names_every_unknown_key(daemon, tmp_path):
    _, token = new_user(daemon)
    (tmp_path / "train.py").write_text("print('trained from the job file directory')\n")
    (tmp_path / "job.toml").write_text('command = ["python", "train.py"]\nname = "from-file"\n')
    submitted = daemon.cli("submit", "--json", str(tmp_path / "job.toml"), token=token, cwd="/")
    job = json.loads(submitted.stdout)["job"]
    wait_for(lambda: state(daemon, token, job["id"])["state"] in TERMINAL, 120, 0.2, "the job to end")
    assert state(daemon, token, job["id"])["state"] == "succeeded"
    assert "trained from the job file directory" in daemon.api("GET", f"/api/v1/jobs/{job['id']}/logs", token).text
    (tmp_path / "bad.toml").write_text('command = ["true"]\ngpu = 1\nmemroy = "4g"\ncode = "x"\n')
    bad = daemon.cli("submit", str(tmp_path / "bad.toml"), token=token)
    assert bad.returncode != 0 and "gpu, memroy, code: unknown keys" in bad.stderr, bad.stderr
    assert "code_dir" in bad.stderr and "Traceback" not in bad.stderr


def test_logout_forgets_the_stored_login(daemon, tmp_path):
    import subprocess

    _, token = new_user(daemon)
    env = {k: v for k, v in daemon.env().items() if not k.startswith("MLPD_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))
    mlpd = daemon.argv()[0]
    assert subprocess.run([mlpd, "login", daemon.url, "--token", token], env=env, capture_output=True).returncode == 0
    assert subprocess.run([mlpd, "whoami"], env=env, capture_output=True).returncode == 0
    out = subprocess.run([mlpd, "logout"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "logged out" in out.stdout
    after = subprocess.run([mlpd, "whoami"], env=env, capture_output=True, text=True)
    assert after.returncode != 0 and "mlpd login" in after.stderr


def test_logs_with_timestamps_and_since_live_and_after_the_job_ended(daemon):
    from mlpd.logtext import stamp_of

    _, token = new_user(daemon)
    job_id = as_json(daemon.cli("run", "--no-code", "--json", "--", "sh", "-c", "echo one; sleep 2; echo two; sleep 20", token=token))["job"]["id"]
    live = wait_for(lambda: (r := daemon.cli("logs", "-t", job_id, token=token)).stdout.count("\n") >= 2 and r, 60, 0.3, "two lines")
    stamped = live.stdout.splitlines()
    (t1, n1), (t2, n2) = stamp_of(stamped[0].encode()), stamp_of(stamped[1].encode())
    assert n1 and n2 and stamped[0][n1:] == "one" and stamped[1][n2:] == "two" and 1.5 < t2 - t1 < 10
    between = f"{(t1 + t2) / 2:.3f}"
    import datetime as dt

    since = dt.datetime.fromtimestamp(float(between), dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")
    assert daemon.cli("logs", "--since", since, job_id, token=token).stdout == "two\n"  # live, from Docker
    assert daemon.cli("cancel", job_id, token=token).returncode == 0
    wait_for(lambda: daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] == "cancelled", 60, 0.3, "cancelled")
    assert daemon.cli("logs", job_id, token=token).stdout == "one\ntwo\n"  # the saved log, stamps stripped
    assert daemon.cli("logs", "-t", job_id, token=token).stdout.splitlines() == stamped
    assert daemon.cli("logs", "--since", since, job_id, token=token).stdout == "two\n"
    assert daemon.cli("logs", "--since", "1d", job_id, token=token).stdout == "one\ntwo\n"
    bad = daemon.cli("logs", "--since", "yesterday-ish", job_id, token=token)
    assert bad.returncode == 2 and "--since" in bad.stderr


def test_a_bad_spec_is_the_same_one_line_error_with_and_without_code(daemon, tmp_path):
    # with code the CLI refuses before packing it; with --no-code the daemon refuses: one message
    from mlpd.kinds.jobspec import SpecError, parse_spec

    _, token = new_user(daemon)
    try:
        parse_spec({"command": ["true"], "gpus": 0, "memory": "1k"})
    except SpecError as exc:
        expected = f"Error: {exc}"
    else:
        raise AssertionError("memory = 1k should be refused")
    for flags in (["--no-code"], ["--code", str(tmp_path)]):
        refused = daemon.cli("run", *flags, "--memory", "1k", "--", "true", token=token, cwd=str(tmp_path))
        assert refused.returncode == 1 and refused.stderr.strip() == expected, (flags, refused.stderr)
    jobs = daemon.api("GET", "/api/v1/jobs", token).json()["jobs"]
    assert jobs == []  # nothing was queued either way
