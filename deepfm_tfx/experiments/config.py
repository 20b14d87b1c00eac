"""An experiment: `<experiments-dir>/<name>/experiment.json`, and the folders beside it.

    <experiments-dir>/<name>/experiment.json   this config (written atomically)
    <experiments-dir>/<name>/predictions/      every prediction served in it (prediction_log)
    <experiments-dir>/<name>/outcomes/         clicks that came back, and rejected outcomes

`deepfm-tfx serve --experiments-dir DIR` routes a model's un-pinned predict
requests while an experiment on it is `running`; a request naming a version
or a label bypasses the split. The versions the arms serve are recorded at
start, so the report can tell if a label moved under the experiment.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Dict, List, Optional

from deepfm_tfx.contracts import OUTPUT_KEY, STABLE

CONFIG_FILE = "experiment.json"
PREDICTIONS = "predictions"
OUTCOMES = "outcomes"
RUNNING, STOPPED, DECIDED = "running", "stopped", "decided"
STATUSES = (RUNNING, STOPPED, DECIDED)
# A name is a folder here and a URL path segment of the outcomes endpoint.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# ctr: the relative CTR lift of shown items, always valid (mSPRT); logloss and auc: per scored
# row, tested at alpha / looks (Bonferroni over planned looks).
METRICS = ("ctr", "logloss", "auc")
# ranking: rows are a request's candidates and outcomes name the shown ones (with their position);
# items: every row was shown, and each gets an outcome.
TRAFFIC = ("ranking", "items")
ON_MISSING_KEY = (STABLE, "reject")
UNREPORTED = ("negative", "pending")


class ExperimentError(ValueError):
    """A bad experiment name or config; the message says which field and why."""


def _knob(default, help: str, **extra):
    """A field `deepfm-tfx experiment start` has a flag for (pipeline.configs derives it)."""
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ExperimentError(f"experiment name {name!r} is not allowed: use letters, digits, '_', '-' and '.', "
                              f"starting with a letter, digit or '_' (at most 128 characters)")
    return name


@dataclasses.dataclass
class Rule:
    """When the report says promote, roll back, or keep running."""
    metric: str = _knob("ctr", "the primary metric: the CTR lift of shown items (always valid: read it at any "
                               "time), or per-row online logloss or AUC at alpha/looks", choices=METRICS)
    # The mSPRT mixture's spread (Johari et al.): the rule is most powerful near this lift.
    sized_lift: float = _knob(0.03, "the relative CTR lift the rule is sized to detect within the planned sample")
    min_outcomes_per_arm: int = _knob(1000, "joined outcomes each arm needs before any verdict",
                                      flag="--min-outcomes")
    min_clicks_per_arm: int = _knob(30, "clicks each arm needs", flag="--min-clicks")
    alpha: float = _knob(0.05, "two-sided significance level")
    # Bonferroni over the planned analyses.
    looks: int = _knob(1, "planned analyses; each tests at alpha/looks so repeated looks stay honest")
    min_effect: float = _knob(0.0, "the canary must beat stable by more than this on the metric")
    max_calibration_error: float = _knob(
        0.1, "guardrail: the canary's mean score / CTR must be able to lie within 1 +- this")
    # Both beyond their intervals.
    max_latency_ratio: float = _knob(1.5, "guardrail: canary p99 latency at most this x stable's p99 ...")
    latency_slack_ms: float = _knob(5.0, "... plus this")
    max_outcomes_per_arm: Optional[int] = _knob(
        100_000, "planned sample per arm (impressions for ctr): still undecided there means roll back",
        flag="--max-outcomes")
    max_error_rate_increase: float = _knob(0.01, "guardrail: roll back when the canary's request error rate is "
                                                 "surely above stable's by more than this")
    srm_p_value: float = _knob(0.001, "sample-ratio mismatch: below this p-value of the chi-square test of users "
                                      "per arm against the split, the experiment stops deciding")

    def check(self) -> None:
        _require(self.metric in METRICS, "rule.metric", f"one of {METRICS}", self.metric)
        for name in ("min_outcomes_per_arm", "min_clicks_per_arm", "looks"):
            value = getattr(self, name)
            _require(isinstance(value, int) and not isinstance(value, bool) and value >= (1 if name == "looks" else 0),
                     f"rule.{name}", "a non-negative integer" if name != "looks" else "a positive integer", value)
        _require(_number(self.alpha) and 0 < self.alpha < 1, "rule.alpha", "a number in (0, 1)", self.alpha)
        _require(_number(self.sized_lift) and self.sized_lift > 0, "rule.sized_lift", "a positive number",
                 self.sized_lift)
        _require(_number(self.srm_p_value) and 0 < self.srm_p_value < 1, "rule.srm_p_value", "a number in (0, 1)",
                 self.srm_p_value)
        for name in ("min_effect", "max_calibration_error", "latency_slack_ms", "max_error_rate_increase"):
            _require(_number(getattr(self, name)) and getattr(self, name) >= 0, f"rule.{name}",
                     "a non-negative number", getattr(self, name))
        _require(_number(self.max_latency_ratio) and self.max_latency_ratio >= 1, "rule.max_latency_ratio",
                 "a number >= 1", self.max_latency_ratio)
        if self.max_outcomes_per_arm is not None:
            _require(isinstance(self.max_outcomes_per_arm, int) and self.max_outcomes_per_arm >= self.min_outcomes_per_arm,
                     "rule.max_outcomes_per_arm", "an integer >= min_outcomes_per_arm", self.max_outcomes_per_arm)


@dataclasses.dataclass
class Experiment:
    name: str
    model: str
    model_repository: str                   # where the label moves of `report --promote` happen
    stable_version: int
    canary_version: int
    canary_share: float = _knob(0.5, "share of keys the canary gets")
    key_field: str = _knob("user_id", "what the split hashes: a top-level field of the REST body or a header "
                                      "(gRPC: metadata)")
    request_id_field: str = _knob("request_id", "the request's id, which outcomes name (the server makes one up "
                                                "when a request has none)")
    salt: str = _knob("", "hash salt (default: the name, so each experiment splits afresh)")
    # "stable": served by stable, logged as excluded; "reject": HTTP 400.
    on_missing_key: str = _knob(STABLE, "a request without the key: served by stable and counted, or refused "
                                        "with 400", choices=ON_MISSING_KEY)
    traffic: str = _knob("ranking", "ranking: a request's rows are candidates and outcomes name the shown ones "
                                    "with their position; items: every row was shown", choices=TRAFFIC)
    score_output: str = _knob(OUTPUT_KEY, "the output logged as the score")
    feature_log_share: float = _knob(1.0, "share of requests whose features are logged (the skew check's sample)")
    outcome_window_seconds: float = _knob(3600.0, "attribution window: an outcome later than this after its "
                                                  "prediction is late")
    # "pending" leaves it out of the report.
    unreported: str = _knob("negative", "items traffic: a prediction without an outcome once its window closed: a "
                                        "non-click, or left out (ranking: it was not shown)", choices=UNREPORTED)
    # Rotated files are gzipped; per log, the oldest closed files beyond log_max_files go.
    log_max_file_bytes: int = _knob(64 << 20, "rotate log files past this")
    log_max_files: int = _knob(2000, "keep at most this many log files")
    # A crash loses at most this much of the prediction log.
    log_flush_seconds: float = _knob(1.0, "the prediction log is on disk at most this long after a prediction")
    rule: Rule = dataclasses.field(default_factory=Rule)
    status: str = RUNNING
    created_at: float = dataclasses.field(default_factory=time.time)
    decision: Optional[Dict[str, Any]] = None  # what `report --promote` applied

    @property
    def split_salt(self) -> str:
        return self.salt or self.name

    def check(self) -> "Experiment":
        check_name(self.name)
        _require(isinstance(self.model, str) and self.model, "model", "a model name", self.model)
        for name in ("stable_version", "canary_version"):
            _require(isinstance(getattr(self, name), int), name, "a version number", getattr(self, name))
        _require(self.stable_version != self.canary_version, "canary_version",
                 f"a version other than stable's ({self.stable_version}): there is nothing to compare",
                 self.canary_version)
        _require(_number(self.canary_share) and 0 < self.canary_share < 1, "canary_share", "a number in (0, 1)",
                 self.canary_share)
        for name in ("key_field", "request_id_field", "score_output"):
            _require(isinstance(getattr(self, name), str) and getattr(self, name), name, "a non-empty string",
                     getattr(self, name))
        _require(self.on_missing_key in ON_MISSING_KEY, "on_missing_key", f"one of {ON_MISSING_KEY}",
                 self.on_missing_key)
        _require(_number(self.feature_log_share) and 0 <= self.feature_log_share <= 1, "feature_log_share",
                 "a number in [0, 1]", self.feature_log_share)
        _require(_number(self.outcome_window_seconds) and self.outcome_window_seconds > 0, "outcome_window_seconds",
                 "a positive number", self.outcome_window_seconds)
        _require(self.unreported in UNREPORTED, "unreported", f"one of {UNREPORTED}", self.unreported)
        _require(self.traffic in TRAFFIC, "traffic", f"one of {TRAFFIC}", self.traffic)
        _require(isinstance(self.log_max_file_bytes, int) and self.log_max_file_bytes >= 4096, "log_max_file_bytes",
                 "an integer >= 4096", self.log_max_file_bytes)
        _require(isinstance(self.log_max_files, int) and self.log_max_files >= 2, "log_max_files", "an integer >= 2",
                 self.log_max_files)
        _require(_number(self.log_flush_seconds) and 0 < self.log_flush_seconds <= 60, "log_flush_seconds",
                 "a number in (0, 60]", self.log_flush_seconds)
        _require(self.status in STATUSES, "status", f"one of {STATUSES}", self.status)
        self.rule.check()
        _require(self.rule.metric != "ctr" or self.traffic == "ranking", "rule.metric",
                 "logloss or auc for items traffic (the model chooses nothing shown there, so CTR cannot differ)",
                 self.rule.metric)
        return self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, doc: Dict[str, Any], where: str = CONFIG_FILE) -> "Experiment":
        if not isinstance(doc, dict):
            raise ExperimentError(f"{where}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise ExperimentError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        rule = doc.get("rule") or {}
        if not isinstance(rule, dict):
            raise ExperimentError(f"{where}: rule must be an object")
        rule_fields = {f.name for f in dataclasses.fields(Rule)}
        if set(rule) - rule_fields:
            raise ExperimentError(f"{where}: unknown rule field(s) {', '.join(sorted(set(rule) - rule_fields))}; "
                                  f"known: {', '.join(sorted(rule_fields))}")
        try:
            experiment = cls(**dict(doc, rule=Rule(**rule)))
        except TypeError as e:
            raise ExperimentError(f"{where}: {e}") from None
        try:
            return experiment.check()
        except ExperimentError as e:
            raise ExperimentError(f"{where}: {e}") from None


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, field: str, expected: str, got: Any) -> None:
    if not ok:
        raise ExperimentError(f"{field} must be {expected}, got {got!r}")


# ------------------------------------------------------------------ on disk

def folder(experiments_dir: str, name: str) -> str:
    return os.path.join(experiments_dir, check_name(name))


def config_path(experiments_dir: str, name: str) -> str:
    return os.path.join(folder(experiments_dir, name), CONFIG_FILE)


def predictions_dir(experiments_dir: str, name: str) -> str:
    return os.path.join(folder(experiments_dir, name), PREDICTIONS)


def outcomes_dir(experiments_dir: str, name: str) -> str:
    return os.path.join(folder(experiments_dir, name), OUTCOMES)


def exists(experiments_dir: str, name: str) -> bool:
    return os.path.isfile(config_path(experiments_dir, name))


def load(experiments_dir: str, name: str) -> Experiment:
    path = config_path(experiments_dir, name)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        known = names(experiments_dir)
        raise ExperimentError(f"no experiment {name!r} in {experiments_dir}; experiments: "
                              f"{', '.join(known) or 'none'}") from None
    except ValueError as e:
        raise ExperimentError(f"{path}: not JSON: {e}") from None
    return Experiment.from_dict(doc, path)


def save(experiments_dir: str, experiment: Experiment) -> str:
    """Writes experiment.json by an atomic replace: a server polling it never reads half a file."""
    experiment.check()
    path = config_path(experiments_dir, experiment.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(experiment.to_dict(), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def names(experiments_dir: str) -> List[str]:
    if not os.path.isdir(experiments_dir):
        return []
    return sorted(n for n in os.listdir(experiments_dir)
                  if _NAME.fullmatch(n) and os.path.isfile(os.path.join(experiments_dir, n, CONFIG_FILE)))


def running_on(experiments_dir: str, model: str) -> List[Experiment]:
    """The running experiments on `model`, oldest first; unreadable configs are skipped."""
    found = []
    for name in names(experiments_dir):
        try:
            experiment = load(experiments_dir, name)
        except ExperimentError:
            continue
        if experiment.model == model and experiment.status == RUNNING:
            found.append(experiment)
    return sorted(found, key=lambda e: e.created_at)
