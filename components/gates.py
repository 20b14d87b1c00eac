"""Gates that stop a run with a readable reason instead of a stack trace."""
import os

from tfx import v1 as tfx
from tfx.types import artifact_utils
from tensorflow_metadata.proto.v0 import anomalies_pb2

_SCHEMA_DIFF = "SchemaDiff.pb"


class GateFailed(RuntimeError):
    """A gate refused the data or the model. `gate` names which one."""

    def __init__(self, gate: str, reason: str):
        super().__init__(f"[gate {gate}] {reason}")
        self.gate = gate
        self.reason = reason


def describe_anomalies(anomalies_artifact) -> list:
    """'split: feature: description' lines for every anomaly found."""
    lines = []
    for split in artifact_utils.decode_split_names(anomalies_artifact.split_names):
        path = os.path.join(artifact_utils.get_split_uri([anomalies_artifact], split), _SCHEMA_DIFF)
        anomalies = anomalies_pb2.Anomalies()
        with open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"{split}: {feature}: {info.short_description} ({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"{split}: dataset: {info.short_description} ({info.description})")
    return lines


@tfx.dsl.components.component
def AnomalyGate(anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies]) -> None:
    """Fails the run before Transform when ExampleValidator found anomalies."""
    problems = describe_anomalies(anomalies)
    if problems:
        raise GateFailed("ExampleValidator", "schema anomalies in the new data:\n  " + "\n  ".join(problems))
