"""Keras runner: TFX Trainer's `run_fn` training DeepFM with model.fit."""
import os

import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from deepfm_tfx.trainer_modules import serving

from deepfm_tfx.trainer_modules import training_setup
from deepfm_tfx.trainer_modules.deepfm import DeepFM


def build_model(inputs: training_setup.TrainerInputs, train_steps: int) -> tf.keras.Model:
    model = DeepFM(inputs.layout, inputs.config.model)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(training_setup.learning_rate(inputs.config, train_steps)),
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")],
        # Fewer Python round-trips per step; the model is small and fast.
        steps_per_execution=inputs.config.steps_per_execution)
    return model


def run_fn(fn_args: FnArgs) -> None:
    inputs = training_setup.load_inputs(fn_args)
    config = inputs.config
    strategy = training_setup.distribution_strategy(config.distribution) or tf.distribute.get_strategy()
    train = training_setup.make_dataset(fn_args.train_files, fn_args.data_accessor, inputs, config.batch_size)
    evaluation = training_setup.make_dataset(fn_args.eval_files, fn_args.data_accessor, inputs, config.batch_size)
    warm_from, note = training_setup.warm_start_source(fn_args, inputs)
    with strategy.scope():
        model = build_model(inputs, fn_args.train_steps)
        if warm_from:
            model(next(iter(train))[0])  # create the variables, then overwrite them
            # The SavedModel's root object is the DeepFM model itself.
            model.load_weights(os.path.join(warm_from, "variables", "variables")).expect_partial()
    model.fit(
        train, steps_per_epoch=fn_args.train_steps, epochs=1,
        validation_data=evaluation, validation_steps=fn_args.eval_steps, verbose=0,
        callbacks=[tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq=100)])
    training_setup.write_training_info(fn_args, inputs, warm_from, note)
    model.save(fn_args.serving_model_dir, save_format="tf",
               signatures=serving.keras_signatures(model, inputs.transform_output, inputs.spec.label))
