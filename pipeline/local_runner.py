"""Runs the pipeline on this machine with LocalDagRunner: the embedded default."""
from __future__ import annotations

import glob
import json
import os
import re
import time
from typing import Any, Dict, Optional, Tuple

from ml_metadata import metadata_store
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from components.csv_example_gen import DataError, check_files
from components import span_window
from components.gates import GateFailed
from pipeline import configs, metadata, run_summary, synthetic_data
from pipeline.pipeline import create_pipeline
from schemas import feature_spec


class RunFailed(RuntimeError):
    def __init__(self, summary: Dict[str, Any], exit_code: int):
        super().__init__(summary.get("error") or summary.get("blocked_by"))
        self.summary = summary
        self.exit_code = exit_code


def input_layout(data_root: str, spec: feature_spec.FeatureSpec) -> Tuple[str, Optional[int]]:
    """The ExampleGen pattern for a data folder, and its newest span (None if unspanned)."""
    if not os.path.isdir(data_root):
        raise DataError(f"{data_root}: data directory does not exist")
    spans = [int(m.group(1)) for d in os.listdir(data_root)
             if (m := re.fullmatch(r"span-(\d+)", d)) and os.path.isdir(os.path.join(data_root, d))]
    if spans:
        latest = max(spans)
        check_files(sorted(glob.glob(os.path.join(data_root, f"span-{latest}", spec.file_pattern))),
                    spec, os.path.join(data_root, f"span-{latest}", spec.file_pattern))
        return f"span-{{SPAN}}/{spec.file_pattern}", latest
    check_files(sorted(glob.glob(os.path.join(data_root, spec.file_pattern))), spec,
                os.path.join(data_root, spec.file_pattern))
    return spec.file_pattern, None


def ensure_default_data(config: configs.RunConfig) -> None:
    if config.data is None and not os.path.isdir(os.path.join(config.data_root, f"span-{config.spans}")):
        print(f"Generating {config.rows:,} synthetic rows x {config.spans} span(s) into {config.data_root}", flush=True)
        synthetic_data.generate(config.data_root, rows=config.rows, spans=config.spans, seed=config.seed)


def build(config: configs.RunConfig, spec: feature_spec.FeatureSpec, input_pattern: str):
    return create_pipeline(
        pipeline_name=configs.PIPELINE_NAME,
        pipeline_root=os.path.abspath(config.pipeline_root),
        data_root=os.path.abspath(config.data_root),
        input_pattern=input_pattern,
        spec=spec,
        model_repository=os.path.abspath(config.model_repository),
        model_name=config.model_name,
        trainer_runner=config.trainer,
        train_steps=config.train_steps,
        eval_steps=config.eval_steps,
        training=config.training,
        window_spans=config.window_spans,
        warm_start=config.warm_start,
        min_auc=config.min_auc,
        max_auc_drop=config.max_auc_drop,
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata.connection_config(config.metadata, config.pipeline_root),
        beam_pipeline_args=configs.DEFAULT_BEAM_ARGS + list(config.beam_args),
    )


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


def run(config: configs.RunConfig) -> Dict[str, Any]:
    """Runs one pipeline run; returns the summary or raises RunFailed with it."""
    spec = feature_spec.load(config.features)
    ensure_default_data(config)
    input_pattern, span = input_layout(config.data_root, spec)
    pipeline = build(config, spec, input_pattern)
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
    bayes = synthetic_data.read_bayes(config.data_root, span) if span is not None else None
    if bayes:
        bayes = run_summary.bayes_of_evaluated_rows(bayes, run_summary.examples_uri(executions))
    summary = run_summary.build(executions, config.trainer, bayes, error=error, blocked_by=blocked_by)
    summary["wall_seconds"] = round(time.monotonic() - started, 1)
    summary["data_root"] = os.path.abspath(config.data_root)
    if exit_code == 0 and not summary["blessed"]:
        exit_code = 3  # the Evaluator gate refused the model
    if exit_code == 3 and summary["examples_artifact_id"]:
        # Leave the week's data out of later training windows.
        week = [summary["examples_artifact_id"], summary["statistics_artifact_id"]]
        span_window.quarantine(metadata_store.MetadataStore(pipeline.metadata_connection_config),
                               [i for i in week if i], f"blocked by {summary['blocked_by']}")
        summary["quarantined_span"] = summary["span"]
    os.makedirs(os.path.dirname(os.path.abspath(config.summary_path)), exist_ok=True)
    with open(config.summary_path, "w") as f:
        json.dump(summary, f, indent=2)
    summary["summary_path"] = config.summary_path
    if exit_code:
        raise RunFailed(summary, exit_code)
    return summary
