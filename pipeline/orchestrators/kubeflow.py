"""Compiles the pipeline for Kubeflow Pipelines: v1 (Argo YAML) and v2 (PipelineJob JSON).

Compiling needs no cluster, bucket or credentials: the project's code travels
in the image and components name it by dotted path, so nothing is uploaded.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, NamedTuple, Optional, Sequence

from tfx import v1 as tfx

from deepfm_tfx import spans
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline import validation
from deepfm_tfx.pipeline.pipeline import create_pipeline_from_config
from deepfm_tfx.schemas import feature_spec

# Built from docker/Dockerfile; bump together with setup.py's version.
DEFAULT_IMAGE = "ghcr.io/deepfm-tfx/pipeline:0.1.0"
# Where docker/Dockerfile puts the project inside the image.
IMAGE_PROJECT_DIR = "/opt/deepfm-tfx"
# Where --pvc mounts a PersistentVolumeClaim on every v1 step, and the root of
# the default paths: the model repository needs a POSIX file system.
MOUNT_PATH = "/mnt/deepfm-tfx"
DEFAULT_PIPELINE_ROOT = f"{MOUNT_PATH}/pipeline"
DEFAULT_DATA_ROOT = f"{MOUNT_PATH}/data"
DEFAULT_MODEL_REPOSITORY = f"{MOUNT_PATH}/model_repository"
WEEK_END_MODULE = "deepfm_tfx.pipeline.week_end"
WEEK_END_TEMPLATE = "week-end"
# Vertex/KFP v2 pipeline names allow only [a-z0-9-].
V2_PIPELINE_NAME = configs.PIPELINE_NAME.replace("_", "-")


class V2Difference(NamedTuple):
    node: str
    v1_strategy: str  # what the local, Airflow and KFP v1 runs resolve with
    v2_strategy: str  # what a KFP v2 package resolves with instead; "" when the node is absent
    effect: str


# Everything a KFP v2 package runs differently, in one place: compile prints
# it, the README repeats it, tests/test_kubeflow.py checks it against both builds.
V2_DIFFERENCES = (
    V2Difference("training_window", "RollingSpanWindowStrategy", "",
                 "Transform, the Trainer, PairedAucGate and the pusher read SpecCsvExampleGen's output, so the "
                 "model trains on the newest span only (--window-spans has no effect) and a cold id is one that span lacks"),
    V2Difference("latest_blessed_model_resolver", "EarlierBlessedModelStrategy", "LatestBlessedModelStrategy",
                 "the warm start and the Evaluator's baseline are the newest blessed model; on a re-run of a "
                 "week that is the week's own model, so the re-run retrains instead of coming from the cache"),
    V2Difference("previous_statistics", "EarlierWeekStrategy", "LatestArtifactStrategy",
                 "the drift baseline is the newest statistics; on a re-run of a week that is the week's own, "
                 "so DriftGate compares the week with itself"),
    V2Difference("latest_transform_cache", "EarlierWeekStrategy", "LatestArtifactStrategy",
                 "the analyzer cache is the newest one; on a re-run of a week it already holds that week, "
                 "so Transform re-executes"),
)


def describe_v2_differences() -> str:
    """What `deepfm-tfx compile --target kubeflow-v2` prints after writing the job."""
    lines = ["note: KFP v2 compiles only TFX's own resolver strategies and orders no resolver after a "
             "component, so this job differs from the local, Airflow and KFP v1 pipeline:"]
    for d in V2_DIFFERENCES:
        instead = f"{d.v2_strategy} instead of {d.v1_strategy}" if d.v2_strategy else \
            f"absent (elsewhere {d.v1_strategy})"
        lines.append(f"  - {d.node}: {instead}: {d.effect}.")
    return "\n".join(lines)


def schema_in_image(spec: feature_spec.FeatureSpec) -> feature_spec.FeatureSpec:
    """Points a bundled schema at its copy in the image; ImportSchemaGen reads it in a pod."""
    if spec.schema_file and os.path.dirname(os.path.abspath(spec.schema_file)) == feature_spec.SPEC_DIR:
        return dataclasses.replace(
            spec, schema_file=f"{IMAGE_PROJECT_DIR}/schemas/{os.path.basename(spec.schema_file)}")
    return spec


def _check_remote(name: str, path: str) -> None:
    if not (path.startswith("/") or "://" in path):
        raise ValueError(f"{name} must be absolute (gs://..., s3://... or a mounted path) "
                         f"because every step runs in its own pod; got {path!r}")


def _config_and_spec(*, pipeline_root: str, data_root: str, model_repository: str, **knobs: Any):
    _check_remote("pipeline_root", pipeline_root)
    _check_remote("data_root", data_root)
    if not model_repository.startswith(("/", "s3://")):
        # A folder's push renames atomically (a mounted volume); an S3 bucket's uses conditional writes
        # (gs:// is not tested, docs/object-storage.md).
        raise ValueError(f"model_repository must be an absolute path on a mounted file system or "
                         f"s3://bucket/prefix, got {model_repository!r}")
    config = configs.RunConfig(data=data_root, pipeline_root=pipeline_root, model_repository=model_repository,
                               **{k: v for k, v in knobs.items() if v is not None})
    validation.validate(config, paths=False, connect=False)  # the paths are the cluster's
    return config, schema_in_image(feature_spec.load(config.features))


def build_pipeline(*, pipeline_name: str, custom_resolvers: bool = True, **paths_and_knobs: Any):
    """pipeline.py's topology with cluster paths; ml-metadata is the orchestrator's own.

    `paths_and_knobs`: pipeline_root, data_root, model_repository and RunConfig
    fields (features, trainer, train_steps, training, ...).
    """
    config, spec = _config_and_spec(**paths_and_knobs)
    return create_pipeline_from_config(config, spec, spans.input_pattern(spec.file_pattern, spec.partitions),
                                       pipeline_name=pipeline_name, custom_resolvers=custom_resolvers)


def add_week_end(workflow: Dict[str, Any], config: configs.RunConfig, spec: feature_spec.FeatureSpec) -> None:
    """Makes the week's final step (pipeline/week_end.py) the workflow's exit handler.

    Argo runs an exit handler after the DAG whatever became of it, so a week a
    gate stopped is still quarantined and reported. It runs in the pipeline's
    image, with the mounts, environment and ml-metadata of the other steps.
    """
    step = next(t for t in workflow["spec"]["templates"] if "container" in t)
    args = step["container"]["args"]
    container = {
        "image": step["container"]["image"],
        "command": ["python", "-m", WEEK_END_MODULE],
        "args": ["--run-config", json.dumps(dataclasses.asdict(config)),
                 "--feature-spec", json.dumps(spec.to_dict()),
                 "--kubeflow-metadata-config", args[args.index("--kubeflow_metadata_config") + 1],
                 "--workflow-status", "{{workflow.status}}"],
        "env": step["container"].get("env", []),
    }
    if step["container"].get("volumeMounts"):
        container["volumeMounts"] = step["container"]["volumeMounts"]
    template = {"name": WEEK_END_TEMPLATE, "container": container}
    if step.get("volumes"):
        template["volumes"] = step["volumes"]
    workflow["spec"]["templates"].append(template)
    workflow["spec"]["onExit"] = WEEK_END_TEMPLATE


TFJOB_SUFFIX = ".trainer-tfjob.yaml"


def add_trainer_cluster(workflow: Dict[str, Any], config: configs.RunConfig, image: str,
                        pvc_name: Optional[str], output_path: str) -> Optional[str]:
    """With --cluster, the Trainer step submits a TFJob (trainer_modules/tfjob.py) instead of local processes.

    Its container learns the image and the volume the job's pods need; the
    manifest it will submit is written beside the package for review.
    Returns that file's path, or None without --cluster.
    """
    if not config.training.cluster:
        return None
    import yaml
    from deepfm_tfx.trainer_modules import local_cluster, tfjob

    def node_id(template):
        args = template.get("container", {}).get("args", [])
        return args[args.index("--node_id") + 1] if "--node_id" in args else None

    [trainer] = [t for t in workflow["spec"]["templates"] if node_id(t) == "Trainer"]
    env = [{"name": tfjob.IMAGE_ENV, "value": image}]
    if pvc_name:
        env += [{"name": tfjob.PVC_ENV, "value": pvc_name}, {"name": tfjob.MOUNT_ENV, "value": MOUNT_PATH}]
    trainer["container"]["env"] = trainer["container"].get("env", []) + env
    task_config = os.path.join(config.pipeline_root, "Trainer", "resume", "<key>", "cluster", "task_config.json")
    manifest = tfjob.manifest("deepfm-trainer", image, local_cluster.parse(config.training.cluster), task_config,
                              pvc=pvc_name, mount_path=MOUNT_PATH if pvc_name else None)
    path = os.path.splitext(output_path)[0].removesuffix(".tar") + TFJOB_SUFFIX
    with open(path, "w") as f:
        yaml.safe_dump(manifest, f, sort_keys=False)
    return path


def _split(output_path: str):
    output_path = os.path.abspath(output_path)
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    return os.path.dirname(output_path), os.path.basename(output_path)


def compile_v1(output_path: str, *, pipeline_root: str = DEFAULT_PIPELINE_ROOT,
               data_root: str = DEFAULT_DATA_ROOT, model_repository: str = DEFAULT_MODEL_REPOSITORY,
               image: str = DEFAULT_IMAGE, beam_args: Sequence[str] = (), trainer: str = "keras",
               pvc_name: Optional[str] = None, pipeline_name: str = configs.PIPELINE_NAME,
               **options: Any) -> str:
    """Writes a KFP v1 package (.yaml, .tar.gz or .zip); returns its path.

    `options` are build_pipeline's tuning arguments (features, train_steps, ...).
    """
    if not output_path.endswith((".yaml", ".yml", ".tar.gz", ".tgz", ".zip")):
        raise ValueError(f"a KFP v1 package must end in .yaml, .tar.gz or .zip, got {output_path!r}")
    import yaml
    from kfp import compiler, onprem
    from tfx.orchestration.kubeflow import kubeflow_dag_runner

    operator_funcs = kubeflow_dag_runner.get_default_pipeline_operator_funcs()
    if pvc_name:
        operator_funcs.append(onprem.mount_pvc(pvc_name, "deepfm-tfx", MOUNT_PATH))
    runner_config = tfx.orchestration.experimental.KubeflowDagRunnerConfig(
        kubeflow_metadata_config=tfx.orchestration.experimental.get_default_kubeflow_metadata_config(),
        tfx_image=image,
        pipeline_operator_funcs=operator_funcs)
    config, spec = _config_and_spec(pipeline_root=pipeline_root, data_root=data_root,
                                    model_repository=model_repository, beam_args=beam_args, trainer=trainer,
                                    **options)
    pipeline = create_pipeline_from_config(config, spec, spans.input_pattern(spec.file_pattern, spec.partitions),
                                           pipeline_name=pipeline_name)
    output_path = os.path.abspath(output_path)
    os.makedirs(os.path.dirname(output_path), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tfx.orchestration.experimental.KubeflowDagRunner(
            config=runner_config, output_dir=tmp, output_filename="workflow.yaml").run(pipeline)
        with open(os.path.join(tmp, "workflow.yaml")) as f:
            workflow = yaml.safe_load(f)
    add_week_end(workflow, config, spec)
    add_trainer_cluster(workflow, config, image, pvc_name, output_path)
    compiler.Compiler._write_workflow(workflow, output_path)  # noqa: SLF001 - kfp's writer of every package format
    return output_path


def compile_v2(output_path: str, *, pipeline_root: str = DEFAULT_PIPELINE_ROOT,
               data_root: str = DEFAULT_DATA_ROOT, model_repository: str = DEFAULT_MODEL_REPOSITORY,
               image: str = DEFAULT_IMAGE, beam_args: Sequence[str] = (), trainer: str = "keras",
               pipeline_name: str = V2_PIPELINE_NAME, **options: Any) -> str:
    """Writes a KFP v2 / Vertex AI PipelineJob (.json); returns its path.

    Its resolvers differ from the other orchestrators' (V2_DIFFERENCES). On
    Vertex, GCS buckets are mounted at /gcs/<bucket>, which suits the model
    repository; the pipeline root is the job's gcsOutputDirectory.
    """
    if not output_path.endswith(".json"):
        raise ValueError(f"a KFP v2 PipelineJob is written as .json, got {output_path!r}")
    output_dir, output_filename = _split(output_path)
    tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=output_dir, output_filename=output_filename,
    ).run(build_pipeline(pipeline_name=pipeline_name, pipeline_root=pipeline_root, data_root=data_root,
                         model_repository=model_repository, beam_args=beam_args, trainer=trainer,
                         custom_resolvers=False, **options))
    return os.path.join(output_dir, output_filename)
