"""The platform report (mlpd.scheduling.report, GET /api/v1/admin/report, `mlpd admin report`, the Platform page,
the /metrics gauges) against a seeded state whose every figure is counted here by hand.

The state: users with known creation times, workload rows (jobs, workspace sessions, a deployment
replica) with known submit, start and end times, ledger rows with NVML samples on one GPU, a
deployment revision that began serving, and a real MLflow store (MLflow's own client writes the
runs, the registered models and a version). The window starts on Monday 2026-11-02 (ISO week 45).
"""

from __future__ import annotations

import datetime as dt

import pytest
from app_client import error_of, make_api

T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()  # Monday, 2026-W45
H, D = 3600.0, 86400.0

# (id, owner, kind, state, reason, exit_code, submitted, started (seconds after submit), ended)
WORKLOADS = [
    ("j1", "alice", "job", "succeeded", "exited with code 0", 0, T0 + 2 * H, 60, T0 + 3 * H),
    ("j2", "alice", "job", "failed", "out of memory: the container was OOM-killed", 137, T0 + 4 * H, 120, T0 + 5 * H),
    ("j3", "bob", "job", "failed", "exited with code 2", 2, T0 + 1 * D, 300, T0 + 1 * D + H),
    ("w1", "bob", "workspace", "cancelled", "culled: idle 4h", None, T0 + 2 * D, 10, T0 + 2 * D + 4 * H),
    ("j4", "bob", "job", "succeeded", "exited with code 0", 0, T0 + 7 * D, 30, T0 + 7 * D + 2 * H),
    ("j5", "carol", "job", "lost", "its container vanished (removed outside mlpd?)", None, T0 + 8 * D, 600, T0 + 8 * D + H),
    ("j6", "carol", "job", "failed", "building its environment failed: no matching distribution", None, T0 + 9 * D, None,
     T0 + 9 * D + 100),
    ("j7", "carol", "job", "timed_out", "stopped after its time limit of 45s", 143, T0 + 9 * D + H, 5, T0 + 9 * D + H + 50),
    ("d1", "alice", "deployment", "cancelled", "removed by alice", None, T0 + 10 * D, 20, T0 + 12 * D),
    ("w2", "alice", "workspace", "cancelled", "stopped by alice", None, T0 + 11 * D, 15, T0 + 11 * D + H),
]


def _seed_mlflow(state_dir) -> None:
    """Runs, registered models and a version, written by MLflow's own client into mlpd's MLflow store."""
    from mlflow.tracking import MlflowClient

    from mlpd.tracking.server import backend_uri

    client = MlflowClient(tracking_uri=backend_uri(str(state_dir)), registry_uri=backend_uri(str(state_dir)))
    exp = client.create_experiment("churn-exp")
    first = client.create_run(exp, start_time=int((T0 + 1 * D) * 1000))
    client.set_terminated(first.info.run_id, end_time=int((T0 + 1 * D + 60) * 1000))
    second = client.create_run(exp, start_time=int((T0 + 3 * D) * 1000))
    client.set_terminated(second.info.run_id, end_time=int((T0 + 3 * D + 60) * 1000))
    client.create_registered_model("churn")
    client.create_model_version("churn", f"mlflow-artifacts:/{exp}/{second.info.run_id}/artifacts/model", run_id=second.info.run_id)
    client.create_registered_model("unserved")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    from mlpd import users
    from mlpd.scheduling import quotas
    from mlpd.store import record_event

    api = make_api(tmp_path_factory.mktemp("report-state"))
    st = api.store
    for name in ("alice", "bob", "carol"):
        users.add_user(st, name)
    quotas.add_team(st, "vision", "root")
    for name in ("alice", "bob"):
        quotas.set_membership(st, "vision", name, True, "root")
    with st.write() as db:
        for name, created in (("root", T0 - 30 * D), ("member", T0 - 30 * D), ("carol", T0 - 10 * D), ("alice", T0 + H),
                              ("bob", T0 + 2 * H)):
            db.execute("UPDATE users SET created_at = ? WHERE name = ?", [created, name])
        for wid, owner, kind, state, reason, code, submitted, wait, ended in WORKLOADS:
            db.execute("INSERT INTO jobs (id, owner, name, spec, state, reason, exit_code, priority, submitted_at, started_at, ended_at, "
                       "updated_at, kind, cancel_reason) VALUES (?, ?, ?, '{}', ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                       [wid, owner, wid, state, reason, code, submitted, None if wait is None else submitted + wait, ended, ended, kind,
                        reason if reason.startswith("culled:") else None])
        # The ledger: alice's j1 on GPU-A (sampled at 50% throughout), bob's j4 on GPU-B and carol's j5 on GPU-A (no samples then).
        for owner, obj, uuid, start, end in (("alice", "j1", "GPU-A", T0 + 2 * H + 60, T0 + 3 * H),
                                             ("bob", "j4", "GPU-B", T0 + 7 * D + 30, T0 + 7 * D + 2 * H),
                                             ("carol", "j5", "GPU-A", T0 + 8 * D + 600, T0 + 8 * D + H)):
            db.execute("INSERT INTO allocations (owner, kind, object_id, gpu_uuid, gpu_index, gpu_model, start, end) "
                       "VALUES (?, 'job', ?, ?, 0, 'Declared', ?, ?)", [owner, obj, uuid, start, end])
        for k in range(1, 60):  # 59 samples, each standing for the 60 s before it: exactly j1's 3540 s
            db.execute("INSERT INTO gpu_samples (at, gpu_uuid, utilization, memory_used, resolution) VALUES (?, 'GPU-A', 50, 0, 60)",
                       [T0 + 2 * H + 60 + 60 * k])
        record_event(db, "alice", "deployment.created", "deployment", "dep1", at=T0 + 10 * D, name="churn-api")
        db.execute("INSERT INTO deployment_revisions (id, deployment, seq, model_uri, model_name, model_version, location, state, "
                   "created_at, switched_at) VALUES ('rev1', 'dep1', 1, 'models:/churn/1', 'churn', '1', '/x', 'serving', ?, ?)",
                   [T0 + 10 * D, T0 + 12 * D])
    _seed_mlflow(api.state_dir)
    until = dt.datetime.now(dt.UTC).timestamp() + D  # the registered models are created now
    return api, until


