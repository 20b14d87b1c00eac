"""What a run's report shows, gathered from ml-metadata and the run's artifacts.

`collect` returns plain JSON-able data (no plots): the decision and why,
metrics of the new model and the baseline, the paired AUC difference, ROC
and calibration points, TFMA's slices, the cold-id slice, the training
curves, the gates' outcomes and a data summary. A run that a gate stopped
early has only the sections it reached. Runs after the pipeline, in the
orchestrating process: TensorFlow, TFMA and TFDV are imported here.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from deepfm_tfx import artifact_files, evaluation_results, object_store, paired_auc
from deepfm_tfx.contracts import EVALUATOR_GATE, EXAMPLE_VALIDATOR_GATE, PAIRED_AUC_GATE

ROC_POINTS = 300
CALIBRATION_BINS = 12
TOP_SLICE_VALUES = 12
TOP_FIELDS = 12


def _by_node(executions: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {e["node"]: e for e in executions}


def _output(by_node, node: str, kind: str):
    found = by_node.get(node, {}).get("outputs", {}).get(kind)
    return found[0] if found else None


# --- ROC and calibration, from the per-row predictions -------------------------------------------

def roc_points(labels: np.ndarray, scores: np.ndarray, points: int = ROC_POINTS) -> Dict[str, List[float]]:
    """The ROC curve (exact, ties as one step), thinned to about `points` points."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(bool)
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps / max(fps[-1], 1)]
    if len(fpr) > points:  # keep the shape: evenly spaced along the curve's length
        length = np.r_[0.0, np.cumsum(np.hypot(np.diff(fpr), np.diff(tpr)))]
        keep = np.unique(np.searchsorted(length, np.linspace(0, length[-1], points)).clip(0, len(fpr) - 1))
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS) -> List[Dict[str, float]]:
    """Equal-count bins of the predicted probability: click rates are small, so
    equal-width bins would put nearly every row in the first one."""
    order = np.argsort(scores, kind="mergesort")
    result = []
    for part in np.array_split(order, min(bins, max(len(order), 1))):
        if len(part) == 0:
            continue
        result.append({"count": int(len(part)), "mean_prediction": float(scores[part].mean()),
                       "mean_label": float(labels[part].mean()),
                       "low": float(scores[part].min()), "high": float(scores[part].max())})
    return result


def _slice_metrics(labels: np.ndarray, new: np.ndarray, baseline: Optional[np.ndarray]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"rows": int(len(labels)), "clicks": int(labels.sum())}
    if len(labels):
        out["mean_label"] = float(labels.mean())
        out["mean_prediction"] = float(new.mean())
        out["calibration"] = float(new.mean() / labels.mean()) if labels.mean() > 0 else None
    both = 0 < labels.sum() < len(labels)
    out["auc"] = paired_auc.auc(labels, new) if both else None
    out["baseline_auc"] = paired_auc.auc(labels, baseline) if both and baseline is not None else None
    return out


def predictions_sections(gate_uri: Optional[str]) -> Dict[str, Any]:
    """ROC, calibration, the paired comparison and the cold-id slice, from PairedAucGate's output."""
    arrays = artifact_files.load_npz(os.path.join(gate_uri, "predictions.npz")) if gate_uri else None
    if arrays is None:
        return {}
    gate = json.loads(artifact_files.read_text(os.path.join(gate_uri, "paired_auc.json")))
    labels, new = arrays["label"].astype(np.int64), arrays["new"].astype(np.float64)
    baseline = arrays["baseline"].astype(np.float64) if "baseline" in arrays else None
    cold = arrays["cold"].astype(bool)
    out: Dict[str, Any] = {"gate": gate, "rows": int(len(labels))}
    if 0 < labels.sum() < len(labels):
        out["roc"] = {"new": dict(roc_points(labels, new), auc=paired_auc.auc(labels, new))}
        if baseline is not None:
            out["roc"]["baseline"] = dict(roc_points(labels, baseline), auc=paired_auc.auc(labels, baseline))
    out["calibration"] = {"new": calibration_bins(labels, new)}
    if baseline is not None:
        out["calibration"]["baseline"] = calibration_bins(labels, baseline)
    fields = sorted(gate.get("cold_share_by_field", {}).items(), key=lambda kv: -kv[1])
    out["cold"] = {
        "window_spans": gate.get("window_spans"),
        "cold": _slice_metrics(labels[cold], new[cold], baseline[cold] if baseline is not None else None),
        "warm": _slice_metrics(labels[~cold], new[~cold], baseline[~cold] if baseline is not None else None),
        "by_field": [{"field": k, "share": v} for k, v in fields[:TOP_FIELDS] if v > 0],
    }
    return out


