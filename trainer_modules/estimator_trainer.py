"""Estimator trainer: a TFX `run_fn` that drives tf.estimator.train_and_evaluate.

Why a run_fn and not TFX 1.15's Estimator executor (`trainer_fn`): the
GenericExecutor gives both trainers the same FnArgs, data accessor and output
layout, so the pipeline swaps trainers with one dotted path and the Estimator
path keeps working after TFX removed its executor (1.16).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import TYPE_CHECKING

import tensorflow as tf

from deepfm_tfx import contracts
from deepfm_tfx.trainer_modules import cluster_training, local_cluster, measure, optimizers, progress, resume, serving
from deepfm_tfx.trainer_modules import training_setup
from deepfm_tfx.trainer_modules.deepfm import DeepFM

if TYPE_CHECKING:  # a cluster task runs these loops without importing tfx.components (cluster_training.TaskArgs)
    from tfx.components.trainer.fn_args_utils import FnArgs

LOGITS = "logits"
MODEL_VARIABLES = f"^{contracts.MODEL_SCOPE}/"  # WarmStartSettings takes a regex
# Validation during training at most this often, and once at the end. Each evaluation rebuilds the
# graph and restores the checkpoint (about 1.5 s of CPU even on a tiny run); with 0 every checkpoint
# paid it, most of a small run's Trainer. Keras validates once per run.
EVAL_THROTTLE_SECS = 60


def make_model_fn(inputs: training_setup.TrainerInputs, train_steps: int):
    """A model_fn around the same DeepFM the Keras trainer trains."""

    def model_fn(features, labels, mode, params=None, config=None):  # config: the Estimator's RunConfig
        training = mode == tf.estimator.ModeKeys.TRAIN
        # On parameter servers each id table is split across them; the exported graph keeps one table.
        shards = config.num_ps_replicas if config is not None and training else 0
        model = DeepFM(inputs.layout, inputs.config.model, table_shards=max(shards, 1))
        logits = model(features, training=training)
        probability = tf.sigmoid(logits)
        if mode == tf.estimator.ModeKeys.PREDICT:
            predictions = {contracts.OUTPUT_KEY: probability, LOGITS: logits}
            return tf.estimator.EstimatorSpec(mode, predictions=predictions, export_outputs={
                contracts.SERVING_SIGNATURE: tf.estimator.export.PredictOutput({contracts.OUTPUT_KEY: probability})})
        labels = tf.cast(tf.reshape(labels, [-1, 1]), tf.float32)
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        if model.losses:
            loss += tf.add_n(model.losses)
        train_op = None
        if training:
            step = tf.compat.v1.train.get_or_create_global_step()
            # A partitioned table's shards are graph variables the Keras model does not track.
            variables = tf.compat.v1.trainable_variables() if shards > 1 else model.trainable_variables
            train_op = optimizers.estimator_train_op(inputs.config, train_steps, loss, variables, step)
        # Its own scope name leaves the summary tag "auc" free, so TensorBoard overlays training and eval.
        metrics = {"auc": tf.compat.v1.metrics.auc(labels, probability, num_thresholds=1000, name="auc_metric")}
        if training:  # the running AUC of this run, logged every save_summary_steps like Keras' batch_auc
            train_op = tf.group(train_op, metrics["auc"][1])
            tf.compat.v1.summary.scalar("auc", metrics["auc"][0])
        hooks = [progress.EstimatorProgress(loss, metrics["auc"][1], train_steps, inputs.config.batch_size)] \
            if training else None
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, eval_metric_ops=metrics,
                                          training_hooks=hooks)

    return model_fn


def _global_step(checkpoint) -> int:
    if not checkpoint:
        return 0
    return int(tf.train.load_checkpoint(checkpoint).get_tensor(tf.compat.v1.GraphKeys.GLOBAL_STEP))


def _model_variables(checkpoint: str):
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if contracts.is_model_weight_name(name)}


def _run_config(config, train_steps: int, model_dir: str, **kwargs) -> tf.estimator.RunConfig:
    """Reads TF_CONFIG when a cluster task sets it."""
    return tf.estimator.RunConfig(
        model_dir=model_dir,  # checkpoints and summaries, for resuming and for TensorBoard
        save_checkpoints_steps=config.checkpoint_every(train_steps), keep_checkpoint_max=2,
        log_step_count_steps=100,
        save_summary_steps=config.log_every_steps, **kwargs)  # loss and AUC, for TensorBoard


def _estimator(inputs, fn_args, run_config, warm_from) -> tf.estimator.Estimator:
    warm_start = None
    if warm_from:
        # An exported Estimator SavedModel's variables are a name-based checkpoint
        # of the model only: Adam's slots and the global step start fresh (the
        # regex matches trainable variables only), so this run's schedule starts at 0.
        # A checkpoint in model_dir (a resumed run) takes precedence over it.
        warm_start = tf.estimator.WarmStartSettings(
            ckpt_to_initialize_from=os.path.join(warm_from, contracts.VARIABLES_CHECKPOINT),
            vars_to_warm_start=MODEL_VARIABLES)
    return tf.estimator.Estimator(make_model_fn(inputs, fn_args.train_steps), config=run_config,
                                  warm_start_from=warm_start)


def _input_fn(fn_args, inputs, files, train=False):
    return lambda: training_setup.make_dataset(files, fn_args.data_accessor, inputs, inputs.config.batch_size, train)


def _move_checkpoints(source: str, target: str) -> None:
    """The resume folder's checkpoints and summaries become this execution's model_run."""
    latest = tf.train.latest_checkpoint(source)
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(source):
        shutil.move(os.path.join(source, name), os.path.join(target, name))
    if latest:
        tf.compat.v1.train.update_checkpoint_state(target, os.path.join(target, os.path.basename(latest)))


def run_fn(fn_args: FnArgs) -> None:
    inputs = training_setup.load_inputs(fn_args)
    config = inputs.config
    warm_from, note = training_setup.warm_start_source(fn_args, inputs)
    resume_dir = resume.resume_dir(fn_args.model_run_dir, inputs.trainer, fn_args.custom_config[contracts.TRAINING_KEY],
                                   fn_args.train_steps, fn_args.train_files, fn_args.transform_output, warm_from)
    step_start = _global_step(tf.train.latest_checkpoint(resume_dir))
    measured = {}
    if config.cluster:
        rate, measured = cluster_training.train_on_cluster(fn_args, inputs, resume_dir, warm_from, step_start)
    else:
        estimator = _estimator(inputs, fn_args, _run_config(
            config, fn_args.train_steps, resume_dir,
            train_distribute=training_setup.distribution_strategy(config.distribution)), warm_from)
        throughput = measure.EstimatorThroughput(config.batch_size, fn_args.train_steps - step_start)
        tf.estimator.train_and_evaluate(
            estimator,
            tf.estimator.TrainSpec(_input_fn(fn_args, inputs, fn_args.train_files, train=True),
                                   max_steps=fn_args.train_steps, hooks=[throughput]),
            tf.estimator.EvalSpec(_input_fn(fn_args, inputs, fn_args.eval_files), steps=fn_args.eval_steps,
                                  throttle_secs=EVAL_THROTTLE_SECS))
        rate = throughput.examples_per_second()
    _move_checkpoints(resume_dir, fn_args.model_run_dir)
    # One process, no cluster: the exported graph has one table per field set and no device placements.
    estimator = _estimator(inputs, fn_args, _run_config(config, fn_args.train_steps, fn_args.model_run_dir), None)
    if config.cluster:  # the cluster has no evaluator task: validate here, for TensorBoard's curve
        estimator.evaluate(_input_fn(fn_args, inputs, fn_args.eval_files), steps=fn_args.eval_steps)

    # Estimator exports under a timestamped folder; TFX expects the model itself.
    export_base = tempfile.mkdtemp(dir=os.path.dirname(fn_args.serving_model_dir.rstrip("/")) or None)
    exported = estimator.export_saved_model(
        export_base, serving.estimator_receiver_fn(inputs.transform_output, inputs.spec))
    shutil.copytree(exported.decode() if isinstance(exported, bytes) else exported, fn_args.serving_model_dir,
                    dirs_exist_ok=True)
    shutil.rmtree(export_base, ignore_errors=True)
    serving.finish_estimator_export(fn_args.serving_model_dir)
    measured.update(training_setup.learning_rate_record(
        config, fn_args.train_steps, step_start, _global_step(estimator.latest_checkpoint())))
    measured["resumed_from_step"] = step_start
    measured["warm_start_slots"] = "reset"  # the export carries no optimizer slots to carry over
    measured.update(measure.record(rate, measure.checkpoint_memory(estimator.latest_checkpoint())))
    if warm_from:
        measured.update(training_setup.weight_change(
            _model_variables(os.path.join(warm_from, contracts.VARIABLES_CHECKPOINT)),
            _model_variables(estimator.latest_checkpoint())))
    training_setup.write_training_info(fn_args, inputs, warm_from, note, **measured)
    resume.finished(resume_dir)


# --- on a cluster: parameter servers, a chief and workers ------------------------------------------

class _TaskProgress(tf.compat.v1.train.SessionRunHook):
    """Writes this task's steps and the global step it saw, for the launcher's progress line."""

    def __init__(self, path: str):
        self.path, self.written_at = path, 0.0
        try:  # a restarted worker continues its own count
            with open(path) as f:
                self.steps = int(json.load(f).get("steps", 0))
        except (OSError, ValueError):
            self.steps = 0

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()

    def before_run(self, run_context):
        return tf.compat.v1.train.SessionRunArgs(self._global_step)

    def after_run(self, run_context, run_values):
        self.steps += 1
        now = time.monotonic()
        if now - self.written_at >= 0.25:
            self.written_at = now
            self._write(int(run_values.results) + 1)

    def _write(self, global_step: int):
        cluster_training.write_progress(self.path, self.steps, global_step)

    def end(self, session):
        self._write(int(session.run(self._global_step)))


class _RecordTableShards(tf.compat.v1.train.SessionRunHook):
    """The chief writes where each id table's shards live and their shapes."""

    def __init__(self, task: dict):
        self.task = task

    def begin(self):
        cluster_training.write_table_shards(self.task, {
            v.op.name: {"shape": v.shape.as_list(), "device": v.device}
            for v in tf.compat.v1.global_variables() if contracts.is_table_name(v.op.name)
            and not contracts.is_slot_name(v.op.name) and "/Adam" not in v.op.name})


