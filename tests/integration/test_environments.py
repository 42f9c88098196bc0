"""Environments a data scientist can work in: the default image's scientific stack, and requirements
layered over an image once and reused. Real daemon, real Docker, real PyPI (through the host's CA).
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import json
import time
import uuid

import requests

from helpers import as_json, needs_docker, new_user, wait_for

pytestmark = needs_docker
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition



def wait_ended(daemon, token, job_id, timeout=600):
    def ended():
        job = daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]
        return job if job["state"] in TERMINAL else None

    return wait_for(ended, timeout, 0.5, f"job {job_id} to end")


def run(daemon, token, directory, *args):
    result = as_json(daemon.cli("run", "--json", *args, token=token, cwd=str(directory), timeout=300))
    return result["job"]["id"]


def test_requirements_are_built_once_reused_and_a_bad_one_fails_with_pips_message(daemon, tmp_path):
    name, token = new_user(daemon)
    project = tmp_path / "project"
    project.mkdir()
    # a marker makes these requirements this test's own, so the environment is built here, not found
    marker = uuid.uuid4().hex[:8]
    (project / "requirements.txt").write_text(f"# test {marker}\nhumanize==4.17.0\n")
    (project / "use.py").write_text("import humanize\nprint('HUMANIZE', humanize.naturalsize(3_000_000))\n")
    first = run(daemon, token, project, "--", "python", "use.py")  # python: on the PATH in the default image
    job = wait_ended(daemon, token, first)
    logs = daemon.api("GET", f"/api/v1/jobs/{first}/logs", token).text
    assert job["state"] == "succeeded", f"{job['reason']}\n{logs[-3000:]}"
    assert "HUMANIZE 3.0 MB" in logs
    assert "building the environment mlpd/env:" in logs  # the build's output comes first in the job's log
    history = [e["action"] for e in job["history"]] if "history" in job else \
        [e["action"] for e in daemon.api("GET", f"/api/v1/jobs/{first}", token).json()["job"]["history"]]
    assert "job.environment_built" in history
    # the environment is the base's configuration with the packages' paths, as the job uid, and nothing of the
    # container it was built in (its command, mounts or labels)
    import re
    import subprocess

    tag = re.search(r"building the environment (mlpd/env:[0-9a-f]+)", logs).group(1)
    image, base = (json.loads(subprocess.run(["docker", "image", "inspect", name], capture_output=True, text=True).stdout)[0]["Config"]
                   for name in (tag, "mlpd/train:latest"))
    assert image["User"] == "65200:65200" and image["Cmd"] == base["Cmd"] and image["WorkingDir"] == base["WorkingDir"]
    assert not image.get("Volumes") and not image.get("Entrypoint")
    assert "PYTHONUSERBASE=/opt/mlpd-env" in image["Env"] and any(e.startswith("PATH=/opt/mlpd-env/bin:") for e in image["Env"])
    assert not [k for k in image["Labels"] if k.startswith("mlpd.")] and image["Labels"]["org.mlpd.env.requirements"] == tag.split(":")[1]
    # what a person installed in their home (a workspace's ~/.local) is still importable, after the environment
    probe = ("mkdir -p $HOME/.local/lib/python3.11/site-packages && echo 'X = 1' > $HOME/.local/lib/python3.11/site-packages/mine.py "
             "&& python3 -c 'import mine, humanize, sys; print(\"MINE\", mine.X, sys.path.index(humanize.__path__[0].rsplit(\"/\", 1)[0]) < "
             "sys.path.index(mine.__file__.rsplit(\"/\", 1)[0]))'")
    done = subprocess.run(["docker", "run", "--rm", "--network", "none", "-e", "HOME=/tmp/h", tag, "sh", "-c", probe],
                          capture_output=True, text=True, timeout=120)
    assert "MINE 1 True" in done.stdout, done.stdout + done.stderr

    # the same requirements again: no build, and the job starts about as fast as one without requirements
    started = time.monotonic()
    second = run(daemon, token, project, "--", "python", "use.py")
    wait_for(lambda: daemon.api("GET", f"/api/v1/jobs/{second}", token).json()["job"]["state"] != "queued"
             and daemon.api("GET", f"/api/v1/jobs/{second}", token).json()["job"]["started_at"], 120, 0.1, "the second job to start")
    again = wait_ended(daemon, token, second)
    assert again["state"] == "succeeded"
    shown = daemon.api("GET", f"/api/v1/jobs/{second}", token).json()["job"]
    assert "job.environment_reused" in [e["action"] for e in shown["history"]]
    assert "job.environment_built" not in [e["action"] for e in shown["history"]]
    assert time.monotonic() - started < 60

    # --no-requirements: the plain image, where humanize is missing
    plain = run(daemon, token, project, "--no-requirements", "--", "python", "use.py")
    assert wait_ended(daemon, token, plain)["state"] == "failed"

    # a package that does not exist: the job fails, and `mlpd jobs show` carries pip's own message
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "requirements.txt").write_text(f"mlpd-no-such-package-{marker}==1.0\n")
    (bad / "x.py").write_text("print('never')\n")
    failed_id = run(daemon, token, bad, "--", "python", "x.py")
    failed = wait_ended(daemon, token, failed_id)
    assert failed["state"] == "failed"
    assert "building its environment failed" in failed["reason"] and f"mlpd-no-such-package-{marker}" in failed["reason"]
    assert "No matching distribution" in failed["reason"] or "Could not find a version" in failed["reason"], failed["reason"]
    text = daemon.cli("jobs", "show", failed_id, token=token)
    shown_text = text.stdout + text.stderr
    assert text.returncode == 0 and ("No matching distribution" in shown_text or "Could not find" in shown_text), shown_text
    assert "Traceback" not in shown_text


TRAIN = """
import mlflow, mlflow.sklearn
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
X, y = make_classification(n_samples=200, n_features=5, random_state=0)
model = LogisticRegression(max_iter=200).fit(X, y)
with mlflow.start_run() as run:
    mlflow.log_metric("accuracy", model.score(X, y))
    mlflow.sklearn.log_model(model, name="model", registered_model_name="{model_name}", input_example=X[:2])
