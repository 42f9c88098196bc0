"""The automation pages of the web UI through the app's test client (in-memory runtime): a member logs in
with their token and sees their schedules, a schedule's runs, their sweeps and a sweep's trials with its
chart, and a waiting job's page names what it waits for; the schedule buttons work; another member gets 404."""

from __future__ import annotations

import re

from app_client import api  # noqa: F401  (the fixture)

from mlpd.web.ui_auth import LOGIN_CSRF_COOKIE


def browser(api, token):
    client = api.app.test_client()
    client.get("/ui/login")
    csrf = client.get_cookie(LOGIN_CSRF_COOKIE).value
    response = client.post("/ui/login/token", data={"token": token, "csrf": csrf})
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:300]
    return client


def page_csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_schedule_and_sweep_pages_and_a_waiting_jobs_links(api):
    from mlpd.automation import sweeps

    assert api.call("POST", "schedules", api.member, json={"name": "nightly", "cron": "0 3 * * *", "spec": {"command": ["true"]}}).status_code == 201
    first = api.call("POST", "jobs", api.member, json={"command": ["sleep", "9"]}).get_json()["job"]["id"]
    waiting = api.call("POST", "jobs", api.member, json={"command": ["true"], "after": [first + ":any"]}).get_json()["job"]["id"]
    plan = sweeps.plan({"command": ["train", "--lr", "{lr}"], "params": {"lr": [0.1, 0.01, 0.001]}, "parallel": 2, "metric": "acc"})
    sweep_id = sweeps.create(api.store, api.member_name, plan, {}, "exp", "", ["", "", ""])

    ui = browser(api, api.member)
    listed = ui.get("/ui/schedules").get_data(as_text=True)
    assert "nightly" in listed and "0 3 * * *" in listed and ">Schedules<" in listed and ">Sweeps<" in listed
    page = ui.get("/ui/schedules/nightly").get_data(as_text=True)
    assert "Next run" in page and "No runs yet." in page
    done = ui.post("/ui/schedules/nightly/run-now", data={"csrf": page_csrf(page)})
    assert done.status_code == 302
    page = ui.get(done.headers["Location"]).get_data(as_text=True)
    assert "Schedule submitted job" in page and "fired" in page
    paused = ui.get(ui.post("/ui/schedules/nightly/pause", data={"csrf": page_csrf(page)}).headers["Location"]).get_data(as_text=True)
    assert "Paused." in paused and ">Resume<" in paused

    job_page = ui.get(f"/ui/jobs/{waiting}").get_data(as_text=True)
    assert f"waiting for job {first}" in job_page and f"job {first}</a> to end" in job_page

    sweep_list = ui.get("/ui/sweeps").get_data(as_text=True)
    assert sweep_id in sweep_list and "3 waiting" in sweep_list
    sweep_page = ui.get(f"/ui/sweeps/{sweep_id}").get_data(as_text=True)
    assert "3 trials (grid), at most 2 at once" in sweep_page and "No trial has logged acc yet." in sweep_page
    assert sweep_page.count("<svg") == 1 and "lr vs acc" in sweep_page

    other = browser(api, api.user("nosy"))
    assert other.get("/ui/schedules/nightly").status_code == 404
    assert other.get(f"/ui/sweeps/{sweep_id}").status_code == 404
    assert other.post("/ui/schedules/nightly/remove", data={"csrf": "x"}).status_code in (403, 404)
    assert api.call("GET", "schedules/nightly", api.member).status_code == 200


def test_the_chart_draws_each_trial_with_a_metric():
    from mlpd.web.ui_automation import scatter

    svg = scatter("lr vs acc", [("0.1", 0.5), ("0.001", 0.9), ("0.01", None)], "lr", "acc")
    assert svg.count("<circle") == 2 and "(log)" in svg and "lr=0.001: acc=0.9" in svg
    assert scatter("opt vs acc", [("adam", 0.5), ("sgd", 0.7)], "opt", "acc").count("<circle") == 2
    assert "<script" not in scatter("<script>", [("<b>", 1.0)], "<i>", "x") and "&lt;script&gt;" in scatter("<script>", [], "a", "b")
