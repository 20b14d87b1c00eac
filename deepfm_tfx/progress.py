"""Progress of the running component: counted where the work happens, drawn by the console.

Code that does the work adds to a tally, a running total kept for this
process: ExampleGen's writer adds the rows of each block it writes
and each file it finishes (`INGEST`), the console counts the TFRecord rows Beam reads (`READS`,
StatisticsGen, Transform, Evaluator; Beam's local worker processes count
theirs into files the console adds up), the trainers' callback and hook set
the step, loss and AUC (`TRAINING`). Under `deepfm-tfx run` every component
runs in the console's process (LocalDagRunner), so its ticker reads these
tallies and draws them. On Kubeflow or Airflow nobody reads them, so a tally
also logs a plain line, at most every DEEPFM_TFX_PROGRESS_SECONDS seconds
(default 10), to the step's log; the console turns that logging off.

No TensorFlow or Beam here: the console imports this before either.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

LOGGER = logging.getLogger("deepfm_tfx.progress")
LOGGER.setLevel(logging.INFO)  # on wherever a root handler takes INFO (Kubeflow, Airflow task logs)
INTERVAL_ENV = "DEEPFM_TFX_PROGRESS_SECONDS"
# Called with a tally after each update, in the updating thread (the console's plain lines).
LISTENERS: List[Callable[["Tally"], None]] = []
DEFAULT_INTERVAL = 10.0


def interval() -> float:
    """Seconds between progress lines written to a log (not a terminal)."""
    try:
        seconds = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return seconds if seconds > 0 else DEFAULT_INTERVAL


# --- formatting ---------------------------------------------------------------------------------

def count(n: float) -> str:
    """12,345 up to a million, then 1.23M: a row count that stays readable."""
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    return f"{int(n):,}"


def rate(per_second: float) -> str:
    """A throughput: 950, 12.3k, 1.20M."""
    if per_second >= 1e6:
        return f"{per_second / 1e6:.2f}M"
    if per_second >= 1e4:
        return f"{per_second / 1e3:.1f}k"
    if per_second >= 1e3:
        return f"{per_second / 1e3:.2f}k"
    return f"{per_second:.0f}"


def duration(seconds: float) -> str:
    """42s, 3:05, 1:02:03: elapsed times and ETAs."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}:{seconds:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _metric(value: Optional[float]) -> Optional[str]:
    return None if value is None or not math.isfinite(value) else f"{value:.4f}"


# --- tallies ------------------------------------------------------------------------------------

class Tally:
    """A running total for this process; `describe()` says it in a few words."""

    label = ""

    def __init__(self):
        self._lock = threading.Lock()
        self._logged_at = None
        self.reset()

    def reset(self) -> None:
        """Zero, with the clock starting now (the console calls this as a component starts)."""
        with self._lock:
            self.values: Dict[str, float] = {}
            self.reset_at = time.monotonic()
            # Per key, (time, value) at its first and its latest change: rates leave start-up out.
            self.first: Dict[str, Tuple[float, float]] = {}
            self.last: Dict[str, Tuple[float, float]] = {}
            self.updated_at: Optional[float] = None
            self._logged_at = None

    def _changed(self, key: str, value: float, now: float) -> None:
        if self.values.get(key) != value or key not in self.first:
            self.first.setdefault(key, (now, value))
            self.last[key] = (now, value)
        self.values[key] = value
        self.updated_at = now

    def add(self, **amounts: float) -> None:
        now = time.monotonic()
        with self._lock:
            for key, amount in amounts.items():
                self._changed(key, self.values.get(key, 0) + amount, now)
        self._updated()

    def set(self, **values: float) -> None:
        now = time.monotonic()
        with self._lock:
            for key, value in values.items():
                self._changed(key, value, now)
        self._updated()

    def _updated(self) -> None:
        self._maybe_log()
        for listener in list(LISTENERS):
            listener(self)

    def per_second(self, key: str, since_reset: bool = True, min_seconds: float = 0.5) -> Optional[float]:
        """`key`'s rate while it was changing, once it changed over `min_seconds`; with one change
        only, since reset (if `since_reset`)."""
        with self._lock:
            if key not in self.last:
                return None
            (t0, v0), (t1, v1) = self.first[key], self.last[key]
        if t1 - t0 >= min_seconds and v1 > v0:
            return (v1 - v0) / (t1 - t0)
        return v1 / (t1 - self.reset_at) if since_reset and t1 > self.reset_at and v1 > 0 else None

    def describe(self, now: Optional[float] = None, final: bool = False) -> Optional[str]:
        """What it counted, in a few words; `final` for the line that closes the component."""
        raise NotImplementedError

    def _maybe_log(self) -> None:
        # For logs nobody draws (Kubeflow, Airflow); the console sets LOGGER above INFO.
        if not LOGGER.isEnabledFor(logging.INFO):
            return
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < interval():
            return
        self._logged_at = now
        text = self.describe(now)
        if text:
            LOGGER.info("%s: %s", self.label, text)


