"""GPU sharing for small work: a share of one GPU (``--gpus 0.5``, ``gpu_share = 0.5``).

A shared workload asks for one GPU (``gpus = 1``) and a share of it below 1 (``gpu_share``). Up to
``gpus.share_max`` shared workloads whose shares sum to 1 at most run on one GPU by time-slicing
(and under NVIDIA MPS with a per-client memory limit where the site sets it up:
docs/gpu-sharing.md); whole-GPU work never lands on a GPU that shares hold, and shares never land on
a GPU that whole-GPU work holds. The scheduler places shares (mlpd.scheduling.scheduler's
share_fit); the ledger books each allocation times its share, so quotas and fair share count
fractions of GPU-hours; concurrent-GPU quotas count the shares held.

Pure: no I/O.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

SHARE_EPS = 1e-9  # shares are floats: 0.1 x 10 must still fit one GPU
MIN_SHARE = 0.05  # the smallest share of a GPU one workload may ask for
_NUMBER = re.compile(r"\s*\d+(?:\.\d+)?\s*|\s*\.\d+\s*")


class ShareError(ValueError):
    """A GPU request that is neither whole GPUs nor a share of one GPU; str() is for the user."""


def split_gpus(value: Any, high: int = 64) -> tuple[int, float | None]:
    """A GPU request as (whole GPUs, share): 2 -> (2, None), 0.5 -> (1, 0.5), "0.25" -> (1, 0.25).

    A number between MIN_SHARE and 1 asks for a share of one GPU; more than 1 must be whole (a share
    is of one GPU: 1.5 GPUs is refused). Booleans are not numbers. Raises ShareError."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = float(value)  # CLI flags arrive as strings
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ShareError(f"expected a whole number >= 0 or a share of one GPU such as 0.5, got {str(value)[:40]!r}")
    if value != value or value < 0:  # NaN or negative
        raise ShareError(f"expected a whole number >= 0 or a share of one GPU such as 0.5, got {value!r}")
    if float(value).is_integer():
        if value > high:
            raise ShareError(f"must be at most {high}, got {value!r}")
        return int(value), None
    if value > 1:
        raise ShareError(f"a share is of one GPU: ask for whole GPUs (2) or a share below 1 (0.5), got {value!r}")
    return 1, check_share(value)


def check_share(value: Any) -> float:
    """A share of one GPU: a number from MIN_SHARE up to (not including) 1, rounded to 4 places."""
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not MIN_SHARE <= value < 1:
        raise ShareError(f"expected a share of one GPU from {MIN_SHARE} to below 1, such as 0.5, got {str(value)[:40]!r}")
    return round(float(value), 4)


def demand(gpus: int, share: float | None) -> float:
    """What a request counts against concurrent-GPU quotas: its share of one GPU, or its whole GPUs."""
    return float(share) if share and gpus == 1 else float(gpus)


def as_gpus(x: float) -> int | float:
    """A count of GPUs for output: an int when whole (as before sharing), else the fraction (1.5)."""
    return int(round(x)) if abs(x - round(x)) < 1e-6 else round(x, 4)


def share_of(spec: Mapping[str, Any] | None) -> float:
    """The part of each of its GPUs a workload's spec holds: its gpu_share, else 1 (whole GPUs)."""
    share = (spec or {}).get("gpu_share")
    return float(share) if share else 1.0

