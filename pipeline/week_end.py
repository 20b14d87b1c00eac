"""The week's final step, run by every orchestrator after the pipeline, even when a gate stopped it.

It names the week's outcome (pushed, blocked by which gate and why, or failed
where), freezes the first good week's inferred schema, quarantines a week a
gate stopped, writes the run summary and the HTML report, and posts the
outcome to the team's webhook. Where each orchestrator runs it:

  local      orchestrators/local.py, after LocalDagRunner returns or raises;
  Airflow    the DAG's last task, with trigger rule all_done;
  Kubeflow   the workflow's exit handler: `python -m deepfm_tfx.pipeline.week_end`.

Airflow and Kubeflow keep a failed task's state but not its exception, so the
reason a gate refused is read again from the inputs ml-metadata recorded for it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

from deepfm_tfx import artifact_files, model_repository
from deepfm_tfx.contracts import (DATA_GATES, EVALUATOR_GATE, EXIT_BAD_INPUT, EXIT_ERROR, EXIT_GATE, EXIT_OK,
                                  LATENCY_GATE)
from deepfm_tfx.errors import DataError
from deepfm_tfx.pipeline import configs, run_summary
from deepfm_tfx.schemas import feature_spec, frozen_schema

NOTIFY_TIMEOUT_SECONDS = 10
# The data gates' components, in the order a refusal is reported when both refused: the
# order LocalDagRunner runs them, so every orchestrator names the same gate.
GATE_NODES = ("DriftGate", "AnomalyGate")
SCHEMA_GEN = "SchemaGen"


@dataclasses.dataclass
class Outcome:
    exit_code: int = EXIT_OK
    blocked_by: Optional[str] = None
    error: Optional[str] = None


def _find(exc: Optional[BaseException], kind: type) -> Optional[BaseException]:
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
    return str(exc).split(" [while running")[0].strip()


def _recheck_gate(execution: Dict[str, Any]):
    """The refusal of a gate whose task failed, from the inputs it was given; None if it passes."""
    from deepfm_tfx.components import gates

    given = {key: artifacts[0] for key, artifacts in execution["input_keys"].items() if artifacts}
    if execution["node"] == "AnomalyGate" and "anomalies" in given:
        return gates.check_anomalies(given["anomalies"])
    if execution["node"] == "DriftGate" and {"statistics", "schema"} <= set(given):
        return gates.check_drift(given["statistics"], given["schema"], given.get("previous_statistics"))
    return None


def outcome(executions: List[Dict[str, Any]], failure: Optional[BaseException] = None,
            failed_tasks: Optional[List[str]] = None) -> Outcome:
    """What stopped the week, if anything: the exception a local run caught, else ml-metadata's record.

    `failed_tasks`: the tasks the orchestrator saw fail, for a failure ml-metadata has no trace of.
    """
    from deepfm_tfx.components.gates import GateFailed

    if failure is not None:
        if gate := _find(failure, GateFailed):
            return Outcome(EXIT_GATE, gate.gate, _message_of(gate))
        if (data := _find(failure, DataError)) or "DataError" in str(failure):
            return Outcome(EXIT_BAD_INPUT, None, _message_of(data or failure))
        return Outcome(EXIT_ERROR, None, f"{type(failure).__name__}: {_message_of(failure)}")
    unfinished = [e for e in executions if e["state"] not in run_summary.FINISHED_STATES]
    for gate in GATE_NODES:
        for execution in unfinished:
            if execution["node"] == gate and (refusal := _recheck_gate(execution)):
                return Outcome(EXIT_GATE, refusal.gate, str(refusal))
    if unfinished:
        return Outcome(EXIT_ERROR, None, f"{unfinished[0]['node']} failed (its task log has the error)")
    if failed_tasks:
        return Outcome(EXIT_ERROR, None, f"{', '.join(failed_tasks)} failed (the task logs have the error)")
    return Outcome()


def serving_version(config: configs.RunConfig) -> Optional[int]:
    try:
        return model_repository.serving_version(config.model_repository, config.model_name)
    except (model_repository.RepositoryError, OSError):
        return None


def _publish_report(config: configs.RunConfig, spec: feature_spec.FeatureSpec, executions,
                    summary: Dict[str, Any], serving_before: Optional[int]) -> Optional[str]:
    """Writes the run's HTML report; a report that cannot be written is noted and never fails the week."""
    try:
        from deepfm_tfx.pipeline.report import publish, run_data
        report = run_data.collect(executions, summary, label=spec.label, min_auc=config.min_auc,
                                  max_auc_drop=config.max_auc_drop, model_name=config.model_name)
        report["serving_before"] = serving_before
        return publish.publish(report, pipeline_root=config.pipeline_root,
                               model_repository_dir=config.model_repository, model_name=config.model_name)["report"]
    except Exception as e:  # noqa: BLE001 - the week's outcome stands without its report
        summary["report_error"] = f"{type(e).__name__}: {e}"
        return None


