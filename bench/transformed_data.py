"""A default run's examples through its transform graph, read the ways the trainer
section's contenders consume them: TFRecords (as the trainers do) or in-memory numpy
(as DeepCTR is fed). Only public TF/TFX APIs."""
from __future__ import annotations

from typing import Dict, Optional


def data_accessor():
    """TFX's DataAccessor as the Trainer component hands it to run_fn."""
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils
    from tfx.proto import example_gen_pb2

    def factory(file_pattern, options, schema):
        files = file_pattern if isinstance(file_pattern, list) else [file_pattern]
        return tfxio_utils.make_tfxio(
            file_pattern=files, telemetry_descriptors=["bench"],
            payload_format=example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE, schema=schema).TensorFlowDataset(options)
    return DataAccessor(tf_dataset_factory=factory, record_batch_factory=None, data_view_decode_fn=None)


def trainer_inputs(graph_dir: str, num_ids: Optional[int] = None, **config):
    """What training_setup.load_inputs gives a run_fn, with TrainingConfig knobs overridden;
    `num_ids`: the hash buckets the run used when the spec leaves them to the data."""
    import dataclasses

    import tensorflow_transform as tft

    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.trainer_modules import hparams, training_setup
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    if spec.categorical_encoding == "hash" and spec.hash_buckets is None:
        spec = dataclasses.replace(spec, hash_buckets=num_ids)
    tft_out = tft.TFTransformOutput(graph_dir)
    return training_setup.TrainerInputs(spec, hparams.TrainingConfig(**config), tft_out,
                                        training_setup.field_layout(spec, tft_out), "keras")


def load_numpy(files: str, inputs, limit: Optional[int] = None):
    """A split through the transform graph as in-memory arrays (features dict, labels)."""
    import numpy as np
    from tfx_bsl.public import tfxio

    from deepfm_tfx.trainer_modules import training_setup
    ds = training_setup.transformed_batches(data_accessor().tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=8192, num_epochs=1, shuffle=False),
        inputs.transform_output.raw_metadata.schema), inputs)
    feats: Dict[str, list] = {}
    labels = []
    for x, y in ds:
        for k, v in x.items():
            feats.setdefault(k, []).append(np.reshape(v.numpy(), [-1]))
        labels.append(np.reshape(y.numpy(), [-1]))
        if limit and sum(len(a) for a in labels) >= limit:
            break
    out = {k: np.concatenate(v)[:limit] for k, v in feats.items()}
    return out, np.concatenate(labels)[:limit].astype(np.float32)


def array_dataset(features, labels, batch_size: int):
    """What model.fit builds from numpy arrays: a fresh permutation each pass,
    cut into full batches and gathered by index from tensors held once."""
    import tensorflow as tf
    usable = len(labels) // batch_size * batch_size  # full batches only, as every contender
    tensors = ({k: tf.convert_to_tensor(v[:usable]) for k, v in features.items()},
               tf.convert_to_tensor(labels[:usable]))
    batches = tf.data.Dataset.from_tensors(tf.range(usable, dtype=tf.int64)).repeat().map(
        lambda idx: tf.reshape(tf.random.shuffle(idx), [-1, batch_size])).unbatch()
    # The arrays ride as one repeated element, not as constants baked into the graph.
    data = tf.data.Dataset.from_tensors(tensors).repeat()
    return tf.data.Dataset.zip((batches, data)).map(
        lambda idx, d: tf.nest.map_structure(lambda t: tf.gather(t, idx), d),
        num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


class IdModulo:
    """Hashed ids mod a smaller power of two are exactly the ids of a Transform
    with that many hash buckets (fingerprint mod 2^18 mod 2^k)."""

    def __init__(self, layout, buckets: int):
        self.layout, self.buckets = layout, buckets

    def __call__(self, features):
        return {k: (v % self.buckets if k in self.layout.categorical else v) for k, v in features.items()}
