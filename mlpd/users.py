"""Users, API tokens, web passwords and web sessions.

A token looks like ``mlpd_<id>_<secret>``: the id finds the row, the secret is
checked against its SHA-256 hash (tokens are random and long, so a slow password
hash buys nothing). Only the hash is stored; the full token is shown once.

Passwords (for the web UI only; the API takes tokens) are chosen by people, so they
are hashed with werkzeug.security (scrypt, a slow memory-hard hash); a hash made with an
older method or cost is replaced at the user's next successful login. Five failed
logins for one name lock it for a while. A web session is a random secret in a
cookie; the database keeps its SHA-256 hash, so logout, a password change and user
removal end sessions at once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.security import check_password_hash, generate_password_hash

from mlpd.errors import MlpdError
from mlpd.store import Store, record_event

if TYPE_CHECKING:
    from sqlite_utils import Database

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
ROLES = ("member", "admin")


class UserError(MlpdError, ValueError):
    """A user, token, team or quota operation that cannot be done, with a message for people."""

    def __init__(self, message: str, code: str = "invalid", status: int = 400):
        super().__init__(status, code, message)


@dataclass(frozen=True)
class User:
    """Who a request acts as. ``job_id`` is set when it came with a job's token: the holder is
    that job's code, which may do what the job needs and nothing an admin may (whoever owns it)."""

    id: int
    name: str
    role: str
    job_id: str | None = None
    # Set when it came with a workspace session's token: the owner at their notebook, as a member,
    # who may do a member's work there but never make or change credentials (routes marked
    # ``credentials`` in mlpd.web.routes refuse it); the token is revoked when the session ends.
    session_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin" and self.job_id is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str) -> None:
    """User names: lowercase letter first, then letters, digits, '-' or '_', at most 32."""
    if not NAME_RE.match(name or ""):
        raise UserError(f"invalid user name {name!r}: use a lowercase letter, then lowercase letters, digits, '-' or '_' (at most 32)")


def _active_user(db: Database, name: str, select: str = "*") -> dict[str, Any] | None:
    """The row of the active (not removed) user with this name, or None."""
    return next(db["users"].rows_where("name = ? AND removed_at IS NULL", [name], select=select), None)


def _active_user_id(db: Database, name: str) -> int:
    """The id of the active user with this name; UserError (404) when there is none."""
    row = _active_user(db, name, "id")
    if not row:
        raise UserError(f"no such user {name!r}", code="not_found", status=404)
    return row["id"]


def add_user(store: Store, name: str, role: str = "member", actor: str = "host") -> User:
    """Create a user. Names are never reused, even after removal, so old records stay unambiguous."""
    check_name(name)
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: expected member or admin")
    with store.write() as db:
        if db["users"].count_where("name = ?", [name]):
            raise UserError(f"user {name!r} already exists", code="conflict", status=409)
        user_id = db["users"].insert({"name": name, "role": role, "created_at": time.time()}).last_pk
        record_event(db, actor, "user.add", "user", name, role=role)
        return User(user_id, name, role)


def get_user(store: Store, name: str) -> User | None:
    """The active user with this name, or None."""
    row = _active_user(store.db, name, "id, name, role")
    return User(**row) if row else None


def list_users(store: Store) -> list[dict[str, Any]]:
    """Active users with their token counts."""
    return store.query(
        """SELECT u.name, u.role, u.created_at,
                  (SELECT COUNT(*) FROM tokens t WHERE t.user_id = u.id AND t.revoked_at IS NULL
                     AND (t.expires_at IS NULL OR t.expires_at > ?)) AS active_tokens
           FROM users u WHERE u.removed_at IS NULL ORDER BY u.name""",
        [time.time()],
    )


def remove_user(store: Store, name: str, actor: str = "host") -> None:
    """Remove a user and revoke all their tokens; their past records keep the name."""
    now = time.time()
    with store.write() as db:
        user_id = _active_user_id(db, name)
        db["users"].update(user_id, {"removed_at": now})
        db.execute("UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", [now, user_id])
        db["ui_sessions"].delete_where("user_id = ?", [user_id])
        record_event(db, actor, "user.remove", "user", name)


