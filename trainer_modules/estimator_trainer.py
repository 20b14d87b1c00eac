"""Estimator trainer: a TFX `run_fn` that drives tf.estimator.train_and_evaluate.

Why a run_fn and not TFX 1.15's Estimator executor (`trainer_fn`): the
GenericExecutor gives both trainers the same FnArgs, data accessor and output
layout, so the pipeline swaps trainers with one dotted path and the Estimator
path keeps working after TFX removed its executor (1.16).
"""
import os
import shutil
import tempfile

import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from deepfm_tfx import contracts
from deepfm_tfx.trainer_modules import measure, optimizers, progress, serving

from deepfm_tfx.trainer_modules import training_setup
from deepfm_tfx.trainer_modules.deepfm import DeepFM

LOGITS = "logits"
MODEL_VARIABLES = f"^{contracts.MODEL_SCOPE}/"  # WarmStartSettings takes a regex


def make_model_fn(inputs: training_setup.TrainerInputs, train_steps: int):
    """A model_fn around the same DeepFM the Keras trainer trains."""
    config = inputs.config

    def model_fn(features, labels, mode, params=None):
        model = DeepFM(inputs.layout, config.model)
        training = mode == tf.estimator.ModeKeys.TRAIN
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
            train_op = optimizers.estimator_train_op(config, train_steps, loss, model.trainable_variables, step)
        # Its own scope name leaves the summary tag "auc" free, so TensorBoard overlays training and eval.
        metrics = {"auc": tf.compat.v1.metrics.auc(labels, probability, num_thresholds=1000, name="auc_metric")}
        if training:  # the running AUC of this run, logged every save_summary_steps like Keras' batch_auc
            train_op = tf.group(train_op, metrics["auc"][1])
            tf.compat.v1.summary.scalar("auc", metrics["auc"][0])
        hooks = [progress.EstimatorProgress(loss, metrics["auc"][1], train_steps, config.batch_size)] \
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


def run_fn(fn_args: FnArgs) -> None:
    inputs = training_setup.load_inputs(fn_args)
    config = inputs.config
    run_config = tf.estimator.RunConfig(
        model_dir=fn_args.model_run_dir,  # checkpoints and summaries, for TensorBoard
        train_distribute=training_setup.distribution_strategy(config.distribution),
        save_checkpoints_steps=max(fn_args.train_steps // 2, 1), log_step_count_steps=100,
        save_summary_steps=config.log_every_steps)  # loss and AUC, for TensorBoard
    warm_from, note = training_setup.warm_start_source(fn_args, inputs)
    warm_start = None
    if warm_from:
        # An exported Estimator SavedModel's variables are a name-based checkpoint
        # of the model only: Adam's slots and the global step start fresh (the
        # regex matches trainable variables only), so this run's schedule starts at 0.
        warm_start = tf.estimator.WarmStartSettings(
            ckpt_to_initialize_from=os.path.join(warm_from, contracts.VARIABLES_CHECKPOINT),
            vars_to_warm_start=MODEL_VARIABLES)
    estimator = tf.estimator.Estimator(make_model_fn(inputs, fn_args.train_steps), config=run_config, warm_start_from=warm_start)

    def input_fn(files, train=False):
        return lambda: training_setup.make_dataset(files, fn_args.data_accessor, inputs, config.batch_size, train)

    step_start = _global_step(estimator.latest_checkpoint())
    throughput = measure.EstimatorThroughput(config.batch_size, fn_args.train_steps)
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(input_fn(fn_args.train_files, train=True), max_steps=fn_args.train_steps,
                               hooks=[throughput]),
        tf.estimator.EvalSpec(input_fn(fn_args.eval_files), steps=fn_args.eval_steps, throttle_secs=0))

    # Estimator exports under a timestamped folder; TFX expects the model itself.
    export_base = tempfile.mkdtemp(dir=os.path.dirname(fn_args.serving_model_dir.rstrip("/")) or None)
    exported = estimator.export_saved_model(
        export_base, serving.estimator_receiver_fn(inputs.transform_output, inputs.spec))
    shutil.copytree(exported.decode() if isinstance(exported, bytes) else exported, fn_args.serving_model_dir,
                    dirs_exist_ok=True)
    shutil.rmtree(export_base, ignore_errors=True)
    serving.finish_estimator_export(fn_args.serving_model_dir)
    measured = training_setup.learning_rate_record(
        config, fn_args.train_steps, step_start, _global_step(estimator.latest_checkpoint()))
    measured["warm_start_slots"] = "reset"  # the export carries no optimizer slots to carry over
    measured.update(measure.record(throughput.examples_per_second(),
                                   measure.checkpoint_memory(estimator.latest_checkpoint())))
    if warm_from:
        measured.update(training_setup.weight_change(
            _model_variables(os.path.join(warm_from, contracts.VARIABLES_CHECKPOINT)),
            _model_variables(estimator.latest_checkpoint())))
    training_setup.write_training_info(fn_args, inputs, warm_from, note, **measured)
