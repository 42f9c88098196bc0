"""A command that follows a job ends the way the job did: one line on stderr and an exit status that
a script can act on (`mlpd run -f ... && mlpd run -f ...`), and `mlpd wait` waits for several.
Real daemon, real containers, the CLI as typed."""

from __future__ import annotations

import json
import time

from helpers import needs_docker, new_user, wait_for

pytestmark = needs_docker


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def job_id_of(result) -> str:
    return next(line for line in result.stdout.splitlines() if len(line) == 12)


def state(daemon, token, job_id):
    return daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]


def test_run_follow_exits_with_the_jobs_own_code_and_says_how_it_ended(daemon, tmp_path):
    _, token = new_user(daemon)
    (tmp_path / "gpu.py").write_text("print('training')\nraise SystemExit(3)\n")
    failed = daemon.cli("run", "-f", "--", "python", "gpu.py", token=token, cwd=str(tmp_path), timeout=180)
    assert failed.returncode == 3, (failed.returncode, failed.stderr)
    job_id = job_id_of(failed)
    assert "training" in failed.stdout
    assert last_line(failed.stderr) == f"mlpd: job {job_id} failed: exited with code 3"
    # A command that is not there: tini says so and the job fails with its exit code, not 0.
    typo = daemon.cli("run", "-f", "--", "pythn", "gpu.py", token=token, cwd=str(tmp_path), timeout=180)
    code = state(daemon, token, job_id_of(typo))["exit_code"]
    assert code and typo.returncode == code, (typo.returncode, code, typo.stderr)
    assert last_line(typo.stderr).startswith(f"mlpd: job {job_id_of(typo)} failed: "), typo.stderr
    ok = daemon.cli("run", "-f", "--no-code", "--", "true", token=token, timeout=180)
    assert ok.returncode == 0 and last_line(ok.stderr) == f"mlpd: job {job_id_of(ok)} succeeded", ok.stderr
    # logs -f and rerun -f of the failed one say the same; so does submit -f.
    again = daemon.cli("logs", "-f", job_id[:6], token=token)
    assert again.returncode == 3 and last_line(again.stderr) == f"mlpd: job {job_id} failed: exited with code 3", again.stderr
    rerun = daemon.cli("jobs", "rerun", "-f", job_id, token=token, timeout=180)
    assert rerun.returncode == 3 and last_line(rerun.stderr) == f"mlpd: job {job_id_of(rerun)} failed: exited with code 3", rerun.stderr
    (tmp_path / "job.toml").write_text('command = ["python", "gpu.py"]\n')
    submitted = daemon.cli("submit", "-f", "job.toml", token=token, cwd=str(tmp_path), timeout=180)
    assert submitted.returncode == 3 and "failed: exited with code 3" in last_line(submitted.stderr), submitted.stderr


def test_fixed_statuses_for_time_limit_and_image_and_wait_takes_the_worst(daemon):
    _, token = new_user(daemon)
    timed = daemon.cli("run", "-f", "--no-code", "--time-limit", "2s", "--", "sleep", "60", token=token, timeout=180)
    assert timed.returncode == 73, (timed.returncode, timed.stderr)
    assert last_line(timed.stderr) == f"mlpd: job {job_id_of(timed)} timed out: stopped after its time limit of 2s"
    missing = daemon.cli("run", "-f", "--no-code", "--image", "mlpd/no-such-image:latest", "--", "true", token=token, timeout=180)
    assert missing.returncode == 70, (missing.returncode, missing.stderr)
    assert last_line(missing.stderr).startswith(f"mlpd: job {job_id_of(missing)} failed: "), missing.stderr
    ok = job_id_of(daemon.cli("run", "--no-code", "--", "true", token=token))
    bad = job_id_of(daemon.cli("run", "--no-code", "--", "sh", "-c", "sleep 1; exit 5", token=token))
    waited = daemon.cli("wait", ok, bad[:7], job_id_of(timed), token=token, timeout=180)
    assert waited.returncode == 5, (waited.returncode, waited.stderr)  # failed outranks timed out and succeeded
    lines = waited.stderr.strip().splitlines()
    assert sorted(lines) == sorted([f"mlpd: job {ok} succeeded", f"mlpd: job {bad} failed: exited with code 5",
                                    f"mlpd: job {job_id_of(timed)} timed out: stopped after its time limit of 2s"]), lines
    assert daemon.cli("wait", ok, token=token).returncode == 0
    as_json = daemon.cli("wait", "--json", ok, bad, token=token)
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 5 and data["exit_status"] == 5 and as_json.stderr == ""
    assert [(j["id"], j["state"], j["exit_status"]) for j in data["jobs"]] == [(ok, "succeeded", 0), (bad, "failed", 5)]
    long = job_id_of(daemon.cli("run", "--no-code", "--", "sleep", "60", token=token))
    started = time.monotonic()
    pending = daemon.cli("wait", "--timeout", "1s", long, token=token)
    assert pending.returncode == 76 and "has not ended" in pending.stderr and time.monotonic() - started < 30, pending.stderr
    daemon.cli("cancel", "--no-wait", long, token=token)


def test_cancel_returns_once_the_job_has_ended_and_a_follower_exits_72(daemon):
    _, token = new_user(daemon)
    job_id = job_id_of(daemon.cli("run", "--no-code", "--", "sleep", "300", token=token))
    wait_for(lambda: state(daemon, token, job_id)["state"] == "running", 120, 0.2, "the job to run")
    cancelled = daemon.cli("cancel", job_id[:8], token=token)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{job_id}: cancelled"
    assert state(daemon, token, job_id)["state"] == "cancelled"  # ended when cancel returned, not later
    followed = daemon.cli("logs", "-f", job_id, token=token)
    assert followed.returncode == 72, (followed.returncode, followed.stderr)
    assert last_line(followed.stderr).startswith(f"mlpd: job {job_id} was cancelled"), followed.stderr
    assert daemon.cli("wait", job_id, token=token).returncode == 72


def test_a_failed_environment_build_exits_71(daemon, tmp_path):
    _, token = new_user(daemon)
    (tmp_path / "requirements.txt").write_text("mlpd-no-such-package-anywhere==0.0.1\n")
    (tmp_path / "t.py").write_text("print('never')\n")
    built = daemon.cli("run", "-f", "--", "python", "t.py", token=token, cwd=str(tmp_path), timeout=400)
    assert built.returncode == 71, (built.returncode, built.stderr)
    assert last_line(built.stderr).startswith(f"mlpd: job {job_id_of(built)} failed: building its environment failed: "), built.stderr


def test_ctrl_c_stops_the_following_not_the_job_and_says_so(daemon):
    import signal
    import subprocess

    from conftest import BIN

    _, token = new_user(daemon)
    job_id = job_id_of(daemon.cli("run", "--no-code", "--", "sh", "-c", "echo up; sleep 300", token=token))
    wait_for(lambda: state(daemon, token, job_id)["state"] == "running", 120, 0.2, "the job to run")
    proc = subprocess.Popen([BIN, "logs", "-f", job_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon.env(token))
    assert proc.stdout.readline() == "up\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 130, (proc.returncode, err)
    assert f"mlpd: stopped following job {job_id}; it goes on" in err and "Traceback" not in err, err
    assert state(daemon, token, job_id)["state"] == "running"
    assert daemon.cli("cancel", job_id, token=token).returncode == 0
