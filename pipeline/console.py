"""Terminal output: TF/Beam/absl noise off; live progress per component instead.

TFX's LocalDagRunner logs "Component X is running/finished" through absl.
`ComponentProgress` turns those into one line per component and, while one
runs, shows its elapsed time and what deepfm_tfx.progress counts for it:
rows read (ExampleGen, and every Beam component reading TFRecords), or the
Trainer's step, examples/s, ETA, loss and AUC. On a terminal that is one
line redrawn in place (rich); anywhere else (CI, Airflow, a log file) a
plain line every `every` seconds, so a log shows a slow run is not stuck.
"""
import atexit
import logging
import os
import re
import sys
import threading
import time
import warnings
from typing import Optional

from deepfm_tfx import progress

_RUNNING = re.compile(r"Component (\S+) is running")
_FINISHED = re.compile(r"Component (\S+) is finished")
_CACHED = re.compile(r"A cached execution \d+ is used")
NAME_WIDTH = 30


def silence_before_imports(verbose: bool) -> None:
    """Must run before TensorFlow is imported to silence its C++ logging."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        # ml-metadata's C++ logs a failed MySQL connection at ERROR; our message says it in one line.
        os.environ.setdefault("GLOG_minloglevel", "3")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by Beam worker processes
        warnings.filterwarnings("ignore")


# --- outputs --------------------------------------------------------------------------------------

def _line(mark: str, name: str, when: str, detail: Optional[str]) -> str:
    return f"  {mark} {name:<{NAME_WIDTH}} {when:>7}" + (f"  {detail}" if detail else "")


class PlainOutput:
    """Lines only, for logs: a redrawn line would be garbage there."""

    def __init__(self, stream, every: float):
        self.stream, self.every = stream, every

    def started(self, name: str) -> None:
        self.print(f"  ▶ {name} ...")

    def running(self, name: str, elapsed: float, detail: Optional[str]) -> None:
        self.print(_line("…", name, progress.duration(elapsed), detail))

    def print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def stop(self) -> None:
        pass


class LiveOutput:
    """One line redrawn in place on a terminal (rich); finished components print above it."""

    every = 0.25

    def __init__(self, stream, status):
        from rich.console import Console
        self.console = Console(file=stream, highlight=False, markup=False, emoji=False)
        self.status = status  # () -> (name, elapsed, detail) or None
        self.live = None
        self.spinner = None

    def _render(self):
        from rich.text import Text
        status = self.status()
        if status is None:
            return Text("")
        name, elapsed, detail = status
        text = f"{name}  {progress.duration(elapsed)}" + (f"  {detail}" if detail else "")
        self.spinner.update(text=Text(text, no_wrap=True, overflow="ellipsis"))
        return self.spinner

    def started(self, name: str) -> None:
        from rich.live import Live
        from rich.spinner import Spinner
        self.stop()
        self.spinner = Spinner("dots", style="cyan")
        # Live redirects stdout and stderr while it runs, so stray prints land above the line.
        self.live = Live(console=self.console, get_renderable=self._render, refresh_per_second=1 / self.every,
                         transient=True)
        self.live.start()

    def running(self, name: str, elapsed: float, detail: Optional[str]) -> None:
        pass  # Live's own thread redraws

    def print(self, line: str) -> None:
        self.stop()
        self.console.print(line, soft_wrap=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


class NoOutput:
    """--quiet."""

    every = None

    def started(self, name: str) -> None:
        pass

    def running(self, name: str, elapsed: float, detail: Optional[str]) -> None:
        pass

    def print(self, line: str) -> None:
        pass

    def stop(self) -> None:
        pass


# --- the handler ----------------------------------------------------------------------------------

class ComponentProgress(logging.Handler):
    """Turns TFX's LocalDagRunner log lines into per-component progress."""

    def __init__(self, stream=None, live: Optional[bool] = None, every: Optional[float] = None,
                 quiet: bool = False):
        super().__init__(logging.INFO)
        self.stream = stream or sys.stdout
        self.started = {}
        self.cached = set()
        self.current = None
        self._guard = threading.RLock()
        self._reads_base = 0
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)()) and os.environ.get("TERM") != "dumb"
        if quiet:
            self.output = NoOutput()
        elif live:
            self.output = LiveOutput(self.stream, self.status)
        else:
            self.output = PlainOutput(self.stream, every or progress.interval())
        self._ticker = None
        self._stopped = threading.Event()
        self._last_line = 0.0
        self._drawing = False
        self._closed = False
        self._detach = lambda: None  # set by configure_logging: puts back the loggers it changed
        if isinstance(self.output, PlainOutput):
            # Lines come from updates (a step, a block) and, while nothing updates, from a ticker:
            # a thread alone can fall silent while the work holds the interpreter.
            progress.LISTENERS.append(self._maybe_line)
            self._ticker = threading.Thread(target=self._tick, name="deepfm-tfx-progress", daemon=True)
            self._ticker.start()

    # What the running component is doing.
    def detail(self, now: Optional[float] = None, final: bool = False) -> Optional[str]:
        reads = progress.beam_reads() - self._reads_base
        if reads and reads != progress.READS.values.get("rows"):
            progress.READS.set(rows=reads)
        since = self.started.get(self.current) if self.current is not None else None
        tally = progress.current(since) if since is not None else None
        return tally.describe(now, final=final) if tally else None

    def status(self):
        # No lock: rich's refresh thread calls this, and stopping Live joins that thread.
        name = self.current
        started = self.started.get(name) if name is not None else None
        if started is None:
            return None
        now = time.monotonic()
        return name, now - started, self.detail(now)

    def _tick(self) -> None:
        while not self._stopped.wait(min(self.output.every, 1.0)):
            self._maybe_line()

    def _maybe_line(self, tally=None) -> None:
        """A plain progress line, if `every` seconds passed since the last one."""
        with self._guard:
            if (self._closed or self.current is None or self._drawing
                    or time.monotonic() - self._last_line < self.output.every):
                return
            self._drawing = True  # detail() updates READS, which would call back here
            try:
                now = self._last_line = time.monotonic()
                self.output.running(self.current, now - self.started[self.current], self.detail(now))
            except (ValueError, OSError):
                self._closed = True
            finally:
                self._drawing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party log record is not our problem
            return
        with self._guard:
            if self._closed:
                return
            try:
                if m := _RUNNING.search(message):
                    self._start(m.group(1))
                elif _CACHED.search(message) and self.current:
                    self.cached.add(self.current)
                elif m := _FINISHED.search(message):
                    self._finish(m.group(1))
            except (ValueError, OSError):
                # The stream went away (a closed pipe, a captured stdout): progress must never fail a run.
                self._closed = True

    def _start(self, node: str) -> None:
        if self.current is not None:  # the previous one raised: TFX logs no "finished" for it
            self._finish(self.current, failed=True)
        progress.reset_all()
        self._reads_base = progress.beam_reads()
        self.current = node
        self.started[node] = self._last_line = time.monotonic()
        self.output.started(node)

    def _finish(self, node: str, failed: bool = False) -> None:
        now = time.monotonic()
        took = now - self.started.get(node, now)
        cached = node in self.cached
        detail = None if cached else self.detail(now, final=True)
        self.current = None
        when = "cached" if cached else f"{took:.1f}s"
        self.output.print(_line("✘" if failed else "✔", node, when, ("failed" if failed else detail)))

    def __enter__(self) -> "ComponentProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Ends the display; a component still running has failed (or was interrupted)."""
        with self._guard:
            # Closed already, or its stream went away: there is nothing left to print.
            if not self._closed:
                self._closed = True
                try:
                    if self.current is not None:
                        self._finish(self.current, failed=True)
                    self.output.stop()
                except (ValueError, OSError):
                    pass
        self._detach()
        if self._maybe_line in progress.LISTENERS:
            progress.LISTENERS.remove(self._maybe_line)
        self._stopped.set()
        super().close()


