"""Web passwords, lockout and web sessions (mlpd.users), against real SQLite files in a temp dir."""

from __future__ import annotations

import pytest

from mlpd import users
from mlpd.store import Store
from mlpd.users import LoginRefused, UserError

PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path / "state" / "mlpd.db"))
    s.migrate()
    users.add_user(s, "alice")
    users.set_password(s, "alice", PASSWORD)
    return s


def test_passwords_are_stored_as_slow_salted_hashes_werkzeug_can_read(store):
    from werkzeug.security import check_password_hash

    stored = store.query_one("SELECT password_hash FROM users WHERE name = 'alice'")["password_hash"]
    assert stored.startswith("scrypt:32768:8:1$") and PASSWORD not in stored
    assert check_password_hash(stored, PASSWORD) and not check_password_hash(stored, PASSWORD + "x")
    assert users.hash_password(PASSWORD) != users.hash_password(PASSWORD)  # salted
    assert not users.verify_password(None, PASSWORD) and not users.verify_password("plain$text", PASSWORD)
    assert not users.verify_password("scrypt:1048577:8:1$s$00", PASSWORD)  # a cost we would not pay is refused



def _hand_written_hash(password: str) -> str:
    """mlpd's own scrypt code before werkzeug.security, frozen here: hashes it stored must keep working."""
    import hashlib
    import secrets

    salt = secrets.token_urlsafe(12)
    digest = hashlib.scrypt(password.encode(), salt=salt.encode(), n=2**15, r=8, p=1, maxmem=132 * 2**15 * 8)
    return f"scrypt:32768:8:1${salt}${digest.hex()}"


def _stored(store) -> str:
    return store.query_one("SELECT password_hash FROM users WHERE name = 'alice'")["password_hash"]


def test_a_hash_from_mlpds_hand_written_code_still_logs_in(store):
    old = _hand_written_hash(PASSWORD)
    store.db.execute("UPDATE users SET password_hash = ? WHERE name = 'alice'", [old])
    assert users.login_with_password(store, "alice", PASSWORD).name == "alice"
    with pytest.raises(LoginRefused):
        users.login_with_password(store, "alice", PASSWORD + "x")
    assert _stored(store) == old  # already werkzeug's format and cost: nothing to redo


@pytest.mark.parametrize("method", ["scrypt:16384:8:1", "pbkdf2:sha256:260000"])
def test_an_outdated_hash_logs_in_and_is_replaced_by_the_current_one(store, method):
    from werkzeug.security import generate_password_hash

    old = generate_password_hash(PASSWORD, method=method)
    store.db.execute("UPDATE users SET password_hash = ? WHERE name = 'alice'", [old])
    secret, _ = users.create_session(store, users.get_user(store, "alice"), "password")
    with pytest.raises(LoginRefused):  # a wrong password changes nothing
        users.login_with_password(store, "alice", "not the password")
    assert _stored(store) == old
    assert users.login_with_password(store, "alice", PASSWORD).name == "alice"
    new = _stored(store)
    assert new.startswith(users.PASSWORD_METHOD + "$") and new != old
    assert users.login_with_password(store, "alice", PASSWORD).name == "alice"
    assert _stored(store) == new  # replaced once
    assert users.get_session(store, secret) is not None  # the same password: sessions go on
    events = store.query("SELECT actor, detail FROM events WHERE action = 'user.password_rehashed' AND object_id = 'alice'")
    assert len(events) == 1 and events[0]["actor"] == "mlpd" and method in events[0]["detail"]


def test_a_replacement_never_overwrites_a_password_set_meanwhile(store):
    from werkzeug.security import generate_password_hash

    old = generate_password_hash(PASSWORD, method="scrypt:16384:8:1")
    store.db.execute("UPDATE users SET password_hash = ? WHERE name = 'alice'", [old])
    user_id = users.get_user(store, "alice").id
    users.set_password(store, "alice", "a brand new password")
    users._rehash_password(store, user_id, "alice", old, PASSWORD)  # a login that verified the old hash, late
    assert users.login_with_password(store, "alice", "a brand new password").name == "alice"


@pytest.mark.parametrize("stored", ["scrypt:1048577:8:1$s$00", "scrypt:32768:17:1$s$00", "pbkdf2:sha256:9999999$s$00",
                                    "pbkdf2:md5:1000$s$00", "bcrypt$s$00", "scrypt:x:8:1$s$00", "scrypt$s$00"])
def test_a_stored_hash_we_would_not_pay_for_or_cannot_read_is_refused(stored):
    assert not users.verify_password(stored, PASSWORD)

@pytest.mark.parametrize("password, message", [("short", "at least 10"), ("x" * 1025, "at most 1024"), ("alice", "at least"),
                                               ("Alicealice", None)])
def test_weak_passwords_are_refused_with_the_reason(store, password, message):
    if message is None:
        users.check_password_strength(password, "alice")
        return
    with pytest.raises(UserError, match=message):
        users.set_password(store, "alice", password)


def test_a_password_must_not_be_the_user_name(store):
    users.add_user(store, "bobbybobby")
    with pytest.raises(UserError, match="user name"):
        users.set_password(store, "bobbybobby", "BobbyBobby")


