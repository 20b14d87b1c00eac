"""The experiments' hook in `deepfm-tfx serve`: split, log, and take outcomes.

For a model with a running experiment, an un-pinned predict request (no
/versions/N, no /labels/L) is routed by its key to `stable` or `canary`
(split.py) and every row it scores is logged: request id, row, key, arm,
version, score, time, latency and, for a share of requests, the features.
Pinned requests bypass the split and are not logged. A request without a key
is served by stable and logged as excluded (counted by the report), or
refused with 400 when the experiment says `on_missing_key: reject`.

Where the key and the request id come from (`key_field`, `request_id_field`):
REST: a top-level field of the JSON body, else a header of that name, else
`X-<Field-Name>`; gRPC: the call's metadata. A request without an id gets
one; REST answers it in `X-Request-Id` (and the arm in `X-Experiment-Arm`),
gRPC in the trailing metadata. Outcomes name that id.

One thread re-reads `<experiments-dir>/*/experiment.json` every second;
requests read the routing table without a lock (it is replaced whole).

Only trusted callers reach the experiment routes (outcomes, status): outcomes
steer which model becomes stable, and they come from the team's event
pipeline, not from the model's clients. With a bearer token (from a file or
the environment, never a flag) every caller must send it; without one, only
the outcomes listener (loopback by default) is trusted. Refusals are counted.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hmac
import logging
import math
import os
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from deepfm_tfx.contracts import EXAMPLES_INPUT_KEY, STABLE
from deepfm_tfx.experiments import config, outcomes, prediction_log, split
from deepfm_tfx.experiments.config import Experiment, ExperimentError
from deepfm_tfx.serving import errors
from deepfm_tfx.serving.errors import ServingError

log = logging.getLogger("deepfm_tfx.experiments")

PREDICTIONS_PREFIX = "predictions"
OUTCOMES_PREFIX = "outcomes"
MAX_FIELD_CHARS = outcomes.MAX_ID_CHARS
EXCLUDED_NO_KEY = "no_key"

Lookup = Callable[[str], Any]


@dataclasses.dataclass
class Assignment:
    experiment: Experiment
    arm: Optional[str]          # None: excluded (served by stable, outside the experiment)
    key: Optional[str]
    request_id: str
    excluded: Optional[str] = None
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return self.arm or STABLE

    def headers(self) -> Dict[str, str]:
        return {"X-Request-Id": self.request_id, "X-Experiment": self.experiment.name,
                "X-Experiment-Arm": self.arm or f"excluded ({self.excluded})"}


def _text(value: Any, field: str) -> Optional[str]:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise errors.invalid(f"'{field}' must be a string or an integer, got {type(value).__name__}")
    text = str(value)
    if len(text) > MAX_FIELD_CHARS:
        raise errors.invalid(f"'{field}' is longer than {MAX_FIELD_CHARS} characters")
    return text


def _scalar(value: Any) -> Any:
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, np.ndarray):
        return [_scalar(v) for v in value.ravel()]
    return value


def _example_rows(serialized: np.ndarray) -> List[Dict[str, Any]]:
    from tensorflow.core.example import example_pb2  # the server has TensorFlow loaded already

    rows = []
    for blob in serialized.ravel():
        example = example_pb2.Example.FromString(bytes(blob))
        row = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = [_scalar(v) for v in getattr(feature, kind).value] if kind else []
            row[name] = values[0] if len(values) == 1 else (values or None)
        rows.append(row)
    return rows


def feature_rows(feeds: Dict[str, np.ndarray], rows: int) -> List[Dict[str, Any]]:
    """The features of each row as plain JSON values: the raw features of a features
    signature, or the parsed tf.Examples of an examples signature."""
    if len(feeds) == 1:
        [(key, array)] = feeds.items()
        if key == EXAMPLES_INPUT_KEY and array.dtype == object:
            try:
                return _example_rows(array)
            except Exception:  # noqa: BLE001 - not Examples after all: log the column as it is
                pass
    out = [{} for _ in range(rows)]
    for key, array in feeds.items():
        if array.ndim == 0 or array.shape[0] != rows:
            continue
        for i in range(rows):
            out[i][key] = _scalar(array[i])
    return out


class _Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = collections.Counter()

    def add(self, **amounts: int) -> None:
        with self.lock:
            self.values.update(amounts)

    def snapshot(self) -> Dict[str, int]:
        with self.lock:
            return dict(self.values)


class ExperimentRouter:
    def __init__(self, experiments_dir: str, poll_seconds: float = 1.0, outcome_token: Optional[str] = None):
        self.experiments_dir = os.path.abspath(experiments_dir)
        self.poll_seconds = poll_seconds
        self._token = outcome_token.encode() if outcome_token else None
        self.refused = _Counters()  # callers refused by authorize, by reason
        self._routing: Dict[str, Experiment] = {}       # model -> its running experiment; replaced whole
        self._known: Dict[str, Tuple[Tuple[int, int], Experiment]] = {}  # name -> (stat, config)
        self._logs: Dict[str, prediction_log.JsonLinesLog] = {}
        self._outcome_logs: Dict[str, prediction_log.JsonLinesLog] = {}
        self._counters: Dict[str, _Counters] = collections.defaultdict(_Counters)
        self._logs_lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "ExperimentRouter":
        self.poll()
        self._thread = threading.Thread(target=self._watch, name="experiments", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Flushes every log: nothing served is lost on a clean stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._logs_lock:
            logs = list(self._logs.values()) + list(self._outcome_logs.values())
            self._logs, self._outcome_logs = {}, {}
        for one in logs:
            one.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a bad experiment must not stop the server
                log.exception("reading %s failed", self.experiments_dir)

    def poll(self) -> None:
        """Re-reads changed experiment.json files and rebuilds the routing table."""
        with self._poll_lock:
            for name in config.names(self.experiments_dir):
                path = config.config_path(self.experiments_dir, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                stamp = (st.st_mtime_ns, st.st_size)
                if name in self._known and self._known[name][0] == stamp:
                    continue
                try:
                    self._known[name] = (stamp, config.load(self.experiments_dir, name))
                except ExperimentError as e:
                    log.error("experiment %s: %s; keeping its last good config", name, e)
            routing: Dict[str, Experiment] = {}
            for _, experiment in sorted(self._known.values(), key=lambda kv: kv[1].created_at):
                if experiment.status != config.RUNNING:
                    continue
                if experiment.model in routing:
                    log.warning("experiments %s and %s both run on %s; routing by the older, %s",
                                routing[experiment.model].name, experiment.name, experiment.model,
                                routing[experiment.model].name)
                    continue
                routing[experiment.model] = experiment
            self._routing = routing
            running = {e.name for e in routing.values()}
            with self._logs_lock:
                ended = [n for n in self._logs if n not in running]
                closing = [self._logs.pop(n) for n in ended]
            for one in closing:  # stopped or decided: write out what it served
                one.close()

    # ------------------------------------------------------------ predict

    def experiment_for(self, model: str) -> Optional[Experiment]:
        return self._routing.get(model)

    def assign(self, model: str, lookup: Lookup) -> Optional[Assignment]:
        """The arm of an un-pinned request to `model`, or None when no experiment runs on it."""
        experiment = self._routing.get(model)
        if experiment is None:
            return None
        request_id = _text(lookup(experiment.request_id_field), experiment.request_id_field) or uuid.uuid4().hex
        key = _text(lookup(experiment.key_field), experiment.key_field)
        if key is None:
            if experiment.on_missing_key == "reject":
                raise errors.invalid(
                    f"experiment {experiment.name} splits {model}'s traffic by '{experiment.key_field}' and this "
                    f"request has none: send it as a top-level field of the body or a header, or name a version or "
                    f"label to bypass the experiment")
            return Assignment(experiment, None, None, request_id, EXCLUDED_NO_KEY)
        return Assignment(experiment, split.arm_of(key, experiment.split_salt, experiment.canary_share), key,
                          request_id)

    def record(self, assignment: Assignment, version: int, signature_name: str, feeds: Dict[str, np.ndarray],
               outputs: Dict[str, np.ndarray]) -> None:
        """Logs every row the request scored. Never fails the request it logs: a full disk is
        retried by the log's writer and reported."""
        experiment = assignment.experiment
        latency_ms = (time.monotonic() - assignment.started) * 1000.0
        scores = outputs.get(experiment.score_output)
        if scores is None and len(outputs) == 1:
            scores = next(iter(outputs.values()))
        if scores is None:
            log.error("experiment %s: the response has no output %r; nothing logged", experiment.name,
                      experiment.score_output)
            self._counters[experiment.name].add(unlogged_requests=1)
            return
        scores = np.asarray(scores, np.float64)
        scores = scores.reshape(scores.shape[0], -1)[:, 0] if scores.ndim else scores.reshape(1)
        rows = len(scores)
        features = None
        if experiment.feature_log_share > 0 and split.bucket(
                assignment.request_id, "features:" + experiment.split_salt) < experiment.feature_log_share:
            features = feature_rows(feeds, rows)
        now = time.time()
        records = []
        for i in range(rows):
            record = {"request_id": assignment.request_id, "row": i, "rows": rows, "key": assignment.key,
                      "arm": assignment.arm, "version": version, "score": float(scores[i]), "time": now,
                      "latency_ms": round(latency_ms, 3), "signature": signature_name}
            if assignment.excluded:
                record["excluded"] = assignment.excluded
            if features is not None:
                record["features"] = features[i]
            records.append(record)
        try:
            self._prediction_log(experiment).append(records)
        except (OSError, RuntimeError) as e:
            log.error("experiment %s: cannot log a prediction: %s", experiment.name, e)
            self._counters[experiment.name].add(unlogged_requests=1)
            return
        self._counters[experiment.name].add(
            **{f"requests_{assignment.arm or 'excluded'}": 1, f"rows_{assignment.arm or 'excluded'}": rows})

    @contextlib.contextmanager
    def counting_errors(self, assignment: Optional[Assignment]):
        """Logs a request its arm failed (the error-rate guardrail's count), then re-raises."""
        try:
            yield
        except Exception as e:
            if assignment is not None and assignment.arm is not None:
                code = e.code if isinstance(e, ServingError) else errors.INTERNAL
                record = {"request_id": assignment.request_id, "row": 0, "key": assignment.key,
                          "arm": assignment.arm, "error": code, "time": time.time(),
                          "latency_ms": round((time.monotonic() - assignment.started) * 1000.0, 3)}
                try:
                    self._prediction_log(assignment.experiment).append([record])
                    self._counters[assignment.experiment.name].add(**{f"errors_{assignment.arm}": 1})
                except (OSError, RuntimeError) as log_error:
                    log.error("experiment %s: cannot log a failed request: %s", assignment.experiment.name,
                              log_error)
            raise

    def _prediction_log(self, experiment: Experiment) -> prediction_log.JsonLinesLog:
        with self._logs_lock:
            one = self._logs.get(experiment.name)
            if one is None:
                one = self._logs[experiment.name] = prediction_log.JsonLinesLog(
                    config.predictions_dir(self.experiments_dir, experiment.name), PREDICTIONS_PREFIX,
                    experiment.log_max_file_bytes, experiment.log_max_files, experiment.log_flush_seconds)
            return one

    # ------------------------------------------------------------ outcomes and status

    def authorize(self, authorization: Optional[str], trusted_listener: bool) -> None:
        """Raises 401 or 403 (counted) unless the caller may post outcomes and read status."""
        if self._token is not None:
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
                return
            self.refused.add(**{"wrong_token" if authorization else "no_token": 1})
            raise ServingError(errors.UNAUTHENTICATED, "experiment routes need the outcomes bearer token: "
                                                       "send 'Authorization: Bearer <token>'")
        if trusted_listener:
            return
        self.refused.add(untrusted_listener=1)
        raise ServingError(errors.PERMISSION_DENIED, "experiment routes are not served on this listener; post "
                                                     "outcomes to the outcomes listener (deepfm-tfx serve "
                                                     "--outcomes-port) or start the server with a token")

    def _experiment(self, name: str) -> Experiment:
        """The experiment `name`; a 404 names what the client sent, never the server's folders."""
        missing = ServingError(errors.NOT_FOUND, f"no experiment {name[:130]!r}")
        try:
            config.check_name(name)
        except ExperimentError:
            raise missing from None
        known = self._known.get(name)
        if known is not None:
            return known[1]
        try:
            return config.load(self.experiments_dir, name)
        except ExperimentError:
            raise missing from None

    def record_outcomes(self, name: str, body: bytes, source: str = "rest") -> Tuple[int, Dict[str, Any]]:
        """(HTTP status, answer). Each outcome is stored or rejected and counted; the answer
        comes after they are on disk. 400 when none is usable, 404 for an unknown experiment."""
        experiment = self._experiment(name)
        try:
            items = outcomes.items_of_body(body)
        except outcomes.OutcomeError as e:
            raise errors.invalid(str(e)) from None
        stored, problems = outcomes.check_all(items, time.time(), source, lambda i: f"outcome {i}")
        with self._logs_lock:
            one = self._outcome_logs.get(name)
            if one is None:
                one = self._outcome_logs[name] = prediction_log.JsonLinesLog(
                    config.outcomes_dir(self.experiments_dir, name), OUTCOMES_PREFIX,
                    experiment.log_max_file_bytes, experiment.log_max_files, experiment.log_flush_seconds)
        try:
            one.append(stored, flush=True)
        except OSError as e:
            log.error("experiment %s: cannot store outcomes: %s", name, e)
            raise ServingError(errors.UNAVAILABLE, f"cannot store the outcomes ({e.strerror or 'disk error'}); "
                                                   f"nothing was stored, send them again") from None
        accepted = len(items) - len(problems)
        self._counters[name].add(outcomes_accepted=accepted, outcomes_rejected=len(problems))
        answer = {"experiment": name, "accepted": accepted, "rejected": len(problems), "errors": problems[:10]}
        if not accepted:
            answer["error"] = f"no usable outcome: {problems[0]}" + (
                f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
            return 400, answer
        return 200, answer

    def status(self, name: str) -> Dict[str, Any]:
        experiment = self._experiment(name)
        routing = self._routing.get(experiment.model)
        with self._logs_lock:
            one = self._logs.get(name)
        return {"experiment": experiment.to_dict(), "routing": routing is not None and routing.name == name,
                "counters": self._counters[name].snapshot() if name in self._counters else {},
                "refused_callers": self.refused.snapshot(),
                "log": {"records_written": one.records_written if one else 0, "pending": one.pending if one else 0,
                        "flush_errors": one.flush_errors if one else 0}}

    def flush(self) -> None:
        with self._logs_lock:
            logs = list(self._logs.values())
        for one in logs:
            one.flush()
