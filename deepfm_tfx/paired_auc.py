"""The AUC difference of two models scored on the same rows, with its noise.

DeLong, DeLong and Clarke-Pearson (1988), "Comparing the areas under two or
more correlated ROC curves", in the O(n log n) form of Sun and Xu (2014):
each model's AUC is the mean of per-row "placements" (for a positive, the
share of negatives it outscores; for a negative, the share of positives that
outscore it), and the variance of the difference comes from the covariance
of the two models' placements over the same positives and the same
negatives. Pairing matters: two similar models make the same mistakes, so
their difference is far less noisy than either AUC alone.

The change gate's rule (`change_gate`): a new model is blocked only when it
is worse than the baseline by more than `max_auc_drop` beyond noise, i.e.
when the whole 95% interval of AUC(new) - AUC(baseline) lies below
-max_auc_drop. Numpy and scipy only.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

Z_95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclasses.dataclass(frozen=True)
class PairedAuc:
    auc_new: float
    auc_baseline: float
    diff: float          # auc_new - auc_baseline
    se: float            # standard error of diff
    ci_low: float        # 95% interval of diff
    ci_high: float
    p_value: float       # two-sided, H0: the two AUCs are equal
    rows: int
    positives: int

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _placements(positive: np.ndarray, negative: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per positive: share of negatives below it; per negative: share of positives
    above it (ties count a half), from midranks."""
    from scipy.stats import rankdata
    m, n = len(positive), len(negative)
    together = rankdata(np.concatenate([positive, negative]))
    of_positives = (together[:m] - rankdata(positive)) / n
    of_negatives = 1.0 - (together[m:] - rankdata(negative)) / m
    return of_positives, of_negatives


def auc(labels, scores) -> float:
    """Exact AUC (ties count a half)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    of_positives, _ = _placements(scores[labels], scores[~labels])
    return float(of_positives.mean())


def delong(labels, new, baseline) -> PairedAuc:
    """AUC(new) - AUC(baseline) on the same rows, with its paired 95% interval."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.stack([np.asarray(new, np.float64).ravel(), np.asarray(baseline, np.float64).ravel()])
    if scores.shape[1] != len(labels):
        raise ValueError(f"{len(labels)} labels but {scores.shape[1]} scores")
    m, n = int(labels.sum()), int((~labels).sum())
    if m < 2 or n < 2:
        raise ValueError(f"need at least 2 positive and 2 negative rows, got {m} and {n}")
    v10 = np.empty((2, m))
    v01 = np.empty((2, n))
    for k in range(2):
        v10[k], v01[k] = _placements(scores[k][labels], scores[k][~labels])
    aucs = v10.mean(axis=1)
    s10, s01 = np.cov(v10), np.cov(v01)
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    se = math.sqrt(max(float(variance), 0.0))
    diff = float(aucs[0] - aucs[1])
    p_value = 1.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
    return PairedAuc(auc_new=float(aucs[0]), auc_baseline=float(aucs[1]), diff=diff, se=se,
                     ci_low=diff - Z_95 * se, ci_high=diff + Z_95 * se, p_value=p_value,
                     rows=len(labels), positives=m)


def change_gate(paired: Optional[PairedAuc], max_auc_drop: float) -> Tuple[bool, str]:
    """(passes, why): blocked only when the whole 95% interval lies below -max_auc_drop."""
    if paired is None:
        return True, "no baseline model yet: nothing to compare against"
    numbers = (f"AUC {paired.auc_new:.4f} vs baseline {paired.auc_baseline:.4f} on the same {paired.rows:,} rows: "
               f"difference {paired.diff:+.4f}, 95% CI [{paired.ci_low:+.4f}, {paired.ci_high:+.4f}]")
    if paired.ci_high < -max_auc_drop:
        return False, (f"{numbers} lies entirely below -{max_auc_drop:g} (max_auc_drop): worse than the "
                       f"baseline beyond noise")
    if paired.diff < -max_auc_drop:
        return True, (f"{numbers}: the drop exceeds max_auc_drop {max_auc_drop:g} but is within noise; passed")
    return True, f"{numbers}: not worse than the baseline by more than max_auc_drop {max_auc_drop:g}; passed"
