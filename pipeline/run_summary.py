"""The end-of-run summary, read back from ml-metadata and the artifacts."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata import errors, metadata_store
from ml_metadata.proto import metadata_store_pb2

from deepfm_tfx import artifact_files, evaluation_results
from deepfm_tfx.contracts import EVALUATOR_GATE, LATENCY_GATE, PAIRED_AUC_GATE, TRAINER_KEY
from deepfm_tfx.synthetic import generator
from deepfm_tfx import training_info
from deepfm_tfx.spans import partition_of, span_of


# An execution in these states produced its outputs (a cached one reused them).
FINISHED_STATES = ("COMPLETE", "CACHED")
# LocalDagRunner and Kubeflow (TFX's IR launcher) name a run's context type
# "pipeline_run"; Airflow's legacy launcher names it "run", as "<pipeline>.<run id>".
RUN_CONTEXT_TYPES = ("pipeline_run", "run")


def _run_context(store, pipeline_name: str, run_id: Optional[str] = None):
    """The pipeline's run named `run_id`, or its newest run."""
    runs = [c for kind in RUN_CONTEXT_TYPES for c in store.get_contexts_by_type(kind)]
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_ctx is None or not runs:
        return None
    if run_id is not None:
        runs = [r for r in runs if r.name in (run_id, f"{pipeline_name}.{run_id}")]
    in_pipeline = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
    runs = [r for r in runs if {e.id for e in store.get_executions_by_context(r.id)} & in_pipeline]
    return max(runs, key=lambda c: (c.create_time_since_epoch, c.id)) if runs else None


def _node_name(store, execution, node_type_id: Optional[int]) -> str:
    if "component_id" in execution.properties:  # the legacy launcher's
        return execution.properties["component_id"].string_value
    return next((c.name.split(".", 1)[-1] for c in store.get_contexts_by_execution(execution.id)
                 if c.type_id == node_type_id), str(execution.id))


def executions_of_run(connection_config, pipeline_name: str, run_id: Optional[str] = None) -> List[Dict[str, Any]]:
    """One dict per execution of the run (the newest when run_id is None): node, state, seconds, artifacts.

    `inputs` and `outputs` group artifacts by type name; `input_keys` by the component's input key.
    """
    store = metadata_store.MetadataStore(connection_config)
    run = _run_context(store, pipeline_name, run_id)
    if run is None:
        return []
    try:
        node_type_id = store.get_context_type("node").id
    except errors.NotFoundError:  # only the legacy launcher has written to this store
        node_type_id = None
    result = []
    for execution in sorted(store.get_executions_by_context(run.id), key=lambda e: e.id):
        events = store.get_events_by_execution_ids([execution.id])
        inputs = [e for e in events if e.type == metadata_store_pb2.Event.INPUT]
        outputs = [e for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
        input_keys = _tfx_artifacts_by_key(store, inputs)
        result.append({
            "node": _node_name(store, execution, node_type_id),
            "execution_id": execution.id,
            "state": metadata_store_pb2.Execution.State.Name(execution.last_known_state),
            "seconds": max(execution.last_update_time_since_epoch - execution.create_time_since_epoch, 0) / 1000.0,
            "inputs": _artifacts_by_type(store, [e.artifact_id for e in inputs]),
            "input_keys": input_keys,
            "outputs": _artifacts_by_type(store, [e.artifact_id for e in outputs]),
            "run_id": run.name.split(".", 1)[-1] if run.name.startswith(pipeline_name + ".") else run.name,
        })
    return result


def _ingested(executions: List[Dict[str, Any]]):
    """The Examples this run's ExampleGen wrote, if it ran."""
    for e in executions:
        if e["node"] == "SpecCsvExampleGen" and e["outputs"].get("Examples"):
            return e["outputs"]["Examples"][0]
    return None


def span_of_run(executions: List[Dict[str, Any]]) -> Optional[int]:
    """The span this run ingested, if its ExampleGen ran."""
    examples = _ingested(executions)
    return span_of(examples) if examples is not None else None


def _tfx_artifacts_by_key(store, events) -> Dict[str, list]:
    """TFX Artifacts (split names and all, as a component is given them) by the event's key."""
    from tfx.types import artifact_utils

    protos = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])} if events else {}
    types = {t.id: t for t in store.get_artifact_types_by_id(list({a.type_id for a in protos.values()}))} \
        if protos else {}
    by_key: Dict[str, list] = {}
    for event in events:
        if event.path.steps and event.artifact_id in protos:
            proto = protos[event.artifact_id]
            by_key.setdefault(event.path.steps[0].key, []).append(
                artifact_utils.deserialize_artifact(types[proto.type_id], proto))
    return by_key


