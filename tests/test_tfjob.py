"""`deepfm-tfx compile --target kubeflow --cluster ...`: the Trainer step runs its cluster as a TFJob
of the Kubeflow Training Operator; the manifest has what the TFJob schema requires."""
import json

import yaml

from deepfm_tfx.pipeline.orchestrators import kubeflow
from deepfm_tfx.trainer_modules import local_cluster, tfjob

IMAGE = "registry.example.com/deepfm-tfx:test"


def check_tfjob(manifest, workers, ps):
    """The fields kubeflow.org/v1 TFJob's CRD schema requires, and the replica types' meaning."""
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "TFJob"
    assert manifest["metadata"]["name"]
    specs = manifest["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "Worker", "PS"}
    assert {k: s["replicas"] for k, s in specs.items()} == {"Chief": 1, "Worker": workers, "PS": ps}
    # A worker is restarted; the chief or a parameter server dying fails the job (its re-run resumes).
    assert {k: s["restartPolicy"] for k, s in specs.items()} == {"Chief": "Never", "Worker": "OnFailure", "PS": "Never"}
    for spec in specs.values():
        [container] = spec["template"]["spec"]["containers"]
        assert container["name"] == "tensorflow" and container["image"] == IMAGE
        assert container["command"][:3] == ["python", "-m", "deepfm_tfx.trainer_modules.cluster_task"]
    return specs


def test_tfjob_manifest_has_the_schemas_required_fields():
    manifest = tfjob.manifest("deepfm-trainer", IMAGE, local_cluster.parse("workers=3,ps=2"), "/mnt/x/task.json",
                              namespace="ml", pvc="deepfm-data", mount_path="/mnt/x")
    specs = check_tfjob(manifest, workers=3, ps=2)
    for spec in specs.values():
        pod = spec["template"]["spec"]
        assert pod["volumes"] == [{"name": "deepfm-tfx", "persistentVolumeClaim": {"claimName": "deepfm-data"}}]
        assert pod["containers"][0]["volumeMounts"] == [{"name": "deepfm-tfx", "mountPath": "/mnt/x"}]


def test_kubeflow_compile_with_a_cluster_runs_the_trainer_as_a_tfjob(tmp_path):
    path = kubeflow.compile_v1(str(tmp_path / "deepfm_tfx.yaml"), trainer="estimator", pvc_name="deepfm-data",
                               image=IMAGE, training={"cluster": "workers=2,ps=1"})
    with open(path) as f:
        workflow = yaml.safe_load(f)
    [trainer] = [t for t in workflow["spec"]["templates"]
                 if "--node_id" in t.get("container", {}).get("args", [])
                 and t["container"]["args"][t["container"]["args"].index("--node_id") + 1] == "Trainer"]
    env = {e["name"]: e.get("value") for e in trainer["container"]["env"]}
    assert env[tfjob.IMAGE_ENV] == IMAGE and env[tfjob.PVC_ENV] == "deepfm-data"
    args = trainer["container"]["args"]
    assert "workers=2,ps=1" in args[args.index("--tfx_ir") + 1]  # the Trainer's custom_config carries the shape
    with open(str(tmp_path / ("deepfm_tfx" + kubeflow.TFJOB_SUFFIX))) as f:
        check_tfjob(yaml.safe_load(f), workers=2, ps=1)
