"""The report's plots: well-formed SVG that shows the numbers it is given."""
import math
import re
import xml.etree.ElementTree as ET

import pytest

from deepfm_tfx.pipeline.report import charts

SVG = "{http://www.w3.org/2000/svg}"


def _tree(svg_text):
    root = ET.fromstring(svg_text)
    assert root.tag == SVG + "svg"
    return root


def _texts(root):
    return [t.text for t in root.iter(SVG + "text")]


def _bars(root):
    return [r for r in root.iter(SVG + "rect") if r.get("width") != "100%"]


def test_bars_are_as_long_as_their_values_and_red_past_their_threshold():
    root = _tree(charts.horizontal_bars(["C1", "C2 <&>", "C3"], [0.5, 2.0, 1.0], "distance / threshold",
                                        threshold=[1.0, 1.0, None]))
    bars = _bars(root)
    assert [b.get("fill") for b in bars] == [charts.NEW, charts.BAD, charts.NEW]
    widths = [float(b.get("width")) for b in bars]
    assert widths[1] == pytest.approx(4 * widths[0], rel=0.01) and widths[2] == pytest.approx(2 * widths[0], rel=0.01)
    tops = [float(b.get("y")) for b in bars]
    assert tops == sorted(tops)  # the first label on top
    texts = _texts(root)
    assert {"C1", "C2 <&>", "C3", "distance / threshold"} <= set(texts)  # escaped in the SVG, text again here


def test_percent_bars_label_their_axis_in_percent():
    texts = _texts(_tree(charts.horizontal_bars(["I1", "I2"], [0.12, 0.4], "missing", percent=True)))
    ticks = [t for t in texts if t.endswith("%")]
    assert "0%" in ticks and "40%" in ticks and len(ticks) >= 3


def test_line_plots_carry_their_legends_and_round_ticks():
    roc = _tree(charts.roc({"new model": {"fpr": [0, 0.2, 1], "tpr": [0, 0.7, 1], "auc": 0.75, "role": "new"},
                            "baseline": {"fpr": [0, 0.3, 1], "tpr": [0, 0.6, 1], "auc": 0.65}}))
    texts = _texts(roc)
    assert "new model (AUC 0.7500)" in texts and "baseline (AUC 0.6500)" in texts
    assert ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"] == [t for t in texts if t.startswith(("0.", "1."))][:6]
    lines = [p for p in roc.iter(SVG + "polyline") if p.get("stroke") in (charts.NEW, charts.BASELINE)]
    assert len(lines) == 2 and len(lines[0].get("points").split()) == 3

    calibration = _tree(charts.calibration({"new": {"bins": [
        {"mean_prediction": 0.1, "mean_label": 0.12, "count": 100},
        {"mean_prediction": 0.3, "mean_label": 0.28, "count": 100}], "role": "new"}}))
    assert {"new", "perfectly calibrated"} <= set(_texts(calibration))

    curves = _tree(charts.curves({"loss": [(1, 0.7), (10, 0.5), (20, 0.45)], "empty": []}, "loss"))
    assert "loss" in _texts(curves) and "empty" not in _texts(curves)


def test_the_paired_interval_marks_the_gate_and_a_blocked_change():
    root = _tree(charts.paired_interval(-0.02, -0.03, -0.01, 0.005, blocked=True))
    assert "-max_auc_drop (-0.005)" in _texts(root)
    assert [c.get("fill") for c in root.iter(SVG + "circle")] == [charts.BAD]


def test_a_trend_marks_the_serving_version_and_skips_missing_values():
    root = _tree(charts.trend({"AUC": [("v1", 0.7), ("v2", None), ("v3", 0.72)]}, "AUC", marks={"v3": charts.OK}))
    marked = [t for t in root.iter(SVG + "text") if t.text == "v3"]
    assert marked[0].get("fill") == charts.OK and marked[0].get("font-weight") == "bold"
    [line] = [p for p in root.iter(SVG + "polyline") if p.get("stroke") == charts.NEW]
    assert len(line.get("points").split()) == 2
    many = _tree(charts.trend({"AUC": [(f"2026-W{w:02d}", 0.7) for w in range(10)]}, "AUC"))
    assert any("rotate" in (t.get("transform") or "") for t in many.iter(SVG + "text"))


def test_values_a_plot_cannot_place_are_left_out_not_drawn_as_nan():
    nan, inf = float("nan"), float("inf")
    drawn = [
        charts.curves({"loss": [(1, 0.7), (2, nan), (3, inf), (4, 0.5)]}, "loss"),
        charts.horizontal_bars(["C1", "C2"], [nan, 0.5], "drift", threshold=[inf, 1.0]),
        charts.trend({"AUC": [("v1", nan), ("v2", 0.7)]}, "AUC"),
        charts.paired_interval(nan, nan, nan, 0.01, blocked=False),
        charts.curves({"loss": [(1, nan)]}, "loss"),
        # a diverged model's predictions
        charts.calibration({"new": {"bins": [{"mean_prediction": nan, "mean_label": 0.1, "count": 50},
                                             {"mean_prediction": 0.3, "mean_label": 0.25, "count": 50}]}}),
    ]
    geometry = ("x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height")
    for svg_text in drawn:
        for element in _tree(svg_text).iter():
            numbers = [element.get(a) for a in geometry if element.get(a) not in (None, "100%")]
            numbers += re.split(r"[ ,]", element.get("points", "").strip()) if element.get("points") else []
            assert all(math.isfinite(float(n)) for n in numbers), element.attrib
    [line] = [p for p in _tree(drawn[0]).iter(SVG + "polyline") if p.get("stroke") == charts.NEW]
    assert len(line.get("points").split()) == 2
