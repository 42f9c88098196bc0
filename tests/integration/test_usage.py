"""GPU-hours, quotas, fair share and metrics end to end: real daemons, real Docker, real SQLite."""

from __future__ import annotations

import csv
import io
import signal
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import as_json, needs_docker, wait_for
from test_jobs import TERMINAL, container_of, job, logs, new_user, submit, wait_state

pytestmark = needs_docker

TIMED = ["sh", "-c", "date +%s.%N; sleep {}; date +%s.%N"]


def booked_seconds(d, token, user):
    rows = d.api("GET", "/api/v1/usage", token, params={"user": user, "since": 0}).json()["rows"]
    return sum(r["gpu_hours"] for r in rows) * 3600


def test_a_job_is_booked_within_a_second_of_its_real_runtime(daemon):
    name, token = new_user(daemon)
    j = submit(daemon, token, [TIMED[0], TIMED[1], TIMED[2].format(2)], gpus=1)
    assert wait_state(daemon, token, j, TERMINAL)["state"] == "succeeded"
    first, last = map(float, logs(daemon, token, j).split())
    booked = booked_seconds(daemon, token, name)
    assert abs(booked - (last - first)) < 1.0, (booked, last - first)


def test_booking_survives_a_sigkill_during_the_job(make_daemon):
    d = make_daemon(["--declare-gpus", "1"])
    name, token = new_user(d)
    j = submit(d, token, ["sleep", "4"], gpus=1)
    wait_state(d, token, j, "running")
    d.stop(signal.SIGKILL)
    wait_for(lambda: (c := container_of(j)) and not c["State"]["Running"], 20, 0.2, "the job to end while the daemon is down")
    state = container_of(j)["State"]
    from mlpd.runtime.docker_engine import _ts

    real = _ts(state["FinishedAt"]) - _ts(state["StartedAt"])
    time.sleep(1.5)  # downtime after the job ended must not be booked
    d.start()
    wait_state(d, token, j, TERMINAL)
    booked = booked_seconds(d, token, name)
    assert abs(booked - real) < 1.0, (booked, real)
    # a second restart books nothing twice
    d.stop()
    d.start()
    assert abs(booked_seconds(d, token, name) - real) < 1.0


def test_usage_csv_is_valid_and_matches_the_ledger(daemon):
    name, token = new_user(daemon)
    j = submit(daemon, token, ["sleep", "1"], gpus=2)
    wait_state(daemon, token, j, TERMINAL)
    out = daemon.cli("usage", "--csv", "--since", "2000-01-01", token=token)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert rows and set(rows[0]) == {"user", "gpu_hours", "busy_gpu_hours", "cost", "allocations"}
    mine = [r for r in rows if r["user"] == name]
    assert len(rows) == 1 and len(mine) == 1  # a member sees only themselves
    as_json_rows = as_json(daemon.cli("usage", "--json", "--since", "2000-01-01", token=token))["rows"]
    assert float(mine[0]["gpu_hours"]) == pytest.approx(as_json_rows[0]["gpu_hours"], abs=1e-6)
    assert int(mine[0]["allocations"]) == 2  # one ledger row per GPU
    assert float(mine[0]["gpu_hours"]) * 3600 == pytest.approx(2 * 1.0, abs=1.0)
    # members cannot read others' usage
    assert daemon.api("GET", "/api/v1/usage", token, params={"user": "root"}).status_code == 403


def test_concurrent_gpu_quota_waits_until_an_admin_raises_it(daemon):
    name, token = new_user(daemon)
    set_ = daemon.cli("admin", "quota", "set", "--user", name, "--max-gpus", "1")
    assert set_.returncode == 0, set_.stderr
    a = submit(daemon, token, ["sleep", "30"], gpus=1)
    wait_state(daemon, token, a, "running")
    resp = daemon.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "gpus": 1})
    assert resp.status_code == 201 and any("concurrent GPU quota" in w for w in resp.json()["warnings"])
    b = resp.json()["job"]["id"]
    waiting = wait_for(lambda: (j := job(daemon, token, b))["waiting"] and j, 20, 0.1, f"job {b} to say why it waits")
    assert waiting["state"] == "queued" and "concurrent GPU quota of user " + name in waiting["waiting"]["reason"]
    quota = as_json(daemon.cli("quota", "--json", token=token))["quotas"][0]
    assert quota["max_gpus"] == 1 and quota["gpus_held"] == 1
    daemon.cli("admin", "quota", "set", "--user", name, "--max-gpus", "2")
    assert wait_state(daemon, token, b, TERMINAL, timeout=20)["state"] == "succeeded"
    daemon.api("POST", f"/api/v1/jobs/{a}/cancel", token)
    wait_state(daemon, token, a, TERMINAL)


