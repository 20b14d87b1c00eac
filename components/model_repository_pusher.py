"""ModelRepositoryPusher: TFX's Pusher contract, writing to the versioned repository.

Like TFX's Pusher it pushes only blessed models, but it copies atomically and
writes a record per version: metrics, the trainer, the spans trained on,
a data fingerprint, the pipeline run and whether training was warm-started.

Each version gets TF Serving's warmup file (contracts.WARMUP_FILE)
built from real rows of the newest span's eval split, so neither TF Serving nor
`deepfm-tfx serve` answers its first requests slowly. `push_as` labels it
stable (all traffic) or canary (beside stable); with `serving_url` the label
moves only once that server has loaded the version (TF Serving's rule).

With `latency_budget_ms` or `memory_budget_mb` set, the candidate is first
served in a process of its own (deepfm_tfx.serving.latency_probe): its warmup
rows replayed as 100-candidate requests. A p99 over the budget, or more memory
added by loading it than allowed, refuses the push (contracts.LATENCY_GATE)
and leaves the repository as it was; the figures go on the PushedModel either way.
"""
import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from deepfm_tfx import (artifact_files, contracts, evaluation_results, model_repository, object_store, saved_model_check,
                        training_info)
from deepfm_tfx.spans import partition_of, span_of

WARMUP_ROWS = 256  # real rows replayed at load; TF Serving allows at most 1000 records


def data_fingerprint(examples: List[types.Artifact]) -> str:
    """Hash of ExampleGen's input fingerprints (file names, sizes, mtimes) per span."""
    parts = sorted(f"{span_of(e)}:{e.get_string_custom_property('input_fingerprint')}" for e in examples)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# training_info fields a version record carries, so `models list` shows what training did.
RECORDED_TRAINING_INFO = ("warm_start_slots", "learning_rate_first_step", "learning_rate_last_step",
                          "weight_change", "weight_change_max")


def _weights(saved_model_dir: str) -> Dict[str, Any]:
    import tensorflow as tf
    reader = tf.train.load_checkpoint(os.path.join(saved_model_dir, contracts.VARIABLES_CHECKPOINT))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if contracts.is_weight_key(k)}


def identical_weights(saved_model_a: str, saved_model_b: str) -> bool:
    """Whether two SavedModels hold the same model weights, bit for bit."""
    import numpy as np
    import tensorflow as tf
    try:
        a, b = _weights(saved_model_a), _weights(saved_model_b)
    except (OSError, ValueError, RuntimeError, tf.errors.OpError):  # unreadable (or no variables): not provably identical
        return False
    return bool(a) and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def eval_rows(examples: List[types.Artifact], n: int) -> List[bytes]:
    """Up to n serialized tf.Examples of the newest span's eval split."""
    import tensorflow as tf
    newest = max(examples, key=span_of)
    files = sorted(tf.io.gfile.glob(os.path.join(newest.uri, "Split-eval", "*")))
    if not files:
        return []
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(n)]


def warmup_file(saved_model_dir: str, model_name: str, rows: List[bytes], spec_json: str) -> Dict[str, bytes]:
    """{relative path: bytes} of TF Serving's warmup file for this model, or {} without rows."""
    import tempfile

    import tensorflow as tf

    from deepfm_tfx.serving import warmup

    if not rows:
        return {}
    inputs = saved_model_check.signature_inputs(saved_model_dir).get(contracts.FEATURES_SIGNATURE, {})
    if inputs:  # a request carries no label: keep only what the model takes
        stripped = []
        for row in rows:
            example = tf.train.Example.FromString(row)
            for key in [k for k in example.features.feature if k not in inputs]:
                del example.features.feature[key]
            stripped.append(example.SerializeToString())
        rows = stripped
    spec = json.loads(spec_json) if spec_json else {}
    separators = {m["name"]: m["separator"] for m in spec.get("multivalent", [])}
    requests = warmup.build_requests(saved_model_dir, model_name, rows, contracts.SERVING_SIGNATURE,
                                     contracts.EXAMPLES_INPUT_KEY, contracts.FEATURES_SIGNATURE, separators)
    with tempfile.TemporaryDirectory() as tmp:
        with open(warmup.write(tmp, requests), "rb") as f:
            return {contracts.WARMUP_FILE: f.read()}


def _serving_copy(repo: str, name: str, version: int) -> str:
    """The serving version as a local folder TensorFlow can read ("" if it cannot be fetched:
    then it is not provably identical)."""
    try:
        return model_repository.local_copy(repo, name, version)
    except (OSError, model_repository.RepositoryError):
        return ""


def _not_pushed(pushed_model: types.Artifact, reason: str) -> None:
    pushed_model.set_int_custom_property("pushed", 0)
    pushed_model.set_string_custom_property("not_pushed_reason", reason)


