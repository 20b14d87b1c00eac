"""The training cluster as a TFJob of the Kubeflow Training Operator, for a Trainer running in a pod.

The Kubeflow package compiled with `--cluster` gives its Trainer step the
image and the volume (IMAGE_ENV, PVC_ENV, MOUNT_ENV). There the Trainer
submits this TFJob instead of starting local processes: the operator starts
the chief, the workers and the parameter servers as pods running the same
`cluster_task` module, sets each one's TF_CONFIG, restarts a worker that
fails (restartPolicy OnFailure) and fails the job when the chief or a
parameter server dies (Never), whose re-run resumes from the checkpoints on
the shared volume. The Trainer then exports from them, as it does locally.

The manifest is checked by tests; submitting it needs a cluster with the
operator, which no test here has (docs/training-on-a-cluster.md).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Optional

from deepfm_tfx.trainer_modules import local_cluster

API_GROUP, API_VERSION_NAME = "kubeflow.org", "v1"
API_VERSION = f"{API_GROUP}/{API_VERSION_NAME}"
KIND, PLURAL = "TFJob", "tfjobs"
CONTAINER = "tensorflow"  # the operator finds the training container by this name
VOLUME = "deepfm-tfx"
IMAGE_ENV = "DEEPFM_TFX_TFJOB_IMAGE"
PVC_ENV = "DEEPFM_TFX_TFJOB_PVC"
MOUNT_ENV = "DEEPFM_TFX_TFJOB_MOUNT"
# A worker is restarted like a local one; the chief and the parameter servers are not.
RESTART_POLICIES = {"Chief": "Never", "Worker": "OnFailure", "PS": "Never"}
_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def manifest(name: str, image: str, shape: local_cluster.ClusterShape, task_config: str,
             namespace: Optional[str] = None, pvc: Optional[str] = None, mount_path: Optional[str] = None) -> dict:
    """The TFJob: `task_config` is the task config file's path as the pods see it (on the volume)."""
    def replicas(kind: str, count: int) -> dict:
        container = {"name": CONTAINER, "image": image,
                     "command": ["python", "-m", local_cluster.TASK_MODULE, task_config]}
        spec: Dict = {"containers": [container]}
        if pvc:
            container["volumeMounts"] = [{"name": VOLUME, "mountPath": mount_path}]
            spec["volumes"] = [{"name": VOLUME, "persistentVolumeClaim": {"claimName": pvc}}]
        return {"replicas": count, "restartPolicy": RESTART_POLICIES[kind], "template": {"spec": spec}}

    specs = {"Chief": replicas("Chief", 1), "PS": replicas("PS", shape.ps)}
    if shape.workers:
        specs["Worker"] = replicas("Worker", shape.workers)
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata,
            # Running parameter servers never end by themselves: the job ends with the chief.
            "spec": {"runPolicy": {"cleanPodPolicy": "Running"}, "tfReplicaSpecs": specs}}


def in_a_pod() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST") and os.environ.get(IMAGE_ENV))


class TFJobCluster:
    """The LocalCluster's interface over a submitted TFJob (on paper: see the module's docstring)."""

    def __init__(self, shape: local_cluster.ClusterShape, task_config: dict, checkpoint_dir: str, work_dir: str):
        from kubernetes import client, config as kube_config  # kfp's dependency, in the pipeline image
        kube_config.load_incluster_config()
        self.api = client.CustomObjectsApi()
        self.shape, self.checkpoint_dir, self.restarts = shape, checkpoint_dir, {}
        # The pods read the task config and write their progress on the shared volume.
        self.work_dir = work_dir
        os.makedirs(os.path.join(self.work_dir, local_cluster.PROGRESS_DIR), exist_ok=True)
        config_file = os.path.join(self.work_dir, "task_config.json")
        with open(config_file, "w") as f:
            json.dump({**task_config, "work_dir": self.work_dir}, f)
        with open(_NAMESPACE_FILE) as f:
            self.namespace = f.read().strip()
        self.name = f"deepfm-trainer-{os.path.basename(checkpoint_dir.rstrip('/'))[-12:]}-{int(time.time())}"
        self.manifest = manifest(self.name, os.environ[IMAGE_ENV], shape, config_file, self.namespace,
                                 os.environ.get(PVC_ENV), os.environ.get(MOUNT_ENV))

    def progress(self):
        return local_cluster.LocalCluster.progress(self)

    def __enter__(self):
        self.api.create_namespaced_custom_object(API_GROUP, API_VERSION_NAME, self.namespace, PLURAL, self.manifest)
        return self

    def wait(self, on_progress: Optional[Callable] = None, poll_seconds: float = 5.0) -> None:
        while True:
            if on_progress:
                on_progress(self.progress())
            job = self.api.get_namespaced_custom_object(API_GROUP, API_VERSION_NAME, self.namespace, PLURAL,
                                                        self.name)
            status = job.get("status", {})
            self.restarts = {k: v.get("failed", 0) for k, v in status.get("replicaStatuses", {}).items()
                             if v.get("failed")}
            done = {c["type"] for c in status.get("conditions", []) if c.get("status") == "True"}
            if "Succeeded" in done:
                return
            if "Failed" in done:
                saved = local_cluster.last_checkpoint_step(self.checkpoint_dir)
                raise local_cluster.ClusterFailed(
                    f"TFJob {self.namespace}/{self.name} failed (a chief or parameter server pod died); running "
                    f"the pipeline again resumes from the last checkpoint (step {saved or 0})")
            time.sleep(poll_seconds)

    def __exit__(self, *exc_info):
        self.api.delete_namespaced_custom_object(API_GROUP, API_VERSION_NAME, self.namespace, PLURAL, self.name)
