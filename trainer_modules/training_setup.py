"""What both trainers share: hyperparameters, the field layout, input data and
the distribution strategy. The trainers differ only in the loop and export."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from deepfm_tfx.contracts import FEATURE_SPEC_KEY, TRAINER_KEY, TRAINING_KEY
from deepfm_tfx.schemas.feature_spec import FeatureSpec
from deepfm_tfx.trainer_modules import preprocessing
from deepfm_tfx import training_info
from deepfm_tfx.trainer_modules.deepfm import FieldLayout
from deepfm_tfx.trainer_modules.hparams import TrainingConfig

if TYPE_CHECKING:  # a cluster task runs these loops without importing tfx.components (cluster_training.TaskArgs)
    from tfx.components.trainer.fn_args_utils import FnArgs


@dataclasses.dataclass
class TrainerInputs:
    spec: FeatureSpec
    config: TrainingConfig
    transform_output: tft.TFTransformOutput
    layout: FieldLayout
    trainer: str  # which training loop: "keras" or "estimator"


def load_inputs(fn_args: FnArgs) -> TrainerInputs:
    custom = fn_args.custom_config or {}
    spec = FeatureSpec.from_dict(custom[FEATURE_SPEC_KEY])
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    return TrainerInputs(spec, TrainingConfig.from_dict(custom.get(TRAINING_KEY)), transform_output,
                         field_layout(spec, transform_output), custom.get(TRAINER_KEY, ""))


def field_layout(spec: FeatureSpec, transform_output: tft.TFTransformOutput) -> FieldLayout:
    vocabulary = 0
    if spec.categorical_encoding == "vocabulary":
        vocabulary = int(transform_output.vocabulary_size_by_name(preprocessing.VOCABULARY))
    return FieldLayout(
        categorical=tuple(spec.categorical), numerical=tuple(spec.numerical),
        multivalent=tuple(m.name for m in spec.multivalent),
        num_ids=preprocessing.num_ids(spec, vocabulary))


# Parsed batches take about this many times the bytes of the gzipped examples
# (measured on the criteo profile: 268 B parsed per example, the raw and the
# transformed files about the same size); an overestimate only means caching
# less often.
PARSED_OVER_COMPRESSED = 4
CACHE_MAX_BYTES = 2 << 30
CACHE_SHUFFLE_BATCHES = 256


def _files_bytes(file_pattern) -> int:
    patterns = file_pattern if isinstance(file_pattern, (list, tuple)) else [file_pattern]
    return sum(tf.io.gfile.stat(f).length for p in patterns for f in tf.io.gfile.glob(p))


def cache_in_memory(file_pattern, config: TrainingConfig) -> bool:
    """Whether the training split's transformed batches are kept in memory after the first pass."""
    if config.input_cache != "auto":
        return config.input_cache == "memory"
    budget = min(CACHE_MAX_BYTES, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    return _files_bytes(file_pattern) * PARSED_OVER_COMPRESSED <= budget


def transformed_batches(raw: tf.data.Dataset, inputs: TrainerInputs, transform_layer=None) -> tf.data.Dataset:
    """Batches of raw features through the Transform graph, as (features, label).

    Transform only analyses; the Trainer applies its graph. Materialising
    transformed examples was about 60% of Transform's time at 500k rows (a
    second Beam pass that encodes, writes and compresses every row), where
    this costs a few CPU seconds per pass (docs/performance.md).
    """
    layer = transform_layer or inputs.transform_output.transform_features_layer()
    label = inputs.spec.label

    # Nothing here branches on a tensor; AutoGraph would rewrite and step through all of TFT's layer
    # code on every trace, which was most of a small run's Trainer (each Estimator evaluation traces it).
    @tf.autograph.experimental.do_not_convert
    def transform(features):
        transformed = layer(features)
        return transformed, transformed.pop(label)
    return raw.map(transform, num_parallel_calls=tf.data.AUTOTUNE)


def make_dataset(file_pattern, data_accessor, inputs: TrainerInputs, batch_size: int,
                 train: bool = False, transform_layer=None) -> tf.data.Dataset:
    """(features, label) batches of ExampleGen's examples through the Transform graph, repeated, prefetched.

    The training split is read and transformed once and then served from
    memory when it fits (`input_cache`): reading, parsing and transforming
    gzipped tf.Examples costs more than a training step. Later passes
    reshuffle the cached batches' order.
    """
    cache = train and cache_in_memory(file_pattern, inputs.config)
    raw = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, shuffle_buffer_size=10_000, sloppy_ordering=True,
                                       num_epochs=1 if cache else None, drop_final_batch=cache),
        inputs.transform_output.raw_metadata.schema)
    dataset = transformed_batches(raw, inputs, transform_layer)
    if cache:
        dataset = dataset.cache().shuffle(CACHE_SHUFFLE_BATCHES, reshuffle_each_iteration=True).repeat()
    return dataset.prefetch(tf.data.AUTOTUNE)