# --- TFMA: overall and sliced metrics -------------------------------------------------------------

def _slice_value(key) -> str:
    kind = key.WhichOneof("kind")
    if kind == "bytes_value":
        return key.bytes_value.decode("utf-8", "replace")
    return str(getattr(key, kind)) if kind else ""


def tfma_slices(evaluation_uri: Optional[str]) -> List[Dict[str, Any]]:
    """Per slicing column, its values' metrics (most rows first), candidate and baseline."""
    if not evaluation_uri:
        return []
    import tensorflow_model_analysis as tfma
    rows: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for metrics_for_slice in tfma.load_metrics(evaluation_uri):
        keys = metrics_for_slice.slice_key.single_slice_keys
        if len(keys) != 1:
            continue
        key = (keys[0].column, _slice_value(keys[0]))
        row = rows.setdefault(key, {"column": key[0], "value": key[1]})
        for kv in metrics_for_slice.metric_keys_and_values:
            name = evaluation_results.METRICS.get(kv.key.name)
            if name is None or kv.key.HasField("sub_key") or kv.key.is_diff:
                continue
            kind = kv.value.WhichOneof("type")
            value = kv.value.double_value.value if kind == "double_value" else None
            value = None if value is None or math.isnan(value) else float(value)
            row[("baseline_" if kv.key.model_name == "baseline" else "") + name] = value
    by_column: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows.values():
        by_column.setdefault(row["column"], []).append(row)
    result = []
    for column, values in sorted(by_column.items()):
        values.sort(key=lambda r: -(r.get("example_count") or 0))
        result.append({"column": column, "values": values[:TOP_SLICE_VALUES], "total_values": len(values)})
    return result


# --- training curves, from the Trainer's event files -----------------------------------------------

# (event file folder, tag) -> (series, metric). Keras: train/ and validation/; Estimator: the
# model_dir itself and eval/.
_CURVES = {
    ("train", "batch_loss"): ("training", "loss"), ("train", "batch_auc"): ("training", "AUC"),
    ("validation", "evaluation_loss_vs_iterations"): ("validation", "loss"),
    ("validation", "evaluation_auc_vs_iterations"): ("validation", "AUC"),
    ("", "loss"): ("training", "loss"), ("", "auc"): ("training", "AUC"),
    ("eval", "loss"): ("validation", "loss"), ("eval", "auc"): ("validation", "AUC"),
}


def _events(path: str):
    import tensorflow as tf
    from tensorflow.core.util import event_pb2
    for record in tf.data.TFRecordDataset(path):
        yield event_pb2.Event.FromString(record.numpy())


def scalar_events(folder: str) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """{subfolder: {tag: [(step, value)]}} of every TF event file under folder."""
    import tensorflow as tf
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    if object_store.is_url(folder):
        paths = sorted(os.path.join(d, name) for d, _, files in tf.io.gfile.walk(folder) for name in files
                       if name.startswith("events.out.tfevents."))
    else:
        paths = sorted(glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True))
    for path in paths:
        run = os.path.relpath(os.path.dirname(path), folder)
        run = "" if run == "." else run
        tags = out.setdefault(run, {})
        try:
            for event in _events(path):
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        number = value.simple_value
                    elif value.HasField("tensor") and not value.tensor.tensor_shape.dim and \
                            tf.as_dtype(value.tensor.dtype).is_floating | tf.as_dtype(value.tensor.dtype).is_integer:
                        number = float(tf.make_ndarray(value.tensor))
                    else:  # strings (a checkpoint path), images, histograms
                        continue
                    tags.setdefault(value.tag, []).append((int(event.step), float(number)))
        except tf.errors.DataLossError:  # a file still being written
            continue
    return out