def _seconds(text: str) -> float:
    import argparse
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def add_arguments(parser) -> None:
    """--verbose, --quiet and --progress-every: what a run prints while it works."""
    shown = parser.add_mutually_exclusive_group()
    shown.add_argument("--verbose", action="store_true", help="also show TF, Beam and absl logs")
    shown.add_argument("--quiet", action="store_true",
                       help="no progress: print only the outcome (summary or error)")
    parser.add_argument("--progress-every", type=_seconds, default=progress.interval(), metavar="SECONDS",
                        help="seconds between progress lines when output is not a terminal (CI, log files); "
                             f"{progress.INTERVAL_ENV} sets the default")


# --- logging --------------------------------------------------------------------------------------

class ExplainedErrors(logging.Filter):
    """Drops Beam's traceback of an error the run then reports in one line (a bad row, a refused gate).

    Beam logs every exception raised in a DoFn, with its stack, before
    re-raising it; the run catches it and names the file, row and column.
    Any other exception keeps Beam's traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and explained(record.exc_info[1]))


def explained(exc: Optional[BaseException]) -> bool:
    from deepfm_tfx.errors import ConfigError, DataError
    from deepfm_tfx.schemas.feature_spec import FeatureSpecError
    kinds = [ConfigError, DataError, FeatureSpecError]
    if "deepfm_tfx.components.gates" in sys.modules:  # imports TFX; loaded whenever a gate can fail
        kinds.append(sys.modules["deepfm_tfx.components.gates"].GateFailed)
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, tuple(kinds)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _count_worker_reads() -> None:
    """Gives Beam's local worker processes, which inherit the environment, a folder for their counts."""
    import shutil
    import tempfile
    if os.environ.get(progress.WORKER_READS_ENV):
        return
    folder = tempfile.mkdtemp(prefix="deepfm-tfx-reads-")
    os.environ[progress.WORKER_READS_ENV] = folder
    atexit.register(shutil.rmtree, folder, True)