def create_token(store: Store, name: str, label: str = "", expires_in: float | None = None, actor: str = "host",
                 job_id: str | None = None) -> tuple[str, dict[str, Any]]:
    """Create a token for a user; return (the full token, shown once; its public record).

    With job_id, the token is that job's (see :class:`User`): mlpd revokes it when the job ends.
    """
    if expires_in is not None and not (math.isfinite(expires_in) and expires_in > 0):
        raise UserError("expires_in: expected a number of seconds > 0")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    now = time.time()
    expires_at = now + expires_in if expires_in else None
    with store.write() as db:
        db["tokens"].insert({"id": token_id, "user_id": _active_user_id(db, name), "secret_hash": _hash(secret), "label": label,
                             "created_at": now, "expires_at": expires_at, "job_id": job_id})
        record_event(db, actor, "token.create", "token", token_id, user=name, label=label, expires_at=expires_at, job_id=job_id)
    record = {"id": token_id, "user": name, "label": label, "created_at": now, "expires_at": expires_at, "revoked_at": None,
              "last_used_at": None, "job_id": job_id}
    return f"mlpd_{token_id}_{secret}", record


def list_tokens(store: Store, name: str | None = None) -> list[dict[str, Any]]:
    """Token records (never their secrets), for one user or all."""
    sql = """SELECT t.id, u.name AS user, t.label, t.created_at, t.expires_at, t.revoked_at, t.last_used_at, t.job_id
             FROM tokens t JOIN users u ON u.id = t.user_id"""
    params: list[Any] = []
    if name:
        sql += " WHERE u.name = ?"
        params.append(name)
    return store.query(sql + " ORDER BY t.created_at", params)


def revoke_token(store: Store, token_id: str, actor: str = "host", owner: str | None = None) -> dict[str, Any]:
    """Revoke a token by id (idempotent). With owner set, only that user's token is found."""
    with store.write() as db:
        row = db.execute(
            "SELECT t.id, u.name, t.revoked_at FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.id = ?", [token_id]
        ).fetchone()
        if not row or (owner is not None and row[1] != owner):
            raise UserError(f"no such token {token_id!r}", code="not_found", status=404)
        if row[2] is None:
            db["tokens"].update(token_id, {"revoked_at": time.time()})
            record_event(db, actor, "token.revoke", "token", token_id, user=row[1])
    return {"id": token_id, "user": row[1], "revoked": True}


def authenticate(store: Store, token: str, now: float | None = None) -> User | None:
    """The user a presented token belongs to, or None when it is malformed, wrong, revoked or expired."""
    match = re.fullmatch(r"mlpd_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})", token or "")
    if not match:
        return None
    token_id, secret = match.groups()
    row = store.query_one(
        """SELECT t.secret_hash, t.expires_at, t.revoked_at, t.last_used_at, t.job_id, u.id, u.name, u.role, u.removed_at, j.kind
           FROM tokens t JOIN users u ON u.id = t.user_id LEFT JOIN jobs j ON j.id = t.job_id WHERE t.id = ?""",
        [token_id],
    )
    now = now if now is not None else time.time()
    if not row or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
        return None
    if row["revoked_at"] is not None or row["removed_at"] is not None:
        return None
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return None
    # Writing last_used_at on every request would serialise all requests on the write lock.
    if row["last_used_at"] is None or now - row["last_used_at"] > 60:
        with store.write() as db:
            db["tokens"].update(token_id, {"last_used_at": now})  # tokens are revoked, never deleted
    if row["kind"] is not None:
        from mlpd.kinds.base import kind_of

        if kind_of(row["kind"]).token_acts_as_member:
            # A workspace session's token: its owner at their notebook, as a member (never as an
            # admin), revoked with the session like a job's.
            return User(row["id"], row["name"], "member", None, row["job_id"])
    return User(row["id"], row["name"], row["role"], row["job_id"])


def authenticate_personal(store: Store, token: str) -> User | None:
    """The user of a person's own token, or None; for a web login. A job's or a workspace session's
    token is refused: a web session would outlive the workload whose credential it is."""
    user = authenticate(store, token)
    if user is None:
        return None
    row = next(store.db["tokens"].rows_where("id = ?", [token.split("_")[1]], select="job_id"), None)
    return user if row and row["job_id"] is None else None


# ---------------------------------------------------------------- passwords (web UI)

PASSWORD_MIN = 10
PASSWORD_MAX = 1024  # a cap before hashing: scrypt's cost grows with the input
LOCKOUT_FAILURES = 5
LOCKOUT_SECONDS = 15 * 60
FAILURE_WINDOW = 15 * 60
# werkzeug's scrypt at its default cost (~32 MiB and ~0.1 s per hash), named in full so that a
# stored hash made another way (an older method or cost) is recognised and replaced at login.
PASSWORD_METHOD = "scrypt:32768:8:1"


class LoginRefused(UserError):
    """A login that did not succeed; the message never says whether the name exists."""


