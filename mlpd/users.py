"""Users and API tokens.

A token looks like ``mlpd_<id>_<secret>``: the id finds the row, the secret is
checked against its SHA-256 hash (tokens are random and long, so a slow password
hash buys nothing). Only the hash is stored; the full token is shown once.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from mlpd.errors import MlpdError
from mlpd.store import Store, record_event

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


def add_user(store: Store, name: str, role: str = "member", actor: str = "host") -> User:
    """Create a user. Names are never reused, even after removal, so old records stay unambiguous."""
    check_name(name)
    if role not in ROLES:
        raise UserError(f"invalid role {role!r}: expected member or admin")
    with store.write() as db:
        if db.execute("SELECT 1 FROM users WHERE name = ?", [name]).fetchone():
            raise UserError(f"user {name!r} already exists", code="conflict", status=409)
        cur = db.execute("INSERT INTO users (name, role, created_at) VALUES (?, ?, ?)", [name, role, time.time()])
        record_event(db, actor, "user.add", "user", name, role=role)
        return User(cur.lastrowid, name, role)


def get_user(store: Store, name: str) -> User | None:
    """The active user with this name, or None."""
    row = store.query_one("SELECT id, name, role FROM users WHERE name = ? AND removed_at IS NULL", [name])
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
        row = db.execute("SELECT id FROM users WHERE name = ? AND removed_at IS NULL", [name]).fetchone()
        if not row:
            raise UserError(f"no such user {name!r}", code="not_found", status=404)
        db.execute("UPDATE users SET removed_at = ? WHERE id = ?", [now, row[0]])
        db.execute("UPDATE tokens SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL", [now, row[0]])
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
        row = db.execute("SELECT id FROM users WHERE name = ? AND removed_at IS NULL", [name]).fetchone()
        if not row:
            raise UserError(f"no such user {name!r}", code="not_found", status=404)
        db.execute(
            "INSERT INTO tokens (id, user_id, secret_hash, label, created_at, expires_at, job_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [token_id, row[0], _hash(secret), label, now, expires_at, job_id],
        )
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
            db.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", [time.time(), token_id])
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
            db.execute("UPDATE tokens SET last_used_at = ? WHERE id = ?", [now, token_id])
    if row["kind"] == "workspace":
        # A workspace session's token: its owner at their notebook, as a member (never as an
        # admin), revoked with the session like a job's.
        return User(row["id"], row["name"], "member", None)
    return User(row["id"], row["name"], row["role"], row["job_id"])
