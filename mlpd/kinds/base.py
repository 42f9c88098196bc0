"""The interface every workload kind implements, and the registry the core asks.

A workload is a row of the jobs table (its ``kind`` column names the kind) and a container. The
core (controller, scheduler inputs, quotas, priority classes, tokens, names, the UI and the CLI)
never tests a kind's name: it looks the kind up here and asks it. Adding a kind is one module with
a subclass of :class:`Kind` and one line in :func:`_builtin` (a test registers its own with
:func:`register`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:  # for annotations only: the registry must import no kind at load time
    from mlpd.config import Config
    from mlpd.runtime.protocol import LaunchRequest
    from mlpd.store import Store
    from mlpd.workload_names import WorkloadName


class Kind:
    """What a workload kind decides. The defaults are a plain batch workload's; a kind overrides
    what differs."""

    name: str = ""  # the jobs.kind column and the container's mlpd.kind label
    title: str = ""  # how people call one: "job", "workspace session", "deployment replica"
    default_time_limit: bool = False  # whether jobs.default_time_limit applies when its spec sets none
    preemptible: bool = False  # may be stopped for higher-class work (when its priority class is preemptible)
    priority_class_from_spec: bool = False  # its spec may name a priority class (else it has the default)
    counts_slowdown: bool = False  # its waits count in the fair-share slowdown (batch work, which waits to run)
    listed_with_jobs: bool = False  # shown by 'mlpd jobs', GET /jobs and the jobs page (with a job's page)
    tracking_credentials: bool = True  # its container gets MLflow and mlpd credentials of its owner
    token_acts_as_member: bool = False  # its token is its owner at a notebook: a member, never an admin

    def launch_request(self, store: Store, config: Config, job: dict[str, Any], base: LaunchRequest) -> LaunchRequest:
        """The container for this workload: the core's request (image, command, limits, GPUs,
        outputs, credentials) plus what the kind adds (mounts, ports, environment). Raise
        RuntimeFailure with a reason people read when it cannot start."""
        return base

    def ended(self, store: Store, config: Config, job: dict[str, Any]) -> None:
        """Called once after a workload of this kind reached a terminal state (its files saved)."""

    def workload_names(self, store: Store, rows: list[dict[str, Any]]) -> dict[str, tuple[str | None, int | None]]:
        """{job id: (the name a person knows it by, replica slot)} for rows of this kind, in one query."""
        return {r["id"]: (r.get("name") or None, None) for r in rows}

    def label(self, name: WorkloadName, with_owner: bool) -> str:
        """E.g. ``job train (8e946a850fbf)``; with_owner adds whose it is where the label does not say it."""
        from mlpd.workload_names import short_id

        text = f"{self.name} {name.name} ({short_id(name.job_id)})" if name.name else f"{self.name} {short_id(name.job_id)}"
        return text + (f" of {name.owner}" if with_owner else "")

    def show_command(self, name: WorkloadName) -> str:
        """The command that shows one (what a message that names it suggests)."""
        from mlpd.workload_names import short_id

        return f"mlpd jobs show {short_id(name.job_id)}"

    def page(self, name: WorkloadName, owner_is_viewer: bool) -> tuple[str, dict[str, Any]] | None:
        """The web UI's page of one, as (endpoint, arguments), or None where it has none (a kind
        listed with jobs has a job's page)."""
        return ("ui.job", {"job_id": name.job_id}) if self.listed_with_jobs else None


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Make a kind known to the core (the built-in ones register themselves on first use)."""
    if not kind.name or kind.name in _KINDS and _KINDS[kind.name] is not kind:
        raise ValueError(f"a workload kind needs a name of its own: {kind.name!r}")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Forget a registered kind (tests that add one clean up with this)."""
    _KINDS.pop(name, None)


def _builtin() -> None:
    if not _KINDS:
        from mlpd.kinds import deployment, job, workspace

        for kind in (job.KIND, workspace.KIND, deployment.KIND):  # a new kind: one more here
            register(kind)


def kind_of(name: str | None) -> Kind:
    """The kind of a workload row's kind column (rows from before kinds existed are jobs)."""
    _builtin()
    try:
        return _KINDS[name or "job"]
    except KeyError:
        raise KeyError(f"unknown workload kind {name!r}; known: {', '.join(sorted(_KINDS))}") from None


def all_kinds() -> list[Kind]:
    """Every registered kind, in registration order."""
    _builtin()
    return list(_KINDS.values())


def names(where: str | None = None) -> tuple[str, ...]:
    """The names of the registered kinds that have attribute `where` set (all of them without)."""
    return tuple(k.name for k in all_kinds() if where is None or getattr(k, where))


def sql_in(column: str, kinds: Iterable[str]) -> tuple[str, list[str]]:
    """An SQL condition `column IN (?, ...)` for these kind names, and its parameters (never empty SQL)."""
    kinds = list(kinds)
    if not kinds:
        return "0", []
    return f"{column} IN ({','.join('?' * len(kinds))})", kinds
