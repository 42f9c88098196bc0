"""Packaging: the wheel carries mlpd, mlpd.web, mlpd.workers and mlpd.images, and a fresh venv gets a working `mlpd`.

Slow (a fresh venv installs every dependency; pip's cache and the local indexes make it a minute or two).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(argv: list, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_wheel_installs_into_a_fresh_venv_and_runs(tmp_path):
    # build from a clean copy of the checkout: pip builds in-tree, and a build/ left over in the
    # checkout (by anyone) would let deleted modules slip into the wheel and hide a packaging bug
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "mlpd-state", ".whl"))
    wheel_dir = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheel_dir, source])
    wheels = list(wheel_dir.glob("mlpd-*.whl"))
    assert len(wheels) == 1, list(wheel_dir.iterdir())
    wheel = wheels[0]

    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("mlpd/__init__.py", "mlpd/cli/__init__.py", "mlpd/cli/jobs.py", "mlpd/web/__init__.py", "mlpd/web/wsgi.py",
                     "mlpd/workers/__init__.py", "mlpd/workers/__main__.py", "mlpd/images/__init__.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    # web/ and workers/ are mapped into the mlpd namespace, never shipped as top-level packages
    stray = sorted(n for n in names if n.split("/")[0] in ("web", "workers", "images", "tests"))
    assert not stray, stray
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mlpd = mlpd.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    bin_dir = venv / "bin"
    run([bin_dir / "python", "-m", "pip", "install", wheel], cwd=tmp_path)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLPD_") and k != "PYTHONPATH"}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "home" / ".config"))
    (tmp_path / "home").mkdir()

    helped = run([bin_dir / "mlpd", "--help"], cwd=tmp_path, env=env, timeout=60)
    assert "Usage: mlpd" in helped.stdout and "login" in helped.stdout
    # run outside the checkout so nothing can be imported from the source tree by accident
    imported = run([bin_dir / "python", "-c",
                    "import mlpd, mlpd.web, mlpd.workers, mlpd.images; "
                    "print(mlpd.__file__); print(mlpd.web.__file__); print(mlpd.workers.__file__)"],
                   cwd=tmp_path, env=env, timeout=120)
    for line in imported.stdout.split():
        assert line.startswith(str(venv)), f"imported from outside the venv: {line}"

    # the installed daemon really serves: gunicorn finds mlpd.web.wsgi and the worker finds mlpd.workers
    state = tmp_path / "state"
    added = run([bin_dir / "mlpd", "admin", "user", "add", "root", "--admin", "--state-dir", state], cwd=tmp_path, env=env, timeout=120)
    token = added.stdout.strip().splitlines()[-1]
    port = free_port()
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([str(bin_dir / "mlpd"), "daemon", "--state-dir", str(state), "--listen", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        healthy = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                healthy = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json().get("worker") == "ok"
            except (requests.RequestException, ValueError):
                pass
            if healthy:
                break
            time.sleep(0.3)
        assert healthy, (tmp_path / "daemon.log").read_text(errors="replace")[-4000:]
        who = run([bin_dir / "mlpd", "whoami"], cwd=tmp_path, env={**env, "MLPD_URL": f"http://127.0.0.1:{port}", "MLPD_TOKEN": token}, timeout=60)
        assert who.stdout.strip() == f"root (admin) at http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        log.close()
    assert code == 0, (tmp_path / "daemon.log").read_text(errors="replace")[-4000:]
