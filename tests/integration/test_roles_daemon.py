"""Roles and the platform report on a real daemon (gunicorn, the worker, the mounted MLflow), through
the `mlpd` command line a person uses: a viewer made on the host reads MLflow and is refused every
change there and in the API; a team admin manages their team; the admin reads the report and the
filtered audit trail. The fast tier (tests/api/test_viewer.py, test_team_admins.py, test_report.py)
walks every route; this checks the same doors on the daemon itself."""

from __future__ import annotations

import json
import uuid

API = "/mlflow/api/2.0/mlflow/"


def test_a_viewer_on_the_daemon_reads_and_changes_nothing(daemon):
    suffix = uuid.uuid4().hex[:6]
    viewer_name, lead_name, member_name = f"view{suffix}", f"lead{suffix}", f"mem{suffix}"
    added = daemon.host_cli("admin", "user", "add", viewer_name, "--viewer")
    assert added.returncode == 0 and f"created viewer {viewer_name}" in added.stdout, added.stderr
    viewer = added.stdout.strip().splitlines()[-1]
    lead, member = daemon.add_user(lead_name), daemon.add_user(member_name)
    team = f"team{suffix}"
    for args in (("team", "add", team), ("team", "member", "add", team, lead_name), ("team", "member", "add", team, viewer_name),
                 ("team", "admin", "add", team, lead_name)):
        done = daemon.cli("admin", *args)
        assert done.returncode == 0, (args, done.stderr)

    # MLflow: a member creates an experiment; the viewer reads it and cannot create or change one.
    created = daemon.api("POST", API + "experiments/create", member, json={"name": f"exp-{suffix}"})
    assert created.status_code == 200, created.text
    exp_id = created.json()["experiment_id"]
    read = daemon.api("GET", API + f"experiments/get?experiment_id={exp_id}", viewer)
    assert read.status_code == 200 and read.json()["experiment"]["name"] == f"exp-{suffix}"
    searched = daemon.api("POST", API + "experiments/search", viewer, json={"max_results": 100})
    assert searched.status_code == 200
    for path, body in (("experiments/create", {"name": f"v-{suffix}"}), ("experiments/delete", {"experiment_id": exp_id}),
                       ("runs/create", {"experiment_id": exp_id}), ("registered-models/create", {"name": f"m-{suffix}"})):
        refused = daemon.api("POST", API + path, viewer, json=body)
        assert refused.status_code == 403 and "viewer" in refused.text, (path, refused.text)
    assert daemon.api("GET", API + f"experiments/get?experiment_id={exp_id}", member).json()["experiment"]["lifecycle_stage"] == "active"

    # The API through the CLI: no submit, no token.
    run = daemon.cli("run", "--", "true", token=viewer)
    assert run.returncode != 0 and "viewer" in (run.stderr + run.stdout)
    token = daemon.api("POST", "/api/v1/tokens", viewer, json={})
    assert token.status_code == 403

    # The team admin adds the member to their team and sets a quota; the admin-only settings stay refused.
    assert daemon.cli("admin", "team", "member", "add", team, member_name, token=lead).returncode == 0
    assert daemon.cli("admin", "quota", "set", "--user", member_name, "--max-jobs", "3", token=lead).returncode == 0
    assert daemon.cli("admin", "team", "add", f"x{suffix}", token=lead).returncode != 0

    # The admin's report and audit trail see all of it.
    report = daemon.cli("admin", "report", "--json")
    assert report.returncode == 0, report.stderr
    assert {"periods", "active_users", "new_users", "time_to_production"} <= set(json.loads(report.stdout))
    events = daemon.cli("admin", "events", "--user", lead_name, "--kind", "team", "--json")
    assert events.returncode == 0, events.stderr
    actions = [e["action"] for e in json.loads(events.stdout)["events"]]
    assert "team.member_add" in actions and "team.admin_add" in actions
