"""The decision rule: promote the canary, keep the experiment running, roll the canary back, or
stop deciding because the split itself is broken.

In order (the first that applies decides):
0. **Sample-ratio mismatch.** A chi-square test of the users each arm got against
   the configured split; below `srm_p_value` (0.001) the assignment is broken
   (a redirect, a crash, a bot filter on one arm), so no metric can be trusted:
   nothing is promoted and the report says why.
1. **Minimum sample.** Each arm needs `min_outcomes_per_arm` joined outcomes and
   `min_clicks_per_arm` clicks; until then, keep running.
2. **Guardrails** (roll back): the canary's request error rate is surely above
   stable's by more than `max_error_rate_increase`; its calibration (mean
   score / CTR; for ranking traffic each shown item's score times its position's
   examination 1/log2(position + 1)) cannot lie within 1 +- `max_calibration_error`;
   its p99 latency is above `max_latency_ratio` x stable's p99 + `latency_slack_ms`,
   interval against interval (so noise alone does not trip it).
3. **Primary metric.** `ctr` (the default): the relative CTR lift of shown
   items, canary / stable - 1, with its always-valid interval (the mSPRT's
   confidence sequence at level alpha on log(canary / stable), mixture spread
   log(1 + `sized_lift`)): it may be
   read after every batch of outcomes without raising the false-decision rate
   above alpha. Promote when the whole interval is above `min_effect`, roll back
   when it is below 0. `logloss` or `auc` (per scored row): the difference with
   its interval at 1 - alpha/looks (Bonferroni over `looks` planned analyses).
   The guardrails' intervals follow the same scheme as the primary metric.
4. Otherwise keep running, unless `max_outcomes_per_arm` is reached: then the
   canary did not prove itself within the planned sample -> roll back.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional

import numpy as np

from deepfm_tfx.contracts import CANARY, KEEP_RUNNING, PROMOTE, ROLL_BACK, SAMPLE_RATIO_MISMATCH, STABLE
from deepfm_tfx.experiments import statistics
from deepfm_tfx.experiments.config import Rule
from deepfm_tfx.experiments.statistics import Estimate

_UNKNOWN = Estimate(float("nan"), float("nan"), float("nan"), float("nan"), 0.95, 0)


@dataclasses.dataclass
class ArmMetrics:
    outcomes: int   # joined outcomes: impressions for ranking traffic
    clicks: int
    ctr: Estimate
    logloss: Estimate
    auc: Estimate
    calibration: Estimate
    latencies_ms: np.ndarray  # one per request
    requests: int = 0
    users: int = 0
    clicks_per_request: Estimate = _UNKNOWN
    error_rate: Estimate = _UNKNOWN


def _fmt(e: Estimate, digits: int = 4) -> str:
    return f"{e.value:+.{digits}f} [{e.low:+.{digits}f}, {e.high:+.{digits}f}]"


def sample_ratio(stable_users: int, canary_users: int, canary_share: float) -> Optional[float]:
    """The chi-square p-value of users per arm against the split; None below 10 users."""
    if stable_users + canary_users < 10:
        return None
    return float(statistics.srm_p_value([stable_users, canary_users], [1 - canary_share, canary_share]))


def decide(stable: ArmMetrics, canary: ArmMetrics, rule: Rule, canary_share: float = 0.5) -> Dict[str, Any]:
    always_valid = rule.metric == "ctr"
    confidence = 1 - rule.alpha if always_valid else 1 - rule.alpha / rule.looks
    checks: List[Dict[str, Any]] = []

    def verdict(action: str, why: str) -> Dict[str, Any]:
        return {"action": action, "why": why, "confidence": confidence, "always_valid": always_valid,
                "checks": checks}

    def interval(e: Estimate, tau: float) -> Estimate:
        return statistics.always_valid(e, rule.alpha, tau) if always_valid else statistics.at_confidence(e, confidence)

    p_srm = sample_ratio(stable.users, canary.users, canary_share)
    broken = p_srm is not None and p_srm < rule.srm_p_value
    srm = (f"{stable.users:,} users in {STABLE} and {canary.users:,} in {CANARY} against a configured "
           f"{1 - canary_share:g}/{canary_share:g} split: chi-square p = "
           + ("-" if p_srm is None else f"{p_srm:.2g}"))
    checks.append({"check": "sample ratio", "passed": not broken, "p_value": p_srm, "detail": srm})
    if broken:
        return verdict(SAMPLE_RATIO_MISMATCH, f"the split is broken ({srm} < {rule.srm_p_value:g}): the arms are "
                                              f"not comparable, so nothing is decided or promoted; find the cause")

    short = [f"{arm} has {m.outcomes} of {rule.min_outcomes_per_arm} outcomes and {m.clicks} of "
             f"{rule.min_clicks_per_arm} clicks"
             for arm, m in ((STABLE, stable), (CANARY, canary))
             if m.outcomes < rule.min_outcomes_per_arm or m.clicks < rule.min_clicks_per_arm]
    checks.append({"check": "minimum sample", "passed": not short, "detail": "; ".join(short) or
                   f"both arms have at least {rule.min_outcomes_per_arm} outcomes and {rule.min_clicks_per_arm} clicks"})
    if short:
        return verdict(KEEP_RUNNING, "not enough outcomes yet: " + "; ".join(short))

    errors = statistics.difference(canary.error_rate, stable.error_rate)
    if errors.known:
        errors = interval(errors, max(rule.max_error_rate_increase, 1e-4))
        failing = errors.low > rule.max_error_rate_increase
        checks.append({"check": "error-rate guardrail", "passed": not failing,
                       "detail": f"error rate canary - stable = {_fmt(errors)} vs the allowed "
                                 f"+{rule.max_error_rate_increase:g}"})
        if failing:
            return verdict(ROLL_BACK, f"the canary fails more requests: error rate canary - stable = {_fmt(errors)}, "
                                      f"all of it above +{rule.max_error_rate_increase:g}")

    calibration = interval(canary.calibration, max(rule.max_calibration_error, 1e-3))
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

    if rule.metric == "ctr":
        # On the log scale (symmetric); shown as the lift exp(.) - 1.
        log_lift = statistics.always_valid(statistics.log_ratio(canary.ctr, stable.ctr), rule.alpha,
                                           math.log1p(rule.sized_lift))
        better, worse = log_lift.low > math.log1p(rule.min_effect), log_lift.high < 0
        diff = statistics.as_lift(log_lift)
        detail = (f"CTR lift canary / stable - 1 = {diff.value:+.2%} [{diff.low:+.2%}, {diff.high:+.2%}] always "
                  f"valid at {confidence:.0%} (mSPRT, "
                  f"p = {diff.p_value:.2g})" if diff.known else "CTR lift unknown")
    elif rule.metric == "logloss":
        diff = statistics.difference(canary.logloss, stable.logloss, confidence)
        better, worse = diff.high < -rule.min_effect, diff.low > 0
    else:
        diff = statistics.difference(canary.auc, stable.auc, confidence)
        better, worse = diff.low > rule.min_effect, diff.high < 0
    if rule.metric != "ctr":
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
