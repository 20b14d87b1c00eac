"""Estimates with confidence intervals, for one arm of an A/B test and for the difference of two.

Traffic is split by key (a user), not by row: one key's rows all land in one
arm and may be alike, so treating them as independent would understate the
noise. Means and ratios therefore use the cluster-robust (delta-method)
variance over keys: for a ratio R = sum(num) / sum(den) over K keys,

    Var(R) = K / (K - 1) * sum_k (num_k - R * den_k)^2 / (sum den)^2

which for one row per key is the familiar s^2 / n (s^2 with K - 1). CTR is
the ratio clicks / rows, online logloss the mean per-row logloss,
calibration the ratio sum(score) / sum(clicks) (TFMA's: mean prediction over
mean label, 1 is perfect). AUC's interval is DeLong's (its placements over
rows; it ignores the keys). Latency quantiles get a distribution-free
interval from order statistics. The two arms are independent samples, so
the variance of a difference is the sum of the two.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence

import numpy as np

NAN = float("nan")
EPSILON = 1e-7  # scores are clipped to [EPSILON, 1 - EPSILON] for logloss, as TFMA does


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    se: float
    low: float
    high: float
    confidence: float
    n: int
    p_value: Optional[float] = None  # differences only: two-sided, against no difference

    def to_dict(self) -> Dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @property
    def known(self) -> bool:
        return math.isfinite(self.value) and math.isfinite(self.se)


def z_of(confidence: float) -> float:
    from scipy.stats import norm
    return float(norm.ppf(0.5 + confidence / 2))


def _unknown(n: int, confidence: float, value: float = NAN) -> Estimate:
    return Estimate(value, NAN, NAN, NAN, confidence, n)


def _normal(value: float, se: float, confidence: float, n: int, p_value: Optional[float] = None) -> Estimate:
    z = z_of(confidence)
    return Estimate(float(value), float(se), float(value - z * se), float(value + z * se), confidence, n, p_value)


def ratio(num: Sequence[float], den: Sequence[float], clusters: Optional[Sequence] = None,
          confidence: float = 0.95) -> Estimate:
    """sum(num) / sum(den), with the cluster-robust variance over `clusters` (one per row;
    None: every row its own cluster)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    n = len(num)
    if clusters is not None and n:
        _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
        num, den = np.bincount(inverse, weights=num), np.bincount(inverse, weights=den)
    k, total = len(num), float(den.sum())
    if k == 0 or total == 0:
        return _unknown(n, confidence)
    value = float(num.sum()) / total
    if k < 2:
        return _unknown(n, confidence, value)
    residual = num - value * den
    se = math.sqrt(k / (k - 1) * float(np.dot(residual, residual))) / abs(total)
    return _normal(value, se, confidence, n)


def mean(values: Sequence[float], clusters: Optional[Sequence] = None, confidence: float = 0.95) -> Estimate:
    values = np.asarray(values, np.float64)
    return ratio(values, np.ones_like(values), clusters, confidence)


def logloss_per_row(labels: Sequence[float], scores: Sequence[float]) -> np.ndarray:
    y = np.asarray(labels, np.float64)
    q = np.clip(np.asarray(scores, np.float64), EPSILON, 1 - EPSILON)
    return -(y * np.log(q) + (1 - y) * np.log1p(-q))


def placements(positive: np.ndarray, negative: np.ndarray):
    """DeLong's placements from midranks: per positive, the share of negatives it outscores;
    per negative, the share of positives that outscore it (ties count a half)."""
    from scipy.stats import rankdata
    m, n = len(positive), len(negative)
    together = rankdata(np.concatenate([positive, negative]))
    of_positives = (together[:m] - rankdata(positive)) / n
    of_negatives = 1.0 - (together[m:] - rankdata(negative)) / m
    return of_positives, of_negatives


