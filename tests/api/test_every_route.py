"""Every route of the OpenAPI document, in-process: refused without a token (401), refused to a
member where it is admin-only (403), and once as it is meant to be used.

CASES holds one case per operation of /api/v1/openapi.json. A case is the success a client
sees, or, where success needs what only Docker, MLflow or the serving pass make (a replica that
answers /ping, an image build), the exact status and error code a client gets without it, and
why. Jobs run to their end in the in-memory runtime (Api.reconcile); deployments resolve their
models through fake_models, the one stand-in for MLflow's registry.
test_each_openapi_operation_has_a_case fails when a route appears without a case here.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from typing import Any

import pytest

from app_client import api, error_of  # noqa: F401  (api: the fixture)


@dataclass(frozen=True)
class Case:
    """One request of the walk: ``url`` under /api/v1, formatted with the world's ids."""

    url: str
    who: str = "member"  # "member" or "admin"
    json: Any = None
    data: bytes | None = None  # a raw body (code archives)
    status: int = 200
    contains: str = ""  # a success's body says this
    code: str | None = None  # the error code, where the expected answer is an error
    why: str = ""  # why this route is not walked to success here


def _tar_gz(body: bytes = b"print('hello')\n") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("train.py")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


ARCHIVE = _tar_gz()
MEMBER_PASSWORD = "the member's first passphrase 3"
DIGEST = hashlib.sha256(ARCHIVE).hexdigest()
ARCHIVE_2 = _tar_gz(b"print('hello again')\n")
DIGEST_2 = hashlib.sha256(ARCHIVE_2).hexdigest()


def ssh_key(comment: str) -> str:
    """A well-formed OpenSSH ed25519 public key line (random key material)."""
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"\x00\x00\x00\x20" + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