def test_refuse_mode_refuses_over_quota_work_with_limit_usage_and_reset(make_daemon, tmp_path):
    config = tmp_path / "mlpd.toml"
    config.write_text('[quotas]\nover_quota = "refuse"\nperiod = "month"\n')
    d = make_daemon(["--declare-gpus", "2"], config_file=config)
    name, token = new_user(d)
    d.cli("admin", "quota", "set", "--user", name, "--max-gpus", "1", "--gpu-hours", "0.0003")
    j = submit(d, token, ["sleep", "2"], gpus=1)
    wait_state(d, token, j, "running")
    resp = d.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "gpus": 1})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "quota_exceeded"
    assert "concurrent GPU quota of user " + name in resp.json()["error"]["message"]
    wait_state(d, token, j, TERMINAL)
    # 2 s used against a limit of ~1 s: the GPU-hours quota refuses, naming usage and reset
    cli = d.cli("run", "--no-code", "--gpus", "1", "--", "true", token=token)
    assert cli.returncode != 0
    assert "GPU-hour quota of user " + name in cli.stderr and "0.0003 GPU-hours" in cli.stderr and "resets at" in cli.stderr
    before = len(d.api("GET", "/api/v1/jobs", token).json()["jobs"])
    assert before == 1  # nothing was stored
    assert d.api("POST", "/api/v1/jobs", token, json={"command": ["true"]}).status_code == 201  # CPU-only work is not GPU quota
    d.cli("admin", "quota", "set", "--user", name, "--gpu-hours", "10", "--max-gpus", "1")
    assert d.api("POST", "/api/v1/jobs", token, json={"command": ["true"], "gpus": 1}).status_code == 201


def test_fair_share_runs_the_lighter_user_first(make_daemon):
    d = make_daemon(["--declare-gpus", "1"])
    heavy, th = new_user(d, "heavy")
    light, tl = new_user(d, "light")
    warm = submit(d, th, ["sleep", "2"], gpus=1)
    wait_state(d, th, warm, TERMINAL)
    _, tc = new_user(d, "holder")
    holder = submit(d, tc, ["sleep", "3"], gpus=1)
    wait_state(d, tc, holder, "running")
    # A higher-priority job is the head and holds the reservation, so that neither job below is
    # the head alone when it is submitted (a head's reservation sticks, whatever fair share says later).
    blocker = submit(d, tc, ["sleep", "1"], gpus=1, priority=10)
    h2 = submit(d, th, ["sleep", "1"], gpus=1)   # submitted first...
    l2 = submit(d, tl, ["sleep", "1"], gpus=1)   # ...but light has less recent usage
    first = wait_for(lambda: next((x for x in (h2, l2) if job(d, th if x == h2 else tl, x)["state"] != "queued"), None), 30, 0.1, "one to start")
    assert first == l2
    assert wait_state(d, tc, blocker, TERMINAL)["state"] == "succeeded"
    assert wait_state(d, th, h2, TERMINAL, timeout=30)["state"] == "succeeded"


