"""What a member (and a job) can reach, attacked as the review of issue 9 did: one test per break.

Each test drives a real daemon over HTTP the way an attacking member would, and checks the
outcome on the host (files, MLflow's database, the job table), not only the status code.
"""

from __future__ import annotations

from mlpd.jobs import TERMINAL_STATES

import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
import uuid


from helpers import needs_docker, new_user, wait_for

pytestmark = needs_docker
API = "/mlflow/api/2.0/mlflow/"
AJAX = "/mlflow/ajax-api/2.0/mlflow/"
ARTIFACTS = "/mlflow/api/2.0/mlflow-artifacts/artifacts/"
TERMINAL = TERMINAL_STATES  # mlpd.jobs: the one definition



def ok(resp):
    assert resp.status_code in (200, 201), f"{resp.status_code}: {resp.text[:500]}"
    return resp.json()


def error(resp, status, code=None):
    assert resp.status_code == status, f"{resp.status_code}: {resp.text[:500]}"
    assert resp.headers["Content-Type"].startswith("application/json"), resp.headers["Content-Type"]
    body = resp.json()["error"]
    if code:
        assert body["code"] == code, body
    return body["message"]


def create_run(daemon, token, experiment_name):
    experiment_id = ok(daemon.api("POST", API + "experiments/create", token, json={"name": experiment_name}))["experiment_id"]
    run = ok(daemon.api("POST", API + "runs/create", token, json={"experiment_id": experiment_id, "start_time": 1}))["run"]
    return experiment_id, run["info"]["run_id"]


def mlflow_db(daemon):
    return sqlite3.connect(f"file:{daemon.state_dir / 'mlflow' / 'mlflow.db'}?mode=ro", uri=True)


def run_row(daemon, run_id):
    with mlflow_db(daemon) as db:
        run = db.execute("SELECT status, lifecycle_stage, end_time, name FROM runs WHERE run_uuid = ?", [run_id]).fetchone()
        tags = db.execute("SELECT key, value FROM tags WHERE run_uuid = ? ORDER BY key", [run_id]).fetchall()
        metrics = db.execute("SELECT key, value FROM metrics WHERE run_uuid = ? ORDER BY key", [run_id]).fetchall()
        params = db.execute("SELECT key, value FROM params WHERE run_uuid = ? ORDER BY key", [run_id]).fetchall()
    return run, tags, metrics, params


def submit(daemon, token, command, **spec):
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": command, **spec})
    assert resp.status_code == 201, resp.text
    return resp.json()["job"]["id"]


def wait_ended(daemon, token, job_id, timeout=90):
    def ended():
        job = daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]
        return job if job["state"] in TERMINAL else None

    return wait_for(ended, timeout, 0.2, f"job {job_id} to end")


# ---------------------------------------------------------------- 1. host files through MLflow's artifact store


def test_a_client_chosen_artifact_location_is_refused_and_nothing_is_created_on_the_host(daemon, tmp_path):
    _, bob = new_user(daemon)
    for spelling in ("artifact_location", "artifactLocation"):
        target = tmp_path / f"host-{spelling}"
        for location in (str(target), f"file://{target}", "/etc"):
            resp = daemon.api("POST", API + "experiments/create", bob, json={"name": f"x-{uuid.uuid4().hex}", spelling: location})
            assert "artifact_location" in error(resp, 400, "invalid_field")
            assert not target.exists()
    # admins cannot either: the store is the daemon's
    resp = daemon.api("POST", AJAX + "experiments/create", daemon.admin_token, json={"name": f"x-{uuid.uuid4().hex}", "artifact_location": str(tmp_path / "a")})
    error(resp, 400, "invalid_field")
    assert not (tmp_path / "a").exists()
    # without one, the experiment lives in mlpd's store
    experiment_id = ok(daemon.api("POST", API + "experiments/create", bob, json={"name": f"ok-{uuid.uuid4().hex}"}))["experiment_id"]
    experiment = ok(daemon.api("GET", API + "experiments/get", bob, params={"experiment_id": experiment_id}))["experiment"]
    assert experiment["artifact_location"].startswith("mlflow-artifacts:/")