def serving_check(saved_model_dir: str, warmup: Dict[str, bytes], latency_budget_ms: float,
                  memory_budget_mb: float) -> Tuple[Dict[str, Any], Optional[str]]:
    """The candidate's serving figures and, when a budget is exceeded, why it may not be pushed (one line)."""
    import tempfile

    from deepfm_tfx.serving import latency_probe

    if not warmup:
        return {}, "no eval rows to build 100-candidate requests from, so its latency cannot be checked"
    with tempfile.TemporaryDirectory() as tmp:
        for relative, data in warmup.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, relative)), exist_ok=True)
            with open(os.path.join(tmp, relative), "wb") as f:
                f.write(data)
        figures = latency_probe.measure_in_child(saved_model_dir, tmp)
    figures.update(latency_budget_ms=latency_budget_ms or None, memory_budget_mb=memory_budget_mb or None)
    rows = figures["rows_per_request"]
    if latency_budget_ms and figures["p99_ms"] > latency_budget_ms:
        return figures, (f"p99 latency {figures['p99_ms']:.2f} ms for {rows}-candidate requests is over the "
                         f"budget of {latency_budget_ms:g} ms")
    loaded = figures.get("loaded_mb")
    if memory_budget_mb and loaded is not None and loaded > memory_budget_mb:
        return figures, (f"loading it adds {loaded:.0f} MB to a serving process, over the budget of "
                         f"{memory_budget_mb:g} MB")
    return figures, None


class ModelRepositoryPusherSpec(types.ComponentSpec):
    PARAMETERS = {
        "model_repository_dir": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        "record_json": ExecutionParameter(type=str, optional=True),
        "push_as": ExecutionParameter(type=str, optional=True),  # stable | canary
        "serving_url": ExecutionParameter(type=str, optional=True),  # REST address of the server to wait for
        "serving_base_path": ExecutionParameter(type=str, optional=True),  # models.config base_path
        "feature_spec_json": ExecutionParameter(type=str, optional=True),  # multivalent separators
        "latency_budget_ms": ExecutionParameter(type=float, optional=True),  # 0: no latency gate
        "memory_budget_mb": ExecutionParameter(type=float, optional=True),  # 0: no memory gate
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "examples": ChannelParameter(type=standard_artifacts.Examples),  # the training window
    }
    OUTPUTS = {"pushed_model": ChannelParameter(type=standard_artifacts.PushedModel)}


def _local_model(saved_model_dir: str, scratch: str) -> str:
    """The SavedModel as a local folder: the repository copies files, and the warmup and latency
    checks load it. A Trainer output in a bucket is downloaded first."""
    if not object_store.is_url(saved_model_dir):
        return saved_model_dir
    local = os.path.join(scratch, contracts.SERVING_MODEL_DIR)
    artifact_files.copy_tree(saved_model_dir, local)
    return local


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            self._push(input_dict, output_dict, exec_properties, scratch)

    def _push(self, input_dict, output_dict, exec_properties, scratch: str) -> None:
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
                os.path.join(model.uri, contracts.SERVING_MODEL_DIR), _serving_copy(repo, name, serving)):
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
                partitions=sorted(p for e in examples if (p := partition_of(e))) or None,
                pipeline_run_id=self._context.pipeline_run_id if self._context else None,
                warm_started=info.get("warm_started", False), base_model=info.get("base_model"),
                train_steps=info.get("train_steps"), source_model=model.uri,
                **{k: info.get(k) for k in RECORDED_TRAINING_INFO})
            saved_model = _local_model(os.path.join(model.uri, contracts.SERVING_MODEL_DIR), scratch)
            extra = warmup_file(saved_model, name, eval_rows(examples, WARMUP_ROWS),
                                exec_properties.get("feature_spec_json") or "")
            latency_budget = float(exec_properties.get("latency_budget_ms") or 0)
            memory_budget = float(exec_properties.get("memory_budget_mb") or 0)
            if latency_budget or memory_budget:
                figures, refusal = serving_check(saved_model, extra, latency_budget, memory_budget)
                pushed_model.set_string_custom_property("serving_check", json.dumps(figures))
                if refusal:
                    pushed_model.set_string_custom_property("refused_by", contracts.LATENCY_GATE)
                    _not_pushed(pushed_model, refusal)
                    return
                record["serving_check"] = figures
            wait = None
            if exec_properties.get("serving_url"):
                from deepfm_tfx.serving import model_status
                wait = model_status.waiter(exec_properties["serving_url"])
            version = model_repository.push(
                repo, name, saved_model, record, push_as=exec_properties.get("push_as") or contracts.STABLE, wait=wait,
                extra_files=extra, base_path=exec_properties.get("serving_base_path") or None)
        pushed_model.set_int_custom_property("pushed", 1)
        pushed_model.set_int_custom_property("pushed_version", version)
        pushed_model.set_string_custom_property("pushed_destination", model_repository.version_dir(repo, name, version))


class ModelRepositoryPusher(base_component.BaseComponent):
    SPEC_CLASS = ModelRepositoryPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, model_blessing, evaluation, examples, model_repository_dir: str,
                 model_name: str, record_json: str = "{}", push_as: str = contracts.STABLE, serving_url: str = "",
                 serving_base_path: str = "", feature_spec_json: str = "", latency_budget_ms: float = 0.0,
                 memory_budget_mb: float = 0.0):
        super().__init__(spec=ModelRepositoryPusherSpec(
            model=model, model_blessing=model_blessing, evaluation=evaluation, examples=examples,
            model_repository_dir=model_repository_dir, model_name=model_name, record_json=record_json,
            push_as=push_as, serving_url=serving_url, serving_base_path=serving_base_path,
            feature_spec_json=feature_spec_json, latency_budget_ms=float(latency_budget_ms),
            memory_budget_mb=float(memory_budget_mb),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel)))
