"""The decision rule: promote the canary, keep the experiment running, or roll the canary back.

In order (the first that applies decides):
1. **Minimum sample.** Each arm needs `min_outcomes_per_arm` joined outcomes and
   `min_clicks_per_arm` clicks; until then, keep running.
2. **Guardrails** (roll back): the canary's calibration (mean score / CTR)
   cannot lie within 1 +- `max_calibration_error` (its whole interval is
   outside), or its p99 latency is above `max_latency_ratio` x stable's p99
   + `latency_slack_ms`, interval against interval (so noise alone does not
   trip it).
3. **Primary metric** (`logloss` by default, lower is better; or `auc`), as
   the difference canary - stable with its interval at 1 - alpha/looks (a
   Bonferroni split over the planned analyses, so looking `looks` times
   keeps the false-decision rate at alpha): the canary is better when the
   whole interval is better by more than `min_effect` -> promote; worse when
   the whole interval is worse -> roll back.
4. Otherwise keep running, unless `max_outcomes_per_arm` is reached: then
   the canary did not prove itself within the planned sample -> roll back.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import numpy as np

from deepfm_tfx.contracts import CANARY, KEEP_RUNNING, PROMOTE, ROLL_BACK, STABLE
from deepfm_tfx.experiments import statistics
from deepfm_tfx.experiments.config import Rule
from deepfm_tfx.experiments.statistics import Estimate


@dataclasses.dataclass
class ArmMetrics:
    outcomes: int
    clicks: int
    ctr: Estimate
    logloss: Estimate
    auc: Estimate
    calibration: Estimate
    latencies_ms: np.ndarray  # one per request


def _fmt(e: Estimate, digits: int = 4) -> str:
    return f"{e.value:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]"


def decide(stable: ArmMetrics, canary: ArmMetrics, rule: Rule) -> Dict[str, Any]:
    confidence = 1 - rule.alpha / rule.looks
    checks: List[Dict[str, Any]] = []

    def verdict(action: str, why: str) -> Dict[str, Any]:
        return {"action": action, "why": why, "confidence": confidence, "checks": checks}

    short = [f"{arm} has {m.outcomes} of {rule.min_outcomes_per_arm} outcomes and {m.clicks} of "
             f"{rule.min_clicks_per_arm} clicks"
             for arm, m in ((STABLE, stable), (CANARY, canary))
             if m.outcomes < rule.min_outcomes_per_arm or m.clicks < rule.min_clicks_per_arm]
    checks.append({"check": "minimum sample", "passed": not short, "detail": "; ".join(short) or
                   f"both arms have at least {rule.min_outcomes_per_arm} outcomes and {rule.min_clicks_per_arm} clicks"})
    if short:
        return verdict(KEEP_RUNNING, "not enough outcomes yet: " + "; ".join(short))

    calibration = statistics.at_confidence(canary.calibration, confidence)
    low, high = 1 - rule.max_calibration_error, 1 + rule.max_calibration_error
    miscalibrated = calibration.known and (calibration.low > high or calibration.high < low)
    checks.append({"check": "calibration guardrail", "passed": not miscalibrated,
                   "detail": f"canary calibration {calibration.value:.3f} [{calibration.low:.3f}, "
                             f"{calibration.high:.3f}] vs the allowed [{low:.3f}, {high:.3f}]"})
    if miscalibrated:
        return verdict(ROLL_BACK, f"the canary is miscalibrated: mean score / CTR is {calibration.value:.3f} "
                                  f"[{calibration.low:.3f}, {calibration.high:.3f}], all of it outside "
                                  f"[{low:.3f}, {high:.3f}]")

    if len(stable.latencies_ms) and len(canary.latencies_ms):
        p99_stable = statistics.quantile(stable.latencies_ms, 0.99, confidence)
        p99_canary = statistics.quantile(canary.latencies_ms, 0.99, confidence)
        limit = rule.max_latency_ratio * p99_stable.high + rule.latency_slack_ms
        slow = p99_canary.low > limit
        checks.append({"check": "latency guardrail", "passed": not slow,
                       "detail": f"canary p99 {p99_canary.value:.1f} ms (at least {p99_canary.low:.1f}) vs the limit "
                                 f"{limit:.1f} ms ({rule.max_latency_ratio:g} x stable p99 at most "
                                 f"{p99_stable.high:.1f} + {rule.latency_slack_ms:g})"})
        if slow:
            return verdict(ROLL_BACK, f"the canary is slow: p99 {p99_canary.value:.1f} ms, at least "
                                      f"{p99_canary.low:.1f}, over the limit {limit:.1f} ms")

    if rule.metric == "logloss":
        diff = statistics.difference(canary.logloss, stable.logloss, confidence)
        better, worse = diff.high < -rule.min_effect, diff.low > 0
    else:
        diff = statistics.difference(canary.auc, stable.auc, confidence)
        better, worse = diff.low > rule.min_effect, diff.high < 0
    direction = "lower" if rule.metric == "logloss" else "higher"
    detail = (f"{rule.metric} canary - stable = {_fmt(diff)} at {confidence:.1%} ({direction} is better; "
              f"p = {diff.p_value:.2g})" if diff.known else f"{rule.metric} difference unknown")
    checks.append({"check": f"primary metric ({rule.metric})", "passed": better, "detail": detail})
    if worse:
        return verdict(ROLL_BACK, f"the canary is worse: {detail}")
    if better:
        return verdict(PROMOTE, f"the canary is better: {detail}")
    if rule.max_outcomes_per_arm is not None and min(stable.outcomes, canary.outcomes) >= rule.max_outcomes_per_arm:
        return verdict(ROLL_BACK, f"the canary did not prove better within the planned {rule.max_outcomes_per_arm} "
                                  f"outcomes per arm: {detail}")
    return verdict(KEEP_RUNNING, f"no significant difference yet: {detail}")
