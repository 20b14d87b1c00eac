"""What a training run records about its own cost (into training_info.json):
steady-state examples/s and the bytes of its tables, weights and optimizer
slots. The benchmark's `scale` section reads them from real Trainer runs."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf

from deepfm_tfx import contracts
from deepfm_tfx.trainer_modules import optimizers

# The first steps trace and compile the train function; they are not throughput.
WARMUP_SHARE = 0.1


def steady_rate(marks: List[tuple], batch_size: int, total_steps: int) -> Optional[float]:
    """Examples/s between the first mark past the warm-up and the last; marks are (step, seconds)."""
    after = [(s, t) for s, t in marks if s >= max(int(total_steps * WARMUP_SHARE), 1)]
    if len(after) < 2 or after[-1][0] == after[0][0]:
        return None
    (s0, t0), (s1, t1) = after[0], after[-1]
    return (s1 - s0) * batch_size / max(t1 - t0, 1e-9)


class KerasThroughput(tf.keras.callbacks.Callback):
    """Times model.fit's batches (Keras calls it once per steps_per_execution)."""

    def __init__(self, batch_size: int, total_steps: int):
        super().__init__()
        self.batch_size, self.total_steps, self.marks = batch_size, total_steps, []

    def on_train_batch_end(self, batch, logs=None):
        self.marks.append((batch + 1, time.perf_counter()))

    def examples_per_second(self) -> Optional[float]:
        return steady_rate(self.marks, self.batch_size, self.total_steps)


class EstimatorThroughput(tf.estimator.SessionRunHook):
    """Times the Estimator's training steps."""

    def __init__(self, batch_size: int, total_steps: int):
        self.batch_size, self.total_steps, self.marks, self.steps = batch_size, total_steps, [], 0

    def after_run(self, run_context, run_values):
        self.steps += 1
        self.marks.append((self.steps, time.perf_counter()))

    def examples_per_second(self) -> Optional[float]:
        return steady_rate(self.marks, self.batch_size, self.total_steps)


def keras_memory(model: tf.keras.Model) -> Dict[str, int]:
    return optimizers.model_memory(model, model.optimizer)


def checkpoint_memory(checkpoint: str) -> Dict[str, int]:
    """The same figures from an Estimator checkpoint: weights, tables and optimizer slots."""
    reader = tf.train.load_checkpoint(checkpoint)
    dtypes = reader.get_variable_to_dtype_map()
    out = {"table_bytes": 0, "weight_bytes": 0, "optimizer_bytes": 0}
    for name, shape in reader.get_variable_to_shape_map().items():
        size = int(np.prod(shape, dtype=np.int64)) * dtypes[name].size
        if contracts.is_slot_name(name):
            out["optimizer_bytes"] += size
        elif contracts.is_model_weight_name(name):
            out["weight_bytes"] += size
            if contracts.is_table_name(name):
                out["table_bytes"] += size
    return out


def record(rate: Optional[float], memory: Dict[str, int]) -> Dict[str, Any]:
    return {"train_examples_per_second": round(rate, 1) if rate else None, **memory}
