"""The cluster section: the Estimator trainer in one process and on local clusters of 1 and 2
workers with 1 and 2 parameter servers (trainer_modules/local_cluster.py), on the default run's
Transform output: examples/s, each configuration's step time, and where it goes.

Every configuration is the Trainer's own run_fn, with the same steps and batch. "Compute" is
the single process's step time (the same graph with its variables in-process); the rest of a
cluster worker's step time is communication with the parameter servers and waiting for a core.
On 2 cores the cluster's 3 to 5 processes share them, so no speed-up is expected here.
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

NEEDS = ("estimator",)
CONFIGURATIONS = (("1 process", ""), ("1 worker, 1 ps", "workers=0,ps=1"), ("1 worker, 2 ps", "workers=0,ps=2"),
                  ("2 workers, 1 ps", "workers=1,ps=1"), ("2 workers, 2 ps", "workers=1,ps=2"))
# The chief trains too: "workers=1" is the chief and one worker, two training processes.


def _fn_args(output: Dict[str, str], root: str, steps: int, training: Dict[str, Any]):
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
                       contracts.TRAINER_KEY: "estimator"})


def run(args, shared) -> Dict[str, Any]:
    from deepfm_tfx import training_info
    from deepfm_tfx.trainer_modules import estimator_trainer, hparams

    output = transform_output(shared["default_runs"]["estimator"]["pipeline_root"])
    steps = 300 if args.quick else 2000
    base = dataclasses.asdict(hparams.TrainingConfig())
    base["dnn_units"] = list(base["dnn_units"])
    results = []
    for label, cluster in CONFIGURATIONS:
        root = os.path.join(args.workdir, "cluster", cluster or "single")
        shutil.rmtree(root, ignore_errors=True)
        fn_args = _fn_args(output, root, steps, {**base, "cluster": cluster})
        print(f"  cluster: {label}, {steps} steps", flush=True)
        started = time.perf_counter()
        estimator_trainer.run_fn(fn_args)
        wall = time.perf_counter() - started
        info = training_info.read(training_info.model_root(fn_args.serving_model_dir))
        rate = info.get("train_examples_per_second")
        batch = base["batch_size"]
        tasks = info.get("cluster_steps") or {"process": steps}
        total = sum(tasks.values()) or 1
        # Each training task's step time: the batch over its share of the cluster's examples/s.
        task_step_ms = {t: round(1000 * batch / (rate * n / total), 2) for t, n in tasks.items() if rate and n}
        results.append({"configuration": label, "cluster": cluster, "examples_per_second": rate,
                        "step_ms_per_task": task_step_ms, "task_steps": tasks, "wall_seconds": round(wall, 1),
                        "table_shards": {k: v["device"] for k, v in (info.get("table_shards") or {}).items()}})
        shutil.rmtree(root, ignore_errors=True)
    compute_ms = next(iter(results[0]["step_ms_per_task"].values()), None)
    for r in results:
        mean_ms = sum(r["step_ms_per_task"].values()) / max(len(r["step_ms_per_task"]), 1)
        r["step_ms"] = round(mean_ms, 2)
        r["compute_ms"] = compute_ms
        r["communication_and_waiting_ms"] = round(mean_ms - compute_ms, 2) if compute_ms and r["cluster"] else 0.0
    return {"steps": steps, "batch_size": base["batch_size"], "configurations": results}


def show(result: Dict[str, Any]) -> None:
    rows = [[r["configuration"], r["examples_per_second"], r["step_ms"], r["compute_ms"],
             r["communication_and_waiting_ms"], " ".join(f"{t} {n}" for t, n in r["task_steps"].items()),
             r["wall_seconds"]] for r in result["configurations"]]
    print(table(["configuration", "examples/s", "step ms (per task)", "compute ms", "communication+wait ms",
                 "steps by task", "wall s"], rows,
                title=f"Estimator trainer on local clusters ({result['steps']} steps, batch {result['batch_size']}; "
                      f"the chief trains too)"))
    print(json.dumps({r["configuration"]: r["table_shards"] for r in result["configurations"] if r["table_shards"]},
                     indent=1))
