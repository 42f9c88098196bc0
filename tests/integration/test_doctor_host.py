"""`mlpd doctor` on a real host, beside a running daemon: the engine, the images, the state, the daemon."""

from __future__ import annotations

import json
import subprocess

from helpers import needs_docker

pytestmark = needs_docker


def test_doctor_reports_a_working_host_and_exits_0(daemon):
    argv = [daemon.argv()[0], "doctor", "--json", "--state-dir", str(daemon.state_dir), "--listen", f"127.0.0.1:{daemon.port}"]
    done = subprocess.run(argv, env=daemon.env(), capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert done.returncode == 0 and report["ok"], done.stdout
    assert checks["docker engine"]["status"] == "ok"
    assert checks["image mlpd/train:latest"]["status"] == "ok"
    assert checks["daemon"]["status"] == "ok" and "worker ok" in checks["daemon"]["detail"]
    assert checks["mlflow store"]["status"] == "ok" and checks["state directory"]["status"] == "ok"
    text = subprocess.run(argv[:2] + argv[3:], env=daemon.env(), capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "docker engine" in text.stdout and "Traceback" not in text.stderr


def test_doctor_fails_with_the_fix_when_the_daemon_state_is_missing(daemon, tmp_path):
    argv = [daemon.argv()[0], "doctor", "--state-dir", str(tmp_path / "nowhere"), "--listen", "127.0.0.1:9"]
    done = subprocess.run(argv, env=daemon.env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "FAIL  state directory" in done.stdout and "fix:" in done.stdout
    # issue 23 item 12: the columns lined up only for names of up to 24 characters ("image mlpd/workspace:latest" is 27)
    rows = [line for line in done.stdout.splitlines() if line[:4] in ("ok  ", "WARN", "FAIL")]
    starts = {len(line) - len(line[6:].split("  ", 1)[1].lstrip(" ")) if "  " in line[6:] else -1 for line in rows}
    assert len(starts) == 1 and -1 not in starts, done.stdout

