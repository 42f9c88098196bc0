"""The audit trail filtered: `mlpd admin events --user --kind --since --json|--csv`, GET /events with the
same filters and paging, and the admin events page (its "Older events" link keeps the filters)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest
from app_client import Served, error_of, make_api

T0 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from mlpd.store import record_event

    api = make_api(tmp_path_factory.mktemp("events-state"))
    with api.store.write() as db:
        db.execute("DELETE FROM events")  # only the events below
        for i in range(30):  # alice's jobs, one an hour from T0
            record_event(db, "alice", "job.queued", "job", f"a{i:02d}", at=T0 + i * 3600, kind="job")
        record_event(db, "mlpd", "job.succeeded", "job", "a00", at=T0 + 40 * 3600, owner="alice")
        record_event(db, "root", "user.add", "user", "alice", at=T0 - 86400, role="member")
        record_event(db, "root", "team.member_add", "team", "vision", at=T0 + 50 * 3600, user="alice")
        record_event(db, "bob", "job.queued", "job", "b00", at=T0 + 60 * 3600, kind="job")
        record_event(db, "bob", "jobs.weird", "job", "b01", at=T0 + 61 * 3600)  # "job" is a family, not a prefix of "jobs"
    return api


def ids(response) -> list[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [e["object_id"] + ":" + e["action"] for e in response.get_json()["events"]]


def test_user_kind_and_since_filter(api):
    about_alice = ids(api.call("GET", "events?user=alice&limit=1000", api.admin))
    # Her 30 jobs, the job that ended (owner=alice), her account, her membership: 33; bob's are not hers.
    assert len(about_alice) == 33 and "alice:user.add" in about_alice and "vision:team.member_add" in about_alice
    assert not [e for e in about_alice if e.startswith("b0")]
    jobs = ids(api.call("GET", "events?kind=job&limit=1000", api.admin))
    assert len(jobs) == 32 and "b01:jobs.weird" not in jobs
    assert ids(api.call("GET", "events?kind=job.succeeded", api.admin)) == ["a00:job.succeeded"]
    since = ids(api.call("GET", f"events?kind=job.queued&since={T0 + 25 * 3600}", api.admin))
    assert since == ["b00:job.queued"] + [f"a{i:02d}:job.queued" for i in range(29, 24, -1)]
    assert ids(api.call("GET", "events?user=alice&kind=team&since=2026-11-03", api.admin)) == ["vision:team.member_add"]


def test_paging_keeps_the_filters(api):
    seen, before = [], None
    while True:
        page = api.call("GET", "events?user=alice&kind=job.queued&limit=7" + (f"&before={before}" if before else ""), api.admin).get_json()
        seen += [e["object_id"] for e in page["events"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen == [f"a{i:02d}" for i in range(29, -1, -1)]


def test_csv_bad_input_and_members(api):
    text = api.call("GET", "events?kind=user&format=csv", api.admin).get_data(as_text=True)
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["id", "at", "actor", "action", "object_kind", "object_id", "label", "detail"]
    assert [r[3] for r in rows[1:]] == ["user.add"] and json.loads(rows[1][7]) == {"role": "member"}
    assert error_of(api.call("GET", "events?since=last-week", api.admin)) == (400, "invalid_field")
    assert error_of(api.call("GET", "events?user=alice", api.member)) == (403, "forbidden")


def test_the_cli(api):
    served = Served(api)
    try:
        out = served.cli(api.admin, "admin", "events", "--user", "bob", "--json")
        assert out.exit_code == 0, out.output
        assert [e["action"] for e in json.loads(out.output)["events"]] == ["jobs.weird", "job.queued"]
        out = served.cli(api.admin, "admin", "events", "--kind", "job.queued", "--since", "2026-11-03T12:00", "--csv")
        rows = list(csv.reader(io.StringIO(out.output)))  # T0 + 36 h: after alice's last queued job
        assert [r[5] for r in rows[1:]] == ["b00"]
        text = served.cli(api.admin, "admin", "events", "--user", "alice", "--limit", "2")
        assert text.exit_code == 0 and "team.member_add" in text.output and "(more: --before" in text.output
        assert served.cli(api.admin, "admin", "events", "--json", "--csv").exit_code != 0
    finally:
        served.close()


def test_the_events_page_filters_and_pages(api):
    from mlpd.web.ui_auth import COOKIE

    from mlpd import users

    secret, _ = users.create_session(api.store, users.get_user(api.store, "root"), "token")
    client = api.app.test_client()
    client.set_cookie(COOKIE, secret)
    html = client.get("/ui/admin/events?user=alice&kind=job.queued&since=2026-11-02").get_data(as_text=True)
    assert html.count("<td data-label=\"What\">job.queued</td>") == 30  # one page: 50 at most
    page = client.get("/ui/admin/events?kind=job").get_data(as_text=True)
    assert 'value="job"' in page
    small = client.get("/ui/admin/events?user=alice&kind=job.queued&since=2026-11-03").get_data(as_text=True)
    assert small.count("job.queued</td>") == 6  # T0+24h .. T0+29h
    assert "Older events" not in small
    newest = api.store.query("SELECT MAX(id) AS n FROM events")[0]["n"]
    older = client.get(f"/ui/admin/events?user=alice&kind=job.queued&before={newest}").get_data(as_text=True)
    newest_link = older.split(">Newest</a>")[0].rsplit("href=", 1)[1]  # back to the first page, the filters kept
    assert "user=alice" in newest_link and "kind=job.queued" in newest_link and "before" not in newest_link