# (METHOD, OpenAPI path) -> the case. Ids in braces come from the world fixture.
CASES: dict[tuple[str, str], Case] = {
    # -- who and what
    ("GET", "/whoami"): Case("whoami"),
    ("GET", "/version"): Case("version"),
    ("GET", "/openapi.json"): Case("openapi.json"),
    ("GET", "/users"): Case("users", who="admin"),
    ("POST", "/users"): Case("users", who="admin", json={"name": "newcomer"}, status=201),
    ("DELETE", "/users/{name}"): Case("users/leaver", who="admin"),
    ("POST", "/users/{name}/password"): Case("users/typist/password", who="admin", json={"password": "a long enough passphrase 7"}),
    ("PUT", "/users/{name}/role"): Case("users/typist/role", who="admin", json={"role": "member"}, contains='"role":"member"'),
    ("POST", "/password"): Case("password", json={"old": MEMBER_PASSWORD, "new": "another long passphrase 8"}),
    ("GET", "/tokens"): Case("tokens"),
    ("POST", "/tokens"): Case("tokens", json={"label": "laptop"}, status=201),
    ("DELETE", "/tokens/{token_id}"): Case("tokens/{token_id}"),
    ("GET", "/events"): Case("events", who="admin"),
    ("GET", "/admin/report"): Case("admin/report?by=month&since=2026-01-01", who="admin", contains='"periods"'),
    # -- priority classes
    ("GET", "/admin/priority-classes"): Case("admin/priority-classes", who="admin"),
    ("POST", "/admin/priority-classes/{name}/grants"): Case("admin/priority-classes/production/grants", who="admin",
                                                            json={"user": "{member}"}, status=201),
    ("DELETE", "/admin/priority-classes/{name}/grants/{user}"): Case("admin/priority-classes/production/grants/{granted}", who="admin"),
    # -- datasets and disk use
    ("GET", "/datasets"): Case("datasets", contains="/datasets/corpus"),
    ("GET", "/admin/datasets"): Case("admin/datasets", who="admin", contains="corpus"),
    ("POST", "/admin/datasets"): Case("admin/datasets", who="admin", json={"name": "fresh-data", "path": "{data_dir}", "teams": ["speech"]},
                                      status=201),
    ("DELETE", "/admin/datasets/{name}"): Case("admin/datasets/doomed-data", who="admin"),
    ("GET", "/usage/disk"): Case("usage/disk", contains="/home/mlpd"),
    # -- jobs and code
    ("POST", "/jobs"): Case("jobs", json={"command": ["python", "train.py"], "code": DIGEST}, status=201),
    ("GET", "/jobs"): Case("jobs"),
    ("GET", "/jobs/{job_id}"): Case("jobs/{job}"),
    ("POST", "/jobs/{job_id}/cancel"): Case("jobs/{job_to_cancel}/cancel"),
    ("GET", "/jobs/{job_id}/logs"): Case("jobs/{ran}/logs", contains="hello from memory"),
    ("GET", "/jobs/{job_id}/outputs"): Case("jobs/{ran}/outputs"),
    ("GET", "/code/{digest}"): Case("code/" + DIGEST),
    ("PUT", "/code/{digest}"): Case("code/" + DIGEST_2, data=ARCHIVE_2, status=201),
    # -- GPUs and images
    ("GET", "/gpus"): Case("gpus"),
    ("POST", "/gpus/declare"): Case("gpus/declare", who="admin", json={"count": 2}),
    ("POST", "/gpus/{gpu}/drain"): Case("gpus/1/drain", who="admin", json={"reason": "fan noise"}),
    ("POST", "/gpus/{gpu}/undrain"): Case("gpus/0/undrain", who="admin"),
    ("GET", "/images"): Case("images"),
    ("POST", "/images/build"): Case("images/build?with=nosuch", who="admin", status=400, code="invalid_field",
                                    why="a build of the base image runs debootstrap and docker on the host (outside the runtime "
                                        "interface, ~40 s): the fast tier checks the request, not a build"),
    # -- usage, quotas, teams
    ("GET", "/usage"): Case("usage"),
    ("GET", "/quota"): Case("quota"),
    ("GET", "/fair-share"): Case("fair-share"),
    ("GET", "/quotas"): Case("quotas", who="admin"),
    ("POST", "/quotas"): Case("quotas", who="admin", json={"user": "{member}", "max_gpus": 2}),
    ("GET", "/teams"): Case("teams"),
    ("POST", "/teams"): Case("teams", who="admin", json={"name": "vision"}, status=201),
    ("DELETE", "/teams/{name}"): Case("teams/doomed", who="admin"),
    ("POST", "/teams/{name}/members"): Case("teams/nlp/members", who="admin", json={"user": "{member}"}),
    ("DELETE", "/teams/{name}/members/{user}"): Case("teams/speech/members/{member}", who="admin"),
    ("POST", "/teams/{name}/admins"): Case("teams/ops/admins", who="admin", json={"user": "lead"}, status=201, contains='"team_admin":true'),
    ("DELETE", "/teams/{name}/admins/{user}"): Case("teams/ops/admins/lead2", who="admin", contains='"changed":true'),
    # -- workspaces and keys
    ("POST", "/workspaces"): Case("workspaces", json={"name": "fresh"}, status=201),
    ("GET", "/workspaces"): Case("workspaces"),
    ("GET", "/workspaces/{name}"): Case("workspaces/nb"),
    ("POST", "/workspaces/{name}/stop"): Case("workspaces/to-stop/stop"),
    ("POST", "/workspaces/{name}/start"): Case("workspaces/stopped/start", json={}),
    ("DELETE", "/workspaces/{name}"): Case("workspaces/to-remove"),
    ("GET", "/workspaces/{name}/logs"): Case("workspaces/nb/logs"),  # empty: its session has not started
    ("GET", "/workspaces/{name}/tunnel"): Case("workspaces/nb/tunnel"),
    ("PUT", "/users/{user}/workspace-idle-timeout"): Case("users/{member}/workspace-idle-timeout", who="admin", json={"timeout": "12h"}),
    ("GET", "/keys"): Case("keys"),
    ("POST", "/keys"): Case("keys", json={"key": ssh_key("laptop")}, status=201),
    ("DELETE", "/keys/{key_id}"): Case("keys/{key_id}"),
    # -- deployments (the models stand in for MLflow's registry: see fake_models)
    ("POST", "/deployments"): Case("deployments", json={"model": "models:/iris/1", "name": "fresh"}, status=201),
    ("GET", "/deployments"): Case("deployments"),
    ("GET", "/deployments/{name}"): Case("deployments/served"),
    ("POST", "/deployments/{name}/update"): Case("deployments/served/update", json={"model": "models:/iris/2"}),
    ("POST", "/deployments/{name}/promote"): Case("deployments/served/promote", status=409, code="no_canary",
                                                  why="promote needs a canary serving traffic, which needs healthy replicas"),
    ("POST", "/deployments/{name}/rollback"): Case("deployments/rolled/rollback"),
    ("POST", "/deployments/{name}/key"): Case("deployments/served/key"),
    ("GET", "/deployments/{name}/logs"): Case("deployments/served/logs", status=404, code="not_found",
                                              why="no replica has been placed: that needs the worker"),
    ("DELETE", "/deployments/{name}"): Case("deployments/removed"),
    ("POST", "/predict"): Case("predict", json={"model": "models:/iris/1", "input": "scores.csv", "code": DIGEST}, status=400,
                               code="invalid_field", why="the member's archive holds train.py, not an input to score; scoring end to "
                                                         "end: tests/integration/test_predict.py"),
    # -- schedules (sweeps and dependencies: tests/api/test_automation_api.py)
    ("GET", "/schedules"): Case("schedules", contains="nightly"),
    ("POST", "/schedules"): Case("schedules", json={"name": "fresh", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
                                                    "spec": {"command": ["python", "train.py"], "code": DIGEST}}, status=201),
    ("GET", "/schedules/{name}"): Case("schedules/nightly", contains="0 3 * * *"),
    ("POST", "/schedules/{name}/pause"): Case("schedules/to-pause/pause", contains='"paused":true'),
    ("POST", "/schedules/{name}/resume"): Case("schedules/to-resume/resume", contains='"paused":false'),
    ("POST", "/schedules/{name}/run-now"): Case("schedules/nightly/run-now", status=201, contains='"outcome":"fired"'),
    ("DELETE", "/schedules/{name}"): Case("schedules/to-remove"),
    ("GET", "/sweeps"): Case("sweeps", contains="\"parallel\":1"),
    ("POST", "/sweeps"): Case("sweeps", json={"command": ["python", "train.py", "--lr", "{lr}"], "params": {"lr": [0.1, 0.01]}},
                              status=503, code="tracking_unavailable",
                              why="a sweep makes its MLflow parent and child runs first, and the fast tier has no MLflow database "
                                  "(tests/integration/test_automation_e2e.py walks it)"),
    ("GET", "/sweeps/{sweep_id}"): Case("sweeps/{sweep}", contains='"trials"'),
    ("POST", "/sweeps/{sweep_id}/cancel"): Case("sweeps/{sweep_to_cancel}/cancel", contains='"cancelled"'),
    ("GET", "/models/{model}/versions/{version}/gates"): Case("models/iris/versions/2/gates?alias=prod", contains="held_back"),
}


