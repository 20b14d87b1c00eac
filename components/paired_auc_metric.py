"""PairedAucRows: a TFMA metric that gives PairedAucGate both models' scores from the Evaluator's own pass.

The Evaluator already scores the eval split with the candidate and the baseline
(two model specs). This metric's combiner sees both predictions of each row, so
the paired DeLong test needs no second scoring: per slice it keeps each row's
label, both predictions and a key of the row's categorical ids, computes the
interval (`deepfm_tfx.paired_auc.delong`) and emits it with the rows as one
bytes value (an .npz). PairedAucGate reads the overall slice's; the key lets it
mark the rows holding an id the training window never saw (cold rows) from the
ingested examples, without a model.
"""
from __future__ import annotations

import hashlib
import io
import json
from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis import constants
from tensorflow_model_analysis.metrics import metric_types, metric_util
from tensorflow_model_analysis.utils import model_util

from deepfm_tfx import paired_auc

NAME = "paired_auc_rows"


def row_key(values: Iterable[str]) -> int:
    """A row's categorical ids (first value per column, "" when missing) as a 64-bit key."""
    digest = hashlib.blake2b("\x1f".join(values).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _first_value(value: Any) -> str:
    """A feature's first value as PairedAucGate's decoder gives it (utf-8, "" when missing)."""
    if value is None:
        return ""
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        value = np.asarray(value).reshape(-1)
    if len(value) == 0:
        return ""
    first = value[0]
    return first.decode("utf-8", "replace") if isinstance(first, bytes) else str(first)


def _plain(value: Any, model_name: str) -> Any:
    """A model's value out of TFMA's per-model (and per-output, with one output) dicts; None when ambiguous."""
    if isinstance(value, dict) and model_name in value:
        value = value[model_name]
    if isinstance(value, dict):
        value = next(iter(value.values())) if len(value) == 1 else None
    return value


def _scalar(value) -> float:
    flat = np.asarray(value, dtype=np.float64).reshape(-1)
    return float(flat[0]) if flat.size else float("nan")


class _PairedRow(metric_types.Preprocessor):
    """Once per example, before TFMA fans it out to its slices: (label, new, baseline, key).

    TFMA's own lookup (metric_util) costs about 0.3 ms a call; the extracts here are
    plain per-model arrays, so they are read directly and the lookup is kept for
    anything else (several outputs, label vocabularies)."""

    def __init__(self, eval_config, model_name: str, baseline_model_name: Optional[str], output_name: str,
                 categorical: List[str]):
        super().__init__(name=f"{NAME}_{model_name}_{output_name}")
        self._eval_config = eval_config
        self._model_name = model_name
        self._baseline_model_name = baseline_model_name
        self._output_name = output_name
        self._categorical = categorical

    def _label_and_prediction(self, extracts, model_name: str):
        label = _plain(extracts.get(constants.LABELS_KEY), model_name)
        prediction = _plain(extracts.get(constants.PREDICTIONS_KEY), model_name)
        if self._output_name or label is None or prediction is None:
            label, prediction, _ = next(metric_util.to_label_prediction_example_weight(
                inputs=metric_types.StandardMetricInputs(extracts), eval_config=self._eval_config,
                model_name=model_name, output_name=self._output_name, flatten=True, allow_none=True))
        return (_scalar(label) if label is not None else float("nan")), _scalar(prediction)

    def process(self, extracts):
        label, new = self._label_and_prediction(extracts, self._model_name)
        baseline = (self._label_and_prediction(extracts, self._baseline_model_name)[1]
                    if self._baseline_model_name is not None else float("nan"))
        features = extracts.get(constants.FEATURES_KEY) or {}
        yield label, new, baseline, row_key([_first_value(features.get(name)) for name in self._categorical])


class _Rows:
    """The accumulator: one entry per row, in the order the combiner saw them."""

    def __init__(self):
        self.label: List[float] = []
        self.new: List[float] = []
        self.baseline: List[float] = []
        self.key: List[int] = []


class _PairedAucCombiner(beam.CombineFn):
    def __init__(self, key: metric_types.MetricKey, with_baseline: bool):
        self._key = key
        self._with_baseline = with_baseline

    def create_accumulator(self) -> _Rows:
        return _Rows()

    def add_input(self, rows: _Rows, row) -> _Rows:
        label, new, baseline, key = row
        rows.label.append(label)
        rows.new.append(new)
        rows.baseline.append(baseline)
        rows.key.append(key)
        return rows

    def merge_accumulators(self, accumulators: Iterable[_Rows]) -> _Rows:
        merged = _Rows()
        for rows in accumulators:
            merged.label += rows.label
            merged.new += rows.new
            merged.baseline += rows.baseline
            merged.key += rows.key
        return merged

    def extract_output(self, rows: _Rows) -> Dict[metric_types.MetricKey, bytes]:
        arrays = {"label": np.array(rows.label, np.float32), "new": np.array(rows.new, np.float32),
                  "key": np.array(rows.key, np.uint64)}
        result: Dict[str, Any] = {"paired": None, "error": None}
        if self._with_baseline:
            arrays["baseline"] = np.array(rows.baseline, np.float32)
            labelled = ~np.isnan(arrays["label"])
            try:
                result["paired"] = paired_auc.delong(arrays["label"][labelled] > 0.5, arrays["new"][labelled],
                                                     arrays["baseline"][labelled]).to_dict()
            except ValueError as e:  # too few clicks in this slice to compare
                result["error"] = str(e)
        arrays["result"] = np.array(json.dumps(result))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return {self._key: buffer.getvalue()}


def _computations(categorical: List[str], name: str = NAME, eval_config=None, model_names=None,
                  output_names=None) -> metric_types.MetricComputations:
    baseline_spec = model_util.get_baseline_model_spec(eval_config) if eval_config else None
    baseline_name = baseline_spec.name if baseline_spec else None
    computations = []
    for model_name in model_names or [""]:
        if model_name == baseline_name:
            continue  # the candidate's computation reads the baseline's predictions itself
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name)
            computations.append(metric_types.MetricComputation(
                keys=[key],
                preprocessors=[_PairedRow(eval_config, model_name, baseline_name, output_name, list(categorical))],
                combiner=_PairedAucCombiner(key, baseline_name is not None)))
    return computations


class PairedAucRows(tfma.metrics.Metric):
    """Per slice: each row's label, both models' predictions and categorical key, and DeLong's paired interval."""

    def __init__(self, categorical: List[str] = (), name: str = NAME):
        super().__init__(_computations, categorical=list(categorical), name=name)

    @property
    def compute_confidence_interval(self) -> bool:  # rows, not a statistic to resample
        return False


def metric_config(categorical: List[str]) -> "tfma.MetricConfig":
    """The Evaluator's MetricConfig for this metric."""
    return tfma.MetricConfig(class_name=PairedAucRows.__name__, module=__name__,
                             config=json.dumps({"categorical": list(categorical)}))


def read(value: bytes) -> Dict[str, Any]:
    """The metric's value -> {label, new, baseline?, key arrays; result dict}."""
    with np.load(io.BytesIO(value), allow_pickle=False) as stored:
        out: Dict[str, Any] = {k: stored[k] for k in stored.files if k != "result"}
        out["result"] = json.loads(str(stored["result"]))
    return out