def _verdict(summary: Dict[str, Any], exit_code: int) -> str:
    if exit_code == EXIT_OK:
        return "pushed" if summary.get("pushed") else "not pushed"
    return "blocked" if exit_code == EXIT_GATE else "failed"


def notification(summary: Dict[str, Any], exit_code: int) -> Dict[str, Any]:
    """The week's red or green light, as the webhook receives it."""
    return {
        "pipeline": configs.PIPELINE_NAME,
        "run_id": summary.get("pipeline_run_id"),
        "span": summary.get("span"),
        "outcome": _verdict(summary, exit_code),
        "exit_code": exit_code,
        "blocked_by": summary.get("blocked_by"),
        "error": summary.get("error"),
        "pushed_version": summary.get("pushed_version"),
        "not_pushed_reason": summary.get("not_pushed_reason"),
        # This week's model and last week's, on this week's held-out rows.
        "metrics": {key: summary.get(key) for key in
                    ("auc", "baseline_auc", "auc_diff", "auc_diff_ci95", "logloss", "example_count")},
        "report": summary.get("report_path"),
        "summary": summary.get("summary_path"),
    }


def notify(url: str, payload: Dict[str, Any]) -> Optional[str]:
    """POSTs the payload as JSON; returns why it failed, None when it was delivered."""
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=NOTIFY_TIMEOUT_SECONDS) as response:
            response.read()
        return None
    except Exception as e:  # noqa: BLE001 - a webhook never fails the week
        return f"{type(e).__name__}: {e}"