def _fill(value, world: dict):
    if isinstance(value, str):
        return value.format(**world)
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    return value


def _path_of(rule_path: str) -> str:
    """An OpenAPI path with each {param} filled by a placeholder that names no object."""
    return re.sub(r"\{[^}]+\}", "nothing", rule_path)


@pytest.fixture(scope="module")
def openapi(api) -> dict:
    response = api.call("GET", "openapi.json", api.member)
    assert response.status_code == 200
    return response.get_json()


def operations(document: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path.removeprefix("/api/v1")) for path, ops in document["paths"].items() for method in ops}


@pytest.fixture(scope="module")
def fake_models(request):
    """Models as MLflow would resolve them, for the deployment routes: only serving.resolve reads
    MLflow's registry, and the fast tier has no MLflow server or registered model."""
    from mlpd.serving import deployments as serving

    real = serving.resolve

    def resolve(state_dir: str, uri: str):
        ref = serving.parse_uri(uri)
        name, _, version = uri.removeprefix("models:/").partition("/")
        return ref, {"model_uri": uri, "model_name": name, "model_version": version or "1", "run_id": "0" * 32,
                     "location": f"mlflow-artifacts:/0/{name}/{version}", "requirements": ""}

    serving.resolve = resolve
    yield
    serving.resolve = real


