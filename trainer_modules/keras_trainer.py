"""Keras trainer: TFX Trainer's `run_fn` training DeepFM with model.fit."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Dict

import tensorflow as tf

from deepfm_tfx.contracts import TRAINING_KEY, VARIABLES_CHECKPOINT
from deepfm_tfx.trainer_modules import cluster_training, deepfm, local_cluster, measure, optimizers, progress, resume
from deepfm_tfx.trainer_modules import serving, training_setup
from deepfm_tfx.trainer_modules.deepfm import DeepFM

if TYPE_CHECKING:  # a cluster task runs these loops without importing tfx.components (cluster_training.TaskArgs)
    from tfx.components.trainer.fn_args_utils import FnArgs


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
    # One Transform layer for training, validation and the export: each one loads the transform graph.
    layer = inputs.transform_output.transform_features_layer()
    train = training_setup.make_dataset(fn_args.train_files, fn_args.data_accessor, inputs, config.batch_size,
                                        train=True, transform_layer=layer)
    warm_from, note = training_setup.warm_start_source(fn_args, inputs)
    resume_dir = resume.resume_dir(fn_args.model_run_dir, inputs.trainer, fn_args.custom_config[TRAINING_KEY],
                                   fn_args.train_steps, fn_args.train_files, fn_args.transform_output, warm_from)
    if config.cluster:
        model, measured = _train_on_cluster(fn_args, inputs, resume_dir, warm_from, next(iter(train))[0], layer)
    else:
        model, measured = _train_here(fn_args, inputs, resume_dir, warm_from, train, layer)
    measured["warm_start_slots"] = config.warm_start_slots if warm_from else None
    training_setup.write_training_info(fn_args, inputs, warm_from, note, **measured)
    # The slots (2x the tables with Adam) only serve a later "carry" warm start;
    # without them the SavedModel is a third the size. A cluster's slots are per
    # table shard: its export carries none.
    # No traces of each layer's call: everything that loads the export (the Evaluator, the
    # gate, the pusher's serving check, TF Serving, a warm start's weights) uses its signatures
    # or its variables, and each load then restores fewer functions: a small run's Trainer and
    # Evaluator about 1.3 s of CPU less. Keras' load_model would need our classes' configs.
    model.save(fn_args.serving_model_dir, save_format="tf", save_traces=False,
               include_optimizer=config.warm_start_slots == "carry" and not config.cluster,
               signatures=serving.keras_signatures(model, inputs.transform_output, inputs.spec, layer))
    resume.finished(resume_dir)


def _train_here(fn_args, inputs, resume_dir, warm_from, train, transform_layer):
    """One process (or MirroredStrategy over its GPUs): model.fit; returns the model and its record."""
    config = inputs.config
    strategy = training_setup.distribution_strategy(config.distribution) or tf.distribute.get_strategy()
    evaluation = training_setup.make_dataset(fn_args.eval_files, fn_args.data_accessor, inputs, config.batch_size,
                                             transform_layer=transform_layer)
    with strategy.scope():
        model = build_model(inputs, fn_args.train_steps)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                             resume_dir, max_to_keep=1)
        first = next(iter(train))[0]
        resumed_from = restore(model, manager, first)
        if warm_from and not resumed_from:
            warm_start(model, warm_from, inputs, first)
        # The variables and the optimizer's slots exist before fit: made by its first step, they
        # make TF trace the whole train function twice (once creating them, once without).
        if not model.built:  # a resume or a warm start built it already
            model(first)
        model.optimizer.build(model.trainable_variables)
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
    measured["resumed_from_step"] = resumed_from
    if base_weights is not None:
        measured.update(training_setup.weight_change(
            base_weights, {v.name: v.numpy() for v in model.weights}))
    return model, measured


# --- on a cluster: ParameterServerStrategy, its coordinator on the chief task ----------------------

def _train_on_cluster(fn_args, inputs, resume_dir, warm_from, first_batch, transform_layer):
    """The local cluster (or a TFJob) trains; this process then loads its last checkpoint into the
    single-machine model: one variable per table, no device placements, the same signatures."""
    config = inputs.config
    from tensorflow_transform.saved import saved_transform_io
    if saved_transform_io.exported_as_v1(inputs.transform_output.transform_savedmodel_dir):
        # Else each worker fails with "Table not initialized" (pipeline.transform_graph_is_tf1).
        raise ValueError("the Keras trainer on a cluster needs a TF2 transform graph: Transform with "
                         "force_tf_compat_v1=False")
    step_start = local_cluster.last_checkpoint_step(resume_dir) or 0
    rate, measured = cluster_training.train_on_cluster(fn_args, inputs, resume_dir, warm_from, step_start)
    model = build_model(inputs, fn_args.train_steps)
    model(first_batch)
    # A sharded table is checkpointed as one tensor, so it restores into the unsharded table.
    tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(resume_dir)).expect_partial() \
        .assert_existing_objects_matched()
    # The validation the cluster did not run, logged for TensorBoard; it also builds the loss and AUC
    # trackers, so the export holds the same variables as a single process's.
    model.evaluate(training_setup.make_dataset(fn_args.eval_files, fn_args.data_accessor, inputs, config.batch_size,
                                               transform_layer=transform_layer),
                   steps=fn_args.eval_steps, verbose=0,
                   callbacks=[tensorboard_callback(fn_args.model_run_dir, config)])
    step_end = local_cluster.last_checkpoint_step(resume_dir) or 0
    measured.update(training_setup.learning_rate_record(config, fn_args.train_steps, step_start, step_end))
    measured.update(measure.record(rate, measure.keras_memory(model)))
    measured["resumed_from_step"] = step_start
    if warm_from:
        donor = DeepFM(inputs.layout, config.model)
        donor(first_batch)
        donor.load_weights(os.path.join(warm_from, VARIABLES_CHECKPOINT)).expect_partial()
        measured.update(training_setup.weight_change(
            {v.name: v.numpy() for v in donor.weights}, {v.name: v.numpy() for v in model.weights}))
    return model, measured


def table_partitioner(num_ids: int, shards: int):
    """Splits the id tables (and only them: the dense weights are small) into `shards` row ranges,
    one per parameter server; ParameterServerStrategy makes each a ShardedVariable."""
    fixed = tf.distribute.experimental.partitioners.FixedShardsPartitioner(shards)

    def partition(shape, dtype):
        if shape.rank and shape[0] == num_ids and num_ids >= shards:
            return fixed(shape, dtype)
        return [1] * shape.rank
    return partition


class _ClusterProgress(threading.Thread):
    """Writes each worker's steps and the cluster's step every 0.25 s, for the Trainer's progress line.

    ParameterServerStrategy's model.fit calls no batch-level callbacks, and
    ClusterCoordinator does not say which worker ran a step; its per-worker
    threads (a private class) do, so this counts the steps of the functions
    each one finished. The thread runs no TensorFlow op: the cluster's step
    is the first step plus the steps finished since.
    """

    def __init__(self, task: dict, coordinator, steps_per_execution: int, step: int, end: int):
        super().__init__(daemon=True)
        self.task, self.first_step, self.end, self.done = task, step, end, threading.Event()
        self.counts: Dict[int, int] = {}
        for worker in coordinator._cluster.workers:  # pylint: disable=protected-access
            self.counts[worker.worker_index] = 0
            worker._process_closure = self._counted(worker._process_closure, worker.worker_index,
                                                    steps_per_execution)

    def _counted(self, process, index: int, steps: int):
        def counted(closure):
            process(closure)  # a function re-run after its worker failed counts twice: a display
            self.counts[index] += steps
        return counted

    def write(self) -> None:
        counts = dict(self.counts)
        total = sum(counts.values())
        step = min(self.first_step + total, self.end)
        for index, count in counts.items():  # each worker's share of the steps done
            steps = round(count * (step - self.first_step) / total) if total else 0
            cluster_training.write_progress(cluster_training.progress_path(self.task, f"worker{index}"), steps, step)

    def run(self):
        while not self.done.wait(0.25):
            self.write()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.done.set()
        self.join()
        self.write()  # the final counts, once the thread no longer writes the same files


def run_coordinator(task: dict) -> None:
    """The chief task of a Keras cluster (cluster_task.py): ParameterServerStrategy's coordinator.

    The workers and parameter servers only serve; this process builds the
    model with its tables sharded across the parameter servers, schedules
    model.fit's steps on the workers through ClusterCoordinator (which
    re-runs a dead worker's steps elsewhere and resumes the worker when it is
    back), checkpoints every N steps and once at the end, for the Trainer to
    export from and for a re-run to resume from.
    """
    fn_args = cluster_training.task_fn_args(task)
    inputs = training_setup.load_inputs(fn_args)
    config = inputs.config
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    shards = len(resolver.cluster_spec().as_dict().get("ps", []))
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=table_partitioner(inputs.layout.num_ids, shards))
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)  # model.fit uses this one

    def dataset_fn(_input_context):  # built on each worker, reading the same files
        return training_setup.make_dataset(fn_args.train_files, fn_args.data_accessor, inputs, config.batch_size,
                                           train=True)
    first_batch = next(iter(dataset_fn(None)))[0]
    with strategy.scope():
        model = build_model(inputs, fn_args.train_steps)
        manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=model.optimizer),
                                             task["resume_dir"], max_to_keep=1)
        resumed_from = restore(model, manager, first_batch)
        if task["warm_from"] and not resumed_from:
            warm_start(model, task["warm_from"], inputs, first_batch)
        model(first_batch)
    cluster_training.write_table_shards(task, {
        shard.name.split(":")[0]: {"shape": shard.shape.as_list(), "device": _task_device(shard.device)}
        for v in model.weights if deepfm.is_table(v) for shard in getattr(v, "variables", [v])})
    step = int(model.optimizer.iterations.numpy())
    if step < fn_args.train_steps:
        # Keras calls no batch-level callbacks with ParameterServerStrategy: an epoch is a checkpoint
        # interval (at its end every scheduled step is done, so the checkpoint is whole). One fit keeps
        # each worker's input where it was; the last epoch may end up to `epochs - 1` steps late.
        left = fn_args.train_steps - step
        epochs = -(-left // config.checkpoint_every(fn_args.train_steps))
        with _ClusterProgress(task, coordinator, max(int(config.steps_per_execution), 1), step,
                              end=step + epochs * -(-left // epochs)):
            model.fit(tf.keras.utils.experimental.DatasetCreator(dataset_fn), steps_per_epoch=-(-left // epochs),
                      epochs=epochs, verbose=0, callbacks=[_SaveEachEpoch(manager)])


class _SaveEachEpoch(tf.keras.callbacks.Callback):
    def __init__(self, manager: tf.train.CheckpointManager):
        super().__init__()
        self.manager = manager

    def on_epoch_end(self, epoch, logs=None):
        self.manager.save(checkpoint_number=int(self.model.optimizer.iterations.numpy()))  # the last is exported


def _task_device(device: str) -> str:
    spec = tf.DeviceSpec.from_string(device)
    return f"/job:{spec.job}/task:{spec.task}"
