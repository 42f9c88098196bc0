"""Dependencies (`after` on POST /jobs) and schedules through the API, in-process (the in-memory runtime).

Each refusal is checked to add nothing: no job row, no schedule row.
"""

from __future__ import annotations

from app_client import api, error_of  # noqa: F401  (api: the fixture)


def count(api, table: str) -> int:
    return api.store.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]


def submit(api, token, **body):
    return api.call("POST", "jobs", token, json={"command": ["true"], **body})


def test_after_makes_a_waiting_job_shown_with_what_it_waits_for(api):
    first = submit(api, api.member, command=["sleep", "60"]).get_json()["job"]["id"]
    response = submit(api, api.member, after=[first])
    assert response.status_code == 201, response.get_data(as_text=True)
    job = response.get_json()["job"]
    assert job["state"] == "waiting" and job["reason"] == f"waiting for job {first}"
    shown = api.call("GET", f"jobs/{job['id']}", api.member).get_json()["job"]
    assert shown["after"] == [{"job": first, "condition": "ok", "state": "queued"}]
    assert shown["schedule"] is None and shown["sweep"] is None
    waiting = api.call("GET", "jobs?state=waiting", api.member).get_json()["jobs"]
    assert [j["id"] for j in waiting] == [job["id"]]
    api.call("POST", f"jobs/{first}/cancel", api.member)
    api.reconcile()
    from mlpd.automation import dependencies

    dependencies.release(api.store)
    shown = api.call("GET", f"jobs/{job['id']}", api.member).get_json()["job"]
    assert shown["state"] == "cancelled" and first in shown["reason"]


def test_after_refusals_add_nothing(api):
    other = api.user("stranger")
    theirs = submit(api, other).get_json()["job"]["id"]
    mine = submit(api, api.member).get_json()["job"]["id"]
    before, links = count(api, "jobs"), count(api, "job_dependencies")
    for after, expected in (([theirs], (404, "not_found")), (["0" * 12], (404, "not_found")), ([mine, mine], (400, "invalid_field")),
                            ([mine + ":sometimes"], (400, "invalid_field")), ("not a list" * 3, (400, "invalid_field"))):
        assert error_of(submit(api, api.member, after=after)) == expected, after
    assert error_of(submit(api, api.member, after=[mine], gpus=-1)) == (400, "invalid_field")
    assert count(api, "jobs") == before and count(api, "job_dependencies") == links
    admin_sees = submit(api, api.admin, after=[theirs + ":any"])
    assert admin_sees.status_code == 201  # admins see every job


def test_schedule_refusals_add_nothing_and_name_the_field(api):
    before = count(api, "schedules")
    good = {"name": "ok-name", "cron": "0 3 * * *", "spec": {"command": ["true"]}}
    for change, message in (({"cron": "0 3 * *"}, "has 4 fields"), ({"cron": "61 * * * *"}, "minute: 61"),
                            ({"timezone": "Mars/Base"}, "unknown time zone"), ({"overlap": "sometimes"}, "overlap"),
                            ({"catch_up": "all"}, "catch_up"), ({"name": "no spaces"}, "name:"),
                            ({"spec": {"command": ["true"], "privileged": True}}, "spec.privileged"),
                            ({"spec": {"command": ["true"], "gpus": 9}}, "gpus: asks for 9 GPUs"),
                            ({"spec": {"command": ["true"], "code": "a" * 64}}, "code: you have not uploaded")):
        response = api.call("POST", "schedules", api.member, json={**good, **change})
        assert error_of(response) == (400, "invalid_field"), (change, response.get_data(as_text=True))
        assert message in response.get_json()["error"]["message"], (change, response.get_json())
    assert count(api, "schedules") == before


def test_schedule_runs_are_listed_with_jobs_schedule(api):
    made = api.call("POST", "schedules", api.member, json={"name": "hourly", "cron": "@hourly", "spec": {"command": ["true"]}})
    assert made.status_code == 201 and made.get_json()["schedule"]["overlap"] == "skip"
    run = api.call("POST", "schedules/hourly/run-now", api.member).get_json()["run"]
    listed = api.call("GET", "jobs?schedule=hourly", api.member).get_json()["jobs"]
    assert [j["id"] for j in listed] == [run["job_id"]]
    shown = api.call("GET", f"jobs/{run['job_id']}", api.member).get_json()["job"]
    assert shown["schedule"]["name"] == "hourly"
    # another member neither sees nor reaches it
    other = api.user("someone")
    assert error_of(api.call("GET", "schedules/hourly", other)) == (404, "not_found")
    assert error_of(api.call("POST", "schedules/hourly/run-now", other)) == (404, "not_found")
    assert api.call("GET", "jobs?schedule=hourly", other).get_json()["jobs"] == []
    # an admin reaches it with ?owner=
    assert api.call("GET", f"schedules/hourly?owner={api.member_name}", api.admin).get_json()["schedule"]["name"] == "hourly"
    assert error_of(api.call("GET", f"schedules/hourly?owner={api.member_name}", other)) == (404, "not_found")