def _report(api, until, **params):
    query = "&".join(f"{k}={v}" for k, v in {"since": "2026-11-02", "until": until, **params}.items())
    return api.call("GET", f"admin/report?{query}", api.admin)


def test_every_figure_equals_a_count_made_by_hand(seeded):
    api, until = seeded
    r = _report(api, until)
    assert r.status_code == 200, r.get_data(as_text=True)
    rep = r.get_json()
    weeks = rep["periods"]
    assert weeks[0]["label"] == "2026-W45" and weeks[1]["label"] == "2026-W46"
    assert weeks[0]["start"] == T0 and weeks[1]["start"] == T0 + 7 * D
    # Active users: W45 alice and bob; W46 bob (j4), carol (j5, j7), alice (d1, w2); nobody after.
    assert [w["active_users"] for w in weeks[:2]] == [2, 3]
    assert all(w["active_users"] == 0 and w["started"] == 0 for w in weeks[2:])
    assert rep["active_users"] == 3
    # Queue waits: W45 10, 60, 120, 300 s (w1, j1, j2, j3); W46 5, 15, 20, 30, 600 s (j7, w2, d1, j4, j5). Nearest rank.
    assert (weeks[0]["started"], weeks[0]["queue_wait_p50"], weeks[0]["queue_wait_p95"]) == (4, 60, 300)
    assert (weeks[1]["started"], weeks[1]["queue_wait_p50"], weeks[1]["queue_wait_p95"]) == (5, 20, 600)
    # New users: alice (first success j1, 2 h after her account), bob (j4, 7 days after his).
    assert [(u["user"], u["seconds_to_first_success"]) for u in rep["new_users"]] == [("alice", 7200), ("bob", 7 * 86400)]
    assert {u["user"]: (u["by_kind"], u["total"]) for u in rep["workloads_per_user"]} == {
        "alice": ({"deployment": 1, "job": 2, "workspace": 1}, 4),
        "bob": ({"job": 2, "workspace": 1}, 3),
        "carol": ({"job": 3}, 3)}
    by_kind = {k["kind"]: k for k in rep["success_by_kind"]}
    assert (by_kind["job"]["ended"], by_kind["job"]["succeeded"], by_kind["job"]["failed"]) == (7, 2, 5)
    assert by_kind["job"]["success_rate"] == round(2 / 7, 4)
    assert (by_kind["workspace"]["ended"], by_kind["workspace"]["cancelled"], by_kind["workspace"]["success_rate"]) == (2, 2, None)
    assert (by_kind["deployment"]["ended"], by_kind["deployment"]["cancelled"]) == (1, 1)
    assert rep["failure_causes"] == [{"cause": c, "count": 1} for c in
                                     ("environment build", "exit code 2", "lost", "out of memory", "time limit")]
    # GPU-hours: vision = alice's 3540 s + bob's 7170 s, busy = half of alice's (bob's GPU was never sampled); carol has no team.
    assert rep["gpu_hours_by_team"] == [
        {"team": "(no team)", "gpu_hours": round(3000 / 3600, 6), "busy_gpu_hours": None},
        {"team": "vision", "gpu_hours": round((3540 + 7170) / 3600, 6), "busy_gpu_hours": round(1770 / 3600, 6)}]
    runtime = {k["kind"]: k for k in rep["runtime_by_kind"]}
    assert runtime["job"]["hours"] == round((3540 + 3480 + 3300 + 7170 + 3000 + 45) / 3600, 6)
    assert runtime["workspace"]["hours"] == round((4 * 3600 - 10 + 3600 - 15) / 3600, 6)
    assert (runtime["workspace"]["culled_idle"], runtime["workspace"]["culled_share"]) == (1, 0.5)
    assert runtime["deployment"]["hours"] == round((2 * 86400 - 20) / 3600, 6)
    assert rep["models_registered"] == 2 and sorted(m["model"] for m in rep["models"]) == ["churn", "unserved"]
    assert rep["deployments_started"] == 1
    # churn: the first run of its experiment (day 1) to the revision that began serving on day 12.
    assert [(t["model"], t["seconds"]) for t in rep["time_to_production"]] == [("churn", 11 * 86400)]


