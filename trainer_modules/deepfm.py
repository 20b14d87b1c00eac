"""The DeepFM model (Guo et al. 2017), defined once for both runners.

logit = bias + first-order weights + FM second-order term + DNN, where the FM
and the DNN share one embedding per field. Categorical ids of all fields live
in one fused table (Transform maps field-prefixed tokens into one id space):
one gather per batch instead of one per field. Numeric fields join the
interactions as value * embedding.

The L2 penalty of the tables is on the rows a batch looks up (a loss term), so
their gradient stays sparse (tf.IndexedSlices) and a step's cost does not grow
with the table; `embedding_l2_rows=False` restores the table-wide regularizer.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import tensorflow as tf

from deepfm_tfx.trainer_modules.hparams import ModelHParams


@dataclasses.dataclass(frozen=True)
class FieldLayout:
    """Which transformed features the model reads, and the shared id-space size."""
    categorical: Tuple[str, ...]
    numerical: Tuple[str, ...]
    multivalent: Tuple[str, ...] = ()     # ids padded with -1
    num_ids: int = 1

    @property
    def num_fields(self) -> int:
        return len(self.categorical) + len(self.numerical) + len(self.multivalent)


# The Keras Embedding layers holding the id tables: the variables whose
# gradients are row slices, which the optimizers update row by row.
TABLE_LAYERS = ("field_embeddings", "linear_weights")


def is_table(variable) -> bool:
    """True for an id table's variable (in Keras and in an Estimator's graph alike)."""
    return any(f"{layer}/embeddings" in variable.name for layer in TABLE_LAYERS)


class FMInteraction(tf.keras.layers.Layer):
    """Second-order FM term: sum over field pairs of <e_i, e_j>.

    Uses 0.5 * ((sum e)^2 - sum e^2), linear in the number of fields.
    """

    def call(self, embeddings: tf.Tensor) -> tf.Tensor:  # [batch, fields, dim]
        square_of_sum = tf.square(tf.reduce_sum(embeddings, axis=1))
        sum_of_squares = tf.reduce_sum(tf.square(embeddings), axis=1)
        return 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)


class DeepFM(tf.keras.Model):
    """Maps a dict of transformed features to click logits [batch, 1]."""

    def __init__(self, layout: FieldLayout, hparams: ModelHParams, **kwargs):
        super().__init__(name=kwargs.pop("name", "deepfm"), **kwargs)
        self.layout = layout
        self.hparams = hparams
        total_ids = layout.num_ids
        dim = hparams.embedding_dim
        regularizer = tf.keras.regularizers.l2(hparams.embedding_l2) \
            if hparams.embedding_l2 and not hparams.embedding_l2_rows else None
        self.field_embeddings = tf.keras.layers.Embedding(
            max(total_ids, 1), dim, embeddings_regularizer=regularizer,
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.01),
            name="field_embeddings")
        self.linear_weights = tf.keras.layers.Embedding(
            max(total_ids, 1), 1, embeddings_regularizer=regularizer,
            embeddings_initializer="zeros", name="linear_weights")
        n_num = max(len(layout.numerical), 1)
        self.numeric_embeddings = self.add_weight(
            name="numeric_embeddings", shape=(n_num, dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.01))
        self.numeric_linear = self.add_weight(name="numeric_linear", shape=(n_num,), initializer="zeros")
        # A missing number (NaN from Transform) gets its own embedding and weight:
        # "missing" is not the same as "at the mean".
        self.missing_embeddings = self.add_weight(
            name="missing_embeddings", shape=(n_num, dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=0.01))
        self.missing_linear = self.add_weight(name="missing_linear", shape=(n_num,), initializer="zeros")
        self.bias = self.add_weight(name="bias", shape=(1,), initializer="zeros")
        self.fm = FMInteraction(name="fm")
        self.dnn = [tf.keras.layers.Dense(u, activation="relu", name=f"dnn_{i}")
                    for i, u in enumerate(hparams.dnn_units)]
        self.dnn_out = tf.keras.layers.Dense(1, name="dnn_logit")

    def _fields(self, features: Dict[str, tf.Tensor]):
        """Per-field embeddings [batch, fields, dim] and first-order sum [batch, 1]."""
        return self._lookup(features)[:2]

    def _lookup(self, features: Dict[str, tf.Tensor]):
        """_fields, and each example's sum of squares of the table rows it looked up [batch]."""
        parts, linear, squares = [], [], []
        if self.layout.categorical:
            ids = tf.stack([tf.reshape(tf.cast(features[n], tf.int64), [-1])
                            for n in self.layout.categorical], axis=1)
            rows, weights = self.field_embeddings(ids), self.linear_weights(ids)
            parts.append(rows)
            linear.append(tf.reduce_sum(weights, axis=[1, 2])[:, None])
            squares += [tf.reduce_sum(tf.square(rows), axis=[1, 2]), tf.reduce_sum(tf.square(weights), axis=[1, 2])]
        if self.layout.numerical:
            values = tf.stack([tf.reshape(tf.cast(features[n], tf.float32), [-1])
                               for n in self.layout.numerical], axis=1)
            missing = tf.math.is_nan(values)
            values = tf.where(missing, 0.0, values)
            missing = tf.cast(missing, tf.float32)
            parts.append(values[:, :, None] * self.numeric_embeddings[None]
                         + missing[:, :, None] * self.missing_embeddings[None])
            linear.append(tf.reduce_sum(values * self.numeric_linear + missing * self.missing_linear,
                                        axis=1, keepdims=True))
        for name in self.layout.multivalent:
            ids = tf.cast(features[name], tf.int64)
            valid = tf.cast(ids >= 0, tf.float32)[:, :, None]
            count = tf.maximum(tf.reduce_sum(valid, axis=1), 1.0)
            ids = tf.maximum(ids, 0)
            rows, weights = self.field_embeddings(ids) * valid, self.linear_weights(ids) * valid
            # Mean over the field's tokens: the field stays one FM "field".
            parts.append((tf.reduce_sum(rows, axis=1) / count)[:, None])
            linear.append(tf.reduce_sum(weights, axis=1) / count)
            squares += [tf.reduce_sum(tf.square(rows), axis=[1, 2]), tf.reduce_sum(tf.square(weights), axis=[1, 2])]
        return tf.concat(parts, axis=1), tf.add_n(linear), tf.add_n(squares) if squares else None

    def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        embeddings, first_order, squares = self._lookup(features)
        if self.hparams.embedding_l2 and self.hparams.embedding_l2_rows and squares is not None:
            # Per example, like the data loss: an id is penalised as often as it is seen.
            self.add_loss(self.hparams.embedding_l2 * tf.reduce_mean(squares))
        deep = tf.reshape(embeddings, [-1, self.layout.num_fields * self.hparams.embedding_dim])
        for layer in self.dnn:
            deep = layer(deep, training=training)
        return self.bias + first_order + self.fm(embeddings) + self.dnn_out(deep, training=training)
