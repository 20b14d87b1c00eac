"""PairedAucGate: the Evaluator's change gate, with the AUC's sampling noise.

TFMA's change threshold compares two AUCs with no notion of noise (about
±0.003 on 50k rows, the size of the differences it acts on), and it cannot
compute a confidence interval. So the Evaluator keeps only the absolute AUC
floor, and this component, right after it:

1. scores the newest span's eval split with both SavedModels' serving_default
   (the new model and the baseline, on the very same rows);
2. computes AUC(new) - AUC(baseline) with its paired 95% DeLong interval
   (`deepfm_tfx.paired_auc`);
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
from typing import Any, Dict, Iterator, List, Optional, Set

import numpy as np
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from deepfm_tfx import artifact_files, contracts, paired_auc
from deepfm_tfx.spans import span_of

PREDICTIONS = "predictions.npz"
RESULT = "paired_auc.json"
# Distinct ids of an ingested split, memoized beside the examples they describe.
IDS_MEMO = "distinct_ids.{split}.v1.npz"
BATCH = 4096


def _records(examples_uri: str, split: str, batch: int = BATCH) -> Iterator[List[bytes]]:
    import tensorflow as tf
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(batch):
        yield list(records.numpy())


def _decode(records: List[bytes]):
    from tfx_bsl.coders import example_coder
    return example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)


def _first_values(batch, name: str, rows: int, missing) -> np.ndarray:
    """Each row's first value of a column (`missing` where it has none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = np.full(rows, missing, dtype=object)
    if name not in batch.schema.names:
        return column
    cells = batch.column(name)
    present = pc.list_value_length(cells).fill_null(0).to_numpy(zero_copy_only=False) >= 1
    if present.any():
        firsts = pc.list_element(cells.filter(pa.array(present)), 0)
        if pa.types.is_binary(firsts.type) or pa.types.is_large_binary(firsts.type):
            column[present] = [v.decode("utf-8", "replace") for v in firsts.to_pylist()]
        else:
            column[present] = firsts.to_numpy(zero_copy_only=False)
    return column


def _string_columns(batch, columns: List[str], rows: int) -> Dict[str, np.ndarray]:
    """Each column's value per row as str ("" = missing)."""
    return {name: _first_values(batch, name, rows, "").astype(str) for name in columns}


def distinct_ids(examples_uri: str, split: str, columns: List[str]) -> Dict[str, Set[str]]:
    """The distinct values of each column in an ingested split (memoized beside it)."""
    memo = artifact_files.join(examples_uri, IDS_MEMO.format(split=split))
    stored = artifact_files.load_npz(memo)
    if stored is not None and set(columns) <= set(stored):
        return {c: set(stored[c].tolist()) for c in columns}
    seen: Dict[str, Set[str]] = {c: set() for c in columns}
    for records in _records(examples_uri, split, 50_000):
        for name, column in _string_columns(_decode(records), columns, len(records)).items():
            seen[name].update(column.tolist())
    for values in seen.values():
        values.discard("")
    try:  # a read-only or remote artifact store just means no memo
        artifact_files.save_npz(memo, **{c: np.array(sorted(v), dtype=str) for c, v in seen.items()})
    except OSError:
        pass
    return seen


def _scorer(saved_model_dir: str):
    """serving_default as a function of serialized tf.Examples -> probabilities."""
    import tensorflow as tf
    loaded = tf.saved_model.load(saved_model_dir)
    fn = loaded.signatures[contracts.SERVING_SIGNATURE]
    [input_key] = fn.structured_input_signature[1].keys()
    outputs = list(fn.structured_outputs)
    output_key = outputs[0] if len(outputs) == 1 else contracts.OUTPUT_KEY

    def score(records: List[bytes]) -> np.ndarray:
        return fn(**{input_key: tf.constant(records)})[output_key].numpy().reshape(-1)
    score.keep_alive = loaded  # the signature needs its object graph
    return score


