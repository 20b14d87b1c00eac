"""The realistic ("criteo") profile: Criteo Kaggle's id spaces, with a planted truth.

Each categorical field draws ids from a power law over the Kaggle log's own
cardinality for that field (C3: 10.1M ids), so at 500k rows most ids are seen
once and the fields hold hundreds of thousands of distinct ids, as in the real
log. An id's planted weights shrink with its frequency: a rare id carries
little signal on its own, so what a model cannot learn from a handful of
sightings costs it little, and the Bayes AUC is in Criteo's range.

No per-id table is kept (33.8M ids would take gigabytes): an id's index, its
8-hex string and its weights are pure functions of (seed, field, index),
computed on demand with integer hashes. The string maps back to the index, so
the truth of any written row can be recomputed.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import numpy as np
from scipy.special import ndtri

# Distinct values per field in the 45.8M-row Kaggle Display Advertising log.
KAGGLE_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
                        27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
# Share of empty cells per field in that log (rounded).
KAGGLE_CATEGORICAL_MISSING = (0, 0, .034, .034, 0, .12, 0, 0, 0, 0, 0, .034, 0, 0, 0, .034, 0, 0, .44, .44,
                              .034, .76, 0, .034, .44, .44)
KAGGLE_NUMERICAL_MISSING = (.45, 0, .21, .22, .026, .23, .04, .001, .04, .45, .04, .76, .22)

TRUE_DIM = 4
# An id drawn with probability p keeps p / (p + SIGNAL_HALF) of its weights:
# one expected in every 1,000 rows (500 sightings in 500k) keeps half, one seen
# 25 times in 500k keeps 5%. With 5e-5 (half at 25 sightings) no model came
# within 0.03 of the Bayes AUC at 500k rows: ids seen 25-500 times carried
# signal that so few sightings cannot estimate.
SIGNAL_HALF = 1e-3
# Scales of the planted weights, set so the Bayes AUC is about 0.80.
WEIGHT_SCALE = 0.24
VECTOR_SCALE = 0.17
INFORMATIVE_SHARE = 0.75

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_M32 = np.uint64(0xFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (splitmix64's finaliser), elementwise; wraps on purpose."""
    with np.errstate(over="ignore"):
        z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _normal(key: int, index: np.ndarray, stream: int) -> np.ndarray:
    """A standard normal per index, a pure function of (key, index, stream)."""
    with np.errstate(over="ignore"):
        h = _splitmix64(_splitmix64(np.uint64(key) ^ np.uint64(stream) * np.uint64(0xD1B54A32D192ED03))
                        ^ index.astype(np.uint64))
    uniform = ((h >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0 ** 53
    return ndtri(uniform)


def mix32(x: np.ndarray) -> np.ndarray:
    """A bijection of 32-bit integers (lowbias32): index -> id."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) & _M32
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x7FEB352D)) & _M32
        x ^= x >> np.uint64(15)
        x = (x * np.uint64(0x846CA68B)) & _M32
        x ^= x >> np.uint64(16)
        return x


def unmix32(x: np.ndarray) -> np.ndarray:
    """The inverse of mix32: id -> index."""
    with np.errstate(over="ignore"):
        x = x.astype(np.uint64) & _M32
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(0x43021123)) & _M32
        x ^= (x >> np.uint64(15)) ^ (x >> np.uint64(30))
        x = (x * np.uint64(0x1D69E2A5)) & _M32
        x ^= x >> np.uint64(16)
        return x


_HEX = np.frombuffer("0123456789abcdef".encode("utf-32-le"), np.uint32)
_HEX_VALUE = np.full(128, -1, np.int64)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
_SHIFTS = np.arange(28, -4, -4).astype(np.uint64)
_POWERS = np.uint64(16) ** np.arange(7, -1, -1).astype(np.uint64)


def hex8(x: np.ndarray) -> np.ndarray:
    """32-bit integers as 8 lowercase hex digits ('<U8'), vectorised: the code points are built directly."""
    digits = (x.astype(np.uint64)[:, None] >> _SHIFTS) & np.uint64(0xF)
    return np.ascontiguousarray(_HEX[digits.astype(np.intp)]).view("<U8").ravel()


def parse_hex8(strings: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(values, valid) of 8-hex-digit strings; anything else ("" included) is invalid."""
    strings = np.asarray(strings)
    if strings.dtype.kind != "U" or strings.dtype.itemsize < 9 * 4:
        strings = strings.astype("<U9")  # room for a 9th character: longer strings are invalid
    points = np.ascontiguousarray(strings).view(np.uint32).reshape(len(strings), -1)
    head, tail = points[:, :8], points[:, 8:]
    digits = _HEX_VALUE[np.minimum(head, 127).astype(np.intp)]
    valid = (digits >= 0).all(axis=1) & (head < 128).all(axis=1) & (tail == 0).all(axis=1)
    values = (np.maximum(digits, 0).astype(np.uint64) * _POWERS).sum(axis=1, dtype=np.uint64)
    return values, valid


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """Density proportional to (x + offset)^-exponent on [0, size): index 0 is the most common id."""
    size: int
    exponent: float
    offset: float

    def _ends(self):
        e = 1.0 - self.exponent
        return self.offset ** e, (self.size + self.offset) ** e, e

    def draw(self, uniform: np.ndarray) -> np.ndarray:
        a, b, e = self._ends()
        x = (a + uniform * (b - a)) ** (1.0 / e) - self.offset
        return np.minimum(np.floor(x), self.size - 1).astype(np.int64)

    def probability(self, index: np.ndarray) -> np.ndarray:
        a, b, e = self._ends()
        lo = (index.astype(np.float64) + self.offset) ** e
        hi = (index.astype(np.float64) + 1.0 + self.offset) ** e
        return (hi - lo) / (b - a)


@dataclasses.dataclass
class RealisticTruth:
    """The planted model of the criteo profile. Same interface as generator.GroundTruth."""
    seed: int
    laws: Tuple[PowerLaw, ...]
    salts: Tuple[int, ...]                # per field: id = mix32(index ^ salt)
    informative: np.ndarray               # per field: 0 or 1
    cat_missing: np.ndarray
    num_mu: np.ndarray
    num_sigma: np.ndarray
    num_missing: np.ndarray
    num_w: np.ndarray
    num_v: np.ndarray                     # [13, TRUE_DIM]
    drift_keys: Tuple[int, ...] = ()      # one hash key per weekly drift step
    drift: float = 0.0
    bias: float = 0.0

    @classmethod
    def create(cls, seed: int) -> "RealisticTruth":
        from deepfm_tfx.synthetic import generator
        rng = np.random.default_rng([seed, 1013])
        n_cat, n_num = len(KAGGLE_CARDINALITIES), generator.NUM_NUMERICAL
        laws = tuple(PowerLaw(size, float(rng.uniform(1.02, 1.2)), float(rng.uniform(1.0, 8.0)))
                     for size in KAGGLE_CARDINALITIES)
        informative_num = (rng.random(n_num) < INFORMATIVE_SHARE).astype(float)
        truth = cls(
            seed=seed, laws=laws, salts=tuple(int(s) for s in rng.integers(0, 2 ** 32, n_cat)),
            informative=(rng.random(n_cat) < INFORMATIVE_SHARE).astype(float),
            cat_missing=np.asarray(KAGGLE_CATEGORICAL_MISSING, float),
            num_mu=rng.uniform(0.5, 4.0, n_num), num_sigma=rng.uniform(0.5, 1.5, n_num),
            num_missing=np.asarray(KAGGLE_NUMERICAL_MISSING, float),
            num_w=rng.normal(0, 0.2, n_num) * informative_num,
            num_v=rng.normal(0, 0.22, (n_num, TRUE_DIM)) * informative_num[:, None])
        truth.bias = generator.calibrated_bias(truth, np.random.default_rng([seed, 0]))
        return truth

    def drifted(self, rng: np.random.Generator, amount: float) -> "RealisticTruth":
        """Next week's world: every informative id's weights take a random-walk step."""
        if amount <= 0:
            return self
        if self.drift_keys and amount != self.drift:
            raise ValueError("a realistic truth drifts by one amount every week")
        return dataclasses.replace(self, drift_keys=self.drift_keys + (int(rng.integers(2 ** 62)),), drift=amount)

    def categorical_weights(self, field: int, index: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """First-order weight [n] and FM vector [n, TRUE_DIM] of ids of a field."""
        key = (self.seed * 1_000_003 + field) & 0xFFFFFFFFFFFF
        p = self.laws[field].probability(index)
        signal = self.informative[field] * p / (p + SIGNAL_HALF)
        w = _normal(key, index, 0)
        v = np.stack([_normal(key, index, 1 + d) for d in range(TRUE_DIM)], axis=1)
        for step, drift_key in enumerate(self.drift_keys):
            dk = (drift_key + field) & 0xFFFFFFFFFFFF
            w = w + self.drift / WEIGHT_SCALE * _normal(dk, index, 100)
            v = v + self.drift / VECTOR_SCALE * np.stack(
                [_normal(dk, index, 101 + d) for d in range(TRUE_DIM)], axis=1)
        return WEIGHT_SCALE * signal * w, VECTOR_SCALE * signal[:, None] * v

    def _draw_index(self, rng: np.random.Generator, field: int, rows: int) -> Tuple[np.ndarray, np.ndarray]:
        index = self.laws[field].draw(rng.random(rows))
        present = rng.random(rows) >= self.cat_missing[field]
        return index, present

    def id_strings(self, field: int, index: np.ndarray) -> np.ndarray:
        return hex8(mix32(index.astype(np.uint64) ^ np.uint64(self.salts[field])))

    def index_of(self, field: int, column: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(index, known) of a column's ids; unknown: missing, malformed or never drawn."""
        values, valid = parse_hex8(column)
        index = (unmix32(values) ^ np.uint64(self.salts[field])).astype(np.int64)
        known = valid & (index < self.laws[field].size)
        return np.where(known, index, 0), known

    def sample(self, rng: np.random.Generator, rows: int) -> Dict[str, np.ndarray]:
        """Draws rows; returns raw column values plus the true click probability."""
        out, numbers, indices = self._draw(rng, rows)
        out["_prob"] = 1.0 / (1.0 + np.exp(-(self._logit(numbers, indices) + self.bias)))
        return out

    def draw_columns(self, rng: np.random.Generator, rows: int) -> Dict[str, np.ndarray]:
        return self._draw(rng, rows)[0]

    def _draw(self, rng: np.random.Generator, rows: int):
        from deepfm_tfx.synthetic import generator
        numbers: Dict[str, np.ndarray] = {}
        out = generator.draw_numerical(self, rng, rows, numbers)
        indices = []
        for f, name in enumerate(generator.CATEGORICAL):
            index, present = self._draw_index(rng, f, rows)
            out[name] = np.where(present, self.id_strings(f, index), "")
            indices.append((index, present))
        return out, numbers, indices

    def logit_of(self, columns: Dict[str, np.ndarray]) -> np.ndarray:
        """The true logit (without the intercept) of raw column values, as GroundTruth.logit_of."""
        from deepfm_tfx.synthetic import generator
        return self._logit(columns, [self.index_of(f, columns[name]) for f, name in enumerate(generator.CATEGORICAL)])

    def _logit(self, columns: Dict[str, np.ndarray], indices) -> np.ndarray:
        from deepfm_tfx.synthetic import generator
        rows = len(columns[generator.NUMERICAL[0]])
        emb, first, z = generator.numerical_part(self, columns, TRUE_DIM)
        cat = np.zeros((rows, len(indices), TRUE_DIM))
        for f, (index, known) in enumerate(indices):
            w, v = self.categorical_weights(f, index)
            first += np.where(known, w, 0.0)
            cat[:, f] = np.where(known[:, None], v, 0.0)
        return generator.assemble_logit(np.concatenate([emb, cat], axis=1), first, z)

    def probability_of(self, columns: Dict[str, np.ndarray]) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.logit_of(columns) + self.bias)))
