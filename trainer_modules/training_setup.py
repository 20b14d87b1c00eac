"""What both runners share: hyperparameters, the field layout, input data and
the distribution strategy. The runners differ only in the loop and export."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf
import tensorflow_transform as tft
from tfx.components.trainer.fn_args_utils import FnArgs
from tfx_bsl.public import tfxio

from schemas.feature_spec import FeatureSpec
from trainer_modules import preprocessing
from trainer_modules.deepfm import FieldLayout, ModelHParams


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 1024
    learning_rate: float = 5e-3
    # "cosine" decays the rate to 0 over the run's steps: a constant rate left
    # the rare ids' embeddings noisy (0.003 AUC on the default data).
    learning_rate_decay: str = "cosine"
    embedding_dim: int = 8
    dnn_units: tuple = (64, 32)
    # Strong enough that rare ids do not overfit in a few epochs.
    embedding_l2: float = 3e-4
    steps_per_execution: int = 20
    # "auto": mirrored over local GPUs when there are several, else the default strategy.
    distribution: str = "auto"

    @property
    def model(self) -> ModelHParams:
        return ModelHParams(self.embedding_dim, tuple(self.dnn_units), self.embedding_l2)

    @classmethod
    def from_dict(cls, d: Optional[Dict[str, Any]]) -> "TrainingConfig":
        d = dict(d or {})
        if "dnn_units" in d:
            d["dnn_units"] = tuple(int(u) for u in d["dnn_units"])
        return cls(**d)


@dataclasses.dataclass
class TrainerInputs:
    spec: FeatureSpec
    config: TrainingConfig
    transform_output: tft.TFTransformOutput
    layout: FieldLayout
    runner_name: str


def load_inputs(fn_args: FnArgs) -> TrainerInputs:
    custom = fn_args.custom_config or {}
    spec = FeatureSpec.from_dict(custom["feature_spec"])
    transform_output = tft.TFTransformOutput(fn_args.transform_output)
    return TrainerInputs(spec, TrainingConfig.from_dict(custom.get("training")), transform_output,
                         field_layout(spec, transform_output), custom.get("trainer_runner", ""))


def field_layout(spec: FeatureSpec, transform_output: tft.TFTransformOutput) -> FieldLayout:
    vocabulary = 0
    if spec.categorical_encoding == "vocabulary":
        vocabulary = int(transform_output.vocabulary_size_by_name(preprocessing.VOCABULARY))
    return FieldLayout(
        categorical=tuple(spec.categorical), numerical=tuple(spec.numerical),
        multivalent=tuple(m.name for m in spec.multivalent),
        num_ids=preprocessing.num_ids(spec, vocabulary))


def make_dataset(file_pattern, data_accessor, inputs: TrainerInputs, batch_size: int) -> tf.data.Dataset:
    """(features, label) batches of the Transform output, repeated, prefetched."""
    dataset = data_accessor.tf_dataset_factory(
        file_pattern,
        tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=inputs.spec.label,
                                       shuffle_buffer_size=10_000, sloppy_ordering=True),
        inputs.transform_output.transformed_metadata.schema)
    return dataset.prefetch(tf.data.AUTOTUNE)


def learning_rate(config: TrainingConfig, train_steps: int):
    """A float, or a schedule of the step that both runners call."""
    if config.learning_rate_decay == "cosine":
        return tf.keras.optimizers.schedules.CosineDecay(config.learning_rate, max(train_steps, 1))
    if config.learning_rate_decay == "none":
        return config.learning_rate
    raise ValueError(f"unknown learning_rate_decay {config.learning_rate_decay!r}; use cosine or none")


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


TRAINING_INFO = "training_info.json"  # beside Format-Serving; read by the pusher and the summary


def _model_root(serving_dir: str) -> str:
    return os.path.dirname(serving_dir.rstrip("/"))


def read_training_info(serving_dir: str) -> Dict[str, Any]:
    path = os.path.join(_model_root(serving_dir), TRAINING_INFO)
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


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
    previous = read_training_info(base)
    if previous.get("trainer_runner") != inputs.runner_name:
        return None, f"cold start: the blessed model was trained by the {previous.get('trainer_runner')!r} runner"
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


def write_training_info(fn_args, inputs: TrainerInputs, warm_from: Optional[str], note: str) -> None:
    info = {"trainer_runner": inputs.runner_name, "warm_started": warm_from is not None,
            "base_model": warm_from, "warm_start_note": note, "train_steps": fn_args.train_steps,
            "num_ids": inputs.layout.num_ids, "layout": _layout_key(inputs)}
    with tf.io.gfile.GFile(os.path.join(_model_root(fn_args.serving_model_dir), TRAINING_INFO), "w") as f:
        json.dump(info, f, indent=2)