class Rows(Tally):
    """Rows read (and files, where a component reports them)."""

    def __init__(self, label: str):
        self.label = label
        super().__init__()

    def describe(self, now: Optional[float] = None, final: bool = False) -> Optional[str]:
        rows = self.values.get("rows")
        if rows is None:
            return None
        parts = [f"{count(rows)} rows read"]
        files = self.values.get("files")
        if files:
            parts.append(f"{int(files)} file{'s' if files != 1 else ''} done")
        per_second = self.per_second("rows")
        if per_second and per_second >= 1:
            parts.append(f"{rate(per_second)} rows/s")
        return " · ".join(parts)


class Training(Tally):
    """step N of M, examples/s, ETA, loss and AUC; set by trainer_modules.progress."""

    label = "Trainer"

    def start(self, steps: int, batch_size: int) -> None:
        self.reset()
        with self._lock:
            self.values.update(step=0, steps=steps, batch_size=batch_size)
            self.updated_at = time.monotonic()  # shown from now on; the step rate from the first step on
        self.phase = "starting"

    def reset(self) -> None:
        super().reset()
        self.phase = ""
        self.resumed_from = 0
        self.shares: Dict[str, float] = {}

    def resumed(self, step: int) -> None:
        """This run continues a killed one's checkpoint at `step`."""
        self.resumed_from = int(step)
        LOGGER.info("Trainer: resuming from the checkpoint at step %d", step)

    def cluster_shares(self, shares: Dict[str, float]) -> None:
        """Each cluster task's share of the steps done so far, e.g. {"chief": 0.34, "worker0": 0.66}."""
        self.shares = dict(shares)

    def update(self, step: int, loss: Optional[float] = None, auc: Optional[float] = None) -> None:
        values = {"step": step}
        if loss is not None:
            values["loss"] = float(loss)
        if auc is not None:
            values["auc"] = float(auc)
        self.phase = "training"
        self.set(**values)

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        self.updated_at = time.monotonic()

    def describe(self, now: Optional[float] = None, final: bool = False) -> Optional[str]:
        now = time.monotonic() if now is None else now
        values = dict(self.values)
        if "steps" not in values:
            return None
        step, steps = int(values.get("step", 0)), int(values["steps"])
        parts = [f"step {step}/{steps}"]
        if self.resumed_from:
            parts.append(f"resumed from step {self.resumed_from}")
        # Measured between steps only: the first one waits for tracing.
        # Steps are counted one by one, so a short span already gives a fair rate (a small run trains in a second).
        steps_per_second = self.per_second("step", since_reset=False, min_seconds=0.05) if step else None
        if steps_per_second:
            per_second = steps_per_second * values.get('batch_size', 0)
            parts.append(f"{rate(per_second)} ex/s")
            if self.shares:  # the whole cluster's rate, then each task's part of it
                parts.append(" ".join(f"{task} {rate(per_second * share)}" for task, share in self.shares.items()))
            if step < steps:
                since_last = now - self.last["step"][0]
                parts.append(f"ETA {duration(max((steps - step) / steps_per_second - since_last, 0))}")
        for name in ("loss", "auc"):
            if (text := _metric(values.get(name))) is not None:
                parts.append(f"{name} {text}")
        if self.phase and self.phase != "training" and not final:
            parts.append(self.phase)
        return " · ".join(parts)


