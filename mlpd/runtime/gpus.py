"""GPU inventory: the only module that imports pynvml.

Two implementations of one small interface: NVML (real devices) and declared
devices for machines without NVIDIA GPUs. Declared devices say so in every view
(``declared: true``, UUIDs starting ``DECLARED-``) and are never passed off as real.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Protocol

log = logging.getLogger("mlpd.runtime.gpus")


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_memory: int | None


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as the inventory sees it now."""

    index: int
    uuid: str
    name: str
    memory_total: int | None
    memory_used: int | None
    utilization: int | None        # percent, None when unknown
    processes: tuple[GpuProcess, ...] = field(default_factory=tuple)
    declared: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["processes"] = [asdict(p) for p in self.processes]
        return data


class GpuInventory(Protocol):
    """What the scheduler and the API need to know about GPUs."""

    @property
    def kind(self) -> str:
        """What kind of inventory: declared, nvml, ..."""
        ...

    def devices(self) -> list[GpuInfo]:
        """All GPUs, ordered by index."""
        ...


class DeclaredInventory:
    """GPUs declared in mlpd.toml (gpus.declare) or with --declare-gpus, for machines without NVIDIA GPUs."""

    kind = "declared"

    def __init__(self, count: int, model: str = "declared"):
        self._devices = [
            GpuInfo(index=i, uuid=f"DECLARED-{i:04d}", name=model, memory_total=None, memory_used=None, utilization=None, declared=True)
            for i in range(count)
        ]

    def devices(self) -> list[GpuInfo]:
        return list(self._devices)


class NvmlInventory:
    """Real GPUs through NVML (nvidia-ml-py). No driver means no GPUs, not an error."""

    kind = "nvml"
    _init_lock = threading.Lock()

    def __init__(self):
        self.available = False
        self.error: str | None = None
        try:
            import pynvml

            with self._init_lock:
                pynvml.nvmlInit()
            self._nvml = pynvml
            self.available = True
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.error = str(exc) or type(exc).__name__
            log.info("no NVIDIA driver found (%s): no GPUs; CPU-only jobs still run", self.error)

    def devices(self) -> list[GpuInfo]:
        if not self.available:
            return []
        nv = self._nvml
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            name = nv.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else name
            uuid = nv.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            mem = nv.nvmlDeviceGetMemoryInfo(h)
            try:
                util = nv.nvmlDeviceGetUtilizationRates(h).gpu
            except nv.NVMLError:
                util = None
            try:
                procs = tuple(
                    GpuProcess(p.pid, getattr(p, "usedGpuMemory", None))
                    for p in nv.nvmlDeviceGetComputeRunningProcesses(h) + nv.nvmlDeviceGetGraphicsRunningProcesses(h)
                )
            except nv.NVMLError:
                procs = ()
            out.append(GpuInfo(i, uuid, name, mem.total, mem.used, util, procs, False))
        return out


DECLARED_KEY = "gpus.declared"  # daemon_status: {"count", "model"} set by 'mlpd admin gpus declare'


class SwitchableInventory:
    """The host's GPUs as configured (gpus.declare, else NVML), unless an admin declared GPUs at run
    time ('mlpd admin gpus declare N', kept in the state database): then those, at once in every
    process of the daemon and across restarts. Declared GPUs are only for hosts without NVIDIA GPUs."""

    def __init__(self, store, declare: int, declared_model: str):
        self.store = store
        self.base: GpuInventory = DeclaredInventory(declare, declared_model) if declare > 0 else NvmlInventory()
        self._cache: tuple[str, GpuInventory] | None = None

    def _override(self) -> GpuInventory | None:
        row = self.store.query_one("SELECT value FROM daemon_status WHERE key = ?", [DECLARED_KEY])
        if row is None:
            return None
        if self._cache is None or self._cache[0] != row["value"]:
            value = json.loads(row["value"])
            self._cache = (row["value"], DeclaredInventory(int(value["count"]), value.get("model") or "declared"))
        return self._cache[1]

    @property
    def kind(self) -> str:
        return (self._override() or self.base).kind

    def devices(self) -> list[GpuInfo]:
        return (self._override() or self.base).devices()


def make_inventory(declare: int = 0, declared_model: str = "declared", store=None) -> GpuInventory:
    """Declared devices when asked for, else NVML (empty without a driver); with the state database,
    what an admin declared at run time wins (SwitchableInventory)."""
    if store is not None:
        return SwitchableInventory(store, declare, declared_model)
    if declare > 0:
        return DeclaredInventory(declare, declared_model)
    return NvmlInventory()


def declare(store, actor: str, count: int, model: str) -> None:
    """Declare `count` test GPUs of `model` at once (0: none), with its event; the caller checked
    that no GPU is held and that the host has no real ones."""
    from mlpd.store import record_event

    with store.write() as db:
        if count:
            db["daemon_status"].upsert({"key": DECLARED_KEY, "value": json.dumps({"count": count, "model": model}),
                                        "updated_at": time.time()}, pk="key")
        else:
            db.execute("DELETE FROM daemon_status WHERE key = ?", [DECLARED_KEY])
        record_event(db, actor, "gpus.declared", "gpu", "*", count=count, model=model)
