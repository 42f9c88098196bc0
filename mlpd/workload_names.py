"""How a person reads the name of a workload, in one place for every surface (CLI, API text, UI, events).

A workload row (the jobs table) is a job, a workspace's session or a deployment's replica. Its id
is an implementation detail for the last two: a person knows ``workspace lab (nina)`` and
``deployment iris, replica 0``, and looks them up with ``mlpd ws show lab`` and ``mlpd deployments
show iris``. A job is named by its name where it has one, always with the start of its id, which
``mlpd jobs show`` resolves (a unique prefix is enough).

:func:`label` is pure (plain data in, text out); :func:`names_of` reads what it needs (workspace and
deployment names, replica slots) for many rows in two queries, so a page of rows costs no more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from mlpd.kinds.base import kind_of

SHORT_ID = 12  # as 'mlpd jobs' lists ids; 'mlpd jobs show' takes any unique prefix


def short_id(job_id: str) -> str:
    """The start of a job id that people read (and 'mlpd jobs show' resolves)."""
    return (job_id or "")[:SHORT_ID]


@dataclass(frozen=True)
class WorkloadName:
    """What names one workload row: its kind, id and owner, and the name a person knows it by."""
    kind: str  # the workload's kind (mlpd.kinds): job, workspace, deployment
    job_id: str
    owner: str
    name: str | None = None  # a job's own name, or the workspace's / deployment's name
    replica: int | None = None  # a deployment replica's slot ('mlpd deployments logs --slot')

    def label(self, with_owner: bool = False) -> str:
        """E.g. ``workspace lab (nina)``, ``deployment iris, replica 0``, ``job train (8e946a850fbf)``
        (with its owner: ``job 8e946a850fbf of nina``, ``deployment iris, replica 0 (nina)``): its
        kind says (Kind.label). with_owner adds whose it is where the label does not say it already."""
        return kind_of(self.kind).label(self, with_owner)

    def show_command(self) -> str:
        """The command that shows this workload (what a message that names it suggests)."""
        return kind_of(self.kind).show_command(self)

    def to_dict(self) -> dict[str, Any]:
        """The API's form: label (with owner), the workload's name and kind, and the command to look it up."""
        return {"kind": self.kind, "name": self.name, "replica": self.replica, "label": self.label(with_owner=True),
                "show": self.show_command()}


def label(kind: str, job_id: str, owner: str, name: str | None = None, replica: int | None = None,
          with_owner: bool = False) -> str:
    """The label of a workload from plain fields (see WorkloadName.label)."""
    return WorkloadName(kind or "job", job_id, owner, name, replica).label(with_owner)


def names_of(store, rows: Iterable[dict[str, Any]]) -> dict[str, WorkloadName]:
    """{job id: WorkloadName} for workload rows (dicts with id, owner, kind, name, workload): one
    query per kind present (Kind.workload_names), so a page of rows costs no more."""
    rows = [r for r in rows if r]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_kind.setdefault(kind_of(r.get("kind")).name, []).append(r)
    out = {}
    for kind, group in by_kind.items():
        found = kind_of(kind).workload_names(store, group)
        for r in group:
            name, replica = found.get(r["id"], (None, None))
            out[r["id"]] = WorkloadName(kind, r["id"], r["owner"], name, replica)
    return out


def name_of(store, row: dict[str, Any]) -> WorkloadName:
    """The WorkloadName of one workload row."""
    return names_of(store, [row])[row["id"]]
