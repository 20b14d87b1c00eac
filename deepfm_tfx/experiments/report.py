"""`deepfm-tfx experiment report NAME`: per-arm metrics with intervals, their difference, the decision.

The report reads the experiment's prediction log and outcomes, joins them
(outcomes.join), and per arm gives the traffic (requests, rows), the
outcomes joined, CTR, online logloss, AUC and calibration, each with its 95%
interval, and p50/p99 latency; then canary - stable for each, and the
decision of the experiment's rule (decision.py). `apply` carries the
decision out through the model repository's label moves: promote makes the
canary stable; roll back points the canary label back at stable, which
unloads the candidate (no hold: next week's candidate is tried as usual).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Dict, Optional

import numpy as np

from deepfm_tfx import model_repository
from deepfm_tfx.contracts import CANARY, KEEP_RUNNING, PROMOTE, SAMPLE_RATIO_MISMATCH, STABLE
from deepfm_tfx.experiments import config, decision, outcomes, prediction_log, statistics
from deepfm_tfx.experiments.config import Experiment
from deepfm_tfx.experiments.decision import ArmMetrics
from deepfm_tfx.experiments.router import OUTCOMES_PREFIX, PREDICTIONS_PREFIX
from deepfm_tfx.experiments.split import ARMS

CONFIDENCE = 0.95


class ApplyError(RuntimeError):
    """The decision cannot be applied as is (the labels moved under the experiment...)."""


def examination(positions: np.ndarray) -> np.ndarray:
    """The share of users who look at a position (1 = top): 1 / log2(position + 1); 1 when unknown."""
    positions = np.asarray(positions, np.float64)
    return np.where(np.isnan(positions), 1.0, 1.0 / np.log2(np.nan_to_num(positions, nan=1.0) + 1.0))


def arm_metrics(rows: outcomes.ArmRows, confidence: float = CONFIDENCE) -> ArmMetrics:
    y, q, keys = rows.labels, rows.scores, rows.keys
    clusters = keys if len(keys) else None
    positions = rows.positions if len(rows.positions) == len(y) else np.full(len(y), np.nan)
    # Per request with an outcome: its clicks (the clicks-per-request metric).
    per_request_clicks, per_request_keys = np.zeros(0), np.zeros(0, object)
    if len(rows.request_ids) == len(y) and len(y):
        ids, first, inverse = np.unique(rows.request_ids.astype(str), return_index=True, return_inverse=True)
        per_request_clicks = np.bincount(inverse, weights=y)
        per_request_keys = keys[first]
    failed = np.concatenate([np.zeros(len(rows.request_keys)), np.ones(len(rows.error_keys))])
    return ArmMetrics(
        outcomes=int(len(y)), clicks=int(y.sum()),
        ctr=statistics.mean(y, clusters, confidence),
        logloss=statistics.mean(statistics.logloss_per_row(y, q), clusters, confidence),
        auc=statistics.auc(y, q, confidence),
        # A shown item's click rate is its click probability times its position's examination.
        calibration=statistics.ratio(q * examination(positions), y, clusters, confidence),
        latencies_ms=rows.latencies_ms, requests=rows.requests, users=rows.users,
        clicks_per_request=statistics.mean(per_request_clicks, per_request_keys if len(per_request_keys) else None,
                                           confidence),
        error_rate=statistics.mean(failed, np.concatenate([rows.request_keys, rows.error_keys]).astype(str)
                                   if len(failed) else None, confidence))


def build(experiments_dir: str, name: str, as_of: Optional[float] = None) -> Dict[str, Any]:
    experiment = config.load(experiments_dir, name)
    as_of = time.time() if as_of is None else as_of
    prediction_stats, outcome_stats = prediction_log.ReadStats(), prediction_log.ReadStats()
    joined = outcomes.join(
        experiment,
        prediction_log.read(config.predictions_dir(experiments_dir, name), PREDICTIONS_PREFIX, prediction_stats),
        prediction_log.read(config.outcomes_dir(experiments_dir, name), OUTCOMES_PREFIX, outcome_stats),
        as_of)
    metrics = {arm: arm_metrics(joined.arms[arm]) for arm in ARMS}
    arms = {}
    for arm in ARMS:
        rows, m = joined.arms[arm], metrics[arm]
        latency = rows.latencies_ms
        arms[arm] = {
            "version": rows.version, "requests": rows.requests, "predictions": rows.predictions,
            "users": m.users, "failed_requests": len(rows.error_keys),
            "outcomes": m.outcomes, "clicks": m.clicks, "implicit_negatives": rows.implicit_negatives,
            "ctr": m.ctr.to_dict(), "clicks_per_request": m.clicks_per_request.to_dict(),
            "error_rate": m.error_rate.to_dict(),
            "logloss": m.logloss.to_dict(), "auc": m.auc.to_dict(),
            "calibration": m.calibration.to_dict(),
            "mean_score": float(rows.scores.mean()) if len(rows.scores) else None,
            "latency_ms": {"p50": statistics.quantile(latency, 0.5).to_dict() if len(latency) else None,
                           "p99": statistics.quantile(latency, 0.99).to_dict() if len(latency) else None}}
    difference = {metric: statistics.difference(getattr(metrics[CANARY], metric),
                                                getattr(metrics[STABLE], metric)).to_dict()
                  for metric in ("ctr", "clicks_per_request", "error_rate", "logloss", "auc", "calibration")}
    log_lift = statistics.log_ratio(metrics[CANARY].ctr, metrics[STABLE].ctr)
    difference["ctr_lift"] = statistics.as_lift(log_lift).to_dict()
    # The same lift, always valid: the interval that may be read at any time.
    difference["ctr_lift_always_valid"] = statistics.as_lift(statistics.always_valid(
        log_lift, experiment.rule.alpha, math.log1p(experiment.rule.sized_lift))).to_dict()
    verdict = decision.decide(metrics[STABLE], metrics[CANARY], experiment.rule, experiment.canary_share)
    return {
        "experiment": name, "model": experiment.model, "status": experiment.status,
        "traffic_kind": experiment.traffic,
        "model_repository": experiment.model_repository,
        "canary_share": experiment.canary_share, "key_field": experiment.key_field,
        "created_at": experiment.created_at, "as_of": as_of, "confidence": CONFIDENCE,
        "traffic": {"predictions_logged": joined.counts["predictions"],
                    "excluded_rows": joined.counts["excluded"], "excluded_requests": joined.counts["excluded_requests"],
                    "off_version_rows": joined.counts["off_version"],
                    "duplicate_predictions": joined.counts["duplicate_predictions"],
                    "malformed_predictions": joined.counts["malformed_predictions"]},
        "outcomes": joined.counts["outcomes"],
        "log": {"predictions": prediction_stats.to_dict(), "outcomes": outcome_stats.to_dict()},
        "arms": arms, "difference": difference,
        "rule": dataclasses.asdict(experiment.rule),
        "decision": verdict, "applied": experiment.decision,
    }


# ------------------------------------------------------------------ text

def _ci(e: Optional[Dict[str, Any]], digits: int = 4, signed: bool = False) -> str:
    if not e or e.get("value") is None:
        return "-"
    spec = f"{'+' if signed else ''}.{digits}f"
    if e.get("low") is None:
        return format(e["value"], spec)
    return f"{format(e['value'], spec)} [{format(e['low'], spec)}, {format(e['high'], spec)}]"


def format_text(report: Dict[str, Any]) -> str:
    arms = report["arms"]
    lines = [f"experiment {report['experiment']} on {report['model']} ({report['status']}, {report['traffic_kind']} "
             f"traffic): canary share {report['canary_share']:g}, split by '{report['key_field']}'",
             ""]
    stable, canary = arms[STABLE], arms[CANARY]
    rows = [("", STABLE, CANARY, f"{CANARY} - {STABLE}")]
    rows.append(("version", str(stable["version"]), str(canary["version"]), ""))
    for key, label in (("users", "users"), ("requests", "requests"), ("failed_requests", "failed requests"),
                       ("predictions", "predictions"), ("outcomes", "outcomes joined"), ("clicks", "clicks")):
        rows.append((label, f"{stable[key]:,}", f"{canary[key]:,}", ""))
    ranking = report["traffic_kind"] == "ranking"
    for metric, label in (("ctr", "CTR of shown items" if ranking else "CTR"), ("clicks_per_request",
                          "clicks per request"), ("error_rate", "error rate"), ("logloss", "online logloss"),
                          ("auc", "AUC"), ("calibration", "calibration")):
        rows.append((label, _ci(stable[metric]), _ci(canary[metric]), _ci(report["difference"][metric], signed=True)))
    rows.append(("CTR lift", "", "", _ci(report["difference"]["ctr_lift"], signed=True)))
    rows.append(("  always valid", "", "", _ci(report["difference"]["ctr_lift_always_valid"], signed=True)))
    for q in ("p50", "p99"):
        rows.append((f"latency {q} ms", _ci(stable["latency_ms"][q], 1), _ci(canary["latency_ms"][q], 1), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    oc, traffic = report["outcomes"], report["traffic"]
    rejected = ", ".join(f"{n} {why}" for why, n in sorted(oc["rejected"].items())) or "none"
    lines += ["",
              f"intervals: {report['confidence']:.0%}, clustered by key (AUC: DeLong); latency: order statistics; "
              f"always valid: mSPRT confidence sequence at {1 - report['rule']['alpha']:.0%}"
              + ("; calibration weighs each shown item by 1/log2(position + 1)" if ranking else ""),
              f"outcomes: {oc['received']:,} received, {oc['joined']:,} joined, {oc['implicit_negatives']:,} implied "
              f"non-clicks, {oc['pending']:,} pending, {oc.get('unresolved_requests', 0):,} requests never resolved; {oc['unknown_request']:,} unknown request, "
              f"{oc['duplicate']:,} duplicate, {oc['late']:,} late, {oc['before_prediction']:,} before their "
              f"prediction; rejected: {rejected}",
              f"traffic outside the experiment: " + (", ".join(f"{n:,} requests with {why.replace('_', ' ')}"
                                                             for why, n in traffic["excluded_requests"].items())
                                                   or "none")
              + (f"; {traffic['off_version_rows']:,} rows served by another version (a label moved)"
                 if traffic["off_version_rows"] else "")
              + (f"; {report['log']['predictions']['torn_lines']} torn log lines"
                 if report["log"]["predictions"]["torn_lines"] else ""),
              ""]
    verdict = report["decision"]
    lines.append(f"decision: {verdict['action'].upper()}: {verdict['why']}")
    for check in verdict["checks"]:
        lines.append(f"  {'ok ' if check['passed'] else '-- '} {check['check']}: {check['detail']}")
    if report.get("applied"):
        applied = report["applied"]
        lines.append(f"applied: {applied['action']} at {applied['applied_at']} -> labels {applied['labels']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ applying it

Wait = Callable[[str, int], None]


def apply(experiments_dir: str, report: Dict[str, Any], wait: Optional[Wait] = None,
          model_repository_dir: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """Moves the labels as the decision says and marks the experiment decided (the server
    stops splitting); nothing for keep running or a sample-ratio mismatch. Refuses when the
    labels no longer name the experiment's versions."""
    action = report["decision"]["action"]
    if action in (KEEP_RUNNING, SAMPLE_RATIO_MISMATCH):
        return None
    experiment = config.load(experiments_dir, report["experiment"])
    if experiment.status == config.DECIDED:
        raise ApplyError(f"experiment {experiment.name} was decided already: {experiment.decision}")
    repo = model_repository_dir or experiment.model_repository
    labels = model_repository.labels(repo, experiment.model)
    expected = {STABLE: experiment.stable_version, CANARY: experiment.canary_version}
    if labels != expected:
        raise ApplyError(f"{experiment.model}'s labels are {labels} in {repo}, not the experiment's {expected}: "
                         f"someone moved them; nothing done")
    if action == PROMOTE:
        moved = model_repository.promote(repo, experiment.model, experiment.canary_version, wait)
    else:
        moved = model_repository.canary(repo, experiment.model, experiment.stable_version, wait)
    experiment.status = config.DECIDED
    experiment.decision = {"action": action, "why": report["decision"]["why"], "labels": moved,
                           "applied_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    config.save(experiments_dir, experiment)
    return experiment.decision


def summary_of_arm(arm: Dict[str, Any]) -> Dict[str, Any]:
    """The per-arm fields simulation.json keeps."""
    return {k: arm[k] for k in ("version", "users", "requests", "predictions", "outcomes", "clicks", "ctr",
                                "clicks_per_request", "error_rate", "logloss", "auc", "calibration")}


def numpy_free(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python."""
    if isinstance(value, dict):
        return {k: numpy_free(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [numpy_free(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