def finish_week(config: configs.RunConfig, spec: feature_spec.FeatureSpec, connection_config, *,
                run_id: Optional[str] = None, failure: Optional[BaseException] = None,
                failed_tasks: Optional[List[str]] = None, serving_before: Optional[int] = None,
                wall_seconds: Optional[float] = None) -> Tuple[Dict[str, Any], int]:
    """Runs the week's final step; returns its summary (also written to config.summary_path) and exit code.

    `run_id`: the orchestrator's run (the newest run of the pipeline when None).
    """
    from ml_metadata import metadata_store

    from deepfm_tfx.components import span_window
    from deepfm_tfx.pipeline import id_space
    from deepfm_tfx.synthetic import generator

    executions = run_summary.executions_of_run(connection_config, configs.PIPELINE_NAME, run_id)
    result = outcome(executions, failure, failed_tasks)
    span = run_summary.span_of_run(executions)
    bayes = generator.read_bayes(config.data_root, span) if span is not None and os.path.isdir(
        config.data_root) else None
    if bayes:
        bayes = run_summary.bayes_of_evaluated_rows(bayes, run_summary.examples_uri(executions))
    summary = run_summary.build(executions, config.trainer, bayes, error=result.error,
                                blocked_by=result.blocked_by)
    exit_code = result.exit_code
    if exit_code == EXIT_OK and executions and not summary["blessed"]:
        exit_code = EXIT_GATE  # the Evaluator or PairedAucGate refused the model
        summary["blocked_by"] = summary["blocked_by"] or EVALUATOR_GATE
    elif exit_code == EXIT_OK and summary["blocked_by"] == LATENCY_GATE:
        exit_code = EXIT_GATE
    inferred = next((e["outputs"]["Schema"][0].uri for e in executions
                     if e["node"] == SCHEMA_GEN and e["outputs"].get("Schema")), None)
    if inferred and not spec.schema_file and summary["blocked_by"] not in DATA_GATES \
            and exit_code in (EXIT_OK, EXIT_GATE):
        summary["frozen_schema"] = frozen_schema.freeze(inferred, spec, config.pipeline_root)
    # A model too slow to serve says nothing against the week's data: only other refusals quarantine it.
    if exit_code == EXIT_GATE and summary["examples_artifact_id"] and summary["blocked_by"] != LATENCY_GATE:
        # Leave the week's data out of later training windows and drift baselines.
        week = [summary["examples_artifact_id"], summary["statistics_artifact_id"]]
        span_window.quarantine(metadata_store.MetadataStore(connection_config), [i for i in week if i],
                               f"blocked by {summary['blocked_by']}")
        summary["quarantined_span"] = summary["span"]
    if wall_seconds is not None:
        summary["wall_seconds"] = round(wall_seconds, 1)
    counted = id_space.chosen(config.pipeline_root)
    summary["distinct_ids"] = counted.get("distinct_ids")
    graph = next((e["outputs"]["TransformGraph"][0].uri for e in executions
                  if e["node"] == "Transform" and e["outputs"].get("TransformGraph")), None)
    if graph and spec.admitted_fields:
        fields = id_space.admission(graph, spec)
        for name, field in fields.items():
            field["seen_in_newest_span"] = counted.get("fields", {}).get(name, {}).get("seen")
        shares = [f["rare_share"] for f in fields.values() if f["rare_share"] is not None]
        summary.update(admission=fields, admitted_ids=sum(f["admitted"] for f in fields.values()),
                       rare_row_share=round(sum(shares) / len(shares), 4) if shares else None)
    summary["data_root"] = config.data_root
    summary["exit_code"] = exit_code
    summary["report_path"] = _publish_report(config, spec, executions, summary, serving_before)
    summary["summary_path"] = config.summary_path
    if config.notify_url:
        failed = notify(config.notify_url, notification(summary, exit_code))
        summary["notified"] = failed is None
        if failed:
            summary["notify_error"] = failed
    # One PUT in a store, a side file renamed into place on disk: readers see the old summary or the new.
    artifact_files.write_text(config.summary_path, json.dumps(summary, indent=2, default=str))
    return summary, exit_code


class WeekNotPushed(RuntimeError):
    """Raised by a scheduled week's final task, so the orchestrator shows the week red."""

    def __init__(self, summary: Dict[str, Any], exit_code: int):
        super().__init__(f"exit {exit_code}: {summary.get('error') or 'the model was not blessed'}")
        self.summary = summary
        self.exit_code = exit_code


def main(argv: Optional[List[str]] = None) -> int:
    """Kubeflow's exit handler: the compiled workflow passes the RunConfig and the workflow's status."""
    parser = argparse.ArgumentParser(prog="python -m deepfm_tfx.pipeline.week_end")
    parser.add_argument("--run-config", required=True, help="the RunConfig as JSON")
    parser.add_argument("--feature-spec", required=True, help="the feature spec as JSON, as the steps have it")
    parser.add_argument("--kubeflow-metadata-config", required=True,
                        help="the KubeflowMetadataConfig JSON the pipeline's steps were given")
    parser.add_argument("--workflow-status", default="", help="Argo's {{workflow.status}}")
    args = parser.parse_args(argv)
    from google.protobuf import json_format
    from tfx.orchestration.kubeflow import container_entrypoint
    from tfx.orchestration.kubeflow.proto import kubeflow_pb2

    config = configs.RunConfig(**json.loads(args.run_config))
    metadata_config = json_format.Parse(args.kubeflow_metadata_config, kubeflow_pb2.KubeflowMetadataConfig())
    connection = container_entrypoint._get_metadata_connection_config(metadata_config)  # noqa: SLF001 - as its steps
    failed = [f"the workflow ({args.workflow_status})"] if args.workflow_status not in ("", "Succeeded") else None
    spec = feature_spec.FeatureSpec.from_dict(json.loads(args.feature_spec))
    summary, exit_code = finish_week(config, spec, connection, run_id=os.environ.get("WORKFLOW_ID"),
                                     failed_tasks=failed)
    print(json.dumps(notification(summary, exit_code), indent=1, default=str))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
