"""Priority classes: named tiers of work (e.g. production over default over preemptible).

Declared in mlpd.toml (scheduler.priority_classes, highest first); a job names one in its spec
(priority_class). The class's rank goes before everything else in the queue order; work of a
class marked preemptible may be stopped for waiting work of a higher class (see
scheduler.choose_preemptions and the controller). Who may use which class is the admins' to say
(scheduler.priority_class_users, and grants an admin makes at run time with `mlpd admin
priority-class grant`, kept in the state database's priority_grants); the check runs at submit.
The class logic is pure (PriorityClasses); the functions after it read and write the grants.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from mlpd.config import Config
from mlpd.errors import MlpdError
from mlpd.store import Store, record_event

# How many admins a refusal names (the rest as "..."): enough to know whom to ask.
NAMED_ADMINS = 5


@dataclass(frozen=True)
class PriorityClasses:
    """The configured classes: their order, the default, which are preemptible, who may use which."""

    names: tuple[str, ...]  # highest first
    default: str
    preemptible: frozenset[str]
    users: dict[str, tuple[str, ...]]  # class -> user names and "team:NAME"; a class not here is open
    granted: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # class -> subjects granted at run time

    @classmethod
    def from_config(cls, config: Config) -> "PriorityClasses":
        return cls(tuple(config["scheduler.priority_classes"]), config["scheduler.default_priority_class"],
                   frozenset(config["scheduler.preemptible_classes"]),
                   {k: tuple(v) for k, v in config["scheduler.priority_class_users"].items()})

    def of(self, job: dict) -> str:
        """The class of a job row (the default for a job that names none, or a class since removed)."""
        from mlpd.kinds.base import kind_of

        name = (job.get("spec") or {}).get("priority_class") if kind_of(job.get("kind")).priority_class_from_spec else None
        return name if name in self.names else self.default

    def rank(self, name: str) -> int:
        """Higher for higher classes: the lowest class is 1; an unknown class ranks as the default."""
        if name not in self.names:
            name = self.default
        return len(self.names) - self.names.index(name)

    def is_preemptible(self, name: str) -> bool:
        return name in self.preemptible

    def with_grants(self, granted: Mapping[str, Iterable[str]]) -> "PriorityClasses":
        """These classes with the run-time grants (class -> users and "team:NAME") added to who may use them.
        A grant opens a restricted class to its subject; it never restricts an open class."""
        return dataclasses.replace(self, granted={k: tuple(v) for k, v in granted.items()})

    def allowed(self, name: str) -> tuple[str, ...] | None:
        """Who besides the admins may use class `name`: mlpd.toml's list, then the grants; None: everyone."""
        configured = self.users.get(name)
        if configured is None:
            return None
        return tuple(dict.fromkeys((*configured, *self.granted.get(name, ()))))

    def refusal(self, name: str | None, user: str, is_admin: bool, teams: Iterable[str],
                admins: Sequence[str] = ()) -> tuple[int, str, str] | None:
        """None when the user may submit work of class `name` (None: the default class); else
        (HTTP status, error code, message): 400 for an unknown class, 403 for one kept for others,
        naming the admins who can grant it (`admins`, when given)."""
        if name is None:
            return None
        if name not in self.names:
            return 400, "invalid_field", f"priority_class: unknown class {name!r}; the classes are {', '.join(self.names)} (highest first)"
        allowed = self.allowed(name)
        if allowed is None or is_admin or user in allowed or any(f"team:{t}" in allowed for t in teams):
            return None
        who = ", ".join(allowed) if allowed else "admins only"
        named = ", ".join(admins[:NAMED_ADMINS]) + (", ..." if len(admins) > NAMED_ADMINS else "")
        ask = f"an admin ({named})" if admins else "an admin"
        return 403, "class_not_allowed", (f"priority class {name!r} is not yours to use (it is for: {who}); submit without "
                                          f"--priority-class (class {self.default!r}) or ask {ask} to grant it: "
                                          f"'mlpd admin priority-class grant {user} {name}'")


class PriorityClassError(MlpdError):
    """A grant or revocation that cannot be done, with a message for people."""


def grants(store: Store) -> dict[str, list[str]]:
    """The run-time grants: class -> subjects (user names and "team:NAME"), oldest first."""
    out: dict[str, list[str]] = {}
    for row in store.query("SELECT class, subject FROM priority_grants ORDER BY granted_at, subject"):
        out.setdefault(row["class"], []).append(row["subject"])
    return out


def load(config: Config, store: Store) -> PriorityClasses:
    """The configured classes with the grants in the state database: what a submit is checked against."""
    return PriorityClasses.from_config(config).with_grants(grants(store))


def admin_names(store: Store) -> list[str]:
    """The admins' names (those who can grant a class), in name order."""
    return [r["name"] for r in store.query("SELECT name FROM users WHERE role = 'admin' AND removed_at IS NULL ORDER BY name")]


