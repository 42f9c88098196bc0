"""The outside world: containers (the Runtime protocol, its Docker implementation and its
in-memory twin under one contract suite), images, environments and GPUs.

`connect()` lives here, beside the implementations, so the protocol module imports none of them.
May import: the top-level helpers (config, errors, store). Nothing of kinds/, scheduling/,
serving/, tracking/, web/ or workers/.
"""

from __future__ import annotations

from mlpd.runtime.protocol import Runtime


def connect(instance: str, base_url: str = "", gpu_mode: str = "auto") -> Runtime:
    """The real runtime (Docker) for this daemon's instance; RuntimeFailure when the engine does not answer."""
    from mlpd.runtime.docker_engine import DockerRuntime

    return DockerRuntime(instance, base_url, gpu_mode)
