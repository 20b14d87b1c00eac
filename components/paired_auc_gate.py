"""PairedAucGate: the Evaluator's change gate, with the AUC's sampling noise.

TFMA's change threshold compares two AUCs with no notion of noise (about
±0.003 on 50k rows, the size of the differences it acts on), and it cannot
compute a confidence interval. So the Evaluator keeps only the absolute AUC
floor, and this component, right after it:

1. reads both models' scores of the newest span's eval rows (the new model and
   the baseline, on the very same rows) from the Evaluator's own pass: its
   PairedAucRows metric (`paired_auc_metric`), so no model is loaded here;
2. takes AUC(new) - AUC(baseline) with its paired 95% DeLong interval
   (`deepfm_tfx.paired_auc`), computed by that metric;
3. blesses the model when the Evaluator blessed it (floor) and the change
   gate passes: blocked only when the whole interval lies below -max_auc_drop.

It also marks the eval rows holding an id the training window never saw
(cold ids), and writes everything per row for the run report:
  predictions.npz    label, new, baseline (when there is one), cold
  paired_auc.json    the interval, the gate's verdict and why, cold-id counts
Its `gate_blessing` is what the pusher and the blessed-model resolver read.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterator, List, Set, Tuple

import numpy as np
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from deepfm_tfx import artifact_files, evaluation_results, paired_auc
from deepfm_tfx.components import paired_auc_metric
from deepfm_tfx.spans import span_of

PREDICTIONS = "predictions.npz"
RESULT = "paired_auc.json"
# Distinct ids of an ingested split, memoized beside the examples they describe.
IDS_MEMO = "distinct_ids.{split}.v1.npz"
READ_BATCH = 50_000


def _records(examples_uri: str, split: str, batch: int = READ_BATCH) -> Iterator[List[bytes]]:
    import tensorflow as tf
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch):
        yield list(records.numpy())


def _decode(records: List[bytes]):
    from tfx_bsl.coders import example_coder
    return example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)


def _column_dtypes(files: List[str], columns: List[str], probe: int = 1000) -> Dict[str, Any]:
    """Each column's tf.Example list type (bytes, int64 or float), from the first records holding it."""
    import tensorflow as tf
    kinds = {"bytes_list": tf.string, "int64_list": tf.int64, "float_list": tf.float32}
    found: Dict[str, Any] = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(probe):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        for name in columns:
            kind = features[name].WhichOneof("kind") if name in features else None
            if name not in found and kind and getattr(features[name], kind).value:  # an empty list says nothing
                found[name] = kinds[kind]
        if len(found) == len(columns):
            break
    return {name: found.get(name, tf.string) for name in columns}


def _as_str(values: List[Any]) -> List[str]:
    """Ids as the eval side compares them: bytes decoded, numbers as numpy prints them."""
    if values and isinstance(values[0], bytes):
        return [v.decode("utf-8", "replace") for v in values]
    return np.asarray(values).astype(str).tolist()


