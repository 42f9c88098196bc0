"""GPU sharing through the API, the controller and the ledger (docs/gpu-sharing.md), on the in-memory
runtime with two declared GPUs: four half-GPU jobs on two GPUs (and half-GPU workspaces placed alike), a whole-GPU job that waits for a
whole free GPU, 0.5 GPU-hours booked per workload-hour, and a concurrent quota of 1 GPU that admits
two halves."""
from __future__ import annotations

import re

import pytest

from app_client import Served, error_of, make_api
from mlpd import jobs
from mlpd.runtime.docker_engine import container_name
from mlpd.scheduling import quotas
from mlpd.scheduling.accounting import gpu_seconds
from mlpd.web.ui_auth import LOGIN_CSRF_COOKIE

HOUR = 3600.0


class Clock:
    """The in-memory engine's clock (Docker's start and end times, which the ledger books)."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    api = make_api(tmp_path_factory.mktemp("share-state"), declare_gpus=2)
    import time

    api.runtime.clock = Clock(time.time() - 10 * HOUR)  # in the past: the ledger's hour ends before the pass's now
    return api


def session_of(api, token, name):
    ws = api.call("GET", f"workspaces/{name}", token).get_json()["workspace"]
    return jobs.get(api.store, ws["session"])


def settle(api, *job_ids):
    """Passes until each job has left 'starting' (the in-memory launch completes on the next look)."""
    for _ in range(3):
        api.reconcile()
        if all(jobs.get(api.store, j)["state"] != "starting" for j in job_ids):
            return
    raise AssertionError([jobs.get(api.store, j)["state"] for j in job_ids])


def submit(api, token, gpus, command=("sleep", "600"), **more):
    r = api.call("POST", "jobs", token, json={"command": list(command), "gpus": gpus, **more})
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()["job"]["id"]


def end_all(api):
    for row in jobs.in_states(api.store, [*jobs.ACTIVE, jobs.JobState.QUEUED]):
        api.call("POST", f"jobs/{row['id']}/cancel", api.admin)
    for _ in range(3):
        api.reconcile()


def test_four_half_gpu_jobs_share_two_gpus_and_a_whole_gpu_job_waits_for_a_whole_free_one(api):
    halves = [submit(api, api.member, 0.5, name=f"small{i}") for i in range(4)]
    settle(api, *halves)
    rows = [jobs.get(api.store, j) for j in halves]
    assert [r["state"] for r in rows] == ["running"] * 4
    by_gpu: dict[int, list[str]] = {}
    for r in rows:
        assert r["spec"]["gpus"] == 1 and r["spec"]["gpu_share"] == 0.5
        by_gpu.setdefault(r["gpu_indices"][0], []).append(r["id"])
        # each container is pinned to its GPU, two containers to each
        assert list(api.runtime.containers[container_name(r["id"])].request.gpu_uuids) == r["gpu_uuids"]
    assert {g: len(v) for g, v in by_gpu.items()} == {0: 2, 1: 2}
    assert api.call("GET", f"jobs/{halves[0]}", api.member).get_json()["job"]["gpus"]["share"] == 0.5

    # The API, `mlpd gpus`, `mlpd jobs` and the dashboard show the shares and their holders.
    shown = api.call("GET", "gpus", api.member).get_json()["gpus"]
    assert [(g["shared"], g["share_used"], len(g["holders"])) for g in shown] == [(True, 1, 2), (True, 1, 2)]
    assert {h["share"] for g in shown for h in g["holders"]} == {0.5}
    assert {h["job_id"] for g in shown for h in g["holders"]} == set(halves)
    served = Served(api)
    try:
        out = served.cli(api.member, "gpus")
        assert out.exit_code == 0, out.output
        assert out.output.count("shared 1 of 1 by 2") == 2 and out.output.count("(0.5 GPU)") == 4, out.output
        assert "small0" in out.output and "small3" in out.output
        listed = served.cli(api.member, "jobs")
        assert listed.output.count("0.5 of 1 (GPU") == 4, listed.output
        shown_job = served.cli(api.member, "jobs", "show", halves[0])
        assert "a 0.5 share of 1 GPU requested, indices [0]" in shown_job.output, shown_job.output
    finally:
        served.close()
    ui = api.app.test_client()
    ui.get("/ui/login")
    login = ui.post("/ui/login/token", data={"token": api.member, "csrf": ui.get_cookie(LOGIN_CSRF_COOKIE).value})
    assert login.status_code in (302, 303)
    dashboard = ui.get("/ui/live/dashboard").get_data(as_text=True)
    assert dashboard.count('class="sharer"') == 4 and dashboard.count(">shared<") == 2
    assert dashboard.count("0.5 GPU, running since") == 4

    # A whole-GPU job waits: no GPU is whole and free.
    whole = submit(api, api.member, 1)
    api.reconcile()
    assert jobs.get(api.store, whole)["state"] == "queued"
    reason = api.call("GET", f"jobs/{whole}", api.member).get_json()["job"]["waiting"]["reason"]
    assert "waiting for 1 GPU" in reason and "small" in reason, reason

    # One of a GPU's two sharers ends: the GPU is still shared, the job still waits.
    gpu, (first, second) = 1, by_gpu[1]
    assert api.call("POST", f"jobs/{first}/cancel", api.member).status_code == 200
    settle_ended(api, first)
    api.reconcile()
    assert jobs.get(api.store, whole)["state"] == "queued"
    # Both gone: that GPU is whole and free, and the job starts on it.
    assert api.call("POST", f"jobs/{second}/cancel", api.member).status_code == 200
    settle_ended(api, second)
    settle(api, whole)
    row = jobs.get(api.store, whole)
    assert row["state"] == "running" and row["gpu_indices"] == [gpu]
    # A new half does not land on the whole job's GPU, and GPU 0 is full: it waits.
    half = submit(api, api.member, 0.5)
    api.reconcile()
    assert jobs.get(api.store, half)["state"] == "queued"
    # One half on GPU 0 ends: the new half takes its place there, never GPU 1.
    api.call("POST", f"jobs/{by_gpu[0][0]}/cancel", api.member)
    settle_ended(api, by_gpu[0][0])
    settle(api, half)
    assert jobs.get(api.store, half)["gpu_indices"] == [0]
    end_all(api)


def settle_ended(api, job_id):
    for _ in range(3):
        api.reconcile()
        if jobs.get(api.store, job_id)["state"] not in jobs.ACTIVE_STATES:
            return
    raise AssertionError(jobs.get(api.store, job_id)["state"])


def test_half_gpu_workspaces_are_placed_two_on_one_gpu(api):
    # The in-memory engine cannot run JupyterLab (the session fails at exec), but the pass that
    # places the sessions is the same as for jobs: two halves share GPU 0, the third goes to GPU 1.
    sessions = []
    for name in ("lab0", "lab1", "lab2"):
        r = api.call("POST", "workspaces", api.member, json={"name": name, "gpus": 0.5})
        assert r.status_code == 201, r.get_data(as_text=True)
        w = r.get_json()["workspace"]
        assert w["gpus"]["share"] == 0.5 and w["spec"]["gpu_share"] == 0.5
        sessions.append(w["session"])
    api.reconcile()
    rows = [jobs.get(api.store, s) for s in sessions]
    assert [(r["spec"]["gpu_share"], r["gpu_indices"]) for r in rows] == [(0.5, [0]), (0.5, [0]), (0.5, [1])]
    assert api.call("POST", "workspaces", api.member, json={"name": "lab9", "gpu_share": 0.25}).status_code == 201
    end_all(api)


def test_the_ledger_books_half_a_gpu_hour_per_workload_hour(api):
    clock = api.runtime.clock
    job_id = submit(api, api.member, 0.5)
    settle(api, job_id)
    started = jobs.get(api.store, job_id)["started_at"]
    assert started == clock.t
    clock.t += HOUR  # an hour later (Docker's clock), it ends
    api.runtime.containers[container_name(job_id)].steps = [("exit", "0")]
    settle_ended(api, job_id)
    [row] = api.store.query("SELECT share, start, end, kind FROM allocations WHERE object_id = ?", [job_id])
    assert (row["share"], row["kind"], row["end"] - row["start"]) == (0.5, "job", HOUR)
    # quotas, usage reports and fair share read the ledger the same way: 0.5 GPU-hours for its hour
    assert quotas.gpu_hours_used(api.store, [api.member_name], row["start"], row["end"]) == pytest.approx(0.5)
    [item] = [a for a in quotas.allocations(api.store, row["start"]) if a.object_id == job_id]
    assert gpu_seconds(item, row["start"], row["end"]) == HOUR / 2


def test_a_concurrent_quota_of_one_gpu_admits_two_halves(tmp_path):
    api = make_api(tmp_path, declare_gpus=2, **{"quotas.over_quota": "refuse"})
    r = api.call("POST", "quotas", api.admin, json={"user": api.member_name, "max_gpus": 1})
    assert r.status_code in (200, 201), r.get_data(as_text=True)
    halves = []
    for _ in range(2):
        r = api.call("POST", "jobs", api.member, json={"command": ["sleep", "600"], "gpus": 0.5})
        assert r.status_code == 201, r.get_data(as_text=True)
        halves.append(r.get_json()["job"]["id"])
    settle(api, *halves)
    assert [jobs.get(api.store, j)["state"] for j in halves] == ["running", "running"]
    quota = api.call("GET", "quota", api.member).get_json()
    assert quota["quotas"][0]["gpus_held"] == 1
    # A third half, or a whole GPU, is over the quota: refused with the reason, nothing stored.
    before = len(jobs.in_states(api.store, [jobs.JobState.QUEUED]))
    for gpus in (0.5, 1):
        r = api.call("POST", "jobs", api.member, json={"command": ["sleep", "600"], "gpus": gpus})
        assert error_of(r) == (403, "quota_exceeded")
        assert "1 GPUs at most, 1 held now" in r.get_json()["error"]["message"]
    assert len(jobs.in_states(api.store, [jobs.JobState.QUEUED])) == before


def test_a_bad_share_is_refused_naming_the_field(api):
    for body, field in (({"gpus": 1.5}, "gpus"), ({"gpus": 0.01}, "gpus"), ({"gpus": 2, "gpu_share": 0.5}, "gpu_share"),
                        ({"gpu_share": 1}, "gpu_share")):
        r = api.call("POST", "jobs", api.member, json={"command": ["true"], **body})
        assert error_of(r) == (400, "invalid_field")
        assert r.get_json()["error"]["message"].startswith(f"{field}: ")


def test_the_submit_and_workspace_forms_take_a_share(api):
    ui = api.app.test_client()
    ui.get("/ui/login")
    ui.post("/ui/login/token", data={"token": api.member, "csrf": ui.get_cookie(LOGIN_CSRF_COOKIE).value})
    page = ui.get("/ui/jobs/new").get_data(as_text=True)
    assert 'step="0.05"' in page and "a share of one GPU such as 0.5" in page
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    done = ui.post("/ui/jobs/new", data={"csrf": csrf, "command": "sleep 600", "gpus": "0.5"})
    assert done.status_code == 303, done.get_data(as_text=True)[:500]
    job_id = done.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    assert (jobs.get(api.store, job_id)["spec"]["gpus"], jobs.get(api.store, job_id)["spec"]["gpu_share"]) == (1, 0.5)
    page = ui.get("/ui/workspaces").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    done = ui.post("/ui/workspaces", data={"csrf": csrf, "name": "formlab", "gpus": "0.5", "wait": "1"})
    assert done.status_code in (302, 303), done.get_data(as_text=True)[:500]
    ws = api.call("GET", "workspaces/formlab", api.member).get_json()["workspace"]
    assert ws["spec"]["gpu_share"] == 0.5
    bad = ui.post("/ui/workspaces", data={"csrf": csrf, "name": "badlab", "gpus": "half"})
    assert "expected a whole number or a share of one GPU such as 0.5" in bad.get_data(as_text=True)
    end_all(api)


def test_a_half_gpu_workspace_that_finds_no_room_says_who_shares_the_gpus(api):
    halves = [submit(api, api.member, 0.5, name=f"busy{i}") for i in range(4)]
    settle(api, *halves)
    r = api.call("POST", "workspaces", api.member, json={"name": "noroom", "gpus": 0.5})
    assert error_of(r) == (409, "gpus_busy")
    message = r.get_json()["error"]["message"]
    assert message.startswith("asks for a 0.5 share of a GPU but only 0 are free now (none); GPU 0 shared by job busy"), message
    assert message.count("(0.5)") == 4 and "GPU 1 shared by" in message
    assert api.call("GET", "workspaces/noroom", api.member).status_code == 404  # nothing is left behind
    end_all(api)
