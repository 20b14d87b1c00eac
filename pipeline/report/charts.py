"""The report's plots, written directly as inline SVG (no JavaScript, nothing fetched).

Each function takes plain numbers (lists, dicts) from the report data and
returns one `<svg>` element. Text stays text, so a page stays small and
searchable. The SVG is written by hand rather than by matplotlib: the report's
ten plots cost matplotlib 1.5 to 2 s of CPU on every weekly run (layout and
text measurement), this about a millisecond each.
"""
from __future__ import annotations

import html
import math
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple

NEW, BASELINE, BAYES, GRID = "#1f6feb", "#8b949e", "#2da44e", "#d0d7de"
BAD, OK = "#cf222e", "#2da44e"
INK, MUTED = "#1f2328", "#57606a"
FONT = 12  # px
_CHAR = 0.58 * FONT  # an average glyph's width: enough to lay out margins and legends


def _w(text: str, size: float = FONT) -> float:
    return len(text) * _CHAR * size / FONT


def _f(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _ticks(lo: float, hi: float, count: int = 5) -> List[float]:
    """Round tick values inside [lo, hi] (steps of 1, 2, 2.5 or 5 times a power of ten)."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, int(math.floor(hi / step + 1e-9)) + 1)]


def _finite(values) -> List[float]:
    """The values a plot can place: a diverged run's NaN loss or an infinite ratio are left out."""
    return [v for v in values if v is not None and math.isfinite(v)]


def _placeable(*values) -> bool:
    """Whether every value is a number a plot can place (not None, NaN or infinite)."""
    return len(_finite(values)) == len(values)


def _decimals(step: float) -> int:
    if not (math.isfinite(step) and step > 0):
        return 0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while decimals < 12 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1
    return decimals


def _tick_label(value: float, ticks: Sequence[float], percent: bool = False) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    if percent:
        return f"{value * 100:.{_decimals(step * 100)}f}%"
    return f"{value:.{_decimals(step)}f}".replace("-", "\u2212")


def _limits(values: Sequence[float], margin: float = 0.05, floor: Optional[float] = None) -> Tuple[float, float]:
    values = _finite(values)
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if floor is not None:
        lo = min(lo, floor)
    if hi == lo:
        pad = abs(hi) * 0.05 or 0.05
        return lo - pad, hi + pad
    pad = (hi - lo) * margin
    return (lo if floor is not None and lo == floor else lo - pad), hi + pad


class _Plot:
    """One set of axes in a fixed-size SVG: data coordinates in, SVG elements out."""

    def __init__(self, width: int, height: int, xlim: Tuple[float, float], ylim: Tuple[float, float], *,
                 left: Optional[float] = None, right: float = 14, top: float = 12, bottom: float = 42):
        if left is None:  # room for the widest y tick label and the axis label beside it
            ticks = _ticks(*sorted(ylim))
            left = 36 + max(_w(_tick_label(v, ticks)) for v in ticks)
        self.width, self.height = width, height
        self.x0, self.x1 = left, width - right
        self.y0, self.y1 = height - bottom, top
        self.xlim, self.ylim = xlim, ylim
        self.parts: List[str] = []
        self.legend_items: List[Tuple[str, str, bool, bool]] = []
        self.drawn: List[Tuple[float, float]] = []  # data points in pixels, for placing the legend

    def x(self, v: float) -> float:
        lo, hi = self.xlim
        return self.x0 + (v - lo) / ((hi - lo) or 1.0) * (self.x1 - self.x0)

    def y(self, v: float) -> float:
        lo, hi = self.ylim
        return self.y0 - (v - lo) / ((hi - lo) or 1.0) * (self.y0 - self.y1)

    def text(self, x: float, y: float, text: str, *, anchor: str = "middle", color: str = INK,
             size: float = FONT, bold: bool = False, rotate: float = 0, baseline: str = "central") -> None:
        extra = ' font-weight="bold"' if bold else ""
        if rotate:
            extra += f' transform="rotate({_f(rotate)} {_f(x)} {_f(y)})"'
        self.parts.append(f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}" dominant-baseline="{baseline}" '
                          f'fill="{color}" font-size="{_f(size)}"{extra}>{html.escape(text)}</text>')

    def segment(self, xa: float, ya: float, xb: float, yb: float, color: str, width: float = 1.0,
                dash: bool = False) -> None:
        """A line between two points given in pixels; not drawn where a value could not be placed."""
        if not _placeable(xa, ya, xb, yb):
            return
        style = ' stroke-dasharray="5 3"' if dash else ""
        self.parts.append(f'<line x1="{_f(xa)}" y1="{_f(ya)}" x2="{_f(xb)}" y2="{_f(yb)}" stroke="{color}" '
                          f'stroke-width="{_f(width)}"{style}/>')

    def line(self, xs: Sequence[float], ys: Sequence[float], color: str, width: float = 1.5, dash: bool = False,
             marker: float = 0.0, label: Optional[str] = None) -> None:
        kept = [(a, b) for a, b in zip(xs, ys) if _placeable(a, b)]
        xs, ys = [a for a, _ in kept], [b for _, b in kept]
        pixels = [(self.x(a), self.y(b)) for a, b in kept]
        self.drawn.extend(pixels)
        points = " ".join(f"{_f(a)},{_f(b)}" for a, b in pixels)
        style = ' stroke-dasharray="5 3"' if dash else ""
        self.parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{_f(width)}" '
                          f'stroke-linejoin="round"{style}/>')
        if marker:
            self.markers(xs, ys, color, marker)
        if label is not None:
            self.legend_items.append((label, color, dash, bool(marker)))

    def markers(self, xs: Sequence[float], ys: Sequence[float], color: str, radius: float) -> None:
        for a, b in zip(xs, ys):
            self.circle(self.x(a), self.y(b), radius, color)

    def circle(self, cx: float, cy: float, radius: float, color: str) -> None:
        """A dot at a point given in pixels; not drawn where a value could not be placed."""
        if _placeable(cx, cy):
            self.parts.append(f'<circle cx="{_f(cx)}" cy="{_f(cy)}" r="{_f(radius)}" fill="{color}"/>')

    def rect(self, xa: float, ya: float, xb: float, yb: float, color: str) -> None:
        """A filled rectangle between two corners given in data coordinates; not drawn where a value
        could not be placed."""
        if not _placeable(xa, ya, xb, yb):
            return
        left, right = sorted((self.x(xa), self.x(xb)))
        top, bottom = sorted((self.y(ya), self.y(yb)))
        self.parts.append(f'<rect x="{_f(left)}" y="{_f(top)}" width="{_f(right - left)}" '
                          f'height="{_f(bottom - top)}" fill="{color}"/>')

    def axes(self, xlabel: str, ylabel: str, *, xticks: Optional[Sequence[float]] = None,
             yticks: Optional[Sequence[float]] = None, grid: bool = True,
             xformat: Optional[Callable[[float], str]] = None) -> None:
        """Grid, ticks, labels and the left and bottom spines (drawn under the data)."""
        under: List[str] = []
        xticks = _ticks(*self.xlim) if xticks is None else xticks
        yticks = _ticks(*self.ylim) if yticks is None else yticks
        keep, self.parts = self.parts, []
        for v in xticks:
            px = self.x(v)
            if grid:
                self.segment(px, self.y0, px, self.y1, GRID, 0.6)
            self.segment(px, self.y0, px, self.y0 + 4, INK, 0.8)
            self.text(px, self.y0 + 14, xformat(v) if xformat else _tick_label(v, xticks))
        for v in yticks:
            py = self.y(v)
            if grid:
                self.segment(self.x0, py, self.x1, py, GRID, 0.6)
            self.segment(self.x0 - 4, py, self.x0, py, INK, 0.8)
            self.text(self.x0 - 7, py, _tick_label(v, yticks), anchor="end")
        self.segment(self.x0, self.y0, self.x1, self.y0, INK, 0.8)
        self.segment(self.x0, self.y0, self.x0, self.y1, INK, 0.8)
        if xlabel:
            self.text((self.x0 + self.x1) / 2, self.height - 8, xlabel)
        if ylabel:
            self.text(13, (self.y0 + self.y1) / 2, ylabel, rotate=-90)
        under, self.parts = self.parts, keep
        self.parts[:0] = under

    def legend(self, where: str = "best") -> None:
        """The legend in a corner; "best" takes the corner that covers the fewest data points."""
        if not self.legend_items:
            return
        width = 34 + max(_w(label) for label, *_ in self.legend_items)
        height = 17 * len(self.legend_items)

        def corner(name: str) -> Tuple[float, float]:
            return (self.x0 + 10 if "left" in name else self.x1 - width - 4,
                    self.y1 + 10 if "upper" in name else self.y0 - height + 7)

        def covered(name: str) -> int:
            x, y = corner(name)
            return sum(x - 12 <= a <= x + width + 6 and y - 14 <= b <= y + height for a, b in self.drawn)

        if where == "best":
            where = min(("upper right", "upper left", "lower right", "lower left"), key=covered)
        x, y = corner(where)
        for label, color, dash, marker in self.legend_items:
            self.segment(x, y, x + 22, y, color, 1.8, dash)
            if marker:
                self.parts.append(f'<circle cx="{_f(x + 11)}" cy="{_f(y)}" r="3" fill="{color}"/>')
            self.text(x + 28, y, label, anchor="start")
            y += 17

    def svg(self) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-family="Helvetica,Arial,sans-serif">'
                f'<rect width="100%" height="100%" fill="#fff"/>{"".join(self.parts)}</svg>')