def test_a_model_version_source_outside_the_store_is_refused(daemon, tmp_path):
    _, bob = new_user(daemon)
    _, run_id = create_run(daemon, bob, f"src-{uuid.uuid4().hex}")
    model = f"m-{uuid.uuid4().hex[:8]}"
    ok(daemon.api("POST", API + "registered-models/create", bob, json={"name": model}))
    for source in ("/etc", "file:///etc", str(tmp_path), "http://127.0.0.1:9/x", "s3://bucket/x"):
        resp = daemon.api("POST", API + "model-versions/create", bob, json={"name": model, "source": source, "run_id": run_id})
        assert "source" in error(resp, 400, "invalid_field")
    ok(daemon.api("POST", API + "model-versions/create", bob, json={"name": model, "source": f"runs:/{run_id}/model", "run_id": run_id}))


def test_artifacts_are_never_read_from_outside_the_store_or_through_a_link(daemon):
    """A run whose artifact_uri points at the host (a store written before this fix), or a link
    planted in the store, is never read through."""
    _, alice = new_user(daemon)
    experiment_id, run_id = create_run(daemon, alice, f"legacy-{uuid.uuid4().hex}")
    # a run row from before the fix, pointing at the host's /etc
    with sqlite3.connect(daemon.state_dir / "mlflow" / "mlflow.db") as db:
        db.execute("UPDATE runs SET artifact_uri = '/etc' WHERE run_uuid = ?", [run_id])
    for path in ("/mlflow/get-artifact", API + "artifacts/list"):
        resp = daemon.api("GET", path, alice, params={"run_id": run_id, "path": "passwd"})
        error(resp, 403, "forbidden")
        assert b"root:" not in resp.content
    # a symlink inside the store (nothing mlpd writes is one) is refused, not followed
    experiment_id, run_id = create_run(daemon, alice, f"linked-{uuid.uuid4().hex}")
    run_dir = daemon.state_dir / "mlflow" / "artifacts" / experiment_id / run_id / "artifacts"
    run_dir.mkdir(parents=True)
    (run_dir / "etc").symlink_to("/etc")
    for resp in (daemon.api("GET", "/mlflow/get-artifact", alice, params={"run_uuid": run_id, "path": "etc/passwd"}),
                 daemon.api("GET", f"{ARTIFACTS}{experiment_id}/{run_id}/artifacts/etc/passwd", alice)):
        error(resp, 403, "forbidden")
        assert b"root:" not in resp.content


def test_the_ui_upload_route_takes_raw_bytes_for_the_owners_run_only(daemon):
    _, alice = new_user(daemon)
    _, bob = new_user(daemon)
    experiment_id, run_id = create_run(daemon, alice, f"ui-{uuid.uuid4().hex}")
    data = os.urandom(2000)
    up = daemon.api("POST", AJAX + "upload-artifact", alice, params={"run_uuid": run_id, "path": "notes.bin"}, data=data,
                    headers={"Content-Type": "application/octet-stream"})
    assert up.status_code == 200, up.text[:300]
    got = daemon.api("GET", "/mlflow/get-artifact", alice, params={"run_uuid": run_id, "path": "notes.bin"})
    assert got.status_code == 200 and got.content == data
    evil = daemon.api("POST", AJAX + "upload-artifact", bob, params={"run_uuid": run_id, "path": "notes.bin"}, data=b"evil",
                      headers={"Content-Type": "application/octet-stream"})
    error(evil, 403, "forbidden")
    twice = daemon.api("POST", AJAX + "upload-artifact", bob, params=[("run_uuid", run_id), ("run_uuid", run_id), ("path", "x")], data=b"x")
    error(twice, 400, "ambiguous_request")
    assert daemon.api("GET", "/mlflow/get-artifact", alice, params={"run_uuid": run_id, "path": "notes.bin"}).content == data


# ---------------------------------------------------------------- 2. every spelling of a run id