def test_months_csv_and_a_window_without_activity(seeded):
    api, until = seeded
    months = _report(api, until, by="month").get_json()
    assert months["periods"][0]["label"] == "2026-11"
    assert months["periods"][0]["active_users"] == 3 and months["periods"][0]["started"] == 9
    csv_text = _report(api, until, format="csv").get_data(as_text=True)
    assert csv_text.splitlines()[0] == "section,key,field,value"
    assert "failure_causes,out of memory,count,1" in csv_text and "summary,,deployments_started,1" in csv_text
    quiet = api.call("GET", f"admin/report?since=2026-10-01&until={T0}", api.admin).get_json()
    assert quiet["active_users"] == 0 and quiet["failure_causes"] == [] and quiet["time_to_production"] == []


def test_bad_windows_and_members_are_refused(seeded):
    api, until = seeded
    assert error_of(_report(api, until, by="day")) == (400, "invalid_field")
    assert error_of(api.call("GET", "admin/report?since=2026-12-01&until=2026-11-01", api.admin)) == (400, "invalid_field")
    assert error_of(api.call("GET", "admin/report?since=yesterday", api.admin)) == (400, "invalid_field")
    assert error_of(api.call("GET", "admin/report", api.member)) == (403, "forbidden")


def test_the_gauges(seeded):
    api, _until = seeded
    text = api.call("GET", "/metrics", api.admin).get_data(as_text=True)
    # Nothing of the seeded state lies in the last 7 days; the registry and the events count all time.
    assert "mlpd_platform_active_users 0.0" in text
    assert "mlpd_platform_models_registered 2.0" in text
    assert "mlpd_platform_deployments_started 1.0" in text
    assert "mlpd_platform_queue_wait_seconds{" not in text  # no workload started in the window: no percentile, not 0


def ui_get(api, user: str, path: str):
    """GET a web UI page with a session of user's (made as the login form makes it)."""
    from mlpd.web.ui_auth import COOKIE

    from mlpd import users

    secret, _ = users.create_session(api.store, users.get_user(api.store, user), "token")
    client = api.app.test_client()
    client.set_cookie(COOKIE, secret)
    return client.get(path)


def test_the_platform_page(seeded):
    api, _until = seeded
    page = ui_get(api, "root", "/ui/admin/platform?since=2026-11-02&by=week")
    html = page.get_data(as_text=True)
    assert page.status_code == 200, html[:500]
    assert "3 active users, 2 new, 2 models registered, 1 deployment started." in html
    assert html.count("<svg") >= 3 and "<td>2026-W45</td><td>2</td><td>4</td><td>60.0</td><td>300.0</td>" in html
    assert "<td>out of memory</td><td>1</td>" in html and "<td>churn</td>" in html
    assert ui_get(api, "member", "/ui/admin/platform").status_code == 403


def test_the_cli_prints_the_same_report(seeded):
    import csv
    import io
    import json

    from app_client import Served

    api, until = seeded
    served = Served(api)
    try:
        as_json = served.cli(api.admin, "admin", "report", "--since", "2026-11-02", "--until", str(until), "--json")
        assert as_json.exit_code == 0, as_json.output
        assert json.loads(as_json.output) == _report(api, until).get_json()
        text = served.cli(api.admin, "admin", "report", "--since", "2026-11-02", "--until", str(until))
        assert text.exit_code == 0 and "3 active users, 2 new, 2 models registered, 1 deployments started" in text.output
        assert "out of memory" in text.output and "churn" in text.output
        as_csv = served.cli(api.admin, "admin", "report", "--since", "2026-11-02", "--until", str(until), "--by", "month", "--csv")
        rows = list(csv.reader(io.StringIO(as_csv.output)))
        assert ["periods", "2026-11", "active_users", "3"] in rows
        refused = served.cli(api.member, "admin", "report")
        assert refused.exit_code != 0 and "admin" in refused.output
    finally:
        served.close()