def roc(curves: Dict[str, dict]) -> str:
    """ROC curves, {label: {"fpr": [...], "tpr": [...], "auc": float, "role": "new"|"baseline"}}."""
    plot = _Plot(460, 420, (0.0, 1.0), (0.0, 1.0))
    plot.axes("false positive rate", "true positive rate")
    plot.line([0, 1], [0, 1], GRID, 1, dash=True)
    for label, curve in curves.items():
        plot.line(curve["fpr"], curve["tpr"], NEW if curve.get("role") == "new" else BASELINE, 1.8,
                  label=f"{label} (AUC {curve['auc']:.4f})")
    plot.legend("lower right")
    return plot.svg()


def calibration(series: Dict[str, dict]) -> str:
    """Reliability diagram: per equal-count bin, mean predicted vs observed click rate
    (with its 95% binomial interval). {label: {"bins": [...], "role": ...}}."""
    drawn = []
    top = 0.0
    for label, data in series.items():
        bins = data["bins"]
        if not bins:
            continue
        x = [b["mean_prediction"] for b in bins]
        y = [b["mean_label"] for b in bins]
        half = [1.96 * (max(b["mean_label"] * (1 - b["mean_label"]), 1e-12) / max(b["count"], 1)) ** 0.5
                for b in bins]
        drawn.append((label, NEW if data.get("role") == "new" else BASELINE, x, y, half))
        top = max([top] + _finite(x) + _finite(a + h for a, h in zip(y, half)))
    top = min(1.0, top * 1.08 or 1.0)
    plot = _Plot(460, 420, (0.0, top), (0.0, top))
    plot.axes("mean predicted click probability", "observed click rate")
    for label, color, x, y, half in drawn:
        for a, b, h in zip(x, y, half):
            px, low, high = plot.x(a), plot.y(max(0.0, b - h)), plot.y(min(top, b + h))
            plot.segment(px, low, px, high, color, 1.2)
            plot.segment(px - 2.5, low, px + 2.5, low, color, 1.2)
            plot.segment(px - 2.5, high, px + 2.5, high, color, 1.2)
        plot.line(x, y, color, 1.4, marker=3.5, label=label)
    plot.line([0, top], [0, top], GRID, 1, dash=True, label="perfectly calibrated")
    plot.legend("upper left")
    return plot.svg()