@pytest.fixture(scope="module")
def world(api, fake_models) -> dict:
    """The objects the cases act on, made through the API as a client makes them."""
    member, admin = api.member, api.admin

    def ok(method, path, token, **kwargs):
        response = api.call(method, path, token, **kwargs)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.get_data(as_text=True)[:300]}"
        return response.get_json()

    ids: dict[str, str] = {"member": api.member_name}
    data_dir = api.state_dir.parent / "data"
    data_dir.mkdir(exist_ok=True)
    ids["data_dir"] = str(data_dir)
    for name in ("corpus", "doomed-data"):
        ok("POST", "admin/datasets", admin, json={"name": name, "path": str(data_dir)})
    assert ok("PUT", "code/" + DIGEST, member, data=ARCHIVE)["uploaded"] is True
    ids["job"] = ok("POST", "jobs", member, json={"command": ["python", "train.py"], "code": DIGEST})["job"]["id"]
    ids["ran"] = ok("POST", "jobs", member, json={"command": ["sh", "-c", "echo hello from memory $MLPD_JOB_ID"]})["job"]["id"]
    api.reconcile()  # the worker's pass: the in-memory runtime runs it to its end at once
    assert ok("GET", f"jobs/{ids['ran']}", member)["job"]["state"] == "succeeded"
    ids["job_to_cancel"] = ok("POST", "jobs", member, json={"command": ["sleep", "60"]})["job"]["id"]
    ids["token_id"] = ok("POST", "tokens", member, json={"label": "to revoke"})["token_record"]["id"]
    ids["key_id"] = ok("POST", "keys", member, json={"key": ssh_key("to remove")})["key"]["id"]
    api.user("leaver")
    api.user("typist")
    ok("POST", f"users/{api.member_name}/password", admin, json={"password": MEMBER_PASSWORD})
    for team in ("doomed", "nlp", "speech"):
        ok("POST", "teams", admin, json={"name": team})
    ok("POST", "teams/speech/members", admin, json={"user": api.member_name})
    ok("POST", "teams", admin, json={"name": "ops"})
    for lead in ("lead", "lead2"):
        api.user(lead)
        ok("POST", "teams/ops/members", admin, json={"user": lead})
    ok("POST", "teams/ops/admins", admin, json={"user": "lead2"})
    api.user("granted")
    ids["granted"] = "granted"
    ok("POST", "admin/priority-classes/production/grants", admin, json={"user": "granted"})
    ok("POST", "gpus/0/drain", admin, json={"reason": "to undrain"})
    for ws in ("nb", "to-stop", "stopped", "to-remove"):
        ok("POST", "workspaces", member, json={"name": ws})
    ok("POST", "workspaces/stopped/stop", member)
    for dep in ("served", "rolled", "removed"):
        ok("POST", "deployments", member, json={"model": "models:/iris/1", "name": dep})
    ok("POST", "deployments/rolled/update", member, json={"model": "models:/iris/3"})
    for name in ("nightly", "to-pause", "to-resume", "to-remove"):
        ok("POST", "schedules", member, json={"name": name, "cron": "0 3 * * *", "spec": {"command": ["python", "train.py"], "code": DIGEST}})
    ok("POST", "schedules/to-resume/pause", member)
    from mlpd.automation import sweeps  # made in the domain: POST /sweeps needs MLflow's database (see its case)

    for key in ("sweep", "sweep_to_cancel"):
        p = sweeps.plan({"command": ["python", "train.py", "--lr", "{lr}"], "params": {"lr": [0.1, 0.01]}, "parallel": 1})
        ids[key] = sweeps.create(api.store, api.member_name, p, {}, "exp", "", ["", ""])
    return ids


