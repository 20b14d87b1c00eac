"""Where a Trainer keeps the checkpoints it resumes from, stable across pipeline runs.

TFX gives every Trainer execution new output folders, so checkpoints kept
there are lost to the re-run after a kill, which would start at step 0. The
resume folder sits beside them, `<pipeline root>/Trainer/resume/<key>`, keyed
by what is trained (the trainer, the training knobs, the steps, the
transformed data, the warm-start model): re-running the same work finds its
checkpoints, other work gets its own folder. It is removed once the model is
exported, so a later `--no-cache` run trains afresh.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Optional

from deepfm_tfx.contracts import RESUME_DIR
from deepfm_tfx.trainer_modules import local_cluster

# Knobs that change how the work is run, not what is trained: a run killed on a
# cluster may resume on another cluster shape.
_NOT_KEYED = ("cluster", "checkpoint_every_steps", "input_cache", "log_every_steps")


def resume_dir(model_run_dir: str, trainer: str, training: dict, train_steps: int, train_files,
               transform_output: str, warm_from: Optional[str]) -> str:
    """`model_run_dir` is <pipeline root>/<Trainer node>/model_run/<execution>: TFX's own layout."""
    what = {"trainer": trainer, "training": {k: v for k, v in sorted(training.items()) if k not in _NOT_KEYED},
            "train_steps": train_steps, "train_files": list(train_files) if isinstance(train_files, (list, tuple))
            else [train_files], "transform_output": transform_output, "warm_from": warm_from}
    shards = local_cluster.parse(training["cluster"]).ps if training.get("cluster") else 1
    if trainer == "keras" and shards > 1:
        # Keras' optimizer slots are per table shard: its checkpoints restore only into as many shards.
        what["table_shards"] = shards
    key = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]
    node_dir = os.path.dirname(os.path.dirname(model_run_dir.rstrip("/")))
    return os.path.join(node_dir, RESUME_DIR, f"{trainer}-{key}")


def finished(directory: str) -> None:
    """The model is exported: nothing left to resume."""
    shutil.rmtree(directory, ignore_errors=True)