def hash_password(password: str) -> str:
    """A salted hash with werkzeug.security (``scrypt:N:r:p$salt$hex``, PASSWORD_METHOD)."""
    return generate_password_hash(password, method=PASSWORD_METHOD)


def _affordable(method: str) -> bool:
    """Whether a stored hash's method is one of werkzeug's at a cost we are willing to pay.

    werkzeug trusts the parameters in a stored hash; the database is ours, but a cap here
    means a damaged or planted row costs one refused login, not a gigabyte of scrypt memory.
    """
    kind, _, args = method.partition(":")
    try:
        if kind == "scrypt":
            n, r, p = (int(a) for a in args.split(":"))
            return 2 <= n <= 2**20 and 1 <= r <= 16 and 1 <= p <= 4
        if kind == "pbkdf2":
            hash_name, iterations = args.split(":")
            return hash_name in ("sha256", "sha512") and 1 <= int(iterations) <= 2_000_000
    except ValueError:
        return False
    return False


def verify_password(stored: str | None, password: str) -> bool:
    """Whether password matches a stored werkzeug hash (False for no hash, another format or an unaffordable cost).

    The comparison is werkzeug's check_password_hash, which compares digests in constant time.
    """
    if not stored or len(password) > PASSWORD_MAX or stored.count("$") < 2 or not _affordable(stored.split("$", 1)[0]):
        return False
    try:
        return check_password_hash(stored, password)
    except ValueError:  # a method werkzeug does not know, or malformed arguments
        return False


def password_needs_rehash(stored: str) -> bool:
    """Whether a hash that just verified was made with another method or cost than PASSWORD_METHOD."""
    return stored.split("$", 1)[0] != PASSWORD_METHOD


def _rehash_password(store: Store, user_id: int, name: str, stored: str, password: str) -> None:
    """Replace an outdated hash after a successful login (the password itself is unchanged).

    Compare-and-set on the old hash: a password set in the meantime is never overwritten.
    Sessions and password_changed_at stay as they are: nothing the user knows has changed.
    """
    hashed = hash_password(password)
    with store.write() as db:
        cursor = db.execute("UPDATE users SET password_hash = ? WHERE id = ? AND password_hash = ?", [hashed, user_id, stored])
        if cursor.rowcount:
            record_event(db, "mlpd", "user.password_rehashed", "user", name, old=stored.split("$", 1)[0], new=PASSWORD_METHOD)


_DUMMY_HASH: list[str] = []


def _spend_a_hash(password: str) -> None:
    """Hash once when there is nothing to check, so a missing user takes as long as a wrong password."""
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(hash_password(secrets.token_urlsafe(16)))
    verify_password(_DUMMY_HASH[0], password)


def check_password_strength(password: str, name: str = "") -> None:
    """Refuse a password that is too short, too long, or the user's name; UserError says why."""
    if not isinstance(password, str) or len(password) < PASSWORD_MIN:
        raise UserError(f"password: use at least {PASSWORD_MIN} characters")
    if len(password) > PASSWORD_MAX:
        raise UserError(f"password: at most {PASSWORD_MAX} characters")
    if name and password.strip().lower() == name.lower():
        raise UserError("password: must not be your user name")


def set_password(store: Store, name: str, password: str, actor: str = "host") -> None:
    """Set a user's web password (an admin, or the user), clear their lockout and end their web sessions."""
    check_password_strength(password, name)
    hashed = hash_password(password)
    with store.write() as db:
        user_id = _active_user_id(db, name)
        db["users"].update(user_id, {"password_hash": hashed, "password_changed_at": time.time()})
        db["login_failures"].delete_where("name = ?", [name])
        db["ui_sessions"].delete_where("user_id = ?", [user_id])
        record_event(db, actor, "user.password_set", "user", name)


def _lock_message(locked_until: float, now: float) -> str:
    minutes = max(1, math.ceil((locked_until - now) / 60))
    return (f"too many failed logins: this account is locked for {minutes} more minute{'s' if minutes > 1 else ''}; "
            "try again later, or ask an admin to set a new password")


def _record_failure(store: Store, name: str, now: float) -> float | None:
    """Count a failed login for name; return the time the lock ends if this failure locks it."""
    with store.write() as db:
        row = next(db["login_failures"].rows_where("name = ?", [name]), None)
        failures, first_at = (row["failures"] + 1, row["first_at"]) if row and now - row["first_at"] < FAILURE_WINDOW else (1, now)
        locked_until = now + LOCKOUT_SECONDS if failures >= LOCKOUT_FAILURES else None
        db["login_failures"].upsert({"name": name, "failures": failures, "first_at": first_at, "locked_until": locked_until}, pk="name")
        if locked_until:
            record_event(db, "mlpd", "user.locked", "user", name, failures=failures, until=locked_until)
    return locked_until


