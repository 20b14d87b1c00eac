"""Training progress from both loops into deepfm_tfx.progress.TRAINING: step N of M, loss, AUC.

`KerasProgress` is a callback for model.fit, `EstimatorProgress` a
SessionRunHook for the Estimator's model_fn. Both only record numbers; the
console draws them (and on Kubeflow or Airflow the tally logs them).
Loss and AUC are running values over this run, as Keras reports them.
"""
from __future__ import annotations

import time

import tensorflow as tf

from deepfm_tfx import progress

# Reading Keras' loss and AUC waits for the device; once a second is plenty for a display.
_READ_METRICS_EVERY = 1.0


class KerasProgress(tf.keras.callbacks.Callback):
    def __init__(self, train_steps: int, batch_size: int, first_step: int = 0):
        super().__init__()
        self.train_steps, self.batch_size, self.first_step = train_steps, batch_size, first_step
        self._metrics_read_at = 0.0
        # Keep the logs as tensors: converting them after every step would sync the device.
        self._supports_tf_logs = True

    def on_train_begin(self, logs=None):
        progress.TRAINING.start(self.train_steps, self.batch_size)
        if self.first_step:
            progress.TRAINING.resumed(self.first_step)

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution, `batch` is the last step of the execution.
        step, now = self.first_step + batch + 1, time.monotonic()
        if logs and (now - self._metrics_read_at >= _READ_METRICS_EVERY or step >= self.train_steps):
            self._metrics_read_at = now
            progress.TRAINING.update(step, loss=_number(logs.get("loss")), auc=_number(logs.get("auc")))
        else:
            progress.TRAINING.update(step)

    def on_test_begin(self, logs=None):
        progress.TRAINING.set_phase("validating")

    def on_train_end(self, logs=None):
        progress.TRAINING.set_phase("saving the model")


class EstimatorProgress(tf.compat.v1.train.SessionRunHook):
    """Fetches the step, the batch loss and the streaming AUC with every training step."""

    def __init__(self, loss: tf.Tensor, auc_update: tf.Tensor, train_steps: int, batch_size: int):
        self._loss, self._auc = loss, auc_update
        self.train_steps, self.batch_size = train_steps, batch_size
        self._loss_sum = self._loss_count = 0

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()
        progress.TRAINING.start(self.train_steps, self.batch_size)

    def after_create_session(self, session, coord):
        # Counted here rather than fetched: a fetched global_step may be read before or after the increment.
        self._step = int(session.run(self._global_step))
        if self._step:
            progress.TRAINING.resumed(self._step)

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs({"loss": self._loss, "auc": self._auc})

    def after_run(self, run_context, run_values):
        results = run_values.results
        self._step += 1
        # A running mean, as Keras reports its loss.
        self._loss_sum += float(results["loss"])
        self._loss_count += 1
        progress.TRAINING.update(self._step, loss=self._loss_sum / self._loss_count, auc=float(results["auc"]))

    def end(self, session):
        progress.TRAINING.set_phase("evaluating and exporting")


def _number(value):
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