class _AfterTheChiefsFirstStep(tf.compat.v1.train.SessionRunHook):
    """A worker trains once the global step has moved since it joined. At a (re)start the chief writes
    its graph and fills its input pipeline before its first step, and its checkpoints come only from
    its own steps: workers that ran meanwhile outran the checkpoint interval (431 steps, once all
    1,002, with the cores busy), so a parameter server lost then took all of it."""

    def __init__(self, max_steps: int, timeout_secs: float = 300.0):
        self.max_steps, self.timeout_secs = max_steps, timeout_secs

    def begin(self):
        self._global_step = tf.compat.v1.train.get_global_step()

    def after_create_session(self, session, coord):
        joined = session.run(self._global_step)
        deadline = time.monotonic() + self.timeout_secs  # a lost chief fails the run; this only bounds the wait
        while joined < self.max_steps and time.monotonic() < deadline:
            if session.run(self._global_step) > joined:
                return
            time.sleep(0.1)


def run_cluster_task(task: dict) -> None:
    """A chief's or a worker's part (cluster_task.py); TF_CONFIG names the task."""
    fn_args = cluster_training.task_fn_args(task)
    inputs = training_setup.load_inputs(fn_args)
    # Workers start at once: the launcher already staggers nothing, and the tests wait for them.
    run_config = _run_config(inputs.config, fn_args.train_steps, task["resume_dir"],
                             experimental_max_worker_delay_secs=0)
    estimator = _estimator(inputs, fn_args, run_config, task["warm_from"])
    name = local_cluster.task_name(run_config.task_type, run_config.task_id)
    hooks = [_TaskProgress(cluster_training.progress_path(task, name))]
    if run_config.is_chief:
        hooks.append(_RecordTableShards(task))
    else:
        hooks.append(_AfterTheChiefsFirstStep(fn_args.train_steps))
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(_input_fn(fn_args, inputs, fn_args.train_files, train=True),
                               max_steps=fn_args.train_steps, hooks=hooks),
        tf.estimator.EvalSpec(_input_fn(fn_args, inputs, fn_args.eval_files), steps=fn_args.eval_steps))
