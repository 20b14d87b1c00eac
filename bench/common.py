"""What every benchmark section shares: statistics, tables, the results file,
and quieting TensorFlow. Nothing heavy is imported at module level, so
`python -m bench --help` and the unit tests stay fast."""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence


def median(values: Iterable[float]) -> float:
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("median of no values")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def parse_list(text: str, kind: Callable = str) -> List:
    return [kind(x.strip().replace("_", "")) if kind is int else kind(x.strip())
            for x in text.split(",") if x.strip()]


def per_row_per_column(seconds: float, rows: int, columns: int) -> float:
    """Microseconds per cell: how pipelines over different tables compare."""
    return seconds / (rows * columns) * 1e6


def growth(seconds_by_rows: Dict[int, float]) -> List[Dict[str, float]]:
    """Seconds per row at each size over the smallest size's: 1.0 is linear cost."""
    sizes = sorted(seconds_by_rows)
    if not sizes:
        return []
    base = seconds_by_rows[sizes[0]] / sizes[0]
    return [{"rows": n, "us_per_row": seconds_by_rows[n] / n * 1e6,
             "per_row_vs_smallest": (seconds_by_rows[n] / n) / base} for n in sizes]


def verdict(value: Optional[float], target: float, higher_is_better: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        # First column left-aligned (names), the rest right-aligned (numbers).
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def merge_results(path: str, update: Dict[str, Any]) -> Dict[str, Any]:
    """Sections run now replace theirs; other sections' earlier results stay."""
    results: Dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError):
            results = {}
    results.setdefault("sections", {}).update(update.get("sections", {}))
    results.update({k: v for k, v in update.items() if k != "sections"})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, default=str)
    os.replace(tmp, path)
    return results


def write_partial(args, sections: Dict[str, Any]) -> None:
    """Writes sections' results now, so an interrupted benchmark keeps them."""
    merge_results(args.out, {"sections": sections, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


def machine() -> Dict[str, Any]:
    import psutil
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


@contextlib.contextmanager
def native_stderr_to(path: str):
    """TF/XLA C++ logs bypass Python logging; send file descriptor 2 to a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def quiet() -> None:
    """TF, Beam and absl logs off: the tables are the output."""
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("absl", "tensorflow", "apache_beam", "tfx", "ml_metadata", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
