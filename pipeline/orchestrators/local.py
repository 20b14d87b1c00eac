"""Runs the pipeline on this machine with LocalDagRunner: the embedded default."""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

from ml_metadata import metadata_store
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from deepfm_tfx.components import hash_splits
from deepfm_tfx.components.csv_rows import check_files
from deepfm_tfx.errors import DataError
from deepfm_tfx.components import span_window
from deepfm_tfx.components.gates import GateFailed
from deepfm_tfx import model_repository, spans
from deepfm_tfx.pipeline import id_space
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline import metadata
from deepfm_tfx.pipeline import run_summary
from deepfm_tfx.pipeline import validation
from deepfm_tfx.synthetic import generator
from deepfm_tfx.pipeline.pipeline import create_pipeline_from_config, splits
from deepfm_tfx.schemas import feature_spec, frozen_schema


class RunFailed(RuntimeError):
    def __init__(self, summary: Dict[str, Any], exit_code: int):
        super().__init__(summary.get("error") or summary.get("blocked_by"))
        self.summary = summary
        self.exit_code = exit_code


def input_layout(data_root: str, spec: feature_spec.FeatureSpec) -> Tuple[str, Optional[int]]:
    """The ExampleGen pattern for a data folder, and its newest span (None if unspanned).

    Reads every row ExampleGen will ingest, so a bad value, or a span too
    small to split and evaluate, stops the run before any component starts.
    """
    if not os.path.isdir(data_root):
        what = "is not a directory" if os.path.exists(data_root) else "data directory does not exist"
        raise DataError(f"{data_root}: {what}")
    latest = spans.newest(data_root)
    if latest is not None:
        where = os.path.join(spans.folder(data_root, latest), spec.file_pattern)
        layout = spans.input_pattern(spec.file_pattern), latest
    else:
        where = os.path.join(data_root, spec.file_pattern)
        layout = spec.file_pattern, None
    files = sorted(glob.glob(where))
    check_files(files, spec, where)
    hash_splits.check_counts(hash_splits.count_splits(files, spec, splits()), where)
    return layout


def ensure_default_data(config: configs.RunConfig) -> None:
    if config.data is None and not os.path.isdir(spans.folder(config.data_root, config.spans)):
        print(f"Generating {config.rows:,} synthetic rows ({config.profile} profile) x {config.spans} span(s) "
              f"into {config.data_root}", flush=True)
        generator.generate(config.data_root, rows=config.rows, spans=config.spans, seed=config.seed,
                           profile=config.profile)


def build(config: configs.RunConfig, spec: feature_spec.FeatureSpec, input_pattern: str):
    absolute = dataclasses.replace(
        config, data=os.path.abspath(config.data_root), pipeline_root=os.path.abspath(config.pipeline_root),
        model_repository=os.path.abspath(config.model_repository))
    return create_pipeline_from_config(
        absolute, spec, input_pattern,
        metadata_connection_config=metadata.connection_config(config.metadata, config.pipeline_root))


def _find(exc: BaseException, kind: type) -> Optional[BaseException]:
    """Beam and TFX wrap exceptions; find ours anywhere in the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _message_of(exc: BaseException) -> str:
    # Beam re-raises a DoFn's error with the step name appended; keep our message only.
    text = str(exc)
    return text.split(" [while running")[0].strip()


# Gates that judge the data itself: a week they stop must not define the schema.
DATA_GATES = ("ExampleValidator", "DriftSkew")


def _inferred_schema_uri(executions) -> Optional[str]:
    for execution in executions:
        if execution["node"] == "SchemaGen" and execution["outputs"].get("Schema"):
            return execution["outputs"]["Schema"][0].uri
    return None


def _serving_version(config: configs.RunConfig) -> Optional[int]:
    try:
        return model_repository.serving_version(config.model_repository, config.model_name)
    except (model_repository.RepositoryError, OSError):
        return None


def publish_report(config: configs.RunConfig, spec: feature_spec.FeatureSpec, executions,
                   summary: Dict[str, Any], serving_before: Optional[int]) -> Optional[str]:
    """Writes the run's HTML report (pipeline/report/publish.py); returns <pipeline_root>/report.html.
    A report that cannot be written is noted in the summary and never fails the run."""
    try:
        from deepfm_tfx.pipeline.report import publish, run_data
        report = run_data.collect(executions, summary, label=spec.label, min_auc=config.min_auc,
                                  max_auc_drop=config.max_auc_drop, model_name=config.model_name)
        report["serving_before"] = serving_before
        return publish.publish(report, pipeline_root=config.pipeline_root,
                               model_repository_dir=config.model_repository, model_name=config.model_name)["report"]
    except Exception as e:  # noqa: BLE001 - the run's outcome stands without its report
        summary["report_error"] = f"{type(e).__name__}: {e}"
        return None


def run(config: configs.RunConfig) -> Dict[str, Any]:
    """Runs one pipeline run; returns the summary or raises RunFailed with it."""
    validation.validate(config)
    spec = frozen_schema.apply(feature_spec.load(config.features), config.pipeline_root)
    ensure_default_data(config)
    input_pattern, span = input_layout(config.data_root, spec)
    pipeline = build(config, spec, input_pattern)
    serving_before = _serving_version(config)
    started = time.monotonic()
    error, blocked_by, exit_code = None, None, 0
    try:
        LocalDagRunner().run(pipeline)
    except Exception as e:  # noqa: BLE001 - reported in the summary, re-raised below as RunFailed
        if gate := _find(e, GateFailed):
            error, blocked_by, exit_code = _message_of(gate), gate.gate, 3
        elif (data := _find(e, DataError)) or "DataError" in str(e):
            error, exit_code = _message_of(data or e), 2
        else:
            error, exit_code = f"{type(e).__name__}: {_message_of(e)}", 1
    executions = run_summary.executions_of_latest_run(pipeline.metadata_connection_config, configs.PIPELINE_NAME)
    bayes = generator.read_bayes(config.data_root, span) if span is not None else None
    if bayes:
        bayes = run_summary.bayes_of_evaluated_rows(bayes, run_summary.examples_uri(executions))
    summary = run_summary.build(executions, config.trainer, bayes, error=error, blocked_by=blocked_by)
    inferred = _inferred_schema_uri(executions)
    if inferred and summary["blocked_by"] not in DATA_GATES and exit_code in (0, 3):
        summary["frozen_schema"] = frozen_schema.freeze(inferred, spec, config.pipeline_root)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["distinct_ids"] = id_space.chosen(config.pipeline_root).get("distinct_ids")
    summary["data_root"] = os.path.abspath(config.data_root)
    if exit_code == 0 and not summary["blessed"]:
        exit_code = 3  # the Evaluator gate refused the model
    if exit_code == 3 and summary["examples_artifact_id"]:
        # Leave the week's data out of later training windows.
        week = [summary["examples_artifact_id"], summary["statistics_artifact_id"]]
        span_window.quarantine(metadata_store.MetadataStore(pipeline.metadata_connection_config),
                               [i for i in week if i], f"blocked by {summary['blocked_by']}")
        summary["quarantined_span"] = summary["span"]
    summary["report_path"] = publish_report(config, spec, executions, summary, serving_before)
    os.makedirs(os.path.dirname(os.path.abspath(config.summary_path)), exist_ok=True)
    with open(config.summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    summary["summary_path"] = config.summary_path
    if exit_code:
        raise RunFailed(summary, exit_code)
    return summary