def test_a_run_named_in_another_spelling_is_checked_as_the_run_mlflow_acts_on(daemon):
    alice, a = new_user(daemon, "alice")
    _, b = new_user(daemon, "bob")
    experiment_id, alice_run = create_run(daemon, a, f"spell-{alice}")
    ok(daemon.api("POST", API + "runs/log-metric", a, json={"run_id": alice_run, "key": "acc", "value": 0.9, "timestamp": 1}))
    _, bob_run = create_run(daemon, b, f"spell-bob-{uuid.uuid4().hex}")
    before = run_row(daemon, alice_run)
    attacks = []
    for endpoint, extra in [("runs/delete", {}), ("runs/restore", {}), ("runs/update", {"status": "FAILED"}),
                            ("runs/set-tag", {"key": "x", "value": "y"}), ("runs/delete-tag", {"key": "x"}),
                            ("runs/log-metric", {"key": "acc", "value": 0.0, "timestamp": 2}),
                            ("runs/log-parameter", {"key": "p", "value": "v"}),
                            ("runs/log-batch", {"metrics": [{"key": "acc", "value": 0.0, "timestamp": 3, "step": 0}]}),
                            ("runs/log-inputs", {"datasets": []})]:
        for prefix in (API, AJAX, "/mlflow/api/3.0/mlflow/"):
            for ids in ({"runId": alice_run}, {"runUuid": alice_run}, {"runId": alice_run, "run_uuid": bob_run},
                        {"run_id": bob_run, "runUuid": alice_run}, {"run_uuid": alice_run}, {"runId": alice_run, "run_id": bob_run}):
                attacks.append((prefix + endpoint, {**ids, **extra}))
    succeeded = []
    for path, body in attacks:
        resp = daemon.api("POST", path, b, json=body)
        if resp.status_code < 400:
            succeeded.append((path, body, resp.status_code))
        elif resp.status_code != 404:  # the 3.0 prefix does not serve every 2.0 route
            assert resp.json()["error"]["code"] in ("forbidden", "ambiguous_request"), (path, body, resp.text[:300])
    assert not succeeded, succeeded
    assert run_row(daemon, alice_run) == before
    # experiments too
    exp_before = ok(daemon.api("GET", API + "experiments/get", a, params={"experiment_id": experiment_id}))["experiment"]
    for body in ({"experimentId": experiment_id, "new_name": "mine"}, {"experimentId": experiment_id, "newName": "mine"}):
        error(daemon.api("POST", API + "experiments/update", b, json=body), 403, "forbidden")
    error(daemon.api("POST", API + "experiments/delete", b, json={"experimentId": experiment_id}), 403, "forbidden")
    assert ok(daemon.api("GET", API + "experiments/get", a, params={"experiment_id": experiment_id}))["experiment"] == exp_before
    # the owner's own camelCase still works (MLflow accepts it, so mlpd does)
    ok(daemon.api("POST", API + "runs/set-tag", a, json={"runId": alice_run, "key": "note", "value": "mine"}))
    assert ("note", "mine") in run_row(daemon, alice_run)[1]


# ---------------------------------------------------------------- 3. outputs without following links


def test_outputs_never_contain_a_host_file_even_while_the_job_swaps_links(daemon):
    _, token = new_user(daemon)
    script = ("import os, time\n"
              "os.symlink('/etc/passwd', '/outputs/passwd')\n"
              "open('/outputs/result.txt', 'w').write('hello')\n"
              "end = time.time() + 25\n"
              "while time.time() < end:\n"
              "    try:\n"
              "        os.mkdir('/outputs/d'); open('/outputs/d/f', 'w').write('job'); os.remove('/outputs/d/f'); os.rmdir('/outputs/d')\n"
              "        os.symlink('/etc', '/outputs/d'); os.remove('/outputs/d')\n"
              "    except OSError:\n"
              "        pass\n")
    job_id = submit(daemon, token, ["python3", "-c", script], time_limit="40s")
    wait_for(lambda: daemon.api("GET", f"/api/v1/jobs/{job_id}", token).json()["job"]["state"] == "running", 60, 0.2, "running")
    wait_for(lambda: (daemon.state_dir / "jobs" / job_id / "outputs" / "result.txt").exists(), 30, 0.2, "the job's first file")
    leftovers_before = set(os.listdir(tempfile.gettempdir()))
    for _ in range(40):
        resp = daemon.api("GET", f"/api/v1/jobs/{job_id}/outputs", token)
        assert resp.status_code == 200, resp.text[:300]
        with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
            names = tar.getnames()
            contents = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
        assert "passwd" not in names and b"root:" not in contents, names
        assert "result.txt" in names
    assert not {n for n in set(os.listdir(tempfile.gettempdir())) - leftovers_before if n.endswith(".tar.gz")}
    daemon.api("POST", f"/api/v1/jobs/{job_id}/cancel", token)
    wait_ended(daemon, token, job_id)


# ---------------------------------------------------------------- 6. code belongs to its uploader


