"""ModelRepositoryPusher: TFX's Pusher contract, writing to the versioned repository.

Like TFX's Pusher it pushes only blessed models, but it copies atomically and
writes a record per version: metrics, trainer runner, the spans trained on,
a data fingerprint, the pipeline run and whether training was warm-started.
"""
import hashlib
import json
import os
import re
from typing import Any, Dict, List

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from deepfm_tfx import evaluation_results

from deepfm_tfx import model_repository
from deepfm_tfx import training_info
from deepfm_tfx.spans import span_of

def data_fingerprint(examples: List[types.Artifact]) -> str:
    """Hash of ExampleGen's input fingerprints (file names, sizes, mtimes) per span."""
    parts = sorted(f"{span_of(e)}:{e.get_string_custom_property('input_fingerprint')}" for e in examples)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# training_info fields a version record carries, so `models list` shows what training did.
RECORDED_TRAINING_INFO = ("warm_start_slots", "learning_rate_first_step", "learning_rate_last_step",
                          "weight_change", "weight_change_max")
# Checkpoint keys that are optimizer state or counters, not the model's weights.
_NOT_WEIGHTS = re.compile(r"optimizer|/Adam|global_step|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH")


def _weights(saved_model_dir: str) -> Dict[str, Any]:
    import tensorflow as tf
    reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, "variables", "variables"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if not _NOT_WEIGHTS.search(k)}


def identical_weights(saved_model_a: str, saved_model_b: str) -> bool:
    """Whether two SavedModels hold the same model weights, bit for bit."""
    import numpy as np
    try:
        a, b = _weights(saved_model_a), _weights(saved_model_b)
    except (OSError, ValueError, RuntimeError):  # unreadable: not provably identical
        return False
    return bool(a) and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _not_pushed(pushed_model: types.Artifact, reason: str) -> None:
    pushed_model.set_int_custom_property("pushed", 0)
    pushed_model.set_string_custom_property("not_pushed_reason", reason)


class ModelRepositoryPusherSpec(types.ComponentSpec):
    PARAMETERS = {
        "model_repository_dir": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        "record_json": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "examples": ChannelParameter(type=standard_artifacts.Examples),  # the training window
    }
    OUTPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        [model] = input_dict["model"]
        [blessing] = input_dict["model_blessing"]
        [evaluation] = input_dict["evaluation"]
        [pushed_model] = output_dict["pushed_model"]
        repo, name = exec_properties["model_repository_dir"], exec_properties["model_name"]
        if not blessing.get_int_custom_property("blessed"):
            _not_pushed(pushed_model, "the Evaluator did not bless the model")
            return
        version = model_repository.version_of_source(repo, name, model.uri)
        serving = model_repository.serving_version(repo, name)
        if version is None and serving is not None and identical_weights(
                os.path.join(model.uri, "Format-Serving"), model_repository.version_dir(repo, name, serving)):
            # Publishing it would claim a retrained model that is last week's again.
            _not_pushed(pushed_model, f"its weights are identical to the serving version {serving}")
            return
        if version is None:  # not already pushed by an earlier run of this same model
            metrics = evaluation_results.overall_metrics(evaluation.uri)
            examples = input_dict["examples"]
            info = training_info.read(model.uri)
            record = dict(
                json.loads(exec_properties.get("record_json") or "{}"),
                metrics=metrics["candidate"], baseline_metrics=metrics["baseline"] or None,
                spans=sorted(span_of(e) for e in examples), data_fingerprint=data_fingerprint(examples),
                pipeline_run_id=self._context.pipeline_run_id if self._context else None,
                warm_started=info.get("warm_started", False), base_model=info.get("base_model"),
                train_steps=info.get("train_steps"), source_model=model.uri,
                **{k: info.get(k) for k in RECORDED_TRAINING_INFO})
            version = model_repository.push(repo, name, os.path.join(model.uri, "Format-Serving"), record)
        pushed_model.set_int_custom_property("pushed", 1)
        pushed_model.set_int_custom_property("pushed_version", version)
        pushed_model.set_string_custom_property("pushed_destination", os.path.join(repo, name, str(version)))


class ModelRepositoryPusher(base_component.BaseComponent):
    SPEC_CLASS = ModelRepositoryPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, model_blessing, evaluation, examples, model_repository_dir: str,
                 model_name: str, record_json: str = "{}"):
        super().__init__(spec=ModelRepositoryPusherSpec(
            model=model, model_blessing=model_blessing, evaluation=evaluation, examples=examples,
            model_repository_dir=model_repository_dir, model_name=model_name, record_json=record_json,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel)))
