"""Priority classes: named tiers of work (e.g. production over default over preemptible).

Declared in mlpd.toml (scheduler.priority_classes, highest first); a job names one in its spec
(priority_class). The class's rank goes before everything else in the queue order; work of a
class marked preemptible may be stopped for waiting work of a higher class (see
scheduler.choose_preemptions and the controller). Who may use which class is the admins' to say
(scheduler.priority_class_users); the check runs at submit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mlpd.config import Config


@dataclass(frozen=True)
class PriorityClasses:
    """The configured classes: their order, the default, which are preemptible, who may use which."""

    names: tuple[str, ...]  # highest first
    default: str
    preemptible: frozenset[str]
    users: dict[str, tuple[str, ...]]  # class -> user names and "team:NAME"; a class not here is open

    @classmethod
    def from_config(cls, config: Config) -> "PriorityClasses":
        return cls(tuple(config["scheduler.priority_classes"]), config["scheduler.default_priority_class"],
                   frozenset(config["scheduler.preemptible_classes"]),
                   {k: tuple(v) for k, v in config["scheduler.priority_class_users"].items()})

    def of(self, job: dict) -> str:
        """The class of a job row (the default for a job that names none, or a class since removed)."""
        name = (job.get("spec") or {}).get("priority_class") if job.get("kind", "job") == "job" else None
        return name if name in self.names else self.default

    def rank(self, name: str) -> int:
        """Higher for higher classes: the lowest class is 1; an unknown class ranks as the default."""
        if name not in self.names:
            name = self.default
        return len(self.names) - self.names.index(name)

    def is_preemptible(self, name: str) -> bool:
        return name in self.preemptible

    def refusal(self, name: str | None, user: str, is_admin: bool, teams: Iterable[str]) -> tuple[int, str, str] | None:
        """None when the user may submit work of class `name` (None: the default class); else
        (HTTP status, error code, message): 400 for an unknown class, 403 for one kept for others."""
        if name is None:
            return None
        if name not in self.names:
            return 400, "invalid_field", f"priority_class: unknown class {name!r}; the classes are {', '.join(self.names)} (highest first)"
        allowed = self.users.get(name)
        if allowed is None or is_admin or user in allowed or any(f"team:{t}" in allowed for t in teams):
            return None
        who = ", ".join(allowed) if allowed else "admins only"
        return 403, "class_not_allowed", (f"priority class {name!r} is not yours to use (it is for: {who}); submit without "
                                          f"--priority-class (class {self.default!r}) or ask an admin (scheduler.priority_class_users)")
