"""Admission of a run the daemon submits in a member's name (a schedule's run, a sweep's trial).

The API admits what a member submits in person (mlpd.web.api_jobs.create_job); a run the worker
submits later passes the checks that can change in between, against its owner as they are now:
the owner still exists, still holds the code archive, may still use the priority class, and is
within their quotas. The checks of what the host can run were made when the schedule or sweep was
made. The lead's domain submit function replaces this when it lands (one admission path).
"""

from __future__ import annotations

from typing import Any

from mlpd import jobs

from mlpd.scheduling import quotas
from mlpd.config import Config
from mlpd.errors import MlpdError
from mlpd.kinds.jobspec import JobSpec, SpecError, parse_spec
from mlpd.store import Store


class Refused(MlpdError):
    """A run that cannot be submitted now; the message says why (shown in the schedule's runs)."""

    def __init__(self, message: str, status: int = 403, code: str = "refused"):
        super().__init__(status, code, message)


def owner_is_active(store: Store, owner: str) -> bool:
    """Whether the user exists and has not been removed."""
    return store.query_one("SELECT 1 FROM users WHERE name = ? AND removed_at IS NULL", [owner]) is not None


def admit(store: Store, config: Config, owner: str, spec_data: dict[str, Any]) -> tuple[JobSpec, list[str]]:
    """The parsed spec and the warnings (quota notes) of a run to submit for `owner` now; Refused otherwise."""
    from mlpd.scheduling.priority_classes import submit_refusal

    if not owner_is_active(store, owner):
        raise Refused(f"its owner {owner} was removed")
    try:
        spec, warnings = parse_spec(spec_data)
    except SpecError as exc:
        raise Refused(str(exc), 400, "invalid_field") from None
    if spec.code and not jobs.holds_code(store, spec.code, owner):
        raise Refused(f"code: {owner} no longer holds the code archive {spec.code[:12]} (removed by retention?)")
    row = store.query_one("SELECT role FROM users WHERE name = ? AND removed_at IS NULL", [owner])
    is_admin = row is not None and row["role"] == "admin"
    refusal = submit_refusal(store, config, spec.priority_class, owner, is_admin)
    if refusal:
        raise Refused(refusal[2], refusal[0], refusal[1])
    notes = quotas.admit(store, config, owner, spec.gpu_demand, work=[{"cpus": spec.cpus, "memory": spec.memory}])
    return spec, warnings + notes