print("RUN", run.info.run_id)
"""


def test_the_default_image_trains_logs_and_registers_a_scikit_learn_model(daemon, tmp_path):
    name, token = new_user(daemon)
    model_name = f"churn-{name}"
    (tmp_path / "train.py").write_text(TRAIN.replace("{model_name}", model_name))
    job_id = run(daemon, token, tmp_path, "--", "python", "train.py")
    job = wait_ended(daemon, token, job_id, timeout=300)
    logs = daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
    assert job["state"] == "succeeded", f"{job['reason']}\n{logs[-3000:]}"
    models = {m["name"]: m for m in as_json(daemon.cli("models", "--json", token=token))["models"]}
    assert model_name in models, json.dumps(list(models))[:500]
    version = models[model_name]["versions"][0]
    run_id = next(line.split()[1] for line in logs.splitlines() if line.startswith("RUN "))
    assert version["version"] == "1" and models[model_name]["owner"] == name
    listed = daemon.cli("models", token=token)
    assert listed.returncode == 0 and model_name in listed.stdout
    assert run_id in json.dumps(models[model_name])


def test_login_takes_the_url_as_people_type_it_and_says_what_is_wrong(daemon, tmp_path):
    import subprocess

    _, token = new_user(daemon)
    env = {k: v for k, v in daemon.env().items() if not k.startswith("MLPD_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / ".config"))

    def login(*args, stdin=""):
        return subprocess.run([daemon.argv()[0], "login", *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)

    for url in (f"127.0.0.1:{daemon.port}", f"{daemon.url}/mlflow", f"{daemon.url}/"):
        done = login(url, "--token", token)
        assert done.returncode == 0 and f"Logged in to {daemon.url} as" in done.stdout, (url, done.stderr)
    started = time.monotonic()
    for args, says in [(("ftp://box", "--token", token), "expected an http:// or https:// URL"),
                       ((f"https://127.0.0.1:{daemon.port}", "--token", token), "plain HTTP"),
                       ((daemon.url,), "no token given")]:
        failed = login(*args)
        assert failed.returncode != 0 and says in failed.stderr, (args, failed.stderr)
        assert "Traceback" not in failed.stderr
    assert time.monotonic() - started < 40  # https against plain HTTP no longer hangs for 30 s
    nogpu = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "gpus": 64})
    assert nogpu.status_code == 400 and "gpus: asks for 64 GPUs" in nogpu.json()["error"]["message"]


PROBE_SETUP = """\
import sys
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
import os
gateway = next(line.split()[2] for line in open("/proc/net/route") if line.split()[1] == "00000000")
gateway = ".".join(str(int(gateway[i:i + 2], 16)) for i in (6, 4, 2, 0))
sys.stderr.write("MLPD-PROBE uid=%d cap_eff=%s no_new_privs=%s gateway=%s\\n"
                 % (os.getuid(), status["CapEff"].strip(), status["NoNewPrivs"].strip(), gateway))
