"""Gates that stop a run with a readable reason instead of a stack trace.

Each gate's check is a plain function, so the week's final step
(pipeline/week_end.py) can name the reason on orchestrators that keep only a
failed task's state, not its exception (Airflow, Kubeflow).
"""
from typing import Optional

from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts
from tensorflow_metadata.proto.v0 import anomalies_pb2

from deepfm_tfx import artifact_files
from deepfm_tfx.contracts import DRIFT_SKEW_GATE, EXAMPLE_VALIDATOR_GATE

_SCHEMA_DIFF = "SchemaDiff.pb"


class GateFailed(RuntimeError):
    """A gate refused the data or the model. `gate` names which one."""

    def __init__(self, gate: str, reason: str):
        super().__init__(f"[gate {gate}] {reason}")
        self.gate = gate
        self.reason = reason


def describe_anomalies(anomalies_uri: str) -> list:
    """'split: feature: description' lines for every anomaly ExampleValidator wrote under anomalies_uri."""
    lines = []
    for path in artifact_files.glob(artifact_files.join(anomalies_uri, "Split-*", _SCHEMA_DIFF)):
        split = path.rstrip("/").split("/")[-2][len("Split-"):]
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(artifact_files.read_bytes(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"{split}: {feature}: {info.short_description} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"{split}: dataset: {info.short_description} ({info.description})")
    return lines


def check_anomalies(anomalies) -> Optional[GateFailed]:
    """The refusal for ExampleValidator's anomalies, or None when there are none."""
    problems = describe_anomalies(anomalies.uri)
    if problems:
        return GateFailed(EXAMPLE_VALIDATOR_GATE, "schema anomalies in the new data:\n  " + "\n  ".join(problems))
    return None


@component
def AnomalyGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Fails the run before Transform when ExampleValidator found anomalies."""
    refusal = check_anomalies(anomalies)
    if refusal:
        raise refusal


def _comparator_anomalies(anomalies, kind: str) -> list:
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = [r for r in info.reason if "COMPARATOR" in anomalies_pb2.AnomalyInfo.Type.Name(r.type)]
        if reasons:
            lines.append(f"{kind}: {feature}: " + "; ".join(r.description for r in reasons))
    return lines


def drift_and_skew(current_stats, previous_stats, schema) -> list:
    """TFDV's drift and skew comparators, with the thresholds set in the schema.

    Drift: this span vs the previous one. Skew: the data the serving model was
    last trained on (the previous span) vs the traffic it now sees (this span).
    """
    import tensorflow_data_validation as tfdv

    drift = tfdv.validate_statistics(current_stats, schema, previous_statistics=previous_stats)
    skew = tfdv.validate_statistics(previous_stats, schema, serving_statistics=current_stats)
    return _comparator_anomalies(drift, "drift") + _comparator_anomalies(skew, "skew")


def check_drift(statistics, schema, previous_statistics) -> Optional[GateFailed]:
    """The refusal for distributions that moved past the schema's thresholds, or None."""
    from tfx.components.statistics_gen import stats_artifact_utils
    from tfx.utils import io_utils

    if previous_statistics is None or previous_statistics.uri == statistics.uri:
        return None  # first span, or a re-run of the same one
    schema_proto = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema.uri))
    current = stats_artifact_utils.load_statistics(statistics, "train").proto()
    previous = stats_artifact_utils.load_statistics(previous_statistics, "train").proto()
    problems = drift_and_skew(current, previous, schema_proto)
    if problems:
        return GateFailed(DRIFT_SKEW_GATE, "feature distributions moved past the schema's thresholds "
                          "vs the previous span:\n  " + "\n  ".join(problems))
    return None


@component
def DriftGate(
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    previous_statistics: InputArtifact[standard_artifacts.ExampleStatistics] = None,
) -> None:
    """Fails the run when feature distributions moved past the schema's thresholds."""
    refusal = check_drift(statistics, schema, previous_statistics)
    if refusal:
        raise refusal