def locked_until(store: Store, name: str, now: float | None = None) -> float | None:
    """When the lock on this login name ends, or None when it is not locked."""
    now = now if now is not None else time.time()
    row = next(store.db["login_failures"].rows_where("name = ?", [name[:64]], select="locked_until"), None)
    return row["locked_until"] if row and row["locked_until"] and row["locked_until"] > now else None


def login_with_password(store: Store, name: str, password: str, now: float | None = None) -> User:
    """The user whose name and password these are; LoginRefused (401, or 429 while locked) otherwise.

    A locked name is refused even with the right password until the lock ends.
    """
    now = now if now is not None else time.time()
    name = (name or "").strip()[:64]
    until = locked_until(store, name, now)
    if until:
        raise LoginRefused(_lock_message(until, now), code="locked", status=429)
    row = _active_user(store.db, name, "id, name, role, password_hash")
    if row is None or not row["password_hash"]:
        _spend_a_hash(password or "")
        ok = False
    else:
        ok = verify_password(row["password_hash"], password or "")
    if not ok or row is None:
        until = _record_failure(store, name, now)
        if until:
            raise LoginRefused(_lock_message(until, now), code="locked", status=429)
        raise LoginRefused("wrong user name or password (or no password is set: ask an admin, or log in with a token)",
                           code="unauthorized", status=401)
    with store.write() as db:
        db["login_failures"].delete_where("name = ?", [name])
    if password_needs_rehash(row["password_hash"]):
        _rehash_password(store, row["id"], row["name"], row["password_hash"], password)
    return User(row["id"], row["name"], row["role"])


def change_password(store: Store, name: str, old: str, new: str) -> None:
    """A user changes their own password, proving the old one (a wrong one counts toward the lockout)."""
    check_password_strength(new, name)
    try:
        login_with_password(store, name, old)
    except LoginRefused as exc:
        if exc.code == "locked":
            raise
        raise UserError("old: that is not your current password", code="wrong_password", status=403) from None
    set_password(store, name, new, actor=name)


# ---------------------------------------------------------------- web sessions

SESSION_IDLE = 12 * 3600
SESSION_MAX = 7 * 86400


@dataclass(frozen=True)
class Session:
    """A web session: whose it is and the CSRF token its forms carry."""

    user: User
    csrf: str
    method: str  # how it logged in: password or token


def create_session(store: Store, user: User, method: str, now: float | None = None) -> tuple[str, Session]:
    """Start a web session for user; return (the cookie's secret, shown once; the session)."""
    if user.job_id:
        raise UserError("a job's token cannot open a web session", code="forbidden", status=403)
    now = now if now is not None else time.time()
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    with store.write() as db:
        db["ui_sessions"].delete_where("expires_at <= ? OR last_seen_at <= ?", [now, now - SESSION_IDLE])
        db["ui_sessions"].insert({"id_hash": _hash(secret), "user_id": user.id, "csrf": csrf, "method": method, "created_at": now,
                                  "last_seen_at": now, "expires_at": now + SESSION_MAX})
        record_event(db, user.name, "user.login", "user", user.name, method=method)
    return secret, Session(user, csrf, method)


def get_session(store: Store, secret: str, now: float | None = None) -> Session | None:
    """The live session a cookie's secret belongs to (its user as they are now), or None."""
    if not secret or len(secret) > 128:
        return None
    now = now if now is not None else time.time()
    row = store.query_one(
        """SELECT s.csrf, s.method, s.last_seen_at, s.expires_at, u.id, u.name, u.role, u.removed_at
           FROM ui_sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = ?""", [_hash(secret)])
    if not row or row["removed_at"] is not None or row["expires_at"] <= now or now - row["last_seen_at"] > SESSION_IDLE:
        return None
    if now - row["last_seen_at"] > 60:
        with store.write() as db:
            # A plain UPDATE: a logout since the read may have ended it, and Table.update() raises for a missing row.
            db.execute("UPDATE ui_sessions SET last_seen_at = ? WHERE id_hash = ?", [now, _hash(secret)])
    return Session(User(row["id"], row["name"], row["role"]), row["csrf"], row["method"])


def end_session(store: Store, secret: str) -> None:
    """Log out: the session is gone (idempotent)."""
    with store.write() as db:
        db["ui_sessions"].delete_where("id_hash = ?", [_hash(secret or "")])
