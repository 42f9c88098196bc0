"""Small SVG charts rendered on the server: no chart library, no script, a few hundred bytes each.

Each function takes plain numbers and returns SVG markup (escaped, safe to insert with
Jinja's ``|safe``). Charts scale to their container (a viewBox and width 100%), carry a
<title> for screen readers, and every page that shows one also shows its numbers as a table.
"""

from __future__ import annotations

from html import escape
from typing import Sequence

# Colours with enough contrast on white (WCAG AA for large shapes).
ALLOCATED = "#2f6db5"
BUSY = "#e08a1e"
LINE = "#2f6db5"
GRID = "#d9dde3"
TEXT = "#333"


def _fmt(v: float) -> str:
    """A number for a chart label: three significant digits (0.002 stays 0.002, not 0)."""
    if not v:
        return "0"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" role="img" '
            f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>' + "".join(body) + "</svg>")


def hbars(title: str, rows: Sequence[tuple[str, float, float | None]], unit: str = "GPU-h") -> str:
    """Horizontal bars, one per (label, allocated, busy or None): allocated in blue, busy inside it in orange."""
    if not rows:
        return _svg(600, 40, title, [f'<text x="0" y="24" fill="{TEXT}" font-size="14">no usage in this period</text>'])
    label_w, bar_w, row_h = 150, 350, 26
    top = max(max(r[1] for r in rows), 1e-9)
    height = row_h * len(rows) + 30
    body = [_legend(0, height - 8)]
    for i, (label, allocated, busy) in enumerate(rows):
        y = i * row_h + 4
        w = bar_w * allocated / top
        body.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" fill="{TEXT}" font-size="13">{escape(label[:20])}</text>')
        body.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="18" fill="{ALLOCATED}"/>')
        if busy is not None:
            body.append(f'<rect x="{label_w}" y="{y + 5}" width="{bar_w * busy / top:.1f}" height="8" fill="{BUSY}"/>')
        value = _fmt(allocated) + (f" ({_fmt(busy)} busy)" if busy is not None else "")
        body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" fill="{TEXT}" font-size="12">{value} {unit}</text>')
    return _svg(label_w + bar_w + 150, height, title, body)


def _legend(x: float, y: float) -> str:
    return (f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{ALLOCATED}"/><text x="{x + 14}" y="{y}" font-size="11" fill="{TEXT}">allocated</text>'
            f'<rect x="{x + 80}" y="{y - 9}" width="10" height="10" fill="{BUSY}"/><text x="{x + 94}" y="{y}" font-size="11" fill="{TEXT}">busy (sampled)</text>')


