"""Terminal output: TF/Beam/absl noise off, one line per component instead."""
import logging
import os
import re
import sys
import time
import warnings

_RUNNING = re.compile(r"Component (\S+) is running")
_FINISHED = re.compile(r"Component (\S+) is finished")
_CACHED = re.compile(r"A cached execution \d+ is used")


def silence_before_imports(verbose: bool) -> None:
    """Must run before TensorFlow is imported to silence its C++ logging."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        # ml-metadata's C++ logs a failed MySQL connection at ERROR; our message says it in one line.
        os.environ.setdefault("GLOG_minloglevel", "3")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")  # inherited by Beam worker processes
        warnings.filterwarnings("ignore")


class ComponentProgress(logging.Handler):
    """Turns TFX's LocalDagRunner log lines into per-component progress."""

    def __init__(self, stream=None):
        super().__init__(logging.INFO)
        self.stream = stream or sys.stdout
        self.started = {}
        self.cached = set()
        self.current = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party log record is not our problem
            return
        if m := _RUNNING.search(message):
            self.current = m.group(1)
            self.started[self.current] = time.monotonic()
            print(f"  ▶ {self.current} ...", file=self.stream, flush=True)
        elif _CACHED.search(message) and self.current:
            self.cached.add(self.current)
        elif m := _FINISHED.search(message):
            node = m.group(1)
            took = time.monotonic() - self.started.get(node, time.monotonic())
            note = "cached" if node in self.cached else f"{took:6.1f}s"
            print(f"  ✔ {node:<32} {note}", file=self.stream, flush=True)


def configure_logging(verbose: bool) -> ComponentProgress:
    from absl import logging as absl_logging

    progress = ComponentProgress()
    absl_logger = logging.getLogger("absl")
    if verbose:
        absl_logging.set_verbosity(absl_logging.INFO)
        absl_logger.addHandler(progress)
        return progress
    absl_logging.set_verbosity(absl_logging.INFO)  # TFX reports progress at INFO
    absl_logger.setLevel(logging.INFO)
    absl_logger.handlers = [progress]
    absl_logger.propagate = False
    for name in ("tensorflow", "apache_beam", "tfx", "ml_metadata", "root", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    try:
        import tensorflow as tf
        tf.get_logger().setLevel(logging.ERROR)
        tf.autograph.set_verbosity(0)
    except ImportError:
        pass
    return progress