INGEST = Rows("SpecCsvExampleGen")
READS = Rows("Beam TFRecord reads")
TRAINING = Training()
# The console draws the most recently updated of these for the running component.
TALLIES: List[Tally] = [TRAINING, INGEST, READS]


def reset_all() -> None:
    for tally in TALLIES:
        tally.reset()


def current(since: float) -> Optional[Tally]:
    """The tally updated most recently after `since` (a time.monotonic()), if any."""
    fresh = [t for t in TALLIES if t.updated_at is not None and t.updated_at >= since]
    return max(fresh, key=lambda t: t.updated_at) if fresh else None


# --- Beam's TFRecord reads, counted -----------------------------------------------------------------

class _ReadCounter:
    """Records read, one cell per reading thread: no lock on a path taken per row."""

    def __init__(self):
        self._local = threading.local()
        self._cells = []

    def inc(self) -> None:
        cell = getattr(self._local, "cell", None)
        if cell is None:
            cell = self._local.cell = [0]
            self._cells.append(cell)
        cell[0] += 1

    def total(self) -> int:
        return sum(cell[0] for cell in list(self._cells))


BEAM_READS = _ReadCounter()
# A folder where Beam's local worker processes (components/beam_workers.py) each keep their
# count, in a file named by their pid, for the console to add to this process's.
WORKER_READS_ENV = "DEEPFM_TFX_WORKER_READS"


def count_beam_reads() -> bool:
    """Counts every TFRecord record Beam reads in this process into BEAM_READS.

    StatisticsGen, Transform and the Evaluator read their examples through
    tfx_bsl, which reads with Beam's ReadFromTFRecord; DirectRunner's Beam
    metrics only arrive when a pipeline ends, so this wraps the one function
    that reads a record. Beam 2.59's private name: if it moves, these
    components show their elapsed time only (tests/test_progress.py notices).
    """
    try:
        from apache_beam.io import tfrecordio
        original = tfrecordio._TFRecordUtil.__dict__["read_record"].__func__
    except (ImportError, AttributeError, KeyError):
        return False
    if getattr(original, "counted", False):
        return True

    def read_record(cls, file_handle):
        record = original(cls, file_handle)
        if record is not None:
            BEAM_READS.inc()
        return record
    read_record.counted = True
    tfrecordio._TFRecordUtil.read_record = classmethod(read_record)
    return True


def worker_reads() -> int:
    """What the worker processes counted into WORKER_READS_ENV's folder, ended ones included."""
    folder = os.environ.get(WORKER_READS_ENV)
    try:
        names = [name for name in os.listdir(folder) if name.isdigit()] if folder else []
    except OSError:
        return 0
    total = 0
    for name in names:
        try:
            with open(os.path.join(folder, name)) as f:
                total += int(f.read() or 0)
        except (OSError, ValueError):
            pass
    return total


def beam_reads() -> int:
    """Every record Beam has read for this run: in this process and in its local worker processes."""
    return BEAM_READS.total() + worker_reads()


def publish_worker_reads(every: float = 0.5) -> Callable[[], None]:
    """In a worker process, when the console asked for it: counts its reads and writes the count
    to its file every `every` seconds. Returns the last write, for the worker's exit."""
    folder = os.environ.get(WORKER_READS_ENV)
    if not folder or not os.path.isdir(folder) or not count_beam_reads():
        return lambda: None
    path = os.path.join(folder, str(os.getpid()))

    def write() -> None:
        try:
            with open(path + ".tmp", "w") as f:
                f.write(str(BEAM_READS.total()))
            os.replace(path + ".tmp", path)  # never a half-written number
        except OSError:
            pass

    def loop() -> None:
        while True:
            time.sleep(every)
            write()
    threading.Thread(target=loop, name="deepfm-tfx-worker-reads", daemon=True).start()
    return write
