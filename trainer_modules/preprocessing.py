"""Transform's preprocessing_fn, built from the feature spec in custom_config.

Outputs, keyed by the raw column names:
  categorical  -> int64 id [batch], vocabulary (with OOV buckets) or hash
  numerical    -> float32 [batch], log and/or z-score; missing -> 0 (the mean)
  multivalent  -> int64 ids [batch, max_length], padded with -1
  label        -> int64 [batch]
"""
from typing import Any, Dict

import tensorflow as tf
import tensorflow_transform as tft

from schemas.feature_spec import FeatureSpec

PAD_ID = -1


def vocabulary_name(feature: str) -> str:
    return f"vocab_{feature}"


def _dense_column(x: Any, default: Any) -> tf.Tensor:
    """A [batch, 0 or 1] varlen feature as a dense [batch] tensor."""
    if not isinstance(x, tf.SparseTensor):
        return tf.reshape(x, [-1])
    dense = tf.sparse.to_dense(
        tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    return tf.squeeze(dense, axis=1)


def _log(values: tf.Tensor) -> tf.Tensor:
    # Signed log1p: Criteo counts are heavy-tailed and a few are -1.
    return tf.sign(values) * tf.math.log1p(tf.abs(values))


def _numerical(x: tf.SparseTensor, how: str) -> tf.Tensor:
    values = tf.cast(x.values, tf.float32)
    if how in ("log", "log_zscore"):
        values = _log(values)
    present = tf.SparseTensor(x.indices, values, x.dense_shape)
    if how in ("zscore", "log_zscore"):
        # Statistics over present values only; a missing value then lands on the mean.
        present = tft.scale_to_z_score(present)
    return _dense_column(present, 0.0)


def _categorical(x: Any, spec: FeatureSpec, name: str) -> Any:
    if spec.categorical_encoding == "hash":
        return tft.hash_strings(x, spec.hash_buckets)
    return tft.compute_and_apply_vocabulary(
        x, top_k=spec.vocabulary_top_k, frequency_threshold=spec.vocabulary_min_count,
        num_oov_buckets=spec.oov_buckets, vocab_filename=vocabulary_name(name))


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    spec = FeatureSpec.from_dict(custom_config["feature_spec"])
    outputs = {spec.label: tf.cast(_dense_column(inputs[spec.label], 0), tf.int64)}
    for name in spec.categorical:
        # A missing id is a category of its own (""), as in Criteo.
        outputs[name] = _categorical(_dense_column(inputs[name], b""), spec, name)
    for name in spec.numerical:
        outputs[name] = _numerical(inputs[name], spec.numerical_transform)
    for m in spec.multivalent:
        ids = _categorical(inputs[m.name], spec, m.name)
        batch = ids.dense_shape[0]
        kept = tf.sparse.slice(ids, [0, 0], [batch, m.max_length])  # drop tokens past max_length
        kept = tf.SparseTensor(kept.indices, kept.values, [batch, m.max_length])
        outputs[m.name] = tf.sparse.to_dense(kept, default_value=PAD_ID)
    return outputs