def test_each_openapi_operation_has_a_case(openapi):
    served = operations(openapi)
    missing = sorted(served - set(CASES))
    stale = sorted(set(CASES) - served)
    assert not missing, f"routes without a fast-tier case in tests/api/test_every_route.py CASES: {missing}"
    assert not stale, f"CASES for routes OpenAPI no longer has: {stale}"


@pytest.mark.parametrize("method,path", sorted(CASES), ids=lambda v: v)
def test_without_a_token_each_route_answers_401(api, method, path):
    response = api.call(method, _path_of(path).lstrip("/"))
    assert error_of(response) == (401, "unauthorized")
    bad = api.call(method, _path_of(path).lstrip("/"), "mlpd_not_a_token")
    assert error_of(bad) == (401, "unauthorized")


@pytest.mark.parametrize("method,path", sorted(CASES), ids=lambda v: v)
def test_a_member_gets_403_exactly_where_openapi_says_admin(api, openapi, method, path):
    op = openapi["paths"]["/api/v1" + path][method.lower()]
    response = api.call(method, _path_of(path).lstrip("/"), api.member, json={})
    refused = response.status_code == 403 and "needs an admin token" in response.get_data(as_text=True)
    if op.get("x-mlpd-admin"):
        assert error_of(response) == (403, "forbidden") and refused
    else:
        assert not refused, f"{method} {path} is not marked x-mlpd-admin but refuses a member as one"


@pytest.fixture(scope="module")
def job_token(api) -> str:
    """The token a job's container gets (minted as the controller mints it at start)."""
    from mlpd import jobs

    job = api.call("POST", "jobs", api.member, json={"command": ["true"]}).get_json()["job"]
    return jobs.create_job_token(api.store, {"id": job["id"], "owner": api.member_name})


@pytest.mark.parametrize("method,path", sorted(CASES), ids=lambda v: v)
def test_a_jobs_token_reaches_exactly_the_routes_openapi_marks_for_jobs(api, openapi, job_token, method, path):
    op = openapi["paths"]["/api/v1" + path][method.lower()]
    response = api.call(method, _path_of(path).lstrip("/"), job_token, json={})
    refused = response.status_code == 403 and "a job's token" in response.get_data(as_text=True)
    if op.get("x-mlpd-job-token"):
        assert not refused, f"{method} {path} is marked x-mlpd-job-token but refuses a job's token"
    else:
        assert error_of(response) == (403, "forbidden") and refused


@pytest.mark.parametrize("method,path", list(CASES), ids=lambda v: v)
def test_each_route_as_a_client_uses_it(api, world, method, path):
    case = CASES[(method, path)]
    token = api.admin if case.who == "admin" else api.member
    kwargs: dict[str, Any] = {}
    if case.json is not None:
        kwargs["json"] = _fill(case.json, world)
    if case.data is not None:
        kwargs["data"] = case.data
    response = api.call(method, _fill(case.url, world), token, **kwargs)
    if case.code:
        assert case.why, "an expected error says why success is not walked here"
        assert error_of(response) == (case.status, case.code), response.get_data(as_text=True)[:300]
    else:
        assert response.status_code == case.status, response.get_data(as_text=True)[:500]
        if case.contains:
            assert case.contains in response.get_data(as_text=True)

