"""Sweeps: one job per trial over a grid or random parameters (placeholder until built)."""

from __future__ import annotations

from mlpd.store import Store


def release(store: Store, now: float) -> list[str]:
    """Queue waiting trials while their sweep has fewer than `parallel` in the queue or running."""
    return []
