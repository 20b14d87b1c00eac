"""Reads the overall metrics and the verdict out of an Evaluator output."""
import math
from typing import Any, Dict

import tensorflow_model_analysis as tfma

# TFMA metric name -> our name.
METRICS = {"auc": "auc", "binary_crossentropy": "logloss", "calibration": "calibration",
           "example_count": "example_count", "mean_label": "mean_label",
           "mean_prediction": "mean_prediction"}


def _value(metric_value) -> Any:
    kind = metric_value.WhichOneof("type")
    if kind == "double_value":
        v = metric_value.double_value.value
        return None if math.isnan(v) else float(v)
    return None


def overall_metrics(evaluation_uri: str) -> Dict[str, Dict[str, Any]]:
    """{'candidate': {...}, 'baseline': {...}} for the overall slice."""
    out: Dict[str, Dict[str, Any]] = {"candidate": {}, "baseline": {}}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            name = METRICS.get(kv.key.name)
            if name is None or kv.key.HasField("sub_key"):
                continue
            if kv.key.is_diff:
                continue
            role = "baseline" if kv.key.model_name == "baseline" else "candidate"
            out[role][name] = _value(kv.value)
    if out["candidate"].get("example_count") is not None:
        out["candidate"]["example_count"] = int(out["candidate"]["example_count"])
    return out


def validation_failures(evaluation_uri: str) -> list:
    """Readable reasons the candidate was not blessed (empty when it was)."""
    result = tfma.load_validation_result(evaluation_uri)
    reasons = []
    for failure in result.metric_validations_per_slice:
        for f in failure.failures:
            reasons.append(f"{f.metric_key.name}{' (change vs baseline)' if f.metric_key.is_diff else ''}: "
                           f"{f.message or ''} value={f.metric_value.double_value.value:.4f}".strip())
    return reasons


def overall_bytes_metric(evaluation_uri: str, name: str) -> Any:
    """The overall slice's bytes value of a metric (a custom metric's payload), or None."""
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        if metrics_for_slice.slice_key.single_slice_keys:
            continue
        for kv in metrics_for_slice.metric_keys_and_values:
            if kv.key.name == name and kv.value.WhichOneof("type") == "bytes_value":
                return kv.value.bytes_value
    return None