def curves(series: Dict[str, List[Tuple[float, float]]], ylabel: str) -> str:
    """Training curves: {name: [(step, value), ...]}."""
    shown = {name: points for name, points in series.items() if points}
    xs = [s for points in shown.values() for s, _ in points]
    ys = [v for points in shown.values() for _, v in points]
    plot = _Plot(500, 330, _limits(xs), _limits(ys))
    plot.axes("training step", ylabel)
    colors = [NEW, "#bf8700", BASELINE, BAYES]
    for i, (name, points) in enumerate(shown.items()):
        steps, values = zip(*points)
        plot.line(steps, values, colors[i % len(colors)], 1.5, marker=3 if len(points) < 12 else 0, label=name)
    plot.legend()
    return plot.svg()


def paired_interval(diff: float, low: float, high: float, max_auc_drop: float, blocked: bool) -> str:
    """The AUC difference with its 95% interval against the gate's line at -max_auc_drop."""
    span = max([abs(v) for v in _finite((low, high, diff))] + [max_auc_drop]) * 1.35 or 0.01
    plot = _Plot(560, 160, (-span, span), (-1.0, 1.0), left=16, top=8)
    plot.axes("AUC(new) \u2212 AUC(baseline), 95% CI on the same rows", "", yticks=[], grid=False)
    color = BAD if blocked else OK
    plot.segment(plot.x(0), plot.y0, plot.x(0), plot.y1, GRID, 1)
    gate = plot.x(-max_auc_drop)
    plot.segment(gate, plot.y0, gate, plot.y1, BAD, 1.2, dash=True)
    note = f"-max_auc_drop ({-max_auc_drop:+.3f})"
    room = gate - 4 - _w(note, 11) >= 0  # else it goes right of the line, not off the picture
    plot.text(gate - 4 if room else gate + 4, plot.y1 + 8, note, anchor="end" if room else "start", color=BAD,
              size=11)
    y = plot.y(0)
    left, right = plot.x(low), plot.x(high)
    plot.segment(left, y, right, y, color, 2)
    for end in (left, right):
        plot.segment(end, y - 5, end, y + 5, color, 2)
    plot.circle(plot.x(diff), y, 4.5, color)
    return plot.svg()


