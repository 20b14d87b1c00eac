"""The week's final step without a pipeline: how it names an outcome from ml-metadata's record, and its webhook."""
import http.server
import json
import os
import threading

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.types import standard_artifacts

from deepfm_tfx.contracts import EXAMPLE_VALIDATOR_GATE, EXIT_ERROR, EXIT_GATE, EXIT_OK
from deepfm_tfx.pipeline import week_end


def _anomalies(tmp_path, features):
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = str(tmp_path / "anomalies")
    artifact.split_names = json.dumps(["train"])
    os.makedirs(os.path.join(artifact.uri, "Split-train"))
    proto = anomalies_pb2.Anomalies()
    for name in features:
        proto.anomaly_info[name].short_description = "Unexpected string values"
        proto.anomaly_info[name].description = f"{name} has values outside its domain"
    with open(os.path.join(artifact.uri, "Split-train", "SchemaDiff.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    return artifact


def _execution(node, state, **input_keys):
    return {"node": node, "state": state, "inputs": {}, "outputs": {}, "input_keys": input_keys}


def test_a_failed_gate_task_is_named_with_its_reason_from_its_recorded_inputs(tmp_path):
    # Airflow and Kubeflow keep the failed task's state, not its exception.
    executions = [_execution("ExampleValidator", "COMPLETE"),
                  _execution("AnomalyGate", "FAILED", anomalies=[_anomalies(tmp_path, ["C7"])])]
    result = week_end.outcome(executions)
    assert result.exit_code == EXIT_GATE and result.blocked_by == EXAMPLE_VALIDATOR_GATE
    assert "C7 has values outside its domain" in result.error


def test_a_gate_that_would_pass_did_not_stop_the_week_it_crashed(tmp_path):
    executions = [_execution("AnomalyGate", "FAILED", anomalies=[_anomalies(tmp_path, [])])]
    result = week_end.outcome(executions)
    assert result.exit_code == EXIT_ERROR and result.blocked_by is None and "AnomalyGate failed" in result.error


def test_outcome_of_a_clean_run_a_crashed_component_and_a_failure_only_the_orchestrator_saw():
    assert week_end.outcome([_execution("Trainer", "COMPLETE"), _execution("Evaluator", "CACHED")]) == \
        week_end.Outcome(EXIT_OK, None, None)
    crashed = week_end.outcome([_execution("Transform", "COMPLETE"), _execution("Trainer", "RUNNING")])
    assert crashed.exit_code == EXIT_ERROR and crashed.error.startswith("Trainer failed")
    unseen = week_end.outcome([], failed_tasks=["SpecCsvExampleGen"])
    assert unseen.exit_code == EXIT_ERROR and "SpecCsvExampleGen" in unseen.error


def test_webhook_gets_one_json_post_and_a_dead_one_is_reported_not_raised():
    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary = {"span": 4, "pushed": False, "blocked_by": "DriftSkew", "auc": 0.71, "baseline_auc": 0.74}
        payload = week_end.notification(summary, EXIT_GATE)
        assert week_end.notify(f"http://127.0.0.1:{server.server_port}/hook", payload) is None
        assert received == [json.loads(json.dumps(payload))]
        assert received[0]["outcome"] == "blocked" and received[0]["metrics"]["baseline_auc"] == 0.74
    finally:
        server.shutdown()
        server.server_close()
    failed = week_end.notify(f"http://127.0.0.1:{server.server_port}/hook", payload)
    assert failed and "refused" in failed.lower()
