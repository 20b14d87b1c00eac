"""The `training_info.json` contract: what a Trainer run says about itself.

Both training loops write it beside the Trainer's `Format-Serving` folder;
the pusher copies its fields into the version record and the summary shows
them. Fields:

  trainer_runner     the trainer, "keras" or "estimator" (contracts.TRAINER_KEY)
  warm_started       whether weights came from `base_model`
  base_model         the model warm-started from, or null
  warm_start_note    why (or why not) warm-started
  warm_start_slots   "reset" or "carry": what happened to the optimizer's slots
  train_steps        steps of this run
  global_step_start  the optimizer's step counter when this run's training began (0)
  learning_rate_first_step, learning_rate_last_step
  weight_change      {variable: relative L2 change vs base_model}; null when cold
  weight_change_max  the largest of those
  num_ids, layout    what decides whether a later run can warm-start from this one
  resumed_from_step  the checkpoint's step a re-run continued from after a kill (0: none)
  cluster, table_shards, cluster_steps, cluster_restarts
                     on a local cluster: its shape, each id-table shard's shape and
                     parameter server, each task's steps, the workers restarted
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict

from deepfm_tfx.contracts import TRAINING_INFO_FILE


def _gfile():
    # Trainer outputs may live on gs:// or s3://; plain open() is enough locally.
    import tensorflow as tf
    return tf.io.gfile


def path_in(model_uri: str) -> str:
    """Its path in a Model artifact's folder (the parent of Format-Serving)."""
    return os.path.join(model_uri, TRAINING_INFO_FILE)


def model_root(serving_dir: str) -> str:
    """The Model artifact's folder from a serving_model_dir or Format-Serving path."""
    return os.path.dirname(serving_dir.rstrip("/"))


def read(model_uri: str) -> Dict[str, Any]:
    """The info of a Model artifact, {} if it has none."""
    path = path_in(model_uri)
    if "://" in path:
        gfile = _gfile()
        if not gfile.exists(path):
            return {}
        with gfile.GFile(path) as f:
            return json.load(f)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write(model_uri: str, info: Dict[str, Any]) -> None:
    text = json.dumps(info, indent=2, sort_keys=True)
    path = path_in(model_uri)
    if "://" in path:
        with _gfile().GFile(path, "w") as f:
            f.write(text)
        return
    with open(path, "w") as f:
        f.write(text)
