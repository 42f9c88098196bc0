"""`mlpd admin priority-class grant|revoke|list` against a real daemon (the shared one: the shipped
configuration, where `production` is kept for admins): a grant lets a member submit work of the
class at once, without a config edit or a restart; a revocation takes it back; both are in the audit
trail; members get 403; bad input gets a one-line error."""

from __future__ import annotations

from helpers import as_json, needs_docker, new_user

pytestmark = needs_docker


def submit(daemon, token: str, cls: str):
    return daemon.api("POST", "/api/v1/jobs", token, json={"command": ["sleep", "60"], "priority_class": cls})


def one_line_error(result, words: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ") and words in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_grant_lets_a_member_use_a_class_at_once_and_a_revocation_takes_it_back(daemon):
    alice, alice_token = new_user(daemon, "alice")

    refused = daemon.cli("run", "--no-code", "--priority-class", "production", "--", "true", token=alice_token)
    one_line_error(refused, "priority class 'production' is not yours to use")
    assert "ask an admin (root" in refused.stderr and f"'mlpd admin priority-class grant {alice} production'" in refused.stderr

    granted = daemon.cli("admin", "priority-class", "grant", alice, "production")
    assert granted.returncode == 0, granted.stderr
    assert f"granted: {alice} may use priority class 'production' from their next submit on" in granted.stdout
    again = daemon.cli("admin", "priority-class", "grant", alice, "production")
    assert again.returncode == 0 and "may already use priority class 'production'" in again.stdout

    resp = submit(daemon, alice_token, "production")
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["job"]["id"]
    assert resp.json()["job"]["priority_class"] == "production"
    assert daemon.api("POST", f"/api/v1/jobs/{job_id}/cancel", alice_token).status_code == 200

    listed = as_json(daemon.cli("admin", "priority-class", "list", "--json"))
    by_name = {c["name"]: c for c in listed["classes"]}
    assert [c["name"] for c in listed["classes"]] == ["production", "default", "preemptible"]
    assert [c["rank"] for c in listed["classes"]] == [3, 2, 1]
    assert by_name["default"]["default"] and by_name["default"]["open"] and by_name["preemptible"]["preemptible"]
    assert not by_name["production"]["open"] and by_name["production"]["config_users"] == []
    assert [(g["subject"], g["granted_by"]) for g in by_name["production"]["grants"] if g["subject"] == alice] == [(alice, "root")]
    text = daemon.cli("admin", "priority-class", "list")
    assert text.returncode == 0, text.stderr
    row = next(line for line in text.stdout.splitlines() if line.startswith("production"))
    assert "admins" in row and f"{alice} (granted by root" in row
    assert any(line.startswith("default (default)") and "everyone" in line for line in text.stdout.splitlines())
    assert any(line.startswith("preemptible") and " yes " in line for line in text.stdout.splitlines())

    revoked = daemon.cli("admin", "priority-class", "revoke", alice, "production")
    assert revoked.returncode == 0 and f"revoked: {alice} may no longer use priority class 'production'" in revoked.stdout
    assert submit(daemon, alice_token, "production").status_code == 403

    events = daemon.api("GET", "/api/v1/events", daemon.admin_token, params={"object_id": "production"}).json()["events"]
    mine = [(e["action"], e["actor"]) for e in events if e["detail"].get("subject") == alice]
    assert mine == [("priority_class.revoke", "root"), ("priority_class.grant", "root")]  # newest first; the repeat grant added none


def test_members_get_403_and_bad_input_gets_a_one_line_error(daemon):
    bob, bob_token = new_user(daemon, "bob")
    one_line_error(daemon.cli("admin", "priority-class", "list", token=bob_token), "this needs an admin token")
    one_line_error(daemon.cli("admin", "priority-class", "grant", bob, "production", token=bob_token), "this needs an admin token")
    for method, path in (("GET", "/api/v1/admin/priority-classes"), ("POST", "/api/v1/admin/priority-classes/production/grants"),
                         ("DELETE", f"/api/v1/admin/priority-classes/production/grants/{bob}")):
        resp = daemon.api(method, path, bob_token, json={"user": bob} if method == "POST" else None)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "forbidden", (method, path, resp.text)

    one_line_error(daemon.cli("admin", "priority-class", "grant", "nobody-here", "production"), "no such user 'nobody-here'")
    one_line_error(daemon.cli("admin", "priority-class", "grant", bob, "urgent"),
                   "unknown priority class 'urgent'; the classes are production, default, preemptible")
    one_line_error(daemon.cli("admin", "priority-class", "grant", "team:nosuchteam", "production"), "no such team 'nosuchteam'")
    one_line_error(daemon.cli("admin", "priority-class", "grant", bob, "default"), "priority class 'default' is open to everyone")
    one_line_error(daemon.cli("admin", "priority-class", "revoke", bob, "production"), f"{bob} has no grant of priority class 'production'")
    missing = daemon.api("POST", "/api/v1/admin/priority-classes/production/grants", daemon.admin_token, json={})
    assert missing.status_code == 400 and missing.json()["error"] == {"code": "missing_field", "message": "user: required"}
    usage = daemon.cli("admin", "priority-class", "grant", bob)
    assert usage.returncode == 2 and "Missing argument 'CLASS'" in usage.stderr