sys.exit(1)
"""


def _host_address() -> str:
    """This host's outbound address: reachable from a container on any bridge network."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent; the kernel picks the route's source address
        return sock.getsockname()[0]


def test_an_environment_build_runs_without_root_or_capabilities(daemon, tmp_path):
    """A requirement's build backend is a member's code: it runs as the job uid, with no capabilities and
    no-new-privileges (issue 22: an sdist's setup.py ARP-spoofed a neighbour from a root build)."""
    import http.server
    import io
    import tarfile
    import threading

    marker = uuid.uuid4().hex[:8]
    sdist = io.BytesIO()
    with tarfile.open(fileobj=sdist, mode="w:gz") as tar:
        for name, text in ((f"probe{marker}-0.1/setup.py", PROBE_SETUP),
                           (f"probe{marker}-0.1/PKG-INFO", f"Metadata-Version: 2.1\nName: probe{marker}\nVersion: 0.1\n")):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    body = sdist.getvalue()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name, token = new_user(daemon)
        project = tmp_path / "probe"
        project.mkdir()
        url = f"http://{_host_address()}:{server.server_address[1]}/probe{marker}-0.1.tar.gz"
        (project / "requirements.txt").write_text(f"probe{marker} @ {url}\n")
        (project / "x.py").write_text("print('never')\n")
        job = wait_ended(daemon, token, run(daemon, token, project, "--", "python", "x.py"))
        logs = daemon.api("GET", f"/api/v1/jobs/{job['id']}/logs", token).text
        probe = next((line for line in logs.splitlines() if "MLPD-PROBE uid=" in line and "%d" not in line), None)
        assert job["state"] == "failed" and probe, f"{job['reason']}\n{logs[-3000:]}"
        fields = dict(item.split("=") for item in probe.split("MLPD-PROBE ", 1)[1].split())
        assert fields["uid"] != "0", probe
        assert int(fields["cap_eff"], 16) == 0, probe
        assert fields["no_new_privs"] == "1", probe
        import subprocess

        isolated = subprocess.run(["docker", "network", "inspect", "mlpd-isolated", "--format", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"],
                                  capture_output=True, text=True).stdout.split()
        assert fields["gateway"] in isolated, (probe, isolated)  # on mlpd's isolated network, not the default bridge
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", "name=mlpd-build-"], capture_output=True, text=True).stdout.split()
        assert leftovers == []  # the build's container does not outlive it
    finally:
        server.shutdown()


def test_following_a_job_streams_its_environment_build_while_it_builds(daemon, tmp_path):
    """Issue 23 item 11: `run -f` showed the environment's build only once the job had started."""
    import http.server
    import threading
    import time as _time

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            _time.sleep(8)  # the build waits on this download: the job stays 'starting' meanwhile
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name, token = new_user(daemon)
        project = tmp_path / "slow"
        project.mkdir()
        marker = uuid.uuid4().hex[:8]
        (project / "requirements.txt").write_text(f"slow{marker} @ http://{_host_address()}:{server.server_address[1]}/slow{marker}-0.1.tar.gz\n")
        (project / "x.py").write_text("print('never')\n")
        job_id = run(daemon, token, project, "--", "python", "x.py")
        seen_while = None
        with requests.get(f"{daemon.url}/api/v1/jobs/{job_id}/logs", params={"follow": 1}, stream=True, timeout=120,
                          headers={"Authorization": f"Bearer {token}"}) as resp:
            text = ""
            for chunk in resp.iter_content(chunk_size=None):
                text += chunk.decode(errors="replace")
                if "building the environment" in text and seen_while is None:
                    seen_while = daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"]
                    break
        assert seen_while == "starting", (seen_while, text[-2000:])
        assert wait_ended(daemon, token, job_id)["state"] == "failed"
    finally:
        server.shutdown()