def vbars(title: str, points: Sequence[tuple[str, float]], unit: str = "GPU-h") -> str:
    """Vertical bars over time, one per (label such as 2026-11-01, value); every few labels shown."""
    width, height, left, bottom = 640, 220, 44, 30
    if not points:
        return _svg(width, 40, title, [f'<text x="0" y="24" fill="{TEXT}" font-size="14">nothing in this period</text>'])
    top = max(max(v for _, v in points), 1e-9)
    plot_w, plot_h = width - left - 8, height - bottom - 10
    step = plot_w / len(points)
    body = [f'<line x1="{left}" y1="{10 + plot_h}" x2="{width - 8}" y2="{10 + plot_h}" stroke="{GRID}"/>',
            f'<text x="{left - 4}" y="16" text-anchor="end" font-size="11" fill="{TEXT}">{_fmt(top)}</text>',
            f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end" font-size="11" fill="{TEXT}">0</text>',
            f'<text x="2" y="{10 + plot_h / 2}" font-size="11" fill="{TEXT}">{escape(unit)}</text>']
    every = max(1, len(points) // 6)
    for i, (label, value) in enumerate(points):
        h = plot_h * value / top
        x = left + i * step
        body.append(f'<rect x="{x + step * 0.1:.1f}" y="{10 + plot_h - h:.1f}" width="{step * 0.8:.1f}" height="{h:.1f}" fill="{ALLOCATED}">'
                    f'<title>{escape(label)}: {_fmt(value)} {escape(unit)}</title></rect>')
        if i % every == 0:
            body.append(f'<text x="{x + step / 2:.1f}" y="{height - 10}" text-anchor="middle" font-size="11" fill="{TEXT}">{escape(label[5:] if len(label) == 10 else label)}</text>')
    return _svg(width, height, title, body)


def lines(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]]]], since: float, until: float,
          top: float = 100.0, unit: str = "%") -> str:
    """One line per (name, [(t, value)]) over [since, until] with values 0..top (utilization)."""
    width, height, left, bottom = 640, 200, 40, 24
    plot_w, plot_h = width - left - 110, height - bottom - 10
    span = max(until - since, 1e-9)
    body = [f'<rect x="{left}" y="10" width="{plot_w}" height="{plot_h}" fill="none" stroke="{GRID}"/>',
            f'<text x="{left - 4}" y="16" text-anchor="end" font-size="11" fill="{TEXT}">{_fmt(top)}{escape(unit)}</text>',
            f'<text x="{left - 4}" y="{10 + plot_h}" text-anchor="end" font-size="11" fill="{TEXT}">0</text>',
            f'<text x="{left}" y="{height - 6}" font-size="11" fill="{TEXT}">-{_fmt(span / 60)} min</text>',
            f'<text x="{left + plot_w}" y="{height - 6}" text-anchor="end" font-size="11" fill="{TEXT}">now</text>']
    palette = ["#2f6db5", "#e08a1e", "#3b9b4a", "#b53f6d", "#6b4fb5", "#1e9ba0", "#8a6d1e", "#555"]
    if not any(points for _, points in series):
        body.append(f'<text x="{left + 10}" y="{10 + plot_h / 2}" font-size="13" fill="{TEXT}">no utilization samples '
                    '(declared GPUs have none; NVML samples real ones)</text>')
    for i, (name, points) in enumerate(series):
        colour = palette[i % len(palette)]
        coords = " ".join(f"{left + plot_w * (t - since) / span:.1f},{10 + plot_h - plot_h * min(v, top) / top:.1f}" for t, v in points)
        if coords:
            body.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        body.append(f'<rect x="{left + plot_w + 10}" y="{14 + i * 16}" width="10" height="10" fill="{colour}"/>'
                    f'<text x="{left + plot_w + 24}" y="{23 + i * 16}" font-size="11" fill="{TEXT}">{escape(name[:14])}</text>')
    return _svg(width, height, title, body)


def meter(percent: float | None) -> str:
    """A small utilization bar (or a dash when unknown)."""
    if percent is None:
        return '<span class="muted">n/a</span>'
    p = max(0.0, min(100.0, float(percent)))
    return (f'<svg class="meter" viewBox="0 0 100 10" width="80" height="10" role="img" aria-label="{p:.0f} percent busy">'
            f'<rect width="100" height="10" fill="{GRID}"/><rect width="{p:.0f}" height="10" fill="{LINE}"/></svg> {p:.0f}%')


def psi_bars(title: str, rows: Sequence[tuple[str, float]]) -> str:
    """Horizontal bars of each feature's population stability index, with the usual thresholds (0.1 some
    shift, 0.25 drift) as dashed lines; a bar past 0.25 is orange."""
    if not rows:
        return _svg(600, 40, title, [f'<text x="0" y="24" fill="{TEXT}" font-size="14">no reference complete yet</text>'])
    label_w, bar_w, row_h = 150, 350, 24
    top = max(max(v for _, v in rows), 0.3)
    height = row_h * len(rows) + 24
    body = []
    for limit in (0.1, 0.25):
        x = label_w + bar_w * limit / top
        body.append(f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height - 18}" stroke="{GRID}" stroke-dasharray="4 3"/>')
        body.append(f'<text x="{x:.1f}" y="{height - 4}" text-anchor="middle" fill="{TEXT}" font-size="11">{limit:g}</text>')
    for i, (label, value) in enumerate(rows):
        y = i * row_h + 2
        w = bar_w * value / top
        body.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" fill="{TEXT}" font-size="13">{escape(label[:20])}</text>')
        body.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="16" fill="{BUSY if value > 0.25 else ALLOCATED}"/>')
        body.append(f'<text x="{label_w + w + 6:.1f}" y="{y + 13}" fill="{TEXT}" font-size="12">PSI {_fmt(value)}</text>')
    return _svg(label_w + bar_w + 120, height, title, body)
