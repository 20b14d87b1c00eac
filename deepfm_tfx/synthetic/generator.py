"""Synthetic click logs in the Criteo Kaggle format, with a planted ground truth.

Labels are drawn from a known logit (first-order weights + pairwise FM
interactions + a small nonlinear part), so the Bayes-optimal AUC and logloss of
every span are known and written beside it as `bayes.json`. A model's AUC can
then be judged against the best any model could do on that data.

Layout: <out>/span-<N>/part-<K>.csv, one weekly span per folder.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from deepfm_tfx.machine import usable_cpus
from deepfm_tfx.spans import date_of
from deepfm_tfx.spans import folder as span_folder
from deepfm_tfx.synthetic import VERSION  # noqa: F401 (part of this module's contract)
NUM_NUMERICAL = 13
NUM_CATEGORICAL = 26
NUMERICAL = [f"I{i}" for i in range(1, NUM_NUMERICAL + 1)]
CATEGORICAL = [f"C{i}" for i in range(1, NUM_CATEGORICAL + 1)]
COLUMNS = ["label"] + NUMERICAL + CATEGORICAL
BROKEN_COLUMN = "C2"

# Data profiles: "small" is defined here; "criteo" in realistic.py.
PROFILES = ("small", "criteo")
# Cardinalities span three orders of magnitude; small enough that 500k rows
# can pin down every id's weights, so a good model gets near the Bayes AUC.
_CARDINALITIES = [2, 5, 10, 25, 50, 100, 200, 400]
_TRUE_DIM = 4
_ZIPF_EXPONENT = 1.1
_ROWS_PER_FILE = 250_000
_TARGET_CTR = 0.25
# Weekly random-walk step of the true weights. 0.06 costs last week's truth
# about 0.015 AUC on the new week: retraining must pay for itself.
DEFAULT_DRIFT = 0.06


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties averaged."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


@dataclasses.dataclass
class GroundTruth:
    """The planted model. Only some fields are informative, as in real logs."""
    cardinality: List[int]
    id_strings: List[np.ndarray]          # per categorical field: its 8-hex ids
    id_probs: List[np.ndarray]            # per field: power-law frequencies
    cat_missing: np.ndarray               # per field: missing rate
    num_mu: np.ndarray
    num_sigma: np.ndarray
    num_missing: np.ndarray
    cat_w: List[np.ndarray]               # first-order weight per id
    cat_v: List[np.ndarray]               # FM vector per id
    num_w: np.ndarray
    num_v: np.ndarray                     # [13, dim]
    bias: float = 0.0

    @classmethod
    def create(cls, seed: int) -> "GroundTruth":
        rng = np.random.default_rng(seed)
        card = [_CARDINALITIES[i % len(_CARDINALITIES)] for i in range(NUM_CATEGORICAL)]
        informative_cat = rng.random(NUM_CATEGORICAL) < 0.6
        informative_num = rng.random(NUM_NUMERICAL) < 0.6
        ids, probs, w, v = [], [], [], []
        for f in range(NUM_CATEGORICAL):
            n = card[f]
            ids.append(np.array([f"{x:08x}" for x in rng.choice(2**32, size=n, replace=False)]))
            p = 1.0 / np.arange(1, n + 1) ** _ZIPF_EXPONENT
            probs.append(p / p.sum())
            scale = 1.0 if informative_cat[f] else 0.0
            w.append(rng.normal(0, 0.25, n) * scale)
            v.append(rng.normal(0, 0.22, (n, _TRUE_DIM)) * scale)
        num_scale = informative_num.astype(float)
        truth = cls(
            cardinality=card, id_strings=ids, id_probs=probs,
            cat_missing=np.where(rng.random(NUM_CATEGORICAL) < 0.3, rng.uniform(0.05, 0.4, NUM_CATEGORICAL), 0.0),
            num_mu=rng.uniform(0.5, 4.0, NUM_NUMERICAL),
            num_sigma=rng.uniform(0.5, 1.5, NUM_NUMERICAL),
            num_missing=np.where(rng.random(NUM_NUMERICAL) < 0.5, rng.uniform(0.05, 0.4, NUM_NUMERICAL), 0.0),
            cat_w=w, cat_v=v,
            num_w=rng.normal(0, 0.2, NUM_NUMERICAL) * num_scale,
            num_v=rng.normal(0, 0.22, (NUM_NUMERICAL, _TRUE_DIM)) * num_scale[:, None],
        )
        truth.bias = calibrated_bias(truth, np.random.default_rng([seed, 0]))
        return truth

    def drifted(self, rng: np.random.Generator, amount: float) -> "GroundTruth":
        """A slow random walk of the weights: next week's world."""
        if amount <= 0:
            return self
        step = lambda a: a + rng.normal(0, amount, a.shape) * (a != 0)
        return dataclasses.replace(
            self, cat_w=[step(a) for a in self.cat_w], cat_v=[step(a) for a in self.cat_v],
            num_w=step(self.num_w), num_v=step(self.num_v))

    def sample(self, rng: np.random.Generator, rows: int) -> Dict[str, np.ndarray]:
        """Draws rows; returns raw column values plus the true click probability."""
        out = self.draw_columns(rng, rows)
        out["_prob"] = self.probability_of(out)
        return out

    def draw_columns(self, rng: np.random.Generator, rows: int) -> Dict[str, np.ndarray]:
        """Draws raw columns; their logit comes from the columns alone, as a model sees them."""
        out = draw_numerical(self, rng, rows)
        for f in range(NUM_CATEGORICAL):
            idx = rng.choice(self.cardinality[f], size=rows, p=self.id_probs[f])
            present = rng.random(rows) >= self.cat_missing[f]
            out[CATEGORICAL[f]] = np.where(present, self.id_strings[f][idx], "")
        return out

    def logit_of(self, columns: Dict[str, np.ndarray]) -> np.ndarray:
        """The true logit (without the intercept) of raw column values: numbers as
        str ("" = missing) or float (NaN = missing), ids as str ("" = missing)."""
        rows = len(columns[NUMERICAL[0]])
        num_emb, first, z_all = numerical_part(self, columns, _TRUE_DIM)
        emb = np.concatenate([num_emb, np.zeros((rows, NUM_CATEGORICAL, _TRUE_DIM))], axis=1)
        for f, name in enumerate(CATEGORICAL):
            order = np.argsort(self.id_strings[f])
            ids = self.id_strings[f][order]
            given = np.asarray(columns[name]).astype(ids.dtype)
            at = np.minimum(np.searchsorted(ids, given), len(ids) - 1)
            known = ids[at] == given  # not missing, and an id the truth draws (not a broken column)
            idx = order[at]
            first += np.where(known, self.cat_w[f][idx], 0.0)
            emb[:, NUM_NUMERICAL + f] = np.where(known[:, None], self.cat_v[f][idx], 0.0)
        return assemble_logit(emb, first, z_all)

    def probability_of(self, columns: Dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.logit_of(columns) + self.bias)))


