"""`assets.extra/tf_serving_warmup_requests`: TF Serving's SavedModel warmup file.

A TFRecord file of `PredictionLog`s (tensorflow_serving/apis/prediction_log.proto),
at most 1000. TF Serving replays them when it loads a version, before the
version takes traffic; `deepfm-tfx serve` does the same. The pusher writes one
from real rows of the eval split, for both signatures and at the batch sizes
clients send, so the first real requests find every code path initialised.
"""
from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence

from deepfm_tfx.contracts import WARMUP_FILE
from deepfm_tfx.saved_model_check import signature_inputs

MAX_RECORDS = 1000  # TF Serving's WarmupConsts::kMaxNumRecords
# One-row requests (a single ad) and candidate lists (a page of ranking).
BATCH_SIZES = (1, 1, 1, 1, 8, 32, 100, 100)


def path_in(saved_model_dir: str) -> str:
    return os.path.join(saved_model_dir, WARMUP_FILE)


def read_requests(saved_model_dir: str) -> Iterator:
    """The PredictRequests of a version's warmup file; nothing when it has none."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = path_in(saved_model_dir)
    if not os.path.exists(path):
        return
    for count, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator(), start=1):
        if count > MAX_RECORDS:
            raise ValueError(f"{path} has more than {MAX_RECORDS} warmup records, TF Serving's limit")
        log = prediction_log_pb2.PredictionLog.FromString(record)
        if log.WhichOneof("log_type") == "predict_log":
            yield log.predict_log.request


def feature_row(example, inputs: Dict[str, int], separators: Dict[str, str]) -> Dict[str, object]:
    """A tf.Example as the features signature takes it: a number (NaN when missing)
    or a string ("" when missing; a multivalent field joined by its separator)."""
    from tensorflow.core.framework import types_pb2

    row = {}
    for key, dtype in inputs.items():
        feature = example.features.feature.get(key)
        kind = feature.WhichOneof("kind") if feature is not None else None
        values = list(getattr(feature, kind).value) if kind else []
        if dtype == types_pb2.DT_STRING:
            row[key] = separators.get(key, "|").encode().join(values) if values else b""
        else:
            row[key] = float(values[0]) if values else math.nan
    return row


def build_requests(saved_model_dir: str, model_name: str, examples: Sequence[bytes],
                   examples_signature: str, examples_input: str, features_signature: Optional[str] = None,
                   separators: Optional[Dict[str, str]] = None) -> List:
    """PredictRequests over `examples` (serialized tf.Examples without their label), for the
    examples signature and, when the model has it, the raw-features signature."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    signatures = signature_inputs(saved_model_dir)
    parsed = [tf.train.Example.FromString(e) for e in examples]
    requests = []

    def batches():
        start, i = 0, 0
        while start < len(examples):
            size = BATCH_SIZES[i % len(BATCH_SIZES)]
            yield start, min(start + size, len(examples))
            start, i = start + size, i + 1

    for begin, end in batches():
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = examples_signature
        request.inputs[examples_input].CopyFrom(tf.make_tensor_proto(list(examples[begin:end]), tf.string))
        requests.append(request)
        if features_signature in signatures:
            inputs = signatures[features_signature]
            rows = [feature_row(e, inputs, separators or {}) for e in parsed[begin:end]]
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = features_signature
            for key, dtype in inputs.items():
                column = [r[key] for r in rows]
                request.inputs[key].CopyFrom(tf.make_tensor_proto(
                    column if dtype == tf.string.as_datatype_enum else np.array(column, np.float32),
                    tf.dtypes.as_dtype(dtype)))
            requests.append(request)
    return requests[:MAX_RECORDS]


def write(saved_model_dir: str, requests: Sequence) -> str:
    """Writes the warmup file into a SavedModel folder (before it is published)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    path = path_in(saved_model_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests[:MAX_RECORDS]:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
