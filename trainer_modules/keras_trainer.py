"""Keras trainer: TFX Trainer's `run_fn` training DeepFM with model.fit."""
import os

import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from deepfm_tfx.contracts import TRAINING_KEY, VARIABLES_CHECKPOINT
from deepfm_tfx.trainer_modules import measure, optimizers, progress, resume, serving, training_setup
from deepfm_tfx.trainer_modules.deepfm import DeepFM


def build_model(inputs: training_setup.TrainerInputs, train_steps: int) -> tf.keras.Model:
    model = DeepFM(inputs.layout, inputs.config.model)
    model.compile(
        optimizer=optimizers.keras_optimizer(inputs.config, train_steps),
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")],
        # Fewer Python round-trips per step; the model is small and fast.
        steps_per_execution=inputs.config.steps_per_execution)
    return model


def warm_start(model: tf.keras.Model, warm_from: str, inputs: training_setup.TrainerInputs, first_batch) -> None:
    """Loads last week's weights; this run's step counter and schedule start at 0.

    A Keras SavedModel's checkpoint also holds its optimizer, step counter
    included: restored as is, the cosine schedule would start where last week's
    ended, at learning rate 0. "reset" takes the weights only; "carry" also
    keeps Adam's moments but still restarts the step counter.
    """
    checkpoint = os.path.join(warm_from, VARIABLES_CHECKPOINT)
    model(first_batch)  # create the variables, then overwrite them
    if inputs.config.warm_start_slots == "carry":
        model.optimizer.build(model.trainable_variables)
        model.load_weights(checkpoint).expect_partial()
    else:
        # A donor without an optimizer: checkpoint restores are deferred, so
        # loading into `model` would restore its optimizer once compile attaches it.
        donor = DeepFM(inputs.layout, inputs.config.model)
        donor(first_batch)
        donor.load_weights(checkpoint).expect_partial()
        model.set_weights(donor.get_weights())
    model.optimizer.iterations.assign(0)


def tensorboard_callback(log_dir: str, config) -> tf.keras.callbacks.TensorBoard:
    """Loss and AUC every config.log_every_steps steps, not once per run.

    Keras' TensorBoard writes batch-level scalars only from its batch hooks,
    which it calls only when it writes steps/s (or profiles), and only at
    steps divisible by update_freq; with steps_per_execution those hooks run
    every steps_per_execution steps, so update_freq must be a multiple of it.
    """
    execution = max(int(config.steps_per_execution), 1)
    every = -(-max(int(config.log_every_steps), 1) // execution) * execution
    return tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq=every, write_steps_per_second=True)


class CheckpointEvery(tf.keras.callbacks.Callback):
    """Saves model and optimizer (its step counter too) every `every` steps, for a re-run to resume from."""

    def __init__(self, manager: tf.train.CheckpointManager, every: int, first_step: int, last_step: int):
        super().__init__()
        self.manager, self.every, self._saved, self.last_step = manager, every, first_step, last_step

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())  # once per steps_per_execution
        # At the last step the export follows, and the folder goes: no checkpoint to write.
        if step // self.every > self._saved // self.every and step < self.last_step:
            self.manager.save(checkpoint_number=step)
            self._saved = step


def restore(model: tf.keras.Model, manager: tf.train.CheckpointManager, first_batch) -> int:
    """Loads the latest checkpoint, if any; returns its step (0 without one)."""
    if not manager.latest_checkpoint:
        return 0
    model(first_batch)
    model.optimizer.build(model.trainable_variables)  # the slots exist, so the restore is not deferred
    manager.checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
    return int(model.optimizer.iterations.numpy())


def run_fn(fn_args: FnArgs) -> None:
    inputs = training_setup.load_inputs(fn_args)
    config = inputs.config
    strategy = training_setup.distribution_strategy(config.distribution) or tf.distribute.get_strategy()
    train = training_setup.make_dataset(fn_args.train_files, fn_args.data_accessor, inputs, config.batch_size,
                                        train=True)
    evaluation = training_setup.make_dataset(fn_args.eval_files, fn_args.data_accessor, inputs, config.batch_size)
    warm_from, note = training_setup.warm_start_source(fn_args, inputs)
    resume_dir = resume.resume_dir(fn_args.model_run_dir, inputs.trainer, fn_args.custom_config[TRAINING_KEY],
                                   fn_args.train_steps, fn_args.train_files, fn_args.transform_output, warm_from)
    with strategy.scope():
        model = build_model(inputs, fn_args.train_steps)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                             resume_dir, max_to_keep=1)
        resumed_from = restore(model, manager, next(iter(train))[0])
        if warm_from and not resumed_from:
            warm_start(model, warm_from, inputs, next(iter(train))[0])
    base_weights = {v.name: v.numpy() for v in model.weights} if warm_from else None
    step_start = int(model.optimizer.iterations.numpy())
    throughput = measure.KerasThroughput(config.batch_size, fn_args.train_steps - step_start)
    if step_start < fn_args.train_steps:  # a run killed while exporting has no steps left
        model.fit(
            train, steps_per_epoch=fn_args.train_steps - step_start, epochs=1,
            validation_data=evaluation, validation_steps=fn_args.eval_steps, verbose=0,
            callbacks=[tensorboard_callback(fn_args.model_run_dir, config),
                       progress.KerasProgress(fn_args.train_steps, config.batch_size, first_step=step_start),
                       throughput, CheckpointEvery(manager, config.checkpoint_every(fn_args.train_steps), step_start,
                                       fn_args.train_steps)])
    step_end = int(model.optimizer.iterations.numpy())
    measured = training_setup.learning_rate_record(config, fn_args.train_steps, step_start, step_end)
    measured.update(measure.record(throughput.examples_per_second(), measure.keras_memory(model)))
    measured["warm_start_slots"] = config.warm_start_slots if warm_from else None
    measured["resumed_from_step"] = resumed_from
    if base_weights is not None:
        measured.update(training_setup.weight_change(
            base_weights, {v.name: v.numpy() for v in model.weights}))
    training_setup.write_training_info(fn_args, inputs, warm_from, note, **measured)
    # The slots (2x the tables with Adam) only serve a later "carry" warm start;
    # without them the SavedModel is a third the size, and any Keras loads it.
    model.save(fn_args.serving_model_dir, save_format="tf", include_optimizer=config.warm_start_slots == "carry",
               signatures=serving.keras_signatures(model, inputs.transform_output, inputs.spec))
    resume.finished(resume_dir)