def learning_rate(config: TrainingConfig, train_steps: int):
    """A float, or a schedule of the step that both trainers call."""
    if config.learning_rate_decay == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, max(train_steps, 1))
    if config.learning_rate_decay == "none":
        return config.learning_rate
    raise ValueError(f"unknown learning_rate_decay {config.learning_rate_decay!r}; use cosine or none")


def learning_rate_record(config: TrainingConfig, train_steps: int, step_start: int, step_end: int) -> Dict[str, Any]:
    """The rate at this run's first and last step, from the optimizer's own step counter."""
    rate = learning_rate(config, train_steps)

    def at(step: int) -> float:
        return float(rate(step)) if callable(rate) else float(rate)
    return {"global_step_start": step_start, "global_step_end": step_end,
            "learning_rate_first_step": at(step_start), "learning_rate_last_step": at(max(step_end - 1, step_start))}


def weight_change(base: Dict[str, np.ndarray], trained: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """Relative L2 change of every variable the two share: ||w - w0|| / ||w0||."""
    change = {}
    for name in sorted(set(base) & set(trained)):
        before, after = np.asarray(base[name], np.float64), np.asarray(trained[name], np.float64)
        if before.shape != after.shape or before.dtype.kind not in "fc":
            continue
        norm = np.linalg.norm(before)
        delta = np.linalg.norm(after - before)
        change[name] = float(delta / norm) if norm > 0 else float(delta)
    return {"weight_change": change, "weight_change_max": max(change.values()) if change else 0.0}


def distribution_strategy(name: str) -> Optional[tf.distribute.Strategy]:
    """None means TF's default (single device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        return None
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown distribution strategy {name!r}; use auto, default, mirrored or multi_worker")


def _vocabulary_file(saved_model_dir: str) -> Optional[str]:
    for name in tf.io.gfile.listdir(os.path.join(saved_model_dir, "assets")) \
            if tf.io.gfile.exists(os.path.join(saved_model_dir, "assets")) else []:
        if name == preprocessing.VOCABULARY:
            return os.path.join(saved_model_dir, "assets", name)
    return None


def warm_start_source(fn_args, inputs: TrainerInputs) -> Tuple[Optional[str], str]:
    """The blessed model to start from, or None and why training starts cold.

    Embedding rows only carry over when ids mean the same thing: hashed ids
    always do; vocabulary ids only if the vocabulary is unchanged.
    """
    base = fn_args.base_model
    if not base:
        return None, "cold start: no blessed model yet"
    previous = training_info.read(training_info.model_root(base))
    if previous.get(TRAINER_KEY) != inputs.trainer:
        return None, f"cold start: the blessed model was trained by the {previous.get(TRAINER_KEY)!r} trainer"
    if previous.get("num_ids") != inputs.layout.num_ids or previous.get("layout") != _layout_key(inputs):
        return None, "cold start: the field layout or id space changed"
    if inputs.spec.categorical_encoding == "vocabulary":
        old = _vocabulary_file(base)
        new = inputs.transform_output.vocabulary_file_by_name(preprocessing.VOCABULARY)
        if not old or tf.io.gfile.GFile(old, "rb").read() != tf.io.gfile.GFile(new, "rb").read():
            return None, "cold start: the vocabulary changed, so ids moved (hash encoding keeps them stable)"
    return base, f"warm start from {base}"


def _layout_key(inputs: TrainerInputs) -> str:
    layout, config = inputs.layout, inputs.config
    return json.dumps([layout.categorical, layout.numerical, layout.multivalent,
                       config.embedding_dim, list(config.dnn_units)])


def write_training_info(fn_args, inputs: TrainerInputs, warm_from: Optional[str], note: str,
                        **measured: Any) -> None:
    info = {TRAINER_KEY: inputs.trainer, "warm_started": warm_from is not None,
            "base_model": warm_from, "warm_start_note": note, "train_steps": fn_args.train_steps,
            "num_ids": inputs.layout.num_ids, "layout": _layout_key(inputs), **measured}
    training_info.write(training_info.model_root(fn_args.serving_model_dir), info)