# What both profiles' truths share: numbers, the FM assembly and the intercept.

def draw_numerical(truth, rng: np.random.Generator, rows: int,
                   floats: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """Heavy-tailed counts as Criteo's I1-I13, as strings ("" = missing); also as
    floats (NaN = missing) into `floats` when given, which spares parsing them back."""
    out: Dict[str, np.ndarray] = {}
    for j in range(NUM_NUMERICAL):
        logx = rng.normal(truth.num_mu[j], truth.num_sigma[j], rows)
        value = np.floor(np.expm1(np.maximum(logx, 0.0)))
        present = rng.random(rows) >= truth.num_missing[j]
        out[NUMERICAL[j]] = np.where(present, value.astype(np.int64).astype(str), "")
        if floats is not None:
            floats[NUMERICAL[j]] = np.where(present, value, np.nan)
    return out


def numerical_part(truth, columns: Dict[str, np.ndarray], dim: int):
    """The numbers' FM vectors [rows, 13, dim], first-order sum [rows] and z-scores [rows, 13]."""
    rows = len(columns[NUMERICAL[0]])
    emb = np.zeros((rows, NUM_NUMERICAL, dim))
    first = np.zeros(rows)
    z_all = np.zeros((rows, NUM_NUMERICAL))
    for j, name in enumerate(NUMERICAL):
        raw = np.asarray(columns[name])
        if raw.dtype.kind in "USO":
            raw = np.where(raw.astype(str) == "", "nan", raw)
        value = raw.astype(np.float64)
        present = ~np.isnan(value)
        value = np.where(present, value, 0.0)
        z = np.where(present, (np.log1p(value) - truth.num_mu[j]) / truth.num_sigma[j], 0.0)
        z_all[:, j] = z
        first += truth.num_w[j] * z
        emb[:, j] = z[:, None] * truth.num_v[j]
    return emb, first, z_all


def assemble_logit(emb: np.ndarray, first: np.ndarray, z_all: np.ndarray) -> np.ndarray:
    """First order + FM over all fields' vectors + a small nonlinear part of the numbers."""
    square_of_sum = emb.sum(axis=1) ** 2
    sum_of_squares = (emb ** 2).sum(axis=1)
    fm = 0.5 * (square_of_sum - sum_of_squares).sum(axis=1)
    nonlinear = 0.4 * np.tanh(z_all[:, 0] * z_all[:, 1]) + 0.3 * np.abs(z_all[:, 2]) - 0.24
    return first + fm + nonlinear


def calibrated_bias(truth, rng: np.random.Generator) -> float:
    """The intercept that gives a Criteo-like base CTR."""
    logit = truth.logit_of(truth.draw_columns(rng, 20_000))
    lo, hi = -10.0, 10.0
    for _ in range(50):  # bisection: mean CTR is monotone in the bias
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean(1 / (1 + np.exp(-(logit + mid)))) < _TARGET_CTR else (lo, mid)
    return (lo + hi) / 2


@functools.lru_cache(maxsize=8)
def create_truth(profile: str, seed: int):
    """The planted model of a profile: "small" (GroundTruth) or "criteo" (realistic.RealisticTruth).

    Kept per (profile, seed), and shared: a truth is never changed after it is made (`drifted` makes
    a new one). Making one draws 20,000 rows to calibrate its bias, about 0.3 s of CPU, and a run's
    week end wants the span's and the week before's, as do the tests' generated weeks."""
    if profile == "small":
        return GroundTruth.create(seed)
    if profile == "criteo":
        from deepfm_tfx.synthetic.realistic import RealisticTruth
        return RealisticTruth.create(seed)
    raise ValueError(f"unknown data profile {profile!r}; choose from {', '.join(PROFILES)}")


def truth_of_span(seed: int, span: int, drift: float, profile: str = "small"):
    """Replays the weekly drift to get span N's planted model."""
    truth = create_truth(profile, seed)
    drift_rng = np.random.default_rng([seed, 7])
    for _ in range(2, span + 1):
        truth = truth.drifted(drift_rng, drift)
    return truth


def generate(out_dir: str, rows: int, spans: int = 1, seed: int = 42, drift: float = DEFAULT_DRIFT,
             first_span: int = 1, shuffle_labels_span: Optional[int] = None,
             broken_column_span: Optional[int] = None, profile: str = "small") -> List[Dict]:
    """Writes `spans` weekly spans of `rows` rows each; returns their Bayes metrics.

    Deterministic for a given seed and profile: span N is always the same data.
    `profile`: "small" (a few thousand ids, each seen often: fast tests) or
    "criteo" (the Kaggle log's id spaces and long tails, see realistic.py).
    `shuffle_labels_span` plants a broken week (labels permuted) for gate tests;
    `broken_column_span` one whose column C2 holds a single unseen id (an
    upstream join gone wrong).
    """
    if rows < 1 or spans < 1:
        raise ValueError("rows and spans must be positive")
    truth = create_truth(profile, seed)
    drift_rng = np.random.default_rng([seed, 7])
    os.makedirs(out_dir, exist_ok=True)
    reports = []
    for span in range(1, first_span + spans):
        if span > 1:
            truth = truth.drifted(drift_rng, drift)
        if span < first_span:
            continue
        rng = np.random.default_rng([seed, span])
        span_dir = span_folder(out_dir, span)
        os.makedirs(span_dir, exist_ok=True)
        parts = [(part, min(_ROWS_PER_FILE, rows - start))
                 for part, start in enumerate(range(0, rows, _ROWS_PER_FILE))]
        all_labels, all_probs = [], []
        for labels, prob in _write_parts(truth, rng, parts, span_dir, shuffle=span == shuffle_labels_span,
                                         broken=span == broken_column_span):
            all_labels.append(labels)
            all_probs.append(prob)
        labels, prob = np.concatenate(all_labels), np.concatenate(all_probs)
        report = {"span": span, "rows": rows, "seed": seed, "drift": drift, "profile": profile,
                  "ctr": float(labels.mean()),
                  "bayes_auc": auc(labels, prob), "bayes_logloss": logloss(labels, prob),
                  "labels_shuffled": span == shuffle_labels_span,
                  "broken_column": BROKEN_COLUMN if span == broken_column_span else None}
        with open(os.path.join(span_dir, "bayes.json"), "w") as f:
            json.dump(report, f, indent=2)
        reports.append(report)
    return reports


def _write_part(truth, rng: np.random.Generator, n: int, shuffle: bool, broken: bool,
                path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Draws one file's rows from `rng` and writes them; (labels, prob)."""
    data = truth.sample(rng, n)
    prob = data.pop("_prob")
    labels = (rng.random(n) < prob).astype(np.int64)
    if shuffle:
        labels = rng.permutation(labels)
    if broken:
        data[BROKEN_COLUMN] = np.full(n, "deadbeef")
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    pd.DataFrame({"label": labels, **data}, columns=COLUMNS).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return labels, prob


def _skip_part(truth, rng: np.random.Generator, n: int, shuffle: bool) -> None:
    """Advances `rng` past the draws _write_part makes, without the logits or the file."""
    truth.draw_columns(rng, n)
    rng.random(n)
    if shuffle:
        rng.permutation(n)  # the same draws as permuting n labels: only the length counts


def _write_parts(truth, rng: np.random.Generator, parts: List[Tuple[int, int]], span_dir: str,
                 shuffle: bool, broken: bool) -> Iterable[Tuple[np.ndarray, np.ndarray]]:
    """(labels, prob) of each file, in order, the files drawn from the span's one stream. With
    several files and CPUs each file is written by a worker process from a copy of the stream
    where the file starts, while this process only draws, to find where the next one starts
    (a sixth of the work): the same bytes as one process (500k rows: 15.9 s -> 11.9 s on 2
    cores). At most one file per CPU is in memory, so memory does not grow with the span."""
    import multiprocessing
    paths = [os.path.join(span_dir, f"part-{part:03d}.csv") for part, _ in parts]
    cpus = min(len(parts), usable_cpus())
    if cpus < 2 or multiprocessing.current_process().daemon:  # a daemon (a Celery task's) may not fork
        for (_, n), path in zip(parts, paths):
            yield _write_part(truth, rng, n, shuffle, broken, path)
        return
    import concurrent.futures
    import copy
    # spawn: the caller may hold TensorFlow's threads, which a fork would copy mid-flight.
    with concurrent.futures.ProcessPoolExecutor(cpus, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = []
        for (_, n), path in zip(parts, paths):
            if len(pending) == cpus:
                yield pending.pop(0).result()
            pending.append(pool.submit(_write_part, truth, copy.deepcopy(rng), n, shuffle, broken, path))
            _skip_part(truth, rng, n, shuffle)
        for future in pending:
            yield future.result()


def bayes_of_rows(report: Dict, chunks: Iterable[Tuple[Dict[str, np.ndarray], np.ndarray]]) -> Dict[str, float]:
    """The Bayes-optimal AUC and logloss on given rows of a span (e.g. the held-out
    split a model is evaluated on), so model and optimum see the same rows.
    `chunks` yields (columns, labels); empty when there are no rows or the
    labels no longer come from the truth."""
    if report.get("labels_shuffled"):
        return {}
    profile = report.get("profile", "small")  # reports written before profiles existed are small
    truth = truth_of_span(report["seed"], report["span"], report["drift"], profile)
    # Last week's truth on this week's rows: what drift costs a perfect stale model.
    stale = truth_of_span(report["seed"], report["span"] - 1, report["drift"], profile) \
        if report["span"] > 1 else None
    probs, stale_probs, labels = [], [], []
    for columns, chunk_labels in chunks:
        probs.append(truth.probability_of(columns))
        if stale is not None:
            stale_probs.append(stale.probability_of(columns))
        labels.append(chunk_labels)
    if not labels:
        return {}
    labels, prob = np.concatenate(labels), np.concatenate(probs)
    result = {"bayes_auc": auc(labels, prob), "bayes_logloss": logloss(labels, prob), "bayes_rows": int(len(labels))}
    if stale is not None:
        result["stale_bayes_auc"] = auc(labels, np.concatenate(stale_probs))
    return result


def read_bayes(data_dir: str, span: int) -> Optional[Dict]:
    path = os.path.join(span_folder(data_dir, span), "bayes.json")
    if not os.path.exists(path):  # a Hive table's span: the partition folder of its date
        found = sorted(glob.glob(os.path.join(glob.escape(data_dir), f"*={date_of(span)}", "bayes.json")))
        if not found:
            return None
        path = found[0]
    with open(path) as f:
        return json.load(f)
