"""Output for people (aligned tables) and for scripts (--json)."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any, Iterable, Sequence

import click


def emit_json(data: Any) -> None:
    """Stable, sorted-key JSON on stdout."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def when(ts: float | None) -> str:
    """A local timestamp, short, or '-'."""
    if ts is None:
        return "-"
    return _dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    """An aligned plain-text table."""
    rows = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)).rstrip())
    if not rows:
        click.echo("(none)")


def plural(count: int, word: str, words: str | None = None) -> str:
    """A count with its noun as people write it: "1 file", "2 files", "0 errors" (words: an irregular plural)."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def duration(seconds: float | None) -> str:
    """A duration for people: "-" for none, "<1s" rather than "0.0072s", else whole units ("1h30m", "45s");
    one word, so that a table's columns stay columns."""
    if seconds is None:
        return "-"
    if 0 < abs(seconds) < 1:
        return "<1s"
    from mlpd.units import format_duration

    return format_duration(round(seconds))