def submit_refusal(store: Store, config: Config, name: str | None, user: str, is_admin: bool) -> tuple[int, str, str] | None:
    """The check at submit (see PriorityClasses.refusal), with the grants, the user's teams and the admins read now,
    so a grant or a revocation counts for the very next submit."""
    if name is None:
        return None
    from mlpd.scheduling import quotas

    return load(config, store).refusal(name, user, is_admin, quotas.teams_of(store).get(user, []), admin_names(store))


def _unknown_class(classes: PriorityClasses, name: str) -> PriorityClassError:
    return PriorityClassError(400, "invalid_field", f"unknown priority class {name[:40]!r}; the classes are {', '.join(classes.names)} "
                                                    "(scheduler.priority_classes in mlpd.toml)")


def _check_subject(store: Store, subject: str) -> bool:
    """Raise unless `subject` is an existing user or "team:NAME" of an existing team; True for an admin."""
    if subject.startswith("team:"):
        if not store.query_one("SELECT 1 FROM teams WHERE name = ?", [subject[5:]]):
            raise PriorityClassError(404, "not_found", f"no such team {subject[5:][:40]!r} (see 'mlpd admin team list')")
        return False
    row = store.query_one("SELECT role FROM users WHERE name = ? AND removed_at IS NULL", [subject])
    if row is None:
        raise PriorityClassError(404, "not_found", f"no such user {subject[:40]!r} (see 'mlpd admin user list'; a team is team:NAME)")
    return row["role"] == "admin"


def grant(store: Store, classes: PriorityClasses, subject: str, name: str, actor: str) -> dict[str, Any]:
    """Let `subject` (a user, or "team:NAME") use class `name` from their next submit on; idempotent.
    Refused for an unknown class or subject, and for a class open to everyone (nothing to grant)."""
    if name not in classes.names:
        raise _unknown_class(classes, name)
    if classes.users.get(name) is None:
        raise PriorityClassError(409, "class_open", f"priority class {name!r} is open to everyone (scheduler.priority_class_users "
                                                    "does not name it): there is nothing to grant")
    is_admin = _check_subject(store, subject)
    with store.write() as db:
        added = db.execute("INSERT OR IGNORE INTO priority_grants (class, subject, actor, granted_at) VALUES (?, ?, ?, ?)",
                           [name, subject, actor, time.time()]).rowcount
        if added:
            record_event(db, actor, "priority_class.grant", "priority_class", name, subject=subject)
    return {"class": name, "subject": subject, "granted": bool(added), "in_config": subject in classes.users[name], "admin": is_admin}


def revoke(store: Store, classes: PriorityClasses, subject: str, name: str, actor: str) -> dict[str, Any]:
    """Take back a grant (queued work keeps its class; the next submit is checked without it).
    Refused when there is no such grant, saying why: an unknown class, or a subject named in mlpd.toml."""
    with store.write() as db:
        removed = db.execute("DELETE FROM priority_grants WHERE class = ? AND subject = ?", [name, subject]).rowcount
        if removed:
            record_event(db, actor, "priority_class.revoke", "priority_class", name, subject=subject)
    if not removed:
        if name not in classes.names:
            raise _unknown_class(classes, name)
        if subject in (classes.users.get(name) or ()):
            raise PriorityClassError(409, "in_config", f"{subject} may use priority class {name!r} through mlpd.toml "
                                                       "(scheduler.priority_class_users), not a grant: remove them there and restart the daemon")
        raise PriorityClassError(404, "not_found", f"{subject[:40]} has no grant of priority class {name!r} "
                                                   "(see 'mlpd admin priority-class list')")
    admin = store.query_one("SELECT 1 FROM users WHERE name = ? AND role = 'admin' AND removed_at IS NULL", [subject]) is not None
    return {"class": name, "subject": subject, "revoked": True, "in_config": subject in (classes.users.get(name) or ()), "admin": admin}


def listing(store: Store, classes: PriorityClasses) -> dict[str, Any]:
    """Every configured class, highest first, with its rank, whether it is the default or preemptible, and who may
    use it: "open" (everyone), else mlpd.toml's list and the grants (who granted, when); grants of classes since
    removed from mlpd.toml under other_grants (they count for nothing; revoke them to tidy up)."""
    rows = store.query("SELECT class, subject, actor, granted_at FROM priority_grants ORDER BY granted_at, subject")
    by_class: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_class.setdefault(r["class"], []).append({"subject": r["subject"], "granted_by": r["actor"], "granted_at": r["granted_at"]})
    out = []
    for name in classes.names:
        configured = classes.users.get(name)
        out.append({"name": name, "rank": classes.rank(name), "default": name == classes.default,
                    "preemptible": classes.is_preemptible(name), "open": configured is None,
                    "config_users": list(configured or ()), "grants": by_class.get(name, [])})
    other = [dict(g, **{"class": c}) for c, gs in by_class.items() if c not in classes.names for g in gs]
    return {"classes": out, "other_grants": other, "admins": admin_names(store)}