def distinct_ids(examples_uri: str, split: str, columns: List[str]) -> Dict[str, Set[str]]:
    """The distinct values of each column in an ingested split (each row's first value; memoized beside it).

    Parsed and made unique per batch by TensorFlow's C++ kernels: decoding the
    rows to Arrow took 14 of this step's 16.5 CPU seconds at 450k rows, where
    this takes about 4 in all.
    """
    import tensorflow as tf
    memo = artifact_files.join(examples_uri, IDS_MEMO.format(split=split))
    stored = artifact_files.load_npz(memo)
    if stored is not None and set(columns) <= set(stored):
        return {c: set(stored[c].tolist()) for c in columns}
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    spec = {name: tf.io.VarLenFeature(dtype) for name, dtype in _column_dtypes(files, columns).items()}

    def firsts(records):
        parsed = tf.io.parse_example(records, spec)
        return {name: tf.unique(tf.boolean_mask(parsed[name].values, tf.equal(parsed[name].indices[:, 1], 0)))[0]
                for name in columns}

    seen: Dict[str, Set] = {c: set() for c in columns}
    if files:
        batches = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(READ_BATCH).map(
            firsts, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
        for batch in batches:
            for name in columns:
                seen[name].update(batch[name].numpy().tolist())
    ids = {name: set(_as_str(list(values))) - {""} for name, values in seen.items()}
    try:  # a read-only or remote artifact store just means no memo
        artifact_files.save_npz(memo, **{c: np.array(sorted(v), dtype=str) for c, v in ids.items()})
    except OSError:
        pass
    return ids


def unseen_ids(columns: Dict[str, np.ndarray], window_ids: Dict[str, Set[str]]) -> Dict[str, np.ndarray]:
    """Per column, the rows whose (present) id the training window never saw."""
    return {name: np.fromiter((v != "" and v not in window_ids.get(name, ()) for v in column.tolist()),
                              dtype=bool, count=len(column))
            for name, column in columns.items()}


def cold_keys(examples_uri: str, categorical: List[str], window_ids: Dict[str, Set[str]]
              ) -> Tuple[Dict[int, bool], Dict[str, int], int]:
    """From the eval split's ids alone (no model): whether each row key
    (`paired_auc_metric.row_key`) is cold, i.e. holds an id the window never saw;
    per column, how many rows had an unseen id; and how many rows were read."""
    cold_by_key: Dict[int, bool] = {}
    unseen_count: Dict[str, int] = {name: 0 for name in window_ids}
    rows_read = 0
    for records in _records(examples_uri, "eval"):
        columns = paired_auc_metric.string_columns(_decode(records), categorical, len(records))
        cold = np.zeros(len(records), dtype=bool)
        for name, unseen in unseen_ids({c: columns[c] for c in window_ids}, window_ids).items():
            cold |= unseen
            unseen_count[name] += int(unseen.sum())
        for key, is_cold in zip(paired_auc_metric.row_keys(columns, categorical, len(records)), cold.tolist()):
            cold_by_key[key] = is_cold
        rows_read += len(records)
    return cold_by_key, unseen_count, rows_read


def _copy_blessing_properties(source: types.Artifact, target: types.Artifact) -> None:
    for key in ("current_model", "baseline_model"):
        if key in source.mlmd_artifact.custom_properties:
            target.set_string_custom_property(key, source.get_string_custom_property(key))
    for key in ("current_model_id", "baseline_model_id"):
        if key in source.mlmd_artifact.custom_properties:
            target.set_int_custom_property(key, source.get_int_custom_property(key))


GATE_BLESSING = "gate_blessing"
GATE_EVALUATION = "gate_evaluation"


class PairedAucGateSpec(types.ComponentSpec):
    PARAMETERS = {
        "max_auc_drop": ExecutionParameter(type=float),
        "feature_spec_json": ExecutionParameter(type=str),  # label and categorical columns
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "baseline_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
        "evaluator_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing),
        # The Evaluator's metrics, with both models' per-row scores (paired_auc_metric).
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        # The training window; its newest span (this run's) is the one whose eval split is scored. Not a
        # second input for that span: the same artifact under two keys is a duplicate ml-metadata event.
        "training_examples": ChannelParameter(type=standard_artifacts.Examples),
    }
    OUTPUTS = {
        # Not "blessing"/"evaluation": Airflow's launcher names an artifact by output key and run, and
        # the Evaluator's outputs of the same types already take those names.
        GATE_BLESSING: ChannelParameter(type=standard_artifacts.ModelBlessing),
        GATE_EVALUATION: ChannelParameter(type=standard_artifacts.ModelEvaluation),
    }


class Executor(base_executor.BaseExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:
        [evaluator_blessing] = input_dict["evaluator_blessing"]
        [evaluation_in] = input_dict["evaluation"]
        baseline = (input_dict.get("baseline_model") or [None])[0]
        window = input_dict["training_examples"]
        examples = newest_span(window)
        [blessing] = output_dict[GATE_BLESSING]
        [evaluation] = output_dict[GATE_EVALUATION]
        spec = json.loads(exec_properties["feature_spec_json"])
        max_auc_drop = float(exec_properties["max_auc_drop"])

        # The ids Transform and the Trainer saw: the window's train splits.
        categorical = list(spec["categorical"])
        window_ids: Dict[str, Set[str]] = {c: set() for c in categorical}
        for artifact in window:
            for name, ids in distinct_ids(artifact.uri, "train", categorical).items():
                window_ids[name] |= ids
        # Both models' scores of the eval rows, from the Evaluator's own pass (no second scoring).
        payload = evaluation_results.overall_bytes_metric(evaluation_in.uri, paired_auc_metric.NAME)
        if payload is None:
            raise RuntimeError(f"the Evaluator's output {evaluation_in.uri} has no {paired_auc_metric.NAME} "
                               "metric: its eval_config needs paired_auc_metric.metric_config")
        scored = paired_auc_metric.read(payload)
        cold_by_key, unseen_count, rows_read = cold_keys(examples.uri, categorical, window_ids)
        scored["cold"] = np.fromiter((cold_by_key[k] for k in scored.pop("key").tolist()), dtype=bool,
                                     count=len(scored["label"]))
        metric_result = scored.pop("result")
        labelled = ~np.isnan(scored["label"])  # a row without a label cannot be scored
        scored = {k: v[labelled] for k, v in scored.items()}
        cold = scored["cold"]
        labels = scored["label"] > 0.5
        paired = None
        change_ok, why = paired_auc.change_gate(None, max_auc_drop)
        if "baseline" in scored:
            if metric_result["paired"]:
                paired = paired_auc.PairedAuc(**metric_result["paired"])
                change_ok, why = paired_auc.change_gate(paired, max_auc_drop)
            else:  # too few clicks to compare; the AUC floor still applies
                why = f"no comparison with the baseline: {metric_result['error']}"
        floor_ok = bool(evaluator_blessing.get_int_custom_property("blessed"))
        blessed = floor_ok and change_ok
        result = {
            "paired": paired.to_dict() if paired else None,
            "max_auc_drop": max_auc_drop,
            "change_gate_passed": change_ok,
            "change_gate_message": why,
            "evaluator_floor_passed": floor_ok,
            "blessed": blessed,
            "rows": int(len(labels)),
            "cold_rows": int(cold.sum()),
            "cold_share_by_field": {k: v / rows_read for k, v in unseen_count.items()} if rows_read else {},
            "window_spans": sorted(span_of(a) for a in window),
            "baseline_model": baseline.uri if baseline else None,
        }
        arrays = {"label": labels.astype(np.int8), "new": scored["new"].astype(np.float32),
                  "cold": cold}
        if "baseline" in scored:
            arrays["baseline"] = scored["baseline"].astype(np.float32)
        artifact_files.save_npz(artifact_files.join(evaluation.uri, PREDICTIONS), compressed=True, **arrays)
        artifact_files.write_text(artifact_files.join(evaluation.uri, RESULT), json.dumps(result, indent=2))

        _copy_blessing_properties(evaluator_blessing, blessing)
        blessing.set_int_custom_property("blessed", int(blessed))
        blessing.set_string_custom_property("change_gate", why[:1000])
        artifact_files.write_bytes(artifact_files.join(blessing.uri, "BLESSED" if blessed else "NOT_BLESSED"), b"")


def newest_span(artifacts: List[Any]) -> Any:
    """The window's newest span: the one this run ingested (the window is resolved after ExampleGen)."""
    return max(artifacts, key=lambda a: (span_of(a), int(getattr(a, "version", 0) or 0), a.id))


class PairedAucGate(base_component.BaseComponent):
    SPEC_CLASS = PairedAucGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model, evaluator_blessing, evaluation, training_examples, max_auc_drop: float,
                 feature_spec_json: str, baseline_model=None):
        super().__init__(spec=PairedAucGateSpec(
            model=model, baseline_model=baseline_model, evaluator_blessing=evaluator_blessing, evaluation=evaluation,
            training_examples=training_examples, max_auc_drop=max_auc_drop, feature_spec_json=feature_spec_json,
            **{GATE_BLESSING: types.Channel(type=standard_artifacts.ModelBlessing),
               GATE_EVALUATION: types.Channel(type=standard_artifacts.ModelEvaluation)}))
