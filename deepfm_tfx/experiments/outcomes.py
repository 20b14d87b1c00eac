"""Outcomes (did the user click?) checked on the way in, and joined to predictions by request id.

An outcome names the prediction it resolves: `request_id` (the request's, as
the server answered it in X-Request-Id), `row` (its row in a batched request;
0 by default) and `clicked` (true/false or 1/0), with an optional `time` of
the click (seconds since the epoch or ISO 8601; the time it arrived by default)
and, for ranking traffic, the `position` (1 = top) the row was shown at.

Ranking traffic (a request's rows are candidates, a few of them shown): the
event pipeline sends one outcome per shown row, clicked or not; a row without
one was not shown. Items traffic: every row was shown.

Nothing here raises on a bad outcome; each is counted by kind:
  rejected           malformed: not an object, no request id, `clicked` not a boolean...
  unknown_request    no prediction of this experiment has that request id and row
  duplicate          a second outcome for a prediction: the first one counts
  late               after the attribution window (`outcome_window_seconds`) closed
  before_prediction  dated before its prediction (beyond a minute of clock skew)
A prediction with no outcome once its window has closed counts as a
non-click (`unreported: negative`, as click logs report only clicks) or
stays out (`pending`); before that it is pending.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import json
import math
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from deepfm_tfx.contracts import CANARY, STABLE
from deepfm_tfx.experiments.config import Experiment
from deepfm_tfx.experiments.split import ARMS

MAX_ID_CHARS = 256
CLOCK_SKEW_SECONDS = 60.0
_FIELDS = ("request_id", "row", "clicked", "time", "position")


class OutcomeError(ValueError):
    """A body or file that holds no outcomes at all (bad JSON, wrong shape)."""


def _timestamp(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        try:
            parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=datetime.timezone.utc)
        return parsed.timestamp()
    return None


def check(item: Any, received: float, source: str) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """(the outcome as stored, None) or (None, why it is rejected)."""
    if not isinstance(item, dict):
        return None, "not a JSON object"
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not request_id or len(request_id) > MAX_ID_CHARS:
        return None, f"request_id must be a non-empty string of at most {MAX_ID_CHARS} characters"
    row = item.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or row < 0:
        return None, "row must be a non-negative integer"
    clicked = item.get("clicked")
    if isinstance(clicked, bool):
        clicked = int(clicked)
    elif not (isinstance(clicked, int) and clicked in (0, 1)):
        return None, "clicked must be true/false or 1/0"
    position = item.get("position")
    if position is not None and (isinstance(position, bool) or not isinstance(position, int) or position < 1):
        return None, "position must be a positive integer (1 = top)"
    when = received
    if item.get("time") is not None:
        when = _timestamp(item["time"])
        if when is None:
            return None, "time must be seconds since the epoch or an ISO 8601 timestamp"
    good = {"request_id": request_id, "row": row, "clicked": clicked, "time": when, "received": received,
            "source": source}
    if position is not None:
        good["position"] = position
    return good, None


def rejected_record(item: Any, why: str, received: float, source: str) -> Dict[str, Any]:
    try:
        raw = json.dumps(item, default=str)
    except ValueError:
        raw = repr(item)
    return {"rejected": why, "item": raw[:500], "received": received, "source": source}


def check_all(items: Iterable[Any], received: float, source: str,
              where: Callable[[int], str]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """(a record per item, accepted or rejected, to store; "<where(i)>: <why>" per rejected item i).

    A rejected outcome is stored too, so the report counts it."""
    records, problems = [], []
    for i, item in enumerate(items):
        good, why = check(item, received, source)
        if good is None:
            problems.append(f"{where(i)}: {why}")
            records.append(rejected_record(item, why, received, source))
        else:
            records.append(good)
    return records, problems


def items_of_body(body: bytes) -> List[Any]:
    """The outcomes of a POST body: {"outcomes": [...]}, a list, or one outcome object."""
    if not body:
        raise OutcomeError("the body is empty; send {\"outcomes\": [{\"request_id\": ..., \"clicked\": true}]}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise OutcomeError(f"JSON Parse error: {e}") from None
    except RecursionError:
        raise OutcomeError("JSON Parse error: the document is nested too deeply") from None
    if isinstance(doc, dict) and "outcomes" in doc:
        doc = doc["outcomes"]
    elif isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise OutcomeError("expected {\"outcomes\": [...]}, a list of outcomes or one outcome object")
    if not doc:
        raise OutcomeError("no outcomes in the body")
    return doc


def items_of_file(path: str) -> Iterator[Any]:
    """A file of outcomes: JSON lines, or CSV with a header naming request_id, clicked (row, time optional).
    A line that is not JSON is yielded as a string, to be rejected and counted."""
    with open(path, newline="") as f:
        head = f.read(4096)
        f.seek(0)
        if head.lstrip().startswith("{") or head.lstrip().startswith("["):
            for line in f:
                if line.strip():
                    try:
                        yield json.loads(line)
                    except ValueError:
                        yield line.rstrip("\n")
            return
        reader = csv.DictReader(f)
        missing = {"request_id", "clicked"} - set(reader.fieldnames or [])
        if missing:
            raise OutcomeError(f"{path}: neither JSON lines nor a CSV whose header names "
                               f"{', '.join(sorted(missing))}")
        for line in reader:
            yield _typed_csv_row(line)


def _typed_csv_row(line: Dict[str, str]) -> Dict[str, Any]:
    item: Dict[str, Any] = {"request_id": line.get("request_id")}
    clicked = (line.get("clicked") or "").strip().lower()
    item["clicked"] = {"1": 1, "0": 0, "true": True, "false": False}.get(clicked, clicked)
    for name in ("row", "position"):
        value = (line.get(name) or "").strip()
        if value:
            item[name] = int(value) if value.isdigit() else value
    when = (line.get("time") or "").strip()
    if when:
        try:
            item["time"] = float(when)
        except ValueError:
            item["time"] = when
    return item


# ------------------------------------------------------------------ the join

@dataclasses.dataclass
class ArmRows:
    """The joined rows of one arm, and its traffic."""
    version: int
    labels: np.ndarray
    scores: np.ndarray
    keys: np.ndarray
    requests: int
    predictions: int
    latencies_ms: np.ndarray  # one per request
    implicit_negatives: int
    positions: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))  # per joined row; NaN: none
    request_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))  # per joined row
    request_keys: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))  # per answered request
    error_keys: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, object))  # per failed request

    @property
    def users(self) -> int:
        """Keys the split sent to this arm (the sample-ratio test counts these)."""
        return len(set(self.request_keys.tolist()) | set(self.error_keys.tolist()))


@dataclasses.dataclass
class JoinResult:
    arms: Dict[str, ArmRows]
    counts: Dict[str, Any]


def join(experiment: Experiment, predictions: Iterable[Dict[str, Any]], outcomes: Iterable[Dict[str, Any]],
         as_of: Optional[float] = None) -> JoinResult:
    as_of = time.time() if as_of is None else as_of
    window = experiment.outcome_window_seconds
    expected = {STABLE: experiment.stable_version, CANARY: experiment.canary_version}
    index: Dict[Tuple[str, int], Dict[str, Any]] = {}
    counts: Dict[str, Any] = {"predictions": 0, "excluded": collections.Counter(),
                              "excluded_requests": collections.Counter(), "off_version": 0,
                              "duplicate_predictions": 0, "malformed_predictions": 0}
    requests = {arm: 0 for arm in ARMS}
    latencies: Dict[str, List[float]] = {arm: [] for arm in ARMS}
    request_keys: Dict[str, List[str]] = {arm: [] for arm in ARMS}
    error_keys: Dict[str, List[str]] = {arm: [] for arm in ARMS}
    for record in predictions:
        if record.get("error") is not None:  # a request the arm failed (router.counting_errors)
            if record.get("arm") in error_keys:
                error_keys[record["arm"]].append(str(record.get("key")))
            continue
        counts["predictions"] += 1
        if record.get("excluded"):
            counts["excluded"][record["excluded"]] += 1
            if record.get("row", 0) == 0:
                counts["excluded_requests"][record["excluded"]] += 1
            continue
        arm, request_id, row = record.get("arm"), record.get("request_id"), record.get("row")
        if arm not in expected or not isinstance(request_id, str) or not isinstance(row, int):
            counts["malformed_predictions"] += 1
            continue
        if record.get("version") != expected[arm]:
            counts["off_version"] += 1  # a label moved under the experiment
            continue
        if (request_id, row) in index:
            counts["duplicate_predictions"] += 1  # a client reused a request id: the first counts
            continue
        index[(request_id, row)] = record
        if row == 0:
            requests[arm] += 1
            request_keys[arm].append(str(record.get("key")))
            if record.get("latency_ms") is not None:
                latencies[arm].append(float(record["latency_ms"]))

    oc: Dict[str, Any] = {"received": 0, "joined": 0, "implicit_negatives": 0, "pending": 0,
                          "unresolved_requests": 0, "unknown_request": 0,
                          "duplicate": 0, "late": 0, "before_prediction": 0, "rejected": collections.Counter()}
    clicked: Dict[Tuple[str, int], int] = {}
    shown_at: Dict[Tuple[str, int], int] = {}
    for outcome in outcomes:
        oc["received"] += 1
        if "rejected" in outcome:
            oc["rejected"][str(outcome["rejected"])] += 1
            continue
        key = (outcome.get("request_id"), outcome.get("row", 0))
        prediction = index.get(key)
        if prediction is None:
            oc["unknown_request"] += 1
        elif key in clicked:
            oc["duplicate"] += 1
        else:
            delay = float(outcome.get("time", 0)) - float(prediction.get("time", 0))
            if delay > window:
                oc["late"] += 1
            elif delay < -CLOCK_SKEW_SECONDS:
                oc["before_prediction"] += 1
            else:
                clicked[key] = int(outcome.get("clicked", 0))
                if outcome.get("position") is not None:
                    shown_at[key] = int(outcome["position"])
                oc["joined"] += 1

    rows: Dict[str, Dict[str, list]] = {arm: {"labels": [], "scores": [], "keys": [], "positions": [],
                                              "request_ids": []} for arm in ARMS}
    implicit = {arm: 0 for arm in ARMS}
    predicted = {arm: 0 for arm in ARMS}
    ranking = experiment.traffic == "ranking"
    resolved = {request_id for request_id, _ in clicked} if ranking else set()
    for key, prediction in index.items():
        arm = prediction["arm"]
        predicted[arm] += 1
        label = clicked.get(key)
        if label is None and ranking:
            if key[1] == 0 and key[0] not in resolved:  # no row of this request has come back yet
                oc["pending" if float(prediction.get("time", 0)) + window > as_of else "unresolved_requests"] += 1
            continue  # a candidate that was not shown
        if label is None:
            if float(prediction.get("time", 0)) + window > as_of or experiment.unreported == "pending":
                oc["pending"] += 1
                continue
            label = 0
            implicit[arm] += 1
        score = prediction.get("score")
        if score is None or not isinstance(score, (int, float)) or not math.isfinite(score):
            counts["malformed_predictions"] += 1
            continue
        rows[arm]["labels"].append(label)
        rows[arm]["scores"].append(float(score))
        rows[arm]["keys"].append(str(prediction.get("key")))
        rows[arm]["positions"].append(shown_at.get(key, math.nan))
        rows[arm]["request_ids"].append(key[0])
    oc["implicit_negatives"] = sum(implicit.values())
    oc["rejected"] = dict(oc["rejected"])
    counts["excluded"] = dict(counts["excluded"])
    counts["excluded_requests"] = dict(counts["excluded_requests"])
    counts["outcomes"] = oc
    arms = {arm: ArmRows(version=expected[arm], labels=np.asarray(rows[arm]["labels"], np.float64),
                         scores=np.asarray(rows[arm]["scores"], np.float64),
                         keys=np.asarray(rows[arm]["keys"], dtype=object), requests=requests[arm],
                         predictions=predicted[arm], latencies_ms=np.asarray(latencies[arm], np.float64),
                         implicit_negatives=implicit[arm],
                         positions=np.asarray(rows[arm]["positions"], np.float64),
                         request_ids=np.asarray(rows[arm]["request_ids"], dtype=object),
                         request_keys=np.asarray(request_keys[arm], dtype=object),
                         error_keys=np.asarray(error_keys[arm], dtype=object))
            for arm in ARMS}
    return JoinResult(arms, counts)