def training_curves(model_run_uri: Optional[str]) -> Dict[str, Dict[str, List[Tuple[int, float]]]]:
    """{"loss": {"training": [...], "validation": [...]}, "AUC": {...}}."""
    if not model_run_uri or not artifact_files.isdir(model_run_uri):
        return {}
    out: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
    for run, tags in scalar_events(model_run_uri).items():
        for tag, points in tags.items():
            if (run, tag) in _CURVES:
                series, metric = _CURVES[(run, tag)]
                merged = dict(out.setdefault(metric, {}).get(series, []))
                merged.update(dict(points))  # a step logged twice keeps its last value
                out[metric][series] = sorted(merged.items())
    return out


# --- gates and data -------------------------------------------------------------------------------

def _statistics(uri: str, split: str):
    from tensorflow_metadata.proto.v0 import statistics_pb2
    path = os.path.join(uri, f"Split-{split}", "FeatureStats.pb")
    try:
        data = artifact_files.read_bytes(path)
    except OSError:
        return None
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    stats.ParseFromString(data)
    return stats


def _feature_name(feature) -> str:
    return ".".join(feature.path.step) if feature.HasField("path") else feature.name


def data_summary(statistics_uri: Optional[str], label: Optional[str]) -> Dict[str, Any]:
    """Rows per split, the click rate and each feature's missing rate (newest span)."""
    if not statistics_uri:
        return {}
    out: Dict[str, Any] = {"rows": {}, "missing": []}
    for split in ("train", "eval"):
        stats = _statistics(statistics_uri, split)
        if stats is None or not stats.datasets:
            continue
        dataset = stats.datasets[0]
        out["rows"][split] = int(dataset.num_examples)
        if split != "train":
            continue
        for feature in dataset.features:
            name = _feature_name(feature)
            kind = feature.WhichOneof("stats")
            common = getattr(feature, kind).common_stats if kind in ("num_stats", "string_stats") else None
            if common is None:
                continue
            total = common.num_non_missing + common.num_missing
            if name == label and kind == "num_stats":
                out["click_rate"] = float(feature.num_stats.mean)
                continue
            out["missing"].append({"feature": name, "rate": float(common.num_missing / total) if total else 0.0})
    out["missing"].sort(key=lambda m: -m["rate"])
    return out


def anomalies(anomalies_uri: Optional[str]) -> Optional[List[str]]:
    """ExampleValidator's findings per split, or None when it did not run."""
    if not anomalies_uri or not artifact_files.isdir(anomalies_uri):
        return None
    from deepfm_tfx.components.gates import describe_anomalies
    return describe_anomalies(anomalies_uri)


def _schema(schema_uri: str):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from google.protobuf import text_format
    path = os.path.join(schema_uri, "schema.pbtxt")
    schema = schema_pb2.Schema()
    text_format.Parse(artifact_files.read_text(path), schema)
    return schema


_MEASUREMENT = {1: "L-infinity", 2: "Jensen-Shannon", 3: "normalized abs. difference"}


def drift(current_uri: Optional[str], previous_uri: Optional[str], schema_uri: Optional[str]) -> Dict[str, Any]:
    """How far each feature moved vs the previous span, with the schema's
    threshold: TFDV's drift (and skew) comparators, every feature, not only
    those past their threshold."""
    if not (current_uri and previous_uri and schema_uri) or current_uri == previous_uri:
        return {"compared": False, "features": []}
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2
    current, previous = _statistics(current_uri, "train"), _statistics(previous_uri, "train")
    if current is None or previous is None:
        return {"compared": False, "features": []}
    schema = _schema(schema_uri)
    rows: Dict[str, Dict[str, Any]] = {}
    for kind, result in (("drift", tfdv.validate_statistics(current, schema, previous_statistics=previous)),
                         ("skew", tfdv.validate_statistics(previous, schema, serving_statistics=current))):
        for info in result.drift_skew_info:
            name = ".".join(info.path.step)
            for m in (info.drift_measurements if kind == "drift" else info.skew_measurements):
                row = rows.setdefault(name, {"feature": name})
                row[kind] = {"measure": anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type).lower(),
                             "value": float(m.value), "threshold": float(m.threshold),
                             "moved": bool(m.value > m.threshold)}
    features = sorted(rows.values(), key=lambda r: -max(
        (r[k]["value"] / r[k]["threshold"] if r[k]["threshold"] else 0) for k in ("drift", "skew") if k in r))
    return {"compared": True, "features": features}


