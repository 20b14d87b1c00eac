"""What both trainers share on a training cluster: the Trainer's side (start the cluster, follow
its progress, read back what the tasks recorded) and the tasks' side (their TaskArgs, their
progress files). Each trainer adds its own loop: the Estimator's chief and workers, or the
Keras coordinator driving ParameterServerStrategy's workers."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from tfx_bsl.public import tfxio

from deepfm_tfx import progress as progress_tally
from deepfm_tfx.trainer_modules import local_cluster, measure, tfjob, training_setup

TABLE_SHARDS_FILE = "table_shards.json"


def train_on_cluster(fn_args, inputs, resume_dir, warm_from, step_start) -> Tuple[float, dict]:
    """Trains on a local cluster (a TFJob in a Kubeflow pod); returns its examples/s and its record."""
    shape = local_cluster.parse(inputs.config.cluster)
    task_config = {"train_files": list(fn_args.train_files), "eval_files": list(fn_args.eval_files),
                   "transform_output": fn_args.transform_output, "custom_config": fn_args.custom_config,
                   "train_steps": fn_args.train_steps, "eval_steps": fn_args.eval_steps,
                   "resume_dir": resume_dir, "warm_from": warm_from}
    progress_tally.TRAINING.start(fn_args.train_steps, inputs.config.batch_size)
    if step_start:
        progress_tally.TRAINING.resumed(step_start)
    marks = []

    def on_progress(tasks):
        step = max((t.get("global_step", 0) for t in tasks.values()), default=0)
        if step and (not marks or step > marks[-1][0]):
            marks.append((step, time.perf_counter()))
            progress_tally.TRAINING.cluster_shares(local_cluster.shares(tasks))
            progress_tally.TRAINING.update(min(step, fn_args.train_steps))

    # The task config, progress and logs, beside the checkpoints (on the shared volume in a pod).
    work_dir = resume_dir.rstrip("/") + "-cluster"
    if tfjob.in_a_pod():  # a Kubeflow Trainer step compiled with --cluster: the operator starts the tasks
        cluster = tfjob.TFJobCluster(shape, task_config, resume_dir, work_dir)
    else:
        cluster = local_cluster.LocalCluster(shape, task_config, checkpoint_dir=resume_dir, work_dir=work_dir)
    with cluster:
        cluster.wait(on_progress)
    final = cluster.progress()
    with open(os.path.join(cluster.work_dir, TABLE_SHARDS_FILE)) as f:
        shards = json.load(f)
    logs = None
    if cluster.restarts:  # the logs say why a task died: kept with this execution's output
        logs = os.path.join(fn_args.model_run_dir, "cluster_logs")
        shutil.move(work_dir, logs)
    shutil.rmtree(work_dir, ignore_errors=True)  # kept when training failed, for the error's pointer
    progress_tally.TRAINING.set_phase("evaluating and exporting")
    measured = {"cluster": str(shape), "table_shards": shards, "cluster_restarts": cluster.restarts,
                "cluster_logs": logs,
                "cluster_steps": {name: t.get("steps", 0) for name, t in sorted(final.items())}}
    steps_run = [(s - marks[0][0], t) for s, t in marks] if marks else []
    return measure.steady_rate(steps_run, inputs.config.batch_size, fn_args.train_steps - step_start), measured


class TaskDataAccessor(NamedTuple):
    """The part of TFX's DataAccessor the training loops call."""
    tf_dataset_factory: Callable


class TaskArgs(NamedTuple):
    """The part of TFX's FnArgs the training loops read, as a cluster task has it. Not FnArgs itself:
    that lives in tfx.components, whose import (every component: 3 s of CPU, 270 MB) each task of each
    start of a cluster would pay before its first step."""
    train_files: List[str]
    eval_files: List[str]
    transform_output: str
    custom_config: Dict[str, Any]
    train_steps: int
    eval_steps: int
    base_model: Optional[str]
    data_accessor: TaskDataAccessor
    serving_model_dir: Optional[str] = None
    model_run_dir: Optional[str] = None


def task_fn_args(task: dict) -> TaskArgs:
    """The Trainer's FnArgs, as a cluster task reads them from its task config."""
    return TaskArgs(train_files=task["train_files"], eval_files=task["eval_files"],
                    transform_output=task["transform_output"], custom_config=task["custom_config"],
                    train_steps=task["train_steps"], eval_steps=task["eval_steps"], base_model=task["warm_from"],
                    data_accessor=TaskDataAccessor(_read_examples))


def _read_examples(file_pattern, options, schema):
    """What TFX's DataAccessor reads ExampleGen's output (gzipped tf.Example TFRecords) with."""
    return tfxio.TFExampleRecord(file_pattern=file_pattern, schema=schema,
                                 telemetry_descriptors=["Trainer"]).TensorFlowDataset(options)


def progress_path(task: dict, name: str) -> str:
    return os.path.join(task["work_dir"], local_cluster.PROGRESS_DIR, f"{name}.json")


def write_progress(path: str, steps: int, global_step: int) -> None:
    """A task's steps and the cluster's step it saw, replaced atomically for the launcher to read."""
    # A side file of this process and thread: two writers of one side file made a coordinator fail
    # its run after training (one replaced it, the other's os.replace found nothing).
    side = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(side, "w") as f:
        json.dump({"steps": int(steps), "global_step": int(global_step)}, f)
    os.replace(side, path)


def write_table_shards(task: dict, shards: Dict[str, dict]) -> None:
    """{shard variable: {"shape": [rows, dim], "device": "/job:ps/task:N"}}, for training_info.json."""
    with open(os.path.join(task["work_dir"], TABLE_SHARDS_FILE), "w") as f:
        json.dump(shards, f, indent=1, sort_keys=True)