def test_fair_share_shows_each_users_factors_to_admins_and_members_their_own(make_daemon):
    d = make_daemon(["--declare-gpus", "1"])
    heavy, th = new_user(d, "heavy")
    light, tl = new_user(d, "light")
    used = submit(d, th, ["sleep", "2"], gpus=1)
    wait_state(d, th, used, TERMINAL)
    holder = submit(d, th, ["sleep", "30"], gpus=1)
    wait_state(d, th, holder, "running")
    queued = submit(d, tl, ["sleep", "1"], gpus=1)
    admin = d.api("GET", "/api/v1/fair-share", d.admin_token).json()
    rows = {r["user"]: r for r in admin["users"]}
    assert admin["fair_share"] is True and admin["weights"] == {"fair_share": 100, "slowdown": 3000}
    assert rows[heavy]["usage_gpu_hours"] > 0 and rows[heavy]["usage_factor"] < rows[light]["usage_factor"] == 1.0
    assert rows[light]["queued"] == 1 and rows[heavy]["queued"] == 0 and rows[light]["queued_for_quota"] == 0
    assert [r["user"] for r in admin["users"]][0] == light  # the most favoured first
    mine = d.api("GET", "/api/v1/fair-share", th).json()["users"]
    assert [r["user"] for r in mine] == [heavy]  # a member sees their own standing only
    shown = d.cli("fair-share", token=tl)
    assert shown.returncode == 0, shown.stderr
    assert light in shown.stdout and heavy not in shown.stdout and "SLOWDOWN FACTOR" in shown.stdout
    as_admin = as_json(d.cli("fair-share", "--json"))
    assert {r["user"] for r in as_admin["users"]} >= {heavy, light}
    d.api("POST", f"/api/v1/jobs/{holder}/cancel", th)
    assert wait_state(d, tl, queued, TERMINAL)["state"] == "succeeded"


def test_metrics_are_valid_prometheus_exposition(daemon):
    name, token = new_user(daemon)
    j = submit(daemon, token, ["sleep", "20"], gpus=1)
    running = wait_state(daemon, token, j, "running")
    assert daemon.api("GET", "/metrics", token).status_code == 403  # members: no
    assert daemon.api("GET", "/metrics").status_code == 401
    resp = daemon.api("GET", "/metrics", daemon.admin_token)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    for family in ("mlpd_gpu_allocated", "mlpd_gpu_info", "mlpd_jobs", "mlpd_queue_depth", "mlpd_gpu_hours"):
        assert family in families, family
    allocated = [s for s in families["mlpd_gpu_allocated"].samples if s.value == 1]
    assert any(s.labels["owner"] == name and s.labels["object_id"] == j and s.labels["uuid"] == running["gpus"]["uuids"][0] for s in allocated)
    declared = [s for s in families["mlpd_gpu_info"].samples]
    assert len(declared) == 2 and all(s.labels["declared"] == "1" for s in declared)
    running_count = [s.value for s in families["mlpd_jobs"].samples if s.labels["state"] == "running"][0]
    assert running_count >= 1
    daemon.api("POST", f"/api/v1/jobs/{j}/cancel", token)
    wait_state(daemon, token, j, TERMINAL)


def test_teams_roll_up_usage(daemon):
    name, token = new_user(daemon)
    team = f"t{name[-6:]}"
    assert daemon.cli("admin", "team", "add", team).returncode == 0
    assert daemon.cli("admin", "team", "member", "add", team, name).returncode == 0
    j = submit(daemon, token, ["sleep", "1"], gpus=1)
    wait_state(daemon, token, j, TERMINAL)
    rows = as_json(daemon.cli("usage", "--team", team, "--by", "team", "--since", "2000-01-01", "--json"))["rows"]
    assert [r["key"] for r in rows] == [team] and rows[0]["gpu_hours"] > 0


def test_quota_shows_usage_this_period_and_the_reset_also_without_a_quota(daemon):
    name, token = new_user(daemon)
    j = submit(daemon, token, ["sleep", "1"], gpus=1)
    assert wait_state(daemon, token, j, TERMINAL)["state"] == "succeeded"
    shown = daemon.cli("quota", token=token)
    assert shown.returncode == 0, shown.stderr
    data = as_json(daemon.cli("quota", "--json", token=token))
    period, text = data["usage"]["period"], shown.stdout
    assert data["usage"]["resets_at"] > time.time() and data["usage"]["gpus_held"] == 0 and data["usage"]["gpu_hours_used"] > 0
    if data["quotas"]:  # a default quota (of CPUs, memory or running jobs) applies: the table says it all
        assert "RESETS" in text and period in text and "0.00 /" not in text, text  # a second of GPU time is not 0.00
        return
    assert text.splitlines()[0] == f"{name}: no quota", text
    assert f"GPU-hours used this {period}: " in text and "GPUs held now: 0" in text and "resets " in text, text
    used = float(text.split(f"GPU-hours used this {period}: ", 1)[1].split()[0])
    assert 0 < used < 0.01, text
