"""CPU, memory and workload-count caps per member: pure arithmetic over plain data.

Every workload (job, notebook job, workspace, model-serving replica) has a CPU and a memory limit:
its own, else the configured default (jobs.default_cpus, jobs.default_memory), never more than the
host has (`effective_limits`). A member's running work together may hold at most the CPUs, memory
and number of workloads of their caps (quotas.max_cpus, max_memory, max_jobs); the scheduler keeps
a `CapLedger` as it places work, and admission asks `never_fits` and `over_caps`.

Work with no limit (the defaults set to 0 or "") counts as the whole host: a cap cannot be slipped
by asking for nothing. No I/O here beyond what the caller passes in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence


@dataclass(frozen=True)
class ResourceCap:
    """What the members' running work together may hold at once; None = no cap on that resource."""

    name: str  # for messages, e.g. "user alice"
    members: frozenset[str]
    cpus: float | None = None
    memory: int | None = None
    jobs: int | None = None


@dataclass(frozen=True)
class Use:
    """One running (or placed) workload's share of its owner's caps."""

    owner: str
    cpus: float
    memory: int


def effective_limits(spec: Mapping[str, Any], config: Any, host: tuple[int, int]) -> tuple[float | None, int | None]:
    """(CPU limit, memory limit in bytes) the workload's container gets: its spec's, else the
    configured default clamped to the host (Docker refuses more CPUs than the host has); None = no limit."""
    from mlpd.units import parse_memory

    host_cpus, host_memory = host
    cpus = spec.get("cpus")
    if cpus is None and config["jobs.default_cpus"]:
        cpus = min(float(config["jobs.default_cpus"]), float(host_cpus))
    memory = spec.get("memory")
    if memory is None and config["jobs.default_memory"]:
        memory = min(parse_memory(config["jobs.default_memory"]), host_memory)
    return (float(cpus) if cpus else None), (int(memory) if memory else None)


def use_of(owner: str, spec: Mapping[str, Any], config: Any, host: tuple[int, int]) -> Use:
    """What a workload counts against its owner's caps: its effective limits, the whole host where it has none."""
    cpus, memory = effective_limits(spec, config, host)
    return Use(owner, cpus if cpus is not None else float(host[0]), memory if memory is not None else host[1])


def _fmt_cpus(x: float) -> str:
    return f"{x:g} CPU" + ("" if x == 1 else "s")


def never_fits(caps: Iterable[ResourceCap], use: Use) -> str | None:
    """Why one workload alone is over a cap (it could never start), or None."""
    from mlpd.units import format_bytes

    for cap in caps:
        if cap.cpus is not None and use.cpus > cap.cpus + 1e-9:
            return f"cpus: asks for {_fmt_cpus(use.cpus)} but the concurrent CPU quota of {cap.name} is {cap.cpus:g}"
        if cap.memory is not None and use.memory > cap.memory:
            return (f"memory: asks for {format_bytes(use.memory)} but the concurrent memory quota of {cap.name} "
                    f"is {format_bytes(cap.memory)}")
    return None


class CapLedger:
    """The caps' running totals, kept up to date as the scheduler places work (one pass)."""

    def __init__(self, caps: Sequence[ResourceCap], running: Iterable[Use]):
        self.caps = list(caps)
        self._of: dict[str, list[int]] = {}
        for i, cap in enumerate(self.caps):
            for m in cap.members:
                self._of.setdefault(m, []).append(i)
        self.cpus = [0.0] * len(self.caps)
        self.memory = [0] * len(self.caps)
        self.jobs = [0] * len(self.caps)
        for use in running:
            self.take(use)

    def take(self, use: Use) -> None:
        """Count a workload that starts (or runs) against its owner's caps."""
        for i in self._of.get(use.owner, ()):
            self.cpus[i] += use.cpus
            self.memory[i] += use.memory
            self.jobs[i] += 1

    def refusal(self, use: Use) -> str | None:
        """Why the workload cannot start now under its owner's caps (a sentence for the user, without
        what happens next: the scheduler and admission each add their own), or None."""
        from mlpd.units import format_bytes

        ids = self._of.get(use.owner)
        if not ids:
            return None
        caps = [self.caps[i] for i in ids]
        never = never_fits(caps, use)
        if never:
            return "can never run: " + never
        for i in ids:
            cap = self.caps[i]
            if cap.jobs is not None and self.jobs[i] + 1 > cap.jobs:
                return (f"at the concurrent workload quota of {cap.name}: {cap.jobs} running at most (jobs, workspaces, "
                        f"replicas), {self.jobs[i]} running")
            if cap.cpus is not None and self.cpus[i] + use.cpus > cap.cpus + 1e-9:
                return (f"at the concurrent CPU quota of {cap.name}: {cap.cpus:g} CPUs at most, {self.cpus[i]:g} held "
                        f"by running work and it asks for {use.cpus:g}")
            if cap.memory is not None and self.memory[i] + use.memory > cap.memory:
                return (f"at the concurrent memory quota of {cap.name}: {format_bytes(cap.memory)} at most, "
                        f"{format_bytes(self.memory[i])} held by running work and it asks for {format_bytes(use.memory)}")
        return None
