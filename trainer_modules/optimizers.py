"""The optimizers of both training loops, built in one place from TrainingConfig.

`embedding_optimizer` decides how the id tables learn; every other weight uses
Adam with the run's learning-rate schedule:
  lazy_adam  Adam's moments and step on the rows a batch looked up only; rows
             not looked up keep their values and moments (the moments of a
             looked-up row decay once per sighting, not once per step).
  adagrad    Adagrad on the looked-up rows (accumulated squared gradients).
  adam       the dense recipe: table-wide L2 and Adam on every row at every
             step; the step costs O(table).

With the sparse rules the tables' L2 (`embedding_l2`) is applied here, to the
looked-up rows, and weighted so that its expectation is the dense recipe's
table-wide penalty (`sighting_weighted_l2`). A plain L2 on the looked-up rows
(a loss term) lets a row seen a few times keep what it memorised from them:
on the criteo profile that cost 0.07 AUC against the dense recipe, this 0.001.

The rules are written once, on resource variables, and used by the Keras
optimizer and by the Estimator's TF1 optimizers alike.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import tensorflow as tf

from deepfm_tfx import contracts
from deepfm_tfx.trainer_modules import deepfm, training_setup
from deepfm_tfx.trainer_modules.hparams import TrainingConfig

BETA_1, BETA_2 = 0.9, 0.999
KERAS_EPSILON, TF1_EPSILON = 1e-7, 1e-8  # each framework's Adam default, as the loops had them
ADAGRAD_INITIAL = 0.1  # both frameworks' default initial accumulator


def _rows(gradient: tf.IndexedSlices) -> Tuple[tf.Tensor, tf.Tensor]:
    """Unique rows and their summed gradients (an id twice in a batch is one row)."""
    rows, position = tf.unique(gradient.indices)
    return rows, tf.math.unsorted_segment_sum(gradient.values, position, tf.shape(rows)[0])


def sighting_weighted_l2(variable, sightings, rows, values, step, l2: float):
    """`values` (the rows' gradients) plus the gradient of the table-wide L2,
    estimated from the looked-up rows; and the op counting this sighting.

    A row seen n times in t steps is looked up about n/t of the steps, so its
    penalty's gradient, 2 * l2 * w, is weighted by t/n when it is seen: over a
    run every row is then penalised about once per step, as the table-wide
    penalty does. A row seen once in a thousand steps is pulled hard toward 0,
    a row seen every step as lightly as the dense recipe pulls it.
    """
    seen = tf.gather(sightings, rows) + 1.0
    count = sightings.scatter_update(tf.IndexedSlices(seen, rows))
    if not l2:
        return values, count
    weight = tf.cast(step, values.dtype) / seen
    for _ in range(len(values.shape) - 1):  # expand_dims, not reshape(-1): XLA cannot prove a reshape of
        weight = tf.expand_dims(weight, -1)  # tf.unique's dynamic length (jit_compile)
    return values + 2.0 * l2 * tf.gather(variable, rows) * weight, count


def lazy_adam_rows(variable, m, v, rows, values, learning_rate, step, epsilon: float):
    """Adam on `rows` of `variable` only; `step` counts from 1. Rows must be unique."""
    dtype = variable.dtype
    step = tf.cast(step, dtype)
    learning_rate = tf.cast(learning_rate, dtype)
    m_rows = BETA_1 * tf.gather(m, rows) + (1 - BETA_1) * values
    v_rows = BETA_2 * tf.gather(v, rows) + (1 - BETA_2) * tf.square(values)
    alpha = learning_rate * tf.sqrt(1 - tf.pow(tf.cast(BETA_2, dtype), step)) \
        / (1 - tf.pow(tf.cast(BETA_1, dtype), step))
    return tf.group(m.scatter_update(tf.IndexedSlices(m_rows, rows)),
                    v.scatter_update(tf.IndexedSlices(v_rows, rows)),
                    variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + epsilon), rows)))


def adagrad_rows(variable, accumulator, rows, values, learning_rate, epsilon: float):
    """Adagrad on `rows` of `variable` only. Rows must be unique."""
    acc_rows = tf.gather(accumulator, rows) + tf.square(values)
    step = tf.cast(learning_rate, variable.dtype) * values / (tf.sqrt(acc_rows) + epsilon)
    return tf.group(accumulator.scatter_update(tf.IndexedSlices(acc_rows, rows)),
                    variable.scatter_sub(tf.IndexedSlices(step, rows)))


# Adagrad's default peak rate for the tables: per-row gradients are means over
# a batch (~1e-4), so its steps need a large rate. Best of 0.05, 0.3 and 1.0 on
# the criteo profile (500k rows, 2^20 buckets).
ADAGRAD_RATE = 1.0


def embedding_rate_scale(config: TrainingConfig) -> float:
    """The tables' learning rate over the other weights' (the same schedule, scaled)."""
    if config.embedding_learning_rate:
        return config.embedding_learning_rate / config.learning_rate
    return ADAGRAD_RATE / config.learning_rate if config.embedding_optimizer == "adagrad" else 1.0


class _SlotsByVariable:
    """variable.ref() -> its slots. A plain object: a dict attribute would be
    wrapped for checkpointing, which refuses non-string keys (the slots are
    checkpointed through the optimizer's own variable list)."""

    def __init__(self):
        self.by_ref = {}


@tf.keras.utils.register_keras_serializable(package="deepfm_tfx")
class SparseTableAdam(tf.keras.optimizers.Adam):
    """Keras Adam whose id tables take a sparse rule: `embedding_rule` lazy_adam or adagrad.

    Only the public subclassing hooks are used (build, update_step,
    get_config); the slots are this class's own, made with
    add_variable_from_reference, in Adam's order (m, v per variable) where the
    rule is Adam's, so a checkpoint of either loads into the other.
    """

    def __init__(self, learning_rate=0.001, embedding_rule: str = "lazy_adam",
                 embedding_learning_rate_scale: float = 1.0, table_l2: float = 0.0, name: str = "SparseTableAdam",
                 **kwargs):
        if embedding_rule not in ("lazy_adam", "adagrad"):
            raise ValueError(f"embedding_rule must be lazy_adam or adagrad, got {embedding_rule!r}")
        super().__init__(learning_rate=learning_rate, beta_1=BETA_1, beta_2=BETA_2, epsilon=KERAS_EPSILON,
                         name=name, **kwargs)
        self.embedding_rule = embedding_rule
        self.embedding_learning_rate_scale = float(embedding_learning_rate_scale)
        self.table_l2 = float(table_l2)
        self._table_slots = None

    def build(self, var_list):
        # The base class's bookkeeping only: Adam's build would make its own full-size slots too.
        tf.keras.optimizers.Optimizer.build(self, var_list)
        if self._table_slots is not None:
            return
        self._table_slots = _SlotsByVariable()
        strategy = tf.distribute.get_strategy()
        for variable in var_list:
            if deepfm.is_table(variable) and self.embedding_rule == "adagrad":
                slots = (self.add_variable_from_reference(
                    variable, "accumulator", initial_value=tf.fill(variable.shape, ADAGRAD_INITIAL)),)
            else:
                slots = (self.add_variable_from_reference(variable, "m"),
                         self.add_variable_from_reference(variable, "v"))
            if deepfm.is_table(variable):  # how often each row was looked up, for the L2's weight
                slots += (self.add_variable_from_reference(variable, "sightings", shape=variable.shape[:1]),)
            # update_step sees each replica's own copy of a distributed variable.
            for local in strategy.experimental_local_results(variable):
                self._table_slots.by_ref[local.ref()] = slots

    def update_step(self, gradient, variable):
        slots = self._table_slots.by_ref[variable.ref()]
        learning_rate = tf.cast(self.learning_rate, variable.dtype)
        step = self.iterations + 1
        if deepfm.is_table(variable):
            rows, values = _rows(gradient) if isinstance(gradient, tf.IndexedSlices) \
                else (tf.range(tf.shape(variable)[0]), gradient)  # dense: every row
            values, counted = sighting_weighted_l2(variable, slots[-1], rows, values, step, self.table_l2)
            rate = learning_rate * self.embedding_learning_rate_scale
            if self.embedding_rule == "adagrad":
                return tf.group(counted, adagrad_rows(variable, slots[0], rows, values, rate, KERAS_EPSILON))
            return tf.group(counted, lazy_adam_rows(variable, slots[0], slots[1], rows, values, rate, step,
                                                    KERAS_EPSILON))
        m, v = slots
        gradient = tf.convert_to_tensor(gradient)
        m.assign_add((gradient - m) * (1 - BETA_1))
        v.assign_add((tf.square(gradient) - v) * (1 - BETA_2))
        step = tf.cast(step, variable.dtype)
        alpha = learning_rate * tf.sqrt(1 - tf.pow(tf.cast(BETA_2, variable.dtype), step)) \
            / (1 - tf.pow(tf.cast(BETA_1, variable.dtype), step))
        variable.assign_sub(alpha * m / (tf.sqrt(v) + KERAS_EPSILON))

    def get_config(self):
        config = super().get_config()
        config.update({"embedding_rule": self.embedding_rule,
                       "embedding_learning_rate_scale": self.embedding_learning_rate_scale,
                       "table_l2": self.table_l2})
        for key in ("beta_1", "beta_2", "epsilon", "amsgrad"):
            config.pop(key, None)  # fixed by this class
        return config


def keras_optimizer(config: TrainingConfig, train_steps: int) -> tf.keras.optimizers.Optimizer:
    """The Keras loop's optimizer."""
    rate = training_setup.learning_rate(config, train_steps)
    if config.embedding_optimizer == "adam":
        return tf.keras.optimizers.Adam(rate)
    return SparseTableAdam(rate, embedding_rule=config.embedding_optimizer,
                           embedding_learning_rate_scale=embedding_rate_scale(config), table_l2=config.embedding_l2)


class _SightingsV1:
    """The TF1 tables' sighting counts and L2, shared by the table optimizers' sparse hooks."""

    def __init__(self, tables: List[tf.Variable], global_step, l2: float):
        self.global_step, self.l2 = global_step, l2
        self.counts = {}
        for table in tables:
            # Named as a TF1 slot (contracts.TF1_SLOT_SUFFIXES): not a model weight, never warm-started.
            self.counts[table.ref()] = tf.compat.v1.get_variable(
                table.op.name + contracts.SIGHTINGS_SUFFIX, shape=table.shape[:1], dtype=table.dtype,
                initializer=tf.compat.v1.zeros_initializer(), trainable=False)

    def add_l2(self, handle, grad, indices):
        return sighting_weighted_l2(handle, self.counts[handle.ref()], indices, grad, self.global_step + 1, self.l2)


class LazyAdamV1(tf.compat.v1.train.AdamOptimizer):
    """TF1 Adam whose sparse update (an id table's) touches the looked-up rows only.

    TF1's AdamOptimizer decays both moments of every row of a table at every
    step, even for a sparse gradient. This overrides only its sparse hook
    (`_resource_apply_sparse`, the TF1 subclassing point, given unique rows);
    the step count comes from the global step, the rate from the schedule.
    """

    def __init__(self, learning_rate: Callable[[], tf.Tensor], sightings: _SightingsV1, name: str = "Adam"):
        super().__init__(learning_rate, beta1=BETA_1, beta2=BETA_2, epsilon=TF1_EPSILON, name=name)
        self._rate, self._sightings = learning_rate, sightings

    def _resource_apply_sparse(self, grad, handle, indices):
        grad, counted = self._sightings.add_l2(handle, grad, indices)
        rate = self._rate() if callable(self._rate) else self._rate
        return tf.group(counted, lazy_adam_rows(handle, self.get_slot(handle, "m"), self.get_slot(handle, "v"),
                                                indices, grad, rate, self._sightings.global_step + 1, TF1_EPSILON))


class AdagradV1(tf.compat.v1.train.AdagradOptimizer):
    """TF1 Adagrad (sparse already) with the tables' sighting-weighted L2 added to its sparse hook."""

    def __init__(self, learning_rate, sightings: _SightingsV1):
        super().__init__(learning_rate, initial_accumulator_value=ADAGRAD_INITIAL)
        self._sightings = sightings

    def _resource_apply_sparse(self, grad, handle, indices):
        grad, counted = self._sightings.add_l2(handle, grad, indices)
        return tf.group(counted, super()._resource_apply_sparse(grad, handle, indices))


def estimator_train_op(config: TrainingConfig, train_steps: int, loss: tf.Tensor,
                       variables: List[tf.Variable], global_step) -> tf.Operation:
    """The Estimator loop's train op: one step of every variable, then global_step + 1."""
    schedule = training_setup.learning_rate(config, train_steps)

    def rate(scale: float = 1.0):
        value = schedule(global_step) if callable(schedule) else schedule
        return value * scale if scale != 1.0 else value

    if config.embedding_optimizer == "adam":
        return tf.compat.v1.train.AdamOptimizer(rate()).minimize(loss, global_step=global_step, var_list=variables)
    tables = [v for v in variables if deepfm.is_table(v)]
    others = [v for v in variables if not deepfm.is_table(v)]
    grads = tf.gradients(loss, tables + others)
    table_grads, other_grads = grads[:len(tables)], grads[len(tables):]
    scale = embedding_rate_scale(config)
    sightings = _SightingsV1(tables, global_step, config.embedding_l2)
    if config.embedding_optimizer == "adagrad":
        table_optimizer = AdagradV1(rate(scale), sightings)
    else:
        table_optimizer = LazyAdamV1(lambda: rate(scale), sightings)
    updates = []
    table_pairs = [(g, v) for g, v in zip(table_grads, tables) if g is not None]
    other_pairs = [(g, v) for g, v in zip(other_grads, others) if g is not None]
    if table_pairs:
        updates.append(table_optimizer.apply_gradients(table_pairs, name="tables"))
    if other_pairs:
        updates.append(tf.compat.v1.train.AdamOptimizer(rate(), beta1=BETA_1, beta2=BETA_2, epsilon=TF1_EPSILON)
                       .apply_gradients(other_pairs, name="dense"))
    with tf.control_dependencies(updates):
        return global_step.assign_add(1).op


def model_memory(model: tf.keras.Model, optimizer: Optional[tf.keras.optimizers.Optimizer] = None) -> dict:
    """Bytes of the id tables, of all weights and of the optimizer's variables."""
    def size(variables):
        return int(sum(v.shape.num_elements() * v.dtype.size for v in variables))
    out = {"table_bytes": size([v for v in model.weights if deepfm.is_table(v)]),
           "weight_bytes": size(model.weights)}
    if optimizer is not None:
        out["optimizer_bytes"] = size(optimizer.variables)
    return out