def horizontal_bars(labels: Sequence[str], values: Sequence[float], xlabel: str,
                    threshold: Optional[Sequence[float]] = None, percent: bool = False) -> str:
    """One bar per label, the first on top; bars past their threshold in red."""
    thresholds = list(threshold) if threshold is not None else [None] * len(values)
    reach = _finite(list(values) + thresholds)
    lo, hi = min([0.0] + reach), max([0.0] + reach)
    hi = hi + (hi - lo) * 0.05 or 1.0
    left = 24 + max([_w(str(label)) for label in labels] or [0])
    rows = max(len(labels), 1)
    plot = _Plot(560, int(90 + 22 * len(labels)), (lo, hi), (rows - 0.4, -0.6), left=left)
    fmt = (lambda v: _tick_label(v, ticks, percent=True)) if percent else None
    ticks = _ticks(lo, hi)
    plot.axes(xlabel, "", xticks=ticks, yticks=[], xformat=fmt)
    for i, (label, value, limit) in enumerate(zip(labels, values, thresholds)):
        over = limit is not None and value > limit
        plot.rect(0.0, i - 0.35, value, i + 0.35, BAD if over else NEW)
        if limit is not None:
            plot.segment(plot.x(limit), plot.y(i - 0.45), plot.x(limit), plot.y(i + 0.45), BAD, 1.5)
        plot.segment(plot.x0 - 4, plot.y(i), plot.x0, plot.y(i), INK, 0.8)
        plot.text(plot.x0 - 7, plot.y(i), str(label), anchor="end")
    return plot.svg()


def trend(points: Dict[str, List[Tuple[str, Optional[float]]]], ylabel: str,
          marks: Optional[Dict[str, str]] = None) -> str:
    """Values per version or week in order: {series: [(x label, value), ...]}; `marks`
    colours an x label (e.g. the serving version)."""
    labels: List[str] = []
    for series in points.values():
        for x, _ in series:
            if x not in labels:
                labels.append(x)
    index = {x: i for i, x in enumerate(labels)}
    values = [v for series in points.values() for _, v in series if v is not None]
    slanted = len(labels) > 6
    bottom = 30 + (max([_w(x) for x in labels] or [0]) * 0.5 + 8 if slanted else 14)
    plot = _Plot(700, int(300 + bottom - 42), (-0.5, max(len(labels), 1) - 0.5), _limits(values), bottom=bottom)
    plot.axes("", ylabel, xticks=[])
    for x in labels:
        px = plot.x(index[x])
        plot.segment(px, plot.y0, px, plot.y1, GRID, 0.6)
        plot.segment(px, plot.y0, px, plot.y0 + 4, INK, 0.8)
        color, bold = (marks[x], True) if marks and x in marks else (INK, False)
        if slanted:
            plot.text(px + 3, plot.y0 + 10, x, anchor="end", color=color, bold=bold, rotate=-30, baseline="hanging")
        else:
            plot.text(px, plot.y0 + 14, x, color=color, bold=bold)
    colors = [NEW, BASELINE, BAYES, "#bf8700"]
    drawn = 0
    for name, series in points.items():
        shown = [(index[x], v) for x, v in series if v is not None]
        if shown:
            xs, ys = zip(*shown)
            plot.line(xs, ys, colors[drawn % len(colors)], 1.5, marker=4, label=name)
            drawn += 1
    plot.legend()
    return plot.svg()


def safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower()
