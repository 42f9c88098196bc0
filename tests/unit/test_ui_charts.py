"""The web UI's server-side SVG charts: well-formed, escaped, scaled to their data."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from mlpd.web import ui_charts

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)


def test_bars_are_well_formed_scaled_and_escape_labels():
    svg = ui_charts.hbars("GPU-hours <per> user", [("<script>alert(1)</script>", 2.0, 1.0), ("bob", 1.0, None)])
    root = parse(svg)
    assert "<script>" not in svg and root.find(f"{NS}title").text == "GPU-hours <per> user"
    widths = [float(r.get("width")) for r in root.iter(f"{NS}rect") if r.get("height") == "18"]
    assert widths[0] == 2 * widths[1]  # allocated bars to scale
    assert "1 busy" in svg and "0.002" in ui_charts.hbars("t", [("a", 0.002, None)])


def test_empty_charts_say_so():
    assert "no usage" in ui_charts.hbars("t", [])
    assert "nothing" in ui_charts.vbars("t", [])
    assert "no utilization samples" in ui_charts.lines("t", [("GPU 0", [])], 0, 3600)


def test_lines_place_points_in_time_and_clamp_values():
    root = parse(ui_charts.lines("u", [("GPU 0", [(0, 0), (3600, 150)])], 0, 3600))
    xs_ys = [tuple(map(float, p.split(","))) for p in root.find(f"{NS}polyline").get("points").split()]
    assert xs_ys[0][0] < xs_ys[1][0] and xs_ys[1][1] == 10.0  # 150% is drawn at the top, not above it


def test_meter_is_a_labelled_percentage_or_na():
    assert 'aria-label="42 percent busy"' in ui_charts.meter(42)
    assert "n/a" in ui_charts.meter(None)