def _archive(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def test_another_users_code_archive_cannot_be_run_or_claimed_by_its_digest(daemon):
    _, alice = new_user(daemon)
    _, bob = new_user(daemon)
    archive = _archive({"secret_config.py": f"PASSWORD = '{uuid.uuid4().hex}'\n".encode()})
    digest = hashlib.sha256(archive).hexdigest()
    ok(daemon.api("PUT", f"/api/v1/code/{digest}", alice, data=archive))
    assert daemon.api("GET", f"/api/v1/code/{digest}", alice).status_code == 200
    # bob saw the digest in a run's mlpd.code_digest tag
    error(daemon.api("GET", f"/api/v1/code/{digest}", bob), 404, "not_found")
    message = error(daemon.api("POST", "/api/v1/jobs", bob, json={"command": ["cat", "/code/secret_config.py"], "code": digest}), 400)
    assert "have not uploaded" in message
    error(daemon.api("PUT", f"/api/v1/code/{digest}", bob, data=b""), 400, "digest_mismatch")
    error(daemon.api("POST", "/api/v1/jobs", bob, json={"command": ["true"], "code": digest}), 400)
    # whoever sends the same bytes has the same code: then it is theirs too
    assert daemon.api("PUT", f"/api/v1/code/{digest}", bob, data=archive).status_code == 201
    assert daemon.api("GET", f"/api/v1/code/{digest}", bob).status_code == 200


# ---------------------------------------------------------------- 7. a job's token is the job's


def test_a_jobs_token_reads_its_job_and_uses_mlflow_but_mints_nothing_and_dies_with_it(daemon):
    _, token = new_user(daemon)
    _, other = new_user(daemon)
    other_job = submit(daemon, other, ["true"])
    probe = (
        "import json, os, urllib.request\n"
        "url, tok = os.environ['MLPD_URL'], os.environ['MLPD_TOKEN']\n"
        "def call(method, path, body=None):\n"
        "    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body is not None else None,\n"
        "                                 headers={'Authorization': 'Bearer ' + tok, 'Content-Type': 'application/json'})\n"
        "    try:\n"
        "        return urllib.request.urlopen(req, timeout=20).status\n"
        "    except urllib.error.HTTPError as e:\n"
        "        return e.code\n"
        "me = os.environ['MLPD_JOB_ID']\n"
        "print('RESULT', json.dumps({\n"
        "  'mint': call('POST', '/api/v1/tokens', {'label': 'escape'}),\n"
        "  'tokens': call('GET', '/api/v1/tokens'),\n"
        "  'submit': call('POST', '/api/v1/jobs', {'command': ['true']}),\n"
        "  'list': call('GET', '/api/v1/jobs'),\n"
        "  'own': call('GET', '/api/v1/jobs/' + me),\n"
        f"  'other': call('GET', '/api/v1/jobs/{other_job}'),\n"
        "  'whoami': call('GET', '/api/v1/whoami'),\n"
        "  'mlflow': call('POST', '/mlflow/api/2.0/mlflow/experiments/search', {'max_results': 1}),\n"
        "}))\n"
        "open('/outputs/token', 'w').write(tok)\n"
    )
    job_id = submit(daemon, token, ["python3", "-c", probe])
    job = wait_ended(daemon, token, job_id)
    log = daemon.api("GET", f"/api/v1/jobs/{job_id}/logs", token).text
    assert job["state"] == "succeeded", log[-2000:]
    result = json.loads(next(line for line in log.splitlines() if line.startswith("RESULT "))[7:])
    assert result == {"mint": 403, "tokens": 403, "submit": 403, "list": 403, "own": 200, "other": 404, "whoami": 200, "mlflow": 200}, result
    job_token = (daemon.state_dir / "jobs" / job_id / "outputs" / "token").read_text()
    # it died with the job
    error(daemon.api("GET", "/api/v1/whoami", job_token), 401, "unauthorized")
    error(daemon.api("POST", API + "experiments/search", job_token, json={}), 401, "unauthorized")


def test_a_job_token_of_an_admin_has_no_admin_power_and_changes_only_its_jobs_runs(daemon):
    """Checked without a container: the token is minted exactly as the controller mints it."""
    from mlpd import jobs
    from mlpd.store import Store

    name, token = new_user(daemon)
    store = Store(str(daemon.state_dir / "mlpd.db"))
    # jobs that stay active for the test: a job's tokens are revoked when it ends
    admin_job = {"id": submit(daemon, daemon.admin_token, ["sleep", "120"], time_limit="3m"), "owner": "root"}
    admin_job_token = jobs.create_job_token(store, admin_job)
    error(daemon.api("GET", "/api/v1/users", admin_job_token), 403, "forbidden")
    error(daemon.api("POST", "/api/v1/users", admin_job_token, json={"name": f"x{uuid.uuid4().hex[:6]}"}), 403, "forbidden")
    error(daemon.api("POST", API + "some-new-endpoint", admin_job_token, json={}), 403, "forbidden")
    # a member's job token: the member's own run created outside the job is out of its reach
    job = {"id": submit(daemon, token, ["sleep", "120"], time_limit="3m"), "owner": name}
    job_token = jobs.create_job_token(store, job)
    _, own_run = create_run(daemon, token, f"own-{name}")
    error(daemon.api("POST", API + "runs/delete", job_token, json={"run_id": own_run}), 403, "forbidden")
    _, job_run = create_run(daemon, job_token, f"job-{name}")
    with mlflow_db(daemon) as db:
        assert db.execute("SELECT value FROM tags WHERE run_uuid = ? AND key = 'mlpd.job_id'", [job_run]).fetchone() == (job["id"],)
    ok(daemon.api("POST", API + "runs/log-metric", job_token, json={"run_id": job_run, "key": "loss", "value": 1.0, "timestamp": 1}))
    # a member cannot make a token that passes for a job's
    forged = ok(daemon.api("POST", "/api/v1/tokens", token, json={"label": f"job:{job['id']}"}))
    assert forged["token_record"]["job_id"] is None
    for job_id, owner_token in ((admin_job["id"], daemon.admin_token), (job["id"], token)):
        daemon.api("POST", f"/api/v1/jobs/{job_id}/cancel", owner_token)
    error(daemon.api("GET", "/api/v1/whoami", wait_for(lambda: _revoked(daemon, job_token), 60, 0.2, "the job token to die")), 401)


def _revoked(daemon, job_token):
    return job_token if daemon.api("GET", "/api/v1/whoami", job_token).status_code == 401 else None


# ---------------------------------------------------------------- 8-11. sizes, JSON and validation at submit


def test_a_huge_extended_header_in_an_upload_is_refused_at_once(daemon):
    _, token = new_user(daemon)
    raw = io.BytesIO()
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 256 * 1024 * 1024
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        block = b"9" * (1 << 20)
        for _ in range(256):
            gz.write(block)
    data = raw.getvalue()
    assert len(data) < 1024 * 1024
    started = time.monotonic()
    resp = daemon.api("PUT", f"/api/v1/code/{hashlib.sha256(data).hexdigest()}", token, data=data)
    assert "extended header" in error(resp, 400, "invalid_archive")
    assert time.monotonic() - started < 10


def test_every_spec_field_is_capped_and_limits_are_checked_at_submit(daemon):
    _, token = new_user(daemon)
    before = os.path.getsize(daemon.state_dir / "mlpd.db")
    big = daemon.api("POST", "/api/v1/jobs", token, data=json.dumps({"command": ["echo", "x" * (50 * 1024 * 1024)]}),
                     headers={"Content-Type": "application/json"})
    error(big, 413, "too_large")
    for spec, field in [({"command": ["echo", "x" * 200_000]}, "command[1]"),
                        ({"command": ["true"], "env": {"A": "x" * 200_000}}, "env.A"),
                        ({"command": ["true"], "memory": "1k"}, "memory"),
                        ({"command": ["true"], "memory": "64t"}, "memory"),
                        ({"command": ["true"], "cpus": 0.001}, "cpus"),
                        ({"command": ["true"], "cpus": 1000}, "cpus")]:
        message = error(daemon.api("POST", "/api/v1/jobs", token, json=spec), 400, "invalid_field")
        assert message.startswith(f"{field}:"), message
        assert len(message) < 1200
    assert os.path.getsize(daemon.state_dir / "mlpd.db") < before + 1024 * 1024


def test_non_finite_numbers_and_deep_nesting_get_a_json_error_everywhere(daemon):
    _, token = new_user(daemon)
    deep = "[" * 50_000 + "]" * 50_000
    for path in ("/api/v1/jobs", API + "runs/search", API + "experiments/create", "/api/v1/tokens"):
        for body in (deep, '{"command": ["true"], "time_limit": 1e309}', '{"max_results": NaN}', '{"x": Infinity}'):
            resp = daemon.api("POST", path, token, data=body, headers={"Content-Type": "application/json"})
            assert resp.status_code == 400, (path, body[:40], resp.status_code, resp.text[:200])
            assert resp.json()["error"]["code"] == "invalid_json", (path, body[:40], resp.text[:200])
    for query in ("since=nan", "since=inf", "until=-inf"):
        error(daemon.api("GET", f"/api/v1/usage?{query}", token), 400, "invalid_field")
