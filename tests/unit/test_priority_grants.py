"""Priority-class grants: an admin lets a user (or a team) use a class at run time, besides mlpd.toml.

Against a real SQLite state database in a temp dir and a real configuration file."""

from __future__ import annotations

import json

import pytest

from mlpd.scheduling import priority_classes as pc
from mlpd import users
from mlpd.scheduling import quotas
from mlpd.config import load_config
from mlpd.errors import MlpdError
from mlpd.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path / "state" / "mlpd.db"))
    s.migrate()
    users.add_user(s, "root", "admin")
    users.add_user(s, "zoe", "admin")
    for name in ("alice", "bob", "carol"):
        users.add_user(s, name)
    quotas.add_team(s, "vision", "root")
    quotas.set_membership(s, "vision", "carol", True, "root")
    return s


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "mlpd.toml"
    path.write_text('[scheduler]\npriority_classes = ["production", "research", "default", "preemptible"]\n'
                    'priority_class_users = {production = ["bob"], research = []}\n')
    return load_config(str(path))


def classes(config) -> pc.PriorityClasses:
    return pc.PriorityClasses.from_config(config)


def refusal(store, config, name, user):
    return pc.submit_refusal(store, config, name, user, users.get_user(store, user).role == "admin")


def test_a_grant_lets_the_user_submit_at_once_and_a_revocation_takes_it_back(store, config):
    assert refusal(store, config, "production", "alice")[:2] == (403, "class_not_allowed")
    done = pc.grant(store, classes(config), "alice", "production", "root")
    assert done == {"class": "production", "subject": "alice", "granted": True, "in_config": False, "admin": False}
    assert refusal(store, config, "production", "alice") is None
    assert refusal(store, config, "production", "bob") is None  # mlpd.toml's list still counts (a union)
    assert refusal(store, config, "research", "alice")[:2] == (403, "class_not_allowed")  # one class, not all

    assert pc.revoke(store, classes(config), "alice", "production", "root")["revoked"] is True
    assert refusal(store, config, "production", "alice")[:2] == (403, "class_not_allowed")
    assert refusal(store, config, "production", "bob") is None


def test_a_grant_to_a_team_covers_its_members(store, config):
    pc.grant(store, classes(config), "team:vision", "research", "root")
    assert refusal(store, config, "research", "carol") is None
    assert refusal(store, config, "research", "alice")[:2] == (403, "class_not_allowed")


def test_a_team_made_again_under_a_removed_teams_name_does_not_inherit_its_grants(store, config):
    pc.grant(store, classes(config), "team:vision", "research", "root")
    quotas.remove_team(store, "vision", "root")
    quotas.add_team(store, "vision", "root")
    quotas.set_membership(store, "vision", "alice", True, "root")
    assert refusal(store, config, "research", "alice")[:2] == (403, "class_not_allowed")


def test_granting_twice_changes_nothing_and_each_change_is_in_the_audit_trail(store, config):
    assert pc.grant(store, classes(config), "alice", "research", "root")["granted"] is True
    assert pc.grant(store, classes(config), "alice", "research", "zoe")["granted"] is False
    pc.revoke(store, classes(config), "alice", "research", "zoe")
    rows = store.query("SELECT actor, action, object_kind, object_id, detail FROM events WHERE action LIKE 'priority_class.%' ORDER BY id")
    assert [(r["actor"], r["action"], r["object_id"], json.loads(r["detail"])) for r in rows] == [
        ("root", "priority_class.grant", "research", {"subject": "alice"}),
        ("zoe", "priority_class.revoke", "research", {"subject": "alice"})]
    assert {r["object_kind"] for r in rows} == {"priority_class"}


def test_the_refusal_names_the_admins_who_can_grant_it_and_the_command(store, config):
    status, code, message = refusal(store, config, "production", "alice")
    assert (status, code) == (403, "class_not_allowed")
    assert "priority class 'production' is not yours to use (it is for: bob)" in message
    assert "ask an admin (root, zoe) to grant it: 'mlpd admin priority-class grant alice production'" in message


@pytest.mark.parametrize("subject, name, status, code, words", [
    ("alice", "urgent", 400, "invalid_field", "unknown priority class 'urgent'; the classes are production, research, default, preemptible"),
    ("nobody", "production", 404, "not_found", "no such user 'nobody'"),
    ("team:ghosts", "production", 404, "not_found", "no such team 'ghosts'"),
    ("alice", "default", 409, "class_open", "priority class 'default' is open to everyone"),
])
def test_a_grant_that_cannot_be_done_says_why_and_stores_nothing(store, config, subject, name, status, code, words):
    with pytest.raises(MlpdError) as err:
        pc.grant(store, classes(config), subject, name, "root")
    assert (err.value.status, err.value.code) == (status, code) and words in err.value.message
    assert store.query("SELECT * FROM priority_grants") == []
    assert store.query("SELECT * FROM events WHERE action = 'priority_class.grant'") == []


@pytest.mark.parametrize("subject, name, status, code, words", [
    ("alice", "urgent", 400, "invalid_field", "unknown priority class 'urgent'"),
    ("bob", "production", 409, "in_config", "bob may use priority class 'production' through mlpd.toml"),
    ("alice", "production", 404, "not_found", "alice has no grant of priority class 'production'"),
])
def test_a_revocation_of_nothing_says_why(store, config, subject, name, status, code, words):
    with pytest.raises(MlpdError) as err:
        pc.revoke(store, classes(config), subject, name, "root")
    assert (err.value.status, err.value.code) == (status, code) and words in err.value.message


def test_the_listing_gives_each_class_its_rank_flags_and_who_may_use_it(store, config):
    pc.grant(store, classes(config), "alice", "production", "root")
    pc.grant(store, classes(config), "team:vision", "production", "zoe")
    out = pc.listing(store, classes(config))
    assert [(c["name"], c["rank"], c["default"], c["preemptible"], c["open"]) for c in out["classes"]] == [
        ("production", 4, False, False, False), ("research", 3, False, False, False),
        ("default", 2, True, False, True), ("preemptible", 1, False, True, True)]
    production = out["classes"][0]
    assert production["config_users"] == ["bob"]
    assert [(g["subject"], g["granted_by"]) for g in production["grants"]] == [("alice", "root"), ("team:vision", "zoe")]
    assert out["classes"][1]["config_users"] == [] and out["classes"][1]["grants"] == []
    assert out["other_grants"] == [] and out["admins"] == ["root", "zoe"]


def test_a_grant_of_a_class_since_removed_from_mlpd_toml_counts_for_nothing_and_can_be_revoked(store, config, tmp_path):
    pc.grant(store, classes(config), "alice", "research", "root")
    path = tmp_path / "smaller.toml"
    path.write_text('[scheduler]\npriority_class_users = {production = []}\n')
    smaller = load_config(str(path))
    assert refusal(store, smaller, "research", "alice")[:2] == (400, "invalid_field")
    assert [(g["class"], g["subject"]) for g in pc.listing(store, classes(smaller))["other_grants"]] == [("research", "alice")]
    assert pc.revoke(store, classes(smaller), "alice", "research", "root")["revoked"] is True
    assert store.query("SELECT * FROM priority_grants") == []


def test_a_grant_never_restricts_an_open_class(config):
    base = classes(config)
    assert base.with_grants({"default": ["alice"]}).refusal("default", "bob", False, []) is None
    assert base.with_grants({"research": ["alice"]}).allowed("research") == ("alice",)
    assert base.with_grants({"production": ["bob", "alice"]}).allowed("production") == ("bob", "alice")
