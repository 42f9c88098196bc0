"""Datasets and disk use through the app's test client (issue 25): `mlpd datasets` shows a member only
what they may read, never a host path; the usage page shows the home's measured size and its limit."""

from __future__ import annotations

import os

from app_client import make_api


def test_members_see_only_their_datasets_without_host_paths_and_the_usage_page_shows_disk(tmp_path):
    api = make_api(tmp_path / "state")
    admin = api.user("boss", admin=True)
    api.user("ann")
    data = tmp_path / "secret-host-path"
    data.mkdir()
    for name, who in (("open", {}), ("ann-only", {"users": ["ann"]})):
        r = api.call("POST", "admin/datasets", admin, json={"name": name, "path": str(data), **who})
        assert r.status_code == 201, r.get_data(as_text=True)
    listed = api.call("GET", "datasets", api.member).get_json()["datasets"]
    assert [d["name"] for d in listed] == ["open"] and str(data) not in str(listed)
    r = api.call("POST", "admin/datasets", admin, json={"name": "root", "path": "/"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "forbidden_path"

    from mlpd import disk_use

    home = api.state_dir / "homes" / api.member_name
    home.mkdir(parents=True)
    (home / "f.bin").write_bytes(os.urandom(300_000))
    disk_use.measure(api.store, api.app.extensions["mlpd.config"])
    client = api.app.test_client()
    page = client.get("/ui/login")
    csrf = client.get_cookie("mlpd_login_csrf").value
    r = client.post("/ui/login/token", data={"token": api.member, "csrf": csrf})
    assert r.status_code == 303, r.get_data(as_text=True)[:300]
    text = client.get("/ui/usage").get_data(as_text=True)
    from mlpd.units import format_bytes

    measured = disk_use.usage_of(api.store, api.app.extensions["mlpd.config"], api.member_name)["home"]["size_bytes"]
    assert measured >= 300_000
    assert "Disk use" in text and "/home/mlpd" in text and f"<td>{format_bytes(measured)}</td>" in text, text[-3000:]
    assert page.status_code == 200


def test_over_the_team_quota_workspaces_are_refused_to_create_and_to_start_and_jobs_too(tmp_path):
    from mlpd import disk_use

    api = make_api(tmp_path / "state", **{"quotas.team_gb": 0.001})
    admin = api.admin
    for call in (("teams", {"name": "vision"}), ("teams/vision/members", {"user": api.member_name})):
        assert api.call("POST", call[0], admin, json=call[1]).status_code in (200, 201)
    assert api.call("POST", "workspaces", api.member, json={"name": "lab"}).status_code == 201
    assert api.call("POST", "workspaces/lab/stop", api.member).status_code == 200
    folder = api.state_dir / "teams" / "vision"
    folder.mkdir(parents=True)
    (folder / "big.bin").write_bytes(os.urandom(2_000_000))
    disk_use.measure(api.store, api.app.extensions["mlpd.config"])
    for method, path, body in (("POST", "workspaces", {"name": "lab2"}), ("POST", "workspaces/lab/start", {}),
                               ("POST", "jobs", {"command": ["true"]})):
        r = api.call(method, path, api.member, json=body)
        assert r.status_code == 403 and r.get_json()["error"]["code"] == "disk_quota_exceeded", (path, r.get_data(as_text=True))
        assert "the folder of team vision (/shared/vision) holds 2.0 MB, over quotas.team_gb = 0.001 GB" in r.get_json()["error"]["message"]
    assert (folder / "big.bin").exists()  # nothing deleted
    r = api.call("POST", "jobs", admin, json={"command": ["true"]})  # not a member of vision: not refused
    assert r.status_code == 201, r.get_data(as_text=True)
