"""Members' SSH public keys: for SSH into their own workspaces (`mlpd keys add`, `mlpd ws ssh-config`).

A key is stored as its type, base64 blob and a comment, nothing else: authorized_keys options
(`command=`, `from=`, `environment=`...) are refused, so a member cannot smuggle settings into
sshd. Each member's keys are written to STATE_DIR/ssh/NAME/authorized_keys, which is mounted
read-only into that member's workspaces only.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import time
from typing import Any

from mlpd.errors import MlpdError
from mlpd.store import Store, record_event

KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
             "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
MAX_KEYS = 50


class KeyError_(MlpdError):
    """A key that cannot be added or removed."""


def parse_public_key(text: Any) -> tuple[str, str, str, str]:
    """(type, blob, comment, fingerprint) of one OpenSSH public key line; KeyError_ 400 otherwise."""
    if not isinstance(text, str) or len(text) > 16384:
        raise KeyError_(400, "invalid_field", "key: expected one OpenSSH public key line (e.g. the contents of ~/.ssh/id_ed25519.pub)")
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) != 1:
        raise KeyError_(400, "invalid_field", "key: expected exactly one public key line")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or parts[0] not in KEY_TYPES:
        raise KeyError_(400, "invalid_field", f"key: expected '<type> <base64> [comment]' with type one of {', '.join(KEY_TYPES)} "
                                               "(authorized_keys options such as command= are not accepted); is this a .pub file?")
    kind, blob = parts[0], parts[1]
    try:
        raw = base64.b64decode(blob, validate=True)
    except ValueError:
        raise KeyError_(400, "invalid_field", "key: the key's base64 part is not valid") from None
    # The blob starts with its own type as an SSH string: a key whose blob and type disagree is malformed.
    if len(raw) < 4 + len(kind) or raw[4:4 + len(kind)] != kind.encode() or int.from_bytes(raw[:4], "big") != len(kind):
        raise KeyError_(400, "invalid_field", "key: the key's data does not match its type")
    comment = re.sub(r"[^A-Za-z0-9@._+-]", "_", parts[2].strip())[:100] if len(parts) > 2 else ""
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    return kind, blob, comment, fingerprint


def add_key(store: Store, state_dir: str, owner: str, text: str) -> dict[str, Any]:
    kind, blob, comment, fingerprint = parse_public_key(text)
    now = time.time()
    with store.write() as db:
        if db.execute("SELECT 1 FROM ssh_keys WHERE owner = ? AND fingerprint = ?", [owner, fingerprint]).fetchone():
            raise KeyError_(409, "exists", f"you already registered the key {fingerprint}")
        if db.execute("SELECT COUNT(*) FROM ssh_keys WHERE owner = ?", [owner]).fetchone()[0] >= MAX_KEYS:
            raise KeyError_(400, "too_many", f"at most {MAX_KEYS} keys per member; remove one first ('mlpd keys rm ID')")
        key_id = secrets.token_hex(4)
        db.execute("INSERT INTO ssh_keys (id, owner, key, fingerprint, created_at) VALUES (?, ?, ?, ?, ?)",
                   [key_id, owner, f"{kind} {blob} {comment}".strip(), fingerprint, now])
        record_event(db, owner, "ssh_key.added", "ssh_key", key_id, fingerprint=fingerprint)
    write_authorized_keys(store, state_dir, owner)
    return {"id": key_id, "fingerprint": fingerprint, "type": kind, "comment": comment, "created_at": now}


def list_keys(store: Store, owner: str) -> list[dict[str, Any]]:
    rows = store.query("SELECT id, key, fingerprint, created_at FROM ssh_keys WHERE owner = ? ORDER BY created_at", [owner])
    return [{"id": r["id"], "fingerprint": r["fingerprint"], "type": r["key"].split()[0],
             "comment": (r["key"].split(None, 2)[2:] or [""])[0], "created_at": r["created_at"]} for r in rows]


def remove_key(store: Store, state_dir: str, owner: str, key_id: str) -> None:
    with store.write() as db:
        if not db.execute("DELETE FROM ssh_keys WHERE owner = ? AND (id = ? OR fingerprint = ?)", [owner, key_id, key_id]).rowcount:
            raise KeyError_(404, "not_found", f"no key {key_id!r} of yours; 'mlpd keys' lists them")
        record_event(db, owner, "ssh_key.removed", "ssh_key", key_id)
    write_authorized_keys(store, state_dir, owner)


def keys_dir(state_dir: str, owner: str) -> str:
    """The directory mounted read-only at /etc/mlpd-ssh in the owner's workspaces (made on first use)."""
    from mlpd.users import check_name

    check_name(owner)
    path = os.path.join(state_dir, "ssh", owner)
    os.makedirs(path, mode=0o755, exist_ok=True)
    os.chmod(os.path.join(state_dir, "ssh"), 0o711)
    return path


def write_authorized_keys(store: Store, state_dir: str, owner: str) -> str:
    """Rewrite the owner's authorized_keys from the database (atomically); running workspaces see it at once."""
    path = keys_dir(state_dir, owner)
    rows = store.query("SELECT key FROM ssh_keys WHERE owner = ? ORDER BY created_at", [owner])
    tmp = os.path.join(path, ".authorized_keys.tmp")
    with open(tmp, "w") as fh:
        fh.writelines(r["key"] + "\n" for r in rows)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(path, "authorized_keys"))
    return path