def _artifacts_by_type(store, artifact_ids: List[int]) -> Dict[str, list]:
    by_type: Dict[str, list] = {}
    names: Dict[int, str] = {}
    for artifact in store.get_artifacts_by_id(artifact_ids) if artifact_ids else []:
        if artifact.type_id not in names:
            names[artifact.type_id] = store.get_artifact_types_by_id([artifact.type_id])[0].name
        by_type.setdefault(names[artifact.type_id], []).append(artifact)
    return by_type


def _custom(artifact, key: str) -> Any:
    value = artifact.custom_properties.get(key)
    if value is None:
        return None
    return getattr(value, value.WhichOneof("value"))


def evaluated_columns(examples_uri: str, split: str = "eval", chunk_rows: int = 50_000):
    """Raw columns and labels of an ExampleGen split, as written, `chunk_rows` at a
    time: numbers as float (NaN = missing), ids as str ("" = missing)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import tensorflow as tf
    from tfx_bsl.coders import example_coder

    files = artifact_files.glob(os.path.join(examples_uri, f"Split-{split}", "*.gz"))
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    for records in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(chunk_rows):
        batch = decoder.DecodeBatch(list(records.numpy()))
        if not set(generator.COLUMNS) <= set(batch.schema.names):
            return
        columns = {}
        for name in generator.COLUMNS:
            cells = batch.column(name)  # one value per cell, or none when missing
            present = pc.list_value_length(cells).fill_null(0).to_numpy(zero_copy_only=False) == 1
            values = cells.flatten()
            if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
                column = np.full(len(cells), np.nan)
                column[present] = values.to_numpy(zero_copy_only=False)
                columns[name] = column
            else:
                column = np.full(len(cells), "", dtype=object)
                column[present] = pc.cast(values, pa.large_string()).to_numpy(zero_copy_only=False)
                columns[name] = column.astype(str)
        yield columns, columns.pop("label").astype(np.int64)


BAYES_MEMO = "bayes_of_eval_split.v2.json"  # beside the examples it describes


def examples_uri(executions: List[Dict[str, Any]]) -> Optional[str]:
    """The newest span's ingested examples in this run."""
    examples = _ingested(executions)
    return examples.uri if examples is not None else None


def bayes_of_evaluated_rows(report: Dict[str, Any], examples_uri: Optional[str]) -> Dict[str, Any]:
    """The generator's Bayes figures, recomputed on the held-out rows the
    Evaluator scored: the whole span's differ from them by sampling noise."""
    result = dict(report, bayes_auc_span=report.get("bayes_auc"), bayes_rows="span")
    memo = os.path.join(examples_uri, BAYES_MEMO) if examples_uri else None
    if memo and artifact_files.exists(memo):  # a cached re-run: same rows, same answer
        return dict(result, **json.loads(artifact_files.read_text(memo)))
    if examples_uri:
        rows = generator.bayes_of_rows(report, evaluated_columns(examples_uri))
        if rows:
            result.update(rows)
            artifact_files.write_text(memo, json.dumps(rows))
    return result


def _paired_result(gate_outputs: Dict[str, list]) -> Optional[Dict[str, Any]]:
    """PairedAucGate's verdict and figures (paired_auc.json), if it ran."""
    evaluation = gate_outputs.get("ModelEvaluation")
    path = os.path.join(evaluation[0].uri, "paired_auc.json") if evaluation else None
    if not path or not artifact_files.exists(path):
        return None
    return json.loads(artifact_files.read_text(path))


