"""Training/serving skew: TFDV statistics of what was served vs the training data.

The served side is the features the server logged (a `feature_log_share`
sample of an experiment's requests, as they arrived, before any transform);
the training side is TFDV statistics of the data the model trained on
(StatisticsGen's output, or any FeatureStats.pb). TFDV's skew comparators
then measure each feature: L-infinity distance of value frequencies for
categoricals, approximate Jensen-Shannon divergence for numbers, against the
schema's `skew_comparator` thresholds. Without a schema, one is inferred
from the training statistics with the frozen schema's skew thresholds.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional

from deepfm_tfx.experiments import config, prediction_log
from deepfm_tfx.experiments.router import PREDICTIONS_PREFIX

SKEW_REASONS = ("COMPARATOR_L_INFTY_HIGH", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH",
                "COMPARATOR_NORMALIZED_ABSOLUTE_DIFFERENCE_HIGH")
STATS_FILE = "FeatureStats.pb"


class SkewError(ValueError):
    pass


def served_frame(experiments_dir: str, name: str, spec=None):
    """The logged features as a DataFrame: numbers float (NaN missing), ids str (None missing)."""
    import numpy as np
    import pandas as pd

    rows: List[Dict[str, Any]] = []
    for record in prediction_log.read(config.predictions_dir(experiments_dir, name), PREDICTIONS_PREFIX):
        if isinstance(record.get("features"), dict):
            rows.append(record["features"])
    if not rows:
        raise SkewError(f"experiment {name} logged no features (its feature_log_share is 0, or it served nothing)")
    if spec is not None:
        numeric = set(spec.numerical)
        names = list(spec.numerical) + list(spec.categorical) + [m.name for m in spec.multivalent]
    else:
        names = sorted({k for row in rows for k in row})
        numeric = {k for k in names
                   if all(isinstance(r.get(k), (int, float)) or r.get(k) is None for r in rows)
                   and any(isinstance(r.get(k), (int, float)) for r in rows)}
    columns = {}
    for key in names:
        values = [row.get(key) for row in rows]
        if key in numeric:
            columns[key] = np.array([float(v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                                     else math.nan for v in values], np.float64)
        else:
            columns[key] = pd.Series([None if v in (None, "") else (v if isinstance(v, str) else str(v))
                                      for v in values], dtype=object)
    return pd.DataFrame(columns)


def load_training_statistics(path: str):
    import tensorflow_data_validation as tfdv

    if os.path.isdir(path):
        for candidate in (os.path.join(path, "Split-train", STATS_FILE), os.path.join(path, STATS_FILE)):
            if os.path.isfile(candidate):
                path = candidate
                break
        else:
            raise SkewError(f"{path} holds neither Split-train/{STATS_FILE} nor {STATS_FILE}")
    if not os.path.isfile(path):
        raise SkewError(f"{path}: no such statistics file")
    try:
        return tfdv.load_stats_binary(path)
    except Exception:  # noqa: BLE001 - not binary: TFDV's TFRecord or text forms
        try:
            return tfdv.load_statistics(path)
        except Exception as e:  # noqa: BLE001
            raise SkewError(f"{path}: not TFDV statistics ({type(e).__name__}: {e})") from None


def _schema(training, schema_path: Optional[str]):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    from deepfm_tfx.schemas import frozen_schema

    if schema_path:
        try:
            return tfdv.load_schema_text(schema_path)
        except Exception as e:  # noqa: BLE001
            raise SkewError(f"{schema_path}: not a TFDV schema ({type(e).__name__}: {e})") from None
    schema = tfdv.infer_schema(training)
    for feature in schema.feature:
        if feature.type == schema_pb2.BYTES:
            feature.skew_comparator.infinity_norm.threshold = frozen_schema.CATEGORICAL_SKEW
        else:
            feature.skew_comparator.jensen_shannon_divergence.threshold = frozen_schema.NUMERICAL_SKEW
        # Served data is compared for skew only; presence and domains are the pipeline's gates.
        for field in ("presence", "string_domain", "domain"):
            if feature.HasField(field):
                feature.ClearField(field)
    schema.ClearField("string_domain")
    return schema


def check(experiments_dir: str, name: str, training_statistics: str, schema_path: Optional[str] = None,
          features_spec: Optional[str] = None) -> Dict[str, Any]:
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    spec = None
    if features_spec:
        from deepfm_tfx.schemas import feature_spec
        spec = feature_spec.load(features_spec)
        if schema_path is None and spec.schema_file:
            schema_path = spec.schema_file
    frame = served_frame(experiments_dir, name, spec)
    served = tfdv.generate_statistics_from_dataframe(frame)
    training = load_training_statistics(training_statistics)
    schema = _schema(training, schema_path)
    anomalies = tfdv.validate_statistics(training, schema, serving_statistics=served)
    measured = {}
    for info in anomalies.drift_skew_info:
        feature = ".".join(info.path.step)
        for m in info.skew_measurements:
            measured[feature] = {"measure": anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(m.type).lower(),
                                 "value": m.value, "threshold": m.threshold, "skewed": m.value > m.threshold}
    skewed = {}
    for feature, info in anomalies.anomaly_info.items():
        reasons = [anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason]
        if any(r in SKEW_REASONS for r in reasons):
            skewed[feature] = info.description
    return {"experiment": name, "served_rows": int(len(frame)), "training_statistics": training_statistics,
            "schema": schema_path or "inferred from the training statistics",
            "features_compared": len(measured), "skewed_features": sorted(skewed), "skew": skewed,
            "measurements": measured}


def format_text(result: Dict[str, Any]) -> str:
    lines = [f"experiment {result['experiment']}: {result['served_rows']:,} served rows vs the training statistics "
             f"({result['training_statistics']}); schema: {result['schema']}"]
    for feature, m in sorted(result["measurements"].items()):
        lines.append(f"  {feature:<12} {m['measure']:<26} {m['value']:.4f}  threshold {m['threshold']:g}"
                     + ("  SKEW" if m["skewed"] else ""))
    lines.append(f"{len(result['skewed_features'])} of {result['features_compared']} compared features skewed"
                 + (": " + ", ".join(result["skewed_features"]) if result["skewed_features"] else ""))
    return "\n".join(lines)