def auc(labels: Sequence[float], scores: Sequence[float], confidence: float = 0.95) -> Estimate:
    """ROC AUC with DeLong's variance: var(V10)/m + var(V01)/n."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        return _unknown(len(labels), confidence)
    v10, v01 = placements(scores[labels], scores[~labels])
    variance = float(np.var(v10, ddof=1)) / m + float(np.var(v01, ddof=1)) / n
    return _normal(float(v10.mean()), math.sqrt(max(variance, 0.0)), confidence, len(labels))


def difference(a: Estimate, b: Estimate, confidence: Optional[float] = None) -> Estimate:
    """a - b for independent samples; the p-value is two-sided against no difference."""
    confidence = confidence if confidence is not None else a.confidence
    if not (a.known and b.known):
        return _unknown(a.n + b.n, confidence, a.value - b.value)
    diff = a.value - b.value
    se = math.hypot(a.se, b.se)
    p_value = (1.0 if diff == 0 else 0.0) if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
    return _normal(diff, se, confidence, a.n + b.n, p_value)


def at_confidence(estimate: Estimate, confidence: float) -> Estimate:
    """The same normal estimate with a wider or narrower interval."""
    if not estimate.known:
        return dataclasses.replace(estimate, confidence=confidence)
    return _normal(estimate.value, estimate.se, confidence, estimate.n, estimate.p_value)


def quantile(values: Sequence[float], q: float, confidence: float = 0.95) -> Estimate:
    """The q-quantile with the order-statistic interval [x_(l), x_(u)], l and u from
    Binomial(n, q): it holds for any distribution (no normal approximation)."""
    from scipy.stats import binom
    x = np.sort(np.asarray(values, np.float64))
    n = len(x)
    if n == 0:
        return _unknown(0, confidence)
    value = float(np.quantile(x, q))
    alpha = 1 - confidence
    low_rank = int(binom.ppf(alpha / 2, n, q))          # 1-based order statistics
    high_rank = int(binom.ppf(1 - alpha / 2, n, q)) + 1
    low = float(x[min(max(low_rank, 1), n) - 1])
    high = float(x[min(max(high_rank, 1), n) - 1])
    return Estimate(value, NAN, low, high, confidence, n)


def log_ratio(a: Estimate, b: Estimate, confidence: Optional[float] = None) -> Estimate:
    """log(a / b) for independent samples, with the delta-method variance se_a^2 / a^2 + se_b^2 / b^2.
    A lift is exp(log ratio) - 1; on the log scale the estimate is symmetric, so an A/A test
    errs as often up as down."""
    confidence = confidence if confidence is not None else a.confidence
    if not (a.known and b.known) or a.value <= 0 or b.value <= 0:
        return _unknown(a.n + b.n, confidence)
    return _normal(math.log(a.value / b.value), math.hypot(a.se / a.value, b.se / b.value), confidence, a.n + b.n)


def as_lift(log_ratio_: Estimate) -> Estimate:
    """A log ratio's estimate and interval as a relative lift, exp(.) - 1 (se stays on the log scale)."""
    return dataclasses.replace(log_ratio_, value=math.expm1(log_ratio_.value), low=math.expm1(log_ratio_.low),
                               high=math.expm1(log_ratio_.high))


# ------------------------------------------------------------------ always-valid inference

def msprt_half_width(variance, tau: float, alpha: float):
    """Half-width of the always-valid (1 - alpha) confidence sequence of a normal estimate with
    `variance` V, from the mSPRT with a N(theta0, tau^2) mixture (Johari et al., KDD 2017):

        theta0 is rejected when Lambda = sqrt(V / (V + tau^2)) exp(tau^2 d^2 / (2 V (V + tau^2))) >= 1 / alpha,
        d = estimate - theta0, that is when |d| >= sqrt(V (V + tau^2) / tau^2 (log((V + tau^2) / V) + 2 log(1 / alpha)))

    Works on numpy arrays (rule_check vectorises over runs and looks)."""
    v = np.asarray(variance, np.float64)
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(v * (v + t2) / t2 * (np.log((v + t2) / v) + 2.0 * math.log(1.0 / alpha)))


def msprt_p_value(value: float, se: float, tau: float) -> float:
    """min(1, 1 / Lambda) against theta0 = 0: below alpha exactly when 0 is outside the sequence.
    (Across looks the always-valid p-value is the running minimum of this.)"""
    v, t2 = se * se, tau * tau
    if not (v > 0 and math.isfinite(value)):
        return NAN
    log_lambda = 0.5 * math.log(v / (v + t2)) + t2 * value * value / (2 * v * (v + t2))
    return float(min(1.0, math.exp(-log_lambda)))


def always_valid(estimate: Estimate, alpha: float, tau: float) -> Estimate:
    """The estimate with its always-valid (1 - alpha) interval: looking at it after every batch
    of data does not raise the chance that it ever misses the truth above alpha."""
    if not estimate.known:
        return dataclasses.replace(estimate, confidence=1 - alpha)
    half = float(msprt_half_width(estimate.se ** 2, tau, alpha)) if estimate.se > 0 else 0.0
    return Estimate(estimate.value, estimate.se, estimate.value - half, estimate.value + half, 1 - alpha,
                    estimate.n, msprt_p_value(estimate.value, estimate.se, tau))


# ------------------------------------------------------------------ sample-ratio mismatch

def srm_p_value(counts, shares) -> np.ndarray:
    """Pearson's chi-square test of assignment counts against the configured shares
    (the last axis: one entry per arm); vectorised over leading axes."""
    from scipy.stats import chi2
    counts = np.asarray(counts, np.float64)
    shares = np.asarray(shares, np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    expected = total * shares / shares.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(expected > 0, (counts - expected) ** 2 / expected, 0.0).sum(axis=-1)
    return chi2.sf(statistic, counts.shape[-1] - 1)