def build(executions: List[Dict[str, Any]], trainer: str,
          bayes: Optional[Dict[str, Any]], error: Optional[str] = None,
          blocked_by: Optional[str] = None) -> Dict[str, Any]:
    by_node = {e["node"]: e for e in executions}
    summary: Dict[str, Any] = {
        "auc": None, "logloss": None, "calibration": None, "example_count": None,
        "baseline_auc": None,
        # AUC(new) - AUC(baseline) on the same eval rows, with its paired 95% interval (DeLong).
        "auc_diff": None, "auc_diff_ci95": None, "auc_diff_rows": None, "change_gate": None,
        # On the rows the Evaluator scored when those can be read, else the whole span.
        "bayes_auc": bayes.get("bayes_auc") if bayes else None,
        "bayes_logloss": bayes.get("bayes_logloss") if bayes else None,
        "bayes_rows": bayes.get("bayes_rows") if bayes else None,
        "stale_bayes_auc": bayes.get("stale_bayes_auc") if bayes else None,
        "bayes_auc_span": bayes.get("bayes_auc_span") if bayes else None,
        "blessed": False, "pushed": False, "pushed_path": None, "pushed_version": None, "not_pushed_reason": None,
        TRAINER_KEY: trainer,
        "span": None,
        "partition": None,  # the Hive partition ingested (dt=2026-11-30), if the data has them
        "examples_artifact_id": None,
        "statistics_artifact_id": None,
        "window_spans": None,
        "warm_started": None,
        "warm_start_note": None,
        "component_seconds": {e["node"]: round(e["seconds"], 2) for e in executions},
        "component_states": {e["node"]: e["state"] for e in executions},
        "pipeline_run_id": executions[0]["run_id"] if executions else None,
        "blocked_by": blocked_by,
        "error": error,
    }
    examples = by_node.get("SpecCsvExampleGen", {}).get("outputs", {}).get("Examples")
    if examples:
        summary["span"] = span_of(examples[0])
        summary["partition"] = partition_of(examples[0])
        summary["examples_artifact_id"] = examples[0].id
    statistics = by_node.get("StatisticsGen", {}).get("outputs", {}).get("ExampleStatistics")
    if statistics:
        summary["statistics_artifact_id"] = statistics[0].id
    window = by_node.get("Transform", {}).get("inputs", {}).get("Examples")
    if window:
        summary["window_spans"] = sorted(span_of(a) for a in window)
        summary["window_partitions"] = sorted(p for a in window if (p := partition_of(a))) or None
    trained = by_node.get("Trainer", {}).get("outputs", {}).get("Model")
    if trained:
        info = training_info.read(trained[0].uri)
        summary["warm_started"] = info.get("warm_started")
        summary["warm_start_note"] = info.get("warm_start_note")
        for key in ("warm_start_slots", "global_step_start", "learning_rate_first_step",
                    "learning_rate_last_step", "weight_change", "weight_change_max", "num_ids",
                    "train_examples_per_second", "table_bytes", "weight_bytes", "optimizer_bytes",
                    "resumed_from_step", "cluster"):
            summary[key] = info.get(key)
    evaluator = by_node.get("Evaluator")
    if evaluator and evaluator["outputs"].get("ModelEvaluation"):
        uri = evaluator["outputs"]["ModelEvaluation"][0].uri
        metrics = evaluation_results.overall_metrics(uri)
        for key in ("auc", "logloss", "calibration", "example_count"):
            summary[key] = metrics["candidate"].get(key)
        summary["baseline_auc"] = metrics["baseline"].get("auc")
        if summary["auc"] is not None and summary["bayes_auc"] is not None:
            # What is left to learn on the same rows: the planted truth's AUC minus the model's.
            summary["bayes_auc_gap"] = summary["bayes_auc"] - summary["auc"]
        # PairedAucGate has the last word (floor and change with its noise); the Evaluator's alone
        # when the run stopped between the two.
        gate = by_node.get(PAIRED_AUC_GATE, {}).get("outputs", {})
        blessing = gate.get("ModelBlessing") or evaluator["outputs"].get("ModelBlessing")
        summary["blessed"] = bool(blessing and _custom(blessing[0], "blessed"))
        paired = _paired_result(gate)
        if paired:
            figures = paired.get("paired") or {}
            summary["auc_diff"] = figures.get("diff")
            summary["auc_diff_ci95"] = [figures["ci_low"], figures["ci_high"]] if figures else None
            summary["auc_diff_rows"] = figures.get("rows")
            summary["change_gate"] = paired.get("change_gate_message")
        if not summary["blessed"] and not blocked_by:
            summary["blocked_by"] = EVALUATOR_GATE
            summary["evaluator_failures"] = evaluation_results.validation_failures(uri)
            if paired and not paired.get("change_gate_passed", True):
                summary["evaluator_failures"].append(f"auc (change vs baseline): {paired['change_gate_message']}")
    pusher = by_node.get("ModelRepositoryPusher")
    if pusher and pusher["outputs"].get("PushedModel"):
        pushed = pusher["outputs"]["PushedModel"][0]
        summary["pushed"] = bool(_custom(pushed, "pushed"))
        summary["pushed_path"] = _custom(pushed, "pushed_destination")
        summary["pushed_version"] = _custom(pushed, "pushed_version")
        summary["not_pushed_reason"] = _custom(pushed, "not_pushed_reason")
        # The pusher's serving check, when a budget asked for one.
        summary["serving_check"] = json.loads(_custom(pushed, "serving_check") or "null")
        if _custom(pushed, "refused_by") == LATENCY_GATE and not summary["blocked_by"]:
            summary["blocked_by"] = LATENCY_GATE
            summary["error"] = f"[gate {LATENCY_GATE}] {summary['not_pushed_reason']}"
    return summary