# --- the whole report -----------------------------------------------------------------------------

def _drift_inputs(by_node) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    current = _output(by_node, "StatisticsGen", "ExampleStatistics")
    gate_inputs = by_node.get("DriftGate", {}).get("inputs", {})
    previous = [a for a in gate_inputs.get("ExampleStatistics", []) if current is None or a.id != current.id]
    if not previous:
        previous = by_node.get("previous_statistics", {}).get("outputs", {}).get("ExampleStatistics", [])
    schema = _output(by_node, "ImportSchemaGen", "Schema") or _output(by_node, "SchemaGen", "Schema")
    return (current.uri if current else None, previous[0].uri if previous else None,
            schema.uri if schema else None)


def collect(executions: List[Dict[str, Any]], summary: Dict[str, Any], *, label: str, min_auc: float,
            max_auc_drop: float, model_name: str) -> Dict[str, Any]:
    """The report's data for one run (see the module doc)."""
    by_node = _by_node(executions)
    trainer_run = _output(by_node, "Trainer", "ModelRun")
    evaluation = _output(by_node, EVALUATOR_GATE, "ModelEvaluation")
    gate_output = _output(by_node, PAIRED_AUC_GATE, "ModelEvaluation")
    statistics = _output(by_node, "StatisticsGen", "ExampleStatistics")
    current, previous, schema = _drift_inputs(by_node)
    report: Dict[str, Any] = {
        "model_name": model_name,
        "summary": {k: v for k, v in summary.items() if not isinstance(v, (dict, list)) or k in (
            "window_spans", "evaluator_failures", "component_seconds", "component_states", "serving_check")},
        "min_auc": min_auc, "max_auc_drop": max_auc_drop,
        "metrics": evaluation_results.overall_metrics(evaluation.uri) if evaluation else None,
        "slices": tfma_slices(evaluation.uri if evaluation else None),
        "training_curves": training_curves(trainer_run.uri if trainer_run else None),
        "model_run_dir": trainer_run.uri if trainer_run else None,
        "anomalies": anomalies((_output(by_node, EXAMPLE_VALIDATOR_GATE, "ExampleAnomalies") or
                                type("none", (), {"uri": None})).uri),
        "drift": drift(current, previous, schema),
        "data": data_summary(statistics.uri if statistics else None, label),
    }
    report.update(predictions_sections(gate_output.uri if gate_output else None))
    report["decision"] = decision(report, summary)
    return report


def decision(report: Dict[str, Any], summary: Dict[str, Any]) -> Dict[str, Any]:
    """What happened to the model, and the reasons in order."""
    why: List[str] = []
    gate = report.get("gate") or {}
    blocked_by = summary.get("blocked_by")
    if summary.get("error") and blocked_by != EVALUATOR_GATE:
        why.append(summary["error"])
    metrics = (report.get("metrics") or {}).get("candidate") or {}
    if metrics.get("auc") is not None:
        passed = metrics["auc"] >= report["min_auc"]
        why.append(f"AUC floor: {metrics['auc']:.4f} {'>=' if passed else '<'} min_auc {report['min_auc']:g} "
                   f"({'passed' if passed else 'failed'})")
    if gate.get("change_gate_message"):
        why.append(f"change vs baseline: {gate['change_gate_message']}")
    for line in summary.get("evaluator_failures") or []:
        why.append(f"Evaluator: {line}")
    if summary.get("pushed"):
        outcome = f"pushed as version {summary.get('pushed_version')}"
    elif summary.get("blessed"):
        outcome = "blessed, not pushed"
        if summary.get("not_pushed_reason"):
            why.append(f"not pushed: {summary['not_pushed_reason']}")
    elif blocked_by:
        outcome = f"blocked by {blocked_by}"
    else:
        outcome = "not pushed"
    return {"outcome": outcome, "pushed": bool(summary.get("pushed")), "blocked_by": blocked_by, "why": why}
