"""The cluster section: both trainers in one process and on local clusters of 1 and 2 workers with 1
and 2 parameter servers (trainer_modules/local_cluster.py), on the default run's Transform output:
examples/s, each configuration's step time, and where it goes.

Every configuration is the Trainer's own run_fn, with the same steps and batch. Where the time goes
is measured by moving the variables: "1 process" is the step with its variables in-process (compute
and input only), "1 worker, 1 ps" the same step with them on a parameter server; the difference, and
each cluster task's step time over the single process's, is communication with the parameter servers
(and, on 2 cores, waiting for a core: 3 to 6 processes share them, so no speed-up is expected here).
The Estimator's chief trains too ("workers=0" is one training process); Keras' coordinator does not.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict

from bench.common import table
from bench.runs import transform_output

NEEDS = ("estimator",)  # its Transform output; both trainers read it
CONFIGURATIONS = {
    "estimator": (("1 process", ""), ("1 worker, 1 ps", "workers=0,ps=1"), ("1 worker, 2 ps", "workers=0,ps=2"),
                  ("2 workers, 1 ps", "workers=1,ps=1"), ("2 workers, 2 ps", "workers=1,ps=2")),
    "keras": (("1 process", ""), ("1 worker, 1 ps", "workers=1,ps=1"), ("1 worker, 2 ps", "workers=1,ps=2"),
              ("2 workers, 1 ps", "workers=2,ps=1"), ("2 workers, 2 ps", "workers=2,ps=2")),
}


def _fn_args(output: Dict[str, str], root: str, steps: int, training: Dict[str, Any], trainer: str):
    from tfx.components.trainer.fn_args_utils import FnArgs

    from bench.transformed_data import data_accessor
    from deepfm_tfx import contracts
    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    if spec.categorical_encoding == "hash" and spec.hash_buckets is None:
        spec = dataclasses.replace(spec, hash_buckets=output["num_ids"])
    return FnArgs(
        train_files=[output["train"]], eval_files=[output["eval"]], transform_output=output["graph"],
        transform_graph_path=output["graph"], train_steps=steps, eval_steps=20, data_accessor=data_accessor(),
        model_run_dir=os.path.join(root, "Trainer", "model_run", "1"),
        serving_model_dir=os.path.join(root, "Trainer", "model", "1", contracts.SERVING_MODEL_DIR),
        custom_config={contracts.FEATURE_SPEC_KEY: spec.to_dict(), contracts.TRAINING_KEY: training,
                       contracts.TRAINER_KEY: trainer})


def _run_fn(trainer: str):
    from deepfm_tfx.trainer_modules import estimator_trainer, keras_trainer
    return {"estimator": estimator_trainer.run_fn, "keras": keras_trainer.run_fn}[trainer]


def _configuration(args, output, trainer: str, label: str, cluster: str, steps: int, base: dict) -> dict:
    from deepfm_tfx import training_info
    root = os.path.join(args.workdir, "cluster", trainer, cluster or "single")
    shutil.rmtree(root, ignore_errors=True)
    # One checkpoint, at the end: the Estimator validates after each, which is not training time.
    fn_args = _fn_args(output, root, steps, {**base, "cluster": cluster, "checkpoint_every_steps": steps}, trainer)
    for folder in (fn_args.model_run_dir, os.path.dirname(fn_args.serving_model_dir)):  # as TFX makes them
        os.makedirs(folder, exist_ok=True)
    print(f"  cluster: {trainer}, {label}, {steps} steps", flush=True)
    started = time.perf_counter()
    _run_fn(trainer)(fn_args)
    wall = time.perf_counter() - started
    info = training_info.read(training_info.model_root(fn_args.serving_model_dir))
    shutil.rmtree(root, ignore_errors=True)
    rate, batch = info.get("train_examples_per_second"), base["batch_size"]
    tasks = info.get("cluster_steps") or {"process": steps}
    total = sum(tasks.values()) or 1
    # Each training task's step time: the batch over its share of the cluster's examples/s.
    task_step_ms = {t: round(1000 * batch / (rate * n / total), 2) for t, n in tasks.items() if rate and n}
    return {"configuration": label, "cluster": cluster, "examples_per_second": rate,
            "step_ms_per_task": task_step_ms, "task_steps": tasks, "wall_seconds": round(wall, 1),
            "table_shards": {k: v["device"] for k, v in (info.get("table_shards") or {}).items()}}


def _where_the_time_goes(results) -> None:
    """compute: the single process's step; the rest of a cluster task's step is communication and waiting."""
    compute_ms = next(iter(results[0]["step_ms_per_task"].values()), None)
    for r in results:
        mean_ms = sum(r["step_ms_per_task"].values()) / max(len(r["step_ms_per_task"]), 1)
        r["step_ms"] = round(mean_ms, 2)
        r["compute_ms"] = compute_ms
        r["communication_and_waiting_ms"] = round(mean_ms - compute_ms, 2) if compute_ms and r["cluster"] else 0.0
        r["communication_share"] = round(r["communication_and_waiting_ms"] / mean_ms, 2) if mean_ms else None


def run(args, shared) -> Dict[str, Any]:
    from deepfm_tfx.trainer_modules import hparams

    output = transform_output(shared["default_runs"]["estimator"]["pipeline_root"])
    steps = 300 if args.quick else 1000
    base = dataclasses.asdict(hparams.TrainingConfig())
    base["dnn_units"] = list(base["dnn_units"])
    out = {"steps": steps, "batch_size": base["batch_size"], "trainers": {t: [] for t in CONFIGURATIONS}}
    # Configuration by configuration, both trainers each: the first rows (one process against one worker
    # and one parameter server) are where the time goes, and come first if the section is cut short.
    for index in range(len(CONFIGURATIONS["keras"])):
        for trainer, configurations in CONFIGURATIONS.items():
            label, cluster = configurations[index]
            result = _configuration(args, output, trainer, label, cluster, steps, base)
            out["trainers"][trainer].append(result)
            print(f"    {json.dumps({k: result[k] for k in ('examples_per_second', 'task_steps', 'wall_seconds')})}",
                  flush=True)
    for results in out["trainers"].values():
        _where_the_time_goes(results)
    return out


def show(result: Dict[str, Any]) -> None:
    for trainer, results in result["trainers"].items():
        rows = [[r["configuration"], r["examples_per_second"], r["step_ms"], r["compute_ms"],
                 r["communication_and_waiting_ms"], r["communication_share"],
                 " ".join(f"{t} {n}" for t, n in r["task_steps"].items()), r["wall_seconds"]] for r in results]
        print(table(["configuration", "examples/s", "step ms (per task)", "compute ms", "communication+wait ms",
                     "share", "steps by task", "wall s"], rows,
                    title=f"{trainer} trainer on local clusters ({result['steps']} steps, batch "
                          f"{result['batch_size']})"))
        print(json.dumps({r["configuration"]: r["table_shards"] for r in results if r["table_shards"]}, indent=1))
