"""Runs the pipeline on this machine with LocalDagRunner: the embedded default.

What differs locally: the paths are made absolute, the default data is
generated when no --data is given, and the data is read once up front so a bad
row is one error line before any component runs. The week itself is the
pipeline's: LocalDagRunner runs the topology, then the week's final step
(pipeline/week_end.py) runs as it does on Airflow and Kubeflow.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict

from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from deepfm_tfx import model_repository, object_store, spans
from deepfm_tfx.errors import ConfigError
from deepfm_tfx.pipeline import configs, metadata, validation, week_end
from deepfm_tfx.pipeline.pipeline import create_pipeline_from_config
from deepfm_tfx.schemas import feature_spec
from deepfm_tfx.synthetic import generator


class RunFailed(RuntimeError):
    def __init__(self, summary: Dict[str, Any], exit_code: int):
        super().__init__(summary.get("error") or summary.get("blocked_by"))
        self.summary = summary
        self.exit_code = exit_code


def ensure_default_data(config: configs.RunConfig) -> None:
    if config.data is None and not os.path.isdir(spans.folder(config.data_root, config.spans)):
        print(f"Generating {config.rows:,} synthetic rows ({config.profile} profile) x {config.spans} span(s) "
              f"into {config.data_root}", flush=True)
        generator.generate(config.data_root, rows=config.rows, spans=config.spans, seed=config.seed,
                           profile=config.profile)


def absolute(config: configs.RunConfig) -> configs.RunConfig:
    def path(p: str) -> str:
        return p if model_repository.is_store(p) else os.path.abspath(p)
    return dataclasses.replace(config, data=path(config.data_root), pipeline_root=path(config.pipeline_root),
                               model_repository=path(config.model_repository))


STAGED_DATA = "staged-data"


def stage_data(config: configs.RunConfig) -> configs.RunConfig:
    """--data in an object store with the pipeline root on local disk, mirrored into
    <pipeline root>/staged-data first: the data checks, ExampleGen and its input fingerprint read
    local files, and TensorFlow needs no S3 filesystem. With the pipeline root in a store too,
    ExampleGen reads the data in place."""
    if not model_repository.is_store(config.data or "") or model_repository.is_store(config.pipeline_root):
        return config
    folder = os.path.join(config.pipeline_root, STAGED_DATA)
    try:
        downloaded, total = object_store.mirror(config.data, folder)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--data {config.data}: {e}") from None
    if not total:
        raise ConfigError(f"--data {config.data}: no objects under it")
    print(f"data {config.data}: {total} object(s) mirrored into {folder} ({downloaded} downloaded)", flush=True)
    return dataclasses.replace(config, data=folder)


def run(config: configs.RunConfig) -> Dict[str, Any]:
    """Runs one week; returns its summary or raises RunFailed with it."""
    validation.validate(config)
    if model_repository.is_store(config.pipeline_root):
        # LocalDagRunner runs every component, the Trainer and Beam (in memory) in this process.
        object_store.register_tf_filesystem()
    config = stage_data(config)
    spec = feature_spec.load(config.features)
    ensure_default_data(config)
    if model_repository.is_store(config.data_root):
        input_pattern, _ = validation.store_layout(config.data_root, spec)
    else:
        input_pattern, _ = validation.check_data(config.data_root, spec)
    connection = metadata.connection_config(config.metadata, config.pipeline_root)
    config = absolute(config)
    pipeline = create_pipeline_from_config(config, spec, input_pattern, metadata_connection_config=connection)
    serving_before = week_end.serving_version(config)
    started = time.monotonic()
    failure = None
    try:
        LocalDagRunner().run(pipeline)
    except Exception as e:  # noqa: BLE001 - the final step names it in the summary
        failure = e
    summary, exit_code = week_end.finish_week(config, spec, connection, failure=failure,
                                              serving_before=serving_before,
                                              wall_seconds=time.monotonic() - started)
    if exit_code:
        raise RunFailed(summary, exit_code)
    return summary