def configure_logging(verbose: bool, quiet: bool = False, every: Optional[float] = None) -> ComponentProgress:
    """TFX's component lines feed the progress display; the rest of TF, Beam and absl is off unless verbose.

    verbose keeps their logs and shows progress as plain lines (a redrawn
    line would fight with them); quiet shows no progress at all.
    """
    from absl import logging as absl_logging

    progress_handler = ComponentProgress(live=False if verbose else None, every=every, quiet=quiet)
    atexit.register(progress_handler.close)
    # The console draws the tallies; their own log lines are for Kubeflow and Airflow.
    progress.LOGGER.setLevel(logging.WARNING)
    if not quiet:
        progress.count_beam_reads()
        _count_worker_reads()
    absl_logger = logging.getLogger("absl")
    saved = absl_logger.handlers[:], absl_logger.propagate, absl_logger.level

    def detach() -> None:
        # In-process callers (tests, notebooks) get their logging back once the display ends.
        if progress_handler in absl_logger.handlers:
            absl_logger.handlers, absl_logger.propagate, absl_logger.level = saved
    progress_handler._detach = detach
    if verbose:
        absl_logging.set_verbosity(absl_logging.INFO)
        absl_logger.addHandler(progress_handler)
        return progress_handler
    absl_logging.set_verbosity(absl_logging.INFO)  # TFX reports progress at INFO
    absl_logger.setLevel(logging.INFO)
    absl_logger.handlers = [progress_handler]
    absl_logger.propagate = False
    for name in ("tensorflow", "apache_beam", "tfx", "ml_metadata", "root", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("apache_beam.runners.common").addFilter(ExplainedErrors())
    try:
        import tensorflow as tf
        tf.get_logger().setLevel(logging.ERROR)
        tf.autograph.set_verbosity(0)
    except ImportError:
        pass
    return progress_handler
