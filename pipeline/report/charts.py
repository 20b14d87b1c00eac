"""The report's plots: matplotlib figures as inline SVG (no JavaScript, nothing fetched).

Each function takes plain numbers (lists, dicts) from the report data and
returns one `<svg>` element. Text stays text (`svg.fonttype: none`), so a
page stays small and searchable; every figure gets its own id salt, so the
clip-path ids of several inline SVGs never collide.
"""
from __future__ import annotations

import io
import itertools
import re
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

NEW, BASELINE, BAYES, GRID = "#1f6feb", "#8b949e", "#2da44e", "#d0d7de"
BAD, OK = "#cf222e", "#2da44e"
_salt = itertools.count()


def _figure(width: float = 5.2, height: float = 3.6):
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height), dpi=100)
    return figure, figure.add_subplot()


def _style(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, color=GRID, linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def svg(figure) -> str:
    """The figure as one inline <svg> element."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    FigureCanvasSVG(figure)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"deepfm-tfx-{next(_salt)}",
                                "font.size": 9}), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout's "not compatible" notes
        figure.tight_layout()  # half the time of constrained layout, which reruns the drawing
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def roc(curves: Dict[str, dict]) -> str:
    """ROC curves, {label: {"fpr": [...], "tpr": [...], "auc": float, "role": "new"|"baseline"}}."""
    figure, ax = _figure(4.6, 4.2)
    ax.plot([0, 1], [0, 1], color=GRID, linestyle="--", linewidth=1)
    for label, curve in curves.items():
        color = NEW if curve.get("role") == "new" else BASELINE
        ax.plot(curve["fpr"], curve["tpr"], color=color, linewidth=1.8,
                label=f"{label} (AUC {curve['auc']:.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right", frameon=False)
    _style(ax, "false positive rate", "true positive rate")
    return svg(figure)


def calibration(series: Dict[str, dict]) -> str:
    """Reliability diagram: per equal-count bin, mean predicted vs observed click rate
    (with its 95% binomial interval). {label: {"bins": [...], "role": ...}}."""
    figure, ax = _figure(4.6, 4.2)
    top = 0.0
    for label, data in series.items():
        bins = data["bins"]
        if not bins:
            continue
        color = NEW if data.get("role") == "new" else BASELINE
        x = [b["mean_prediction"] for b in bins]
        y = [b["mean_label"] for b in bins]
        half = [1.96 * (max(b["mean_label"] * (1 - b["mean_label"]), 1e-12) / max(b["count"], 1)) ** 0.5
                for b in bins]
        ax.errorbar(x, y, yerr=half, color=color, marker="o", markersize=3.5, linewidth=1.4, capsize=2,
                    label=label)
        top = max(top, max(x), max(a + h for a, h in zip(y, half)))
    top = min(1.0, top * 1.08 or 1.0)
    ax.plot([0, top], [0, top], color=GRID, linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.legend(loc="upper left", frameon=False)
    _style(ax, "mean predicted click probability", "observed click rate")
    return svg(figure)


def curves(series: Dict[str, List[Tuple[float, float]]], ylabel: str) -> str:
    """Training curves: {name: [(step, value), ...]}."""
    figure, ax = _figure(5.0, 3.3)
    colors = itertools.cycle([NEW, "#bf8700", BASELINE, BAYES])
    for name, points in series.items():
        if not points:
            continue
        steps, values = zip(*points)
        ax.plot(steps, values, color=next(colors), marker="o" if len(points) < 12 else None, markersize=3,
                linewidth=1.5, label=name)
    ax.legend(frameon=False)
    _style(ax, "training step", ylabel)
    return svg(figure)


def paired_interval(diff: float, low: float, high: float, max_auc_drop: float, blocked: bool) -> str:
    """The AUC difference with its 95% interval against the gate's line at -max_auc_drop."""
    figure, ax = _figure(5.6, 1.6)
    color = BAD if blocked else OK
    ax.axvline(0, color=GRID, linewidth=1)
    ax.axvline(-max_auc_drop, color=BAD, linestyle="--", linewidth=1.2)
    ax.annotate(f"-max_auc_drop ({-max_auc_drop:+.3f})", (-max_auc_drop, 0.92), xycoords=("data", "axes fraction"),
                ha="right", va="top", color=BAD, fontsize=8, xytext=(-3, 0), textcoords="offset points")
    ax.errorbar([diff], [0], xerr=[[diff - low], [high - diff]], fmt="o", color=color, capsize=5, linewidth=2)
    span = max(abs(low), abs(high), max_auc_drop) * 1.35 or 0.01
    ax.set_xlim(-span, span)
    ax.set_ylim(-1, 1)
    ax.set_yticks([])
    _style(ax, "AUC(new) - AUC(baseline), 95% CI on the same rows", "")
    ax.grid(False)
    return svg(figure)


def horizontal_bars(labels: Sequence[str], values: Sequence[float], xlabel: str,
                    threshold: Optional[Sequence[float]] = None, percent: bool = False) -> str:
    """One bar per label; bars past their threshold in red."""
    height = 0.9 + 0.22 * len(labels)
    figure, ax = _figure(5.6, height)
    over = [threshold is not None and t is not None and v > t for v, t in
            zip(values, threshold or [None] * len(values))]
    ax.barh(range(len(labels)), values, color=[BAD if o else NEW for o in over], height=0.7)
    if threshold is not None:
        for i, t in enumerate(threshold):
            if t is not None:
                ax.plot([t, t], [i - 0.45, i + 0.45], color=BAD, linewidth=1.5)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    if percent:
        from matplotlib.ticker import PercentFormatter
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    _style(ax, xlabel, "")
    return svg(figure)


def trend(points: Dict[str, List[Tuple[str, Optional[float]]]], ylabel: str,
          marks: Optional[Dict[str, str]] = None) -> str:
    """Values per version or week in order: {series: [(x label, value), ...]}; `marks`
    colours an x label's tick (e.g. the serving version)."""
    figure, ax = _figure(7.0, 3.2)
    labels: List[str] = []
    for series in points.values():
        for x, _ in series:
            if x not in labels:
                labels.append(x)
    index = {x: i for i, x in enumerate(labels)}
    colors = itertools.cycle([NEW, BASELINE, BAYES, "#bf8700"])
    for name, series in points.items():
        shown = [(index[x], v) for x, v in series if v is not None]
        if shown:
            xs, ys = zip(*shown)
            ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.5, color=next(colors), label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, ha="right"
                  if len(labels) > 6 else "center")
    for tick, x in zip(ax.get_xticklabels(), labels):
        if marks and x in marks:
            tick.set_color(marks[x])
            tick.set_fontweight("bold")
    ax.legend(frameon=False)
    _style(ax, "", ylabel)
    return svg(figure)


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower()