def unseen_ids(columns: Dict[str, np.ndarray], window_ids: Dict[str, Set[str]]) -> Dict[str, np.ndarray]:
    """Per column, the rows whose (present) id the training window never saw."""
    return {name: np.fromiter((v != "" and v not in window_ids.get(name, ()) for v in column.tolist()),
                              dtype=bool, count=len(column))
            for name, column in columns.items()}


def score_eval_split(examples_uri: str, label: str, new_model: str, baseline_model: Optional[str],
                     window_ids: Optional[Dict[str, Set[str]]]) -> Dict[str, Any]:
    """Row by row: the label, both models' probabilities and whether the row is
    cold (an id the window never saw); and per column, how many rows had an unseen id.
    One batch at a time, so the ids of a large eval split are never all held."""
    new = _scorer(new_model)
    baseline = _scorer(baseline_model) if baseline_model else None
    parts: Dict[str, List[np.ndarray]] = {"label": [], "new": [], "baseline": [], "cold": []}
    unseen_count: Dict[str, int] = {name: 0 for name in window_ids or {}}
    for records in _records(examples_uri, "eval"):
        batch = _decode(records)
        parts["label"].append(_first_values(batch, label, len(records), np.nan).astype(np.float64))
        parts["new"].append(new(records))
        if baseline:
            parts["baseline"].append(baseline(records))
        cold = np.zeros(len(records), dtype=bool)
        if window_ids:
            for name, unseen in unseen_ids(_string_columns(batch, list(window_ids), len(records)),
                                           window_ids).items():
                cold |= unseen
                unseen_count[name] += int(unseen.sum())
        parts["cold"].append(cold)
    out: Dict[str, Any] = {k: np.concatenate(v) for k, v in parts.items() if v}
    out["unseen_count"] = unseen_count
    return out


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
        [model] = input_dict["model"]
        [evaluator_blessing] = input_dict["evaluator_blessing"]
        baseline = (input_dict.get("baseline_model") or [None])[0]
        window = input_dict["training_examples"]
        examples = newest_span(window)
        [blessing] = output_dict[GATE_BLESSING]
        [evaluation] = output_dict[GATE_EVALUATION]
        spec = json.loads(exec_properties["feature_spec_json"])
        max_auc_drop = float(exec_properties["max_auc_drop"])

        # The ids Transform and the Trainer saw: the window's train splits.
        window_ids: Dict[str, Set[str]] = {c: set() for c in spec["categorical"]}
        for artifact in window:
            for name, ids in distinct_ids(artifact.uri, "train", list(spec["categorical"])).items():
                window_ids[name] |= ids
        scored = score_eval_split(
            examples.uri, spec["label"], os.path.join(model.uri, contracts.SERVING_MODEL_DIR),
            os.path.join(baseline.uri, contracts.SERVING_MODEL_DIR) if baseline else None, window_ids)
        unseen_count = scored.pop("unseen_count")
        rows_read = len(scored["label"])
        labelled = ~np.isnan(scored["label"])  # a row without a label cannot be scored
        scored = {k: v[labelled] for k, v in scored.items()}
        cold = scored["cold"]
        labels = scored["label"] > 0.5
        paired = None
        change_ok, why = paired_auc.change_gate(None, max_auc_drop)
        if "baseline" in scored:
            try:
                paired = paired_auc.delong(labels, scored["new"], scored["baseline"])
                change_ok, why = paired_auc.change_gate(paired, max_auc_drop)
            except ValueError as e:  # too few clicks to compare; the AUC floor still applies
                why = f"no comparison with the baseline: {e}"
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

    def __init__(self, model, evaluator_blessing, training_examples, max_auc_drop: float, feature_spec_json: str,
                 baseline_model=None):
        super().__init__(spec=PairedAucGateSpec(
            model=model, baseline_model=baseline_model, evaluator_blessing=evaluator_blessing,
            training_examples=training_examples, max_auc_drop=max_auc_drop, feature_spec_json=feature_spec_json,
            **{GATE_BLESSING: types.Channel(type=standard_artifacts.ModelBlessing),
               GATE_EVALUATION: types.Channel(type=standard_artifacts.ModelEvaluation)}))