def test_login_checks_the_password_and_says_nothing_about_who_exists(store):
    assert users.login_with_password(store, "alice", PASSWORD).name == "alice"
    with pytest.raises(LoginRefused) as wrong:
        users.login_with_password(store, "alice", "not the password")
    with pytest.raises(LoginRefused) as nobody:
        users.login_with_password(store, "nobody", "not the password")
    assert wrong.value.message == nobody.value.message and wrong.value.status == 401
    users.add_user(store, "nopass")
    with pytest.raises(LoginRefused):
        users.login_with_password(store, "nopass", "")


def test_five_failures_lock_the_name_even_for_the_right_password_until_the_lock_ends(store):
    now = 1_000_000.0
    for attempt in range(4):
        with pytest.raises(LoginRefused) as exc:
            users.login_with_password(store, "alice", "wrong", now=now + attempt)
        assert exc.value.code == "unauthorized"
    with pytest.raises(LoginRefused) as exc:
        users.login_with_password(store, "alice", "wrong", now=now + 4)
    assert exc.value.code == "locked" and exc.value.status == 429 and "15 more minutes" in exc.value.message
    with pytest.raises(LoginRefused, match="locked"):
        users.login_with_password(store, "alice", PASSWORD, now=now + 60)
    assert users.locked_until(store, "alice", now + 60) == now + 4 + users.LOCKOUT_SECONDS
    # after the lock, the right password works and clears the count
    assert users.login_with_password(store, "alice", PASSWORD, now=now + 4 + users.LOCKOUT_SECONDS + 1).name == "alice"
    assert store.query_one("SELECT 1 FROM login_failures WHERE name = 'alice'") is None
    actions = [r["action"] for r in store.query("SELECT action FROM events WHERE object_id = 'alice'")]
    assert actions.count("user.locked") == 1


def test_failures_spread_over_more_than_the_window_do_not_lock(store):
    now = 1_000_000.0
    for attempt in range(8):
        with pytest.raises(LoginRefused) as exc:
            users.login_with_password(store, "alice", "wrong", now=now + attempt * (users.FAILURE_WINDOW / 3))
        assert exc.value.code == "unauthorized"


def test_an_admin_setting_a_password_lifts_the_lock_and_ends_sessions(store):
    user = users.get_user(store, "alice")
    secret, _ = users.create_session(store, user, "password")
    for _ in range(5):
        with pytest.raises(LoginRefused):
            users.login_with_password(store, "alice", "wrong")
    users.set_password(store, "alice", "a brand new password", actor="root")
    assert users.get_session(store, secret) is None
    assert users.login_with_password(store, "alice", "a brand new password").name == "alice"


def test_changing_your_password_needs_the_current_one(store):
    with pytest.raises(UserError) as exc:
        users.change_password(store, "alice", "wrong", "another long password")
    assert exc.value.code == "wrong_password" and exc.value.status == 403
    users.change_password(store, "alice", PASSWORD, "another long password")
    assert users.login_with_password(store, "alice", "another long password").name == "alice"


def test_sessions_store_only_a_hash_and_end_at_logout_removal_idle_and_age(store):
    user = users.get_user(store, "alice")
    now = 2_000_000.0
    secret, session = users.create_session(store, user, "password", now=now)
    assert secret not in str(store.query("SELECT * FROM ui_sessions"))
    found = users.get_session(store, secret, now=now + 10)
    assert found.user.name == "alice" and found.csrf == session.csrf and found.method == "password"
    assert users.get_session(store, secret + "x", now=now) is None
    assert users.get_session(store, secret, now=now + users.SESSION_IDLE + 1) is None  # idle too long
    busy, _ = users.create_session(store, user, "token", now=now)
    for t in range(0, users.SESSION_MAX, users.SESSION_IDLE // 2):
        assert users.get_session(store, busy, now=now + t) is not None
    assert users.get_session(store, busy, now=now + users.SESSION_MAX + 1) is None  # too old, however busy
    users.end_session(store, secret)
    users.end_session(store, secret)  # idempotent
    third, _ = users.create_session(store, user, "password")
    users.remove_user(store, "alice")
    assert users.get_session(store, third) is None


def test_a_session_sees_role_changes_at_once_and_a_jobs_token_cannot_open_one(store):
    user = users.get_user(store, "alice")
    secret, _ = users.create_session(store, user, "password")
    store.db.execute("UPDATE users SET role = 'admin' WHERE name = 'alice'")
    assert users.get_session(store, secret).user.is_admin
    with pytest.raises(UserError):
        users.create_session(store, users.User(user.id, "alice", "member", job_id="abc"), "token")


def test_only_a_persons_own_token_opens_a_web_session(store):
    own, _ = users.create_token(store, "alice", "laptop")
    jobs_token, _ = users.create_token(store, "alice", "job:abc", job_id="abc")
    assert users.authenticate_personal(store, own).name == "alice"
    assert users.authenticate(store, jobs_token) is not None and users.authenticate_personal(store, jobs_token) is None
    assert users.authenticate_personal(store, "not-a-token") is None
