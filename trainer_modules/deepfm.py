"""The DeepFM model (Guo et al. 2017), defined once for both trainers.

logit = bias + first-order weights + FM second-order term + DNN, where the FM
and the DNN share one embedding per field. Categorical ids of all fields live
in one fused table (Transform maps field-prefixed tokens into one id space):
one gather per batch instead of one per field. Numeric fields join the
interactions as value * embedding.

The tables carry no regularizer here by default: a table-wide L2 makes their
gradient dense, so a step would cost O(table). The optimizer applies the L2 to
the rows a batch looks up instead (optimizers.py); `embedding_l2_rows=False`
restores the table-wide regularizer (the dense recipe).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import tensorflow as tf

from deepfm_tfx import contracts
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


def is_table(variable) -> bool:
    """True for an id table's variable, whose gradients are row slices the optimizers update row by row."""
    return contracts.is_table_name(variable.name)


class PartitionedEmbedding(tf.keras.layers.Embedding):
    """An Embedding whose table is split into `shards` row ranges (a TF1 PartitionedVariable).

    Graph mode only (the Estimator on parameter servers): each shard is its
    own variable, so the replica device setter puts each on its own
    parameter server, and a lookup gathers from the shards that hold its ids.
    A checkpoint stores the table once, as slices, so the single-machine
    graph (one variable) restores it unchanged.
    """

    def __init__(self, *args, shards: int, scope: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.shards, self.scope = shards, scope

    def build(self, input_shape=None):
        with tf.compat.v1.variable_scope(f"{self.scope}/{self.name}"):
            self.embeddings = tf.compat.v1.get_variable(
                "embeddings", shape=[self.input_dim, self.output_dim], initializer=self.embeddings_initializer,
                partitioner=tf.compat.v1.fixed_size_partitioner(self.shards))
        self.built = True


class FMInteraction(tf.keras.layers.Layer):
    """Second-order FM term: sum over field pairs of <e_i, e_j>.

    Uses 0.5 * ((sum e)^2 - sum e^2), linear in the number of fields.
    """

    def call(self, embeddings: tf.Tensor) -> tf.Tensor:  # [batch, fields, dim]
        square_of_sum = tf.square(tf.reduce_sum(embeddings, axis=1))
        sum_of_squares = tf.reduce_sum(tf.square(embeddings), axis=1)
        return 0.5 * tf.reduce_sum(square_of_sum - sum_of_squares, axis=1, keepdims=True)


def _columns(features: Dict[str, tf.Tensor], names: Tuple[str, ...], dtype: tf.DType) -> tf.Tensor:
    """The fields' features as one [batch, fields] `dtype` tensor. Transform gives [batch] vectors
    of one dtype, so one stack does: a reshape per field added two ops to every trace of the model
    (about eight a run: training, evaluation, each signature, the export's layer traces)."""
    columns = [features[n] for n in names]
    if all(c.shape.rank == 1 and c.dtype == columns[0].dtype for c in columns):
        return tf.cast(tf.stack(columns, axis=1), dtype)
    return tf.stack([tf.reshape(tf.cast(c, dtype), [-1]) for c in columns], axis=1)


class DeepFM(tf.keras.Model):
    """Maps a dict of transformed features to click logits [batch, 1]."""

    def __init__(self, layout: FieldLayout, hparams: ModelHParams, table_shards: int = 1, **kwargs):
        """table_shards > 1 (graph mode only) splits each id table across that many variables."""
        super().__init__(name=kwargs.pop("name", contracts.MODEL_SCOPE), **kwargs)
        self.layout = layout
        self.hparams = hparams
        total_ids = layout.num_ids
        dim = hparams.embedding_dim
        regularizer = tf.keras.regularizers.l2(hparams.embedding_l2) \
            if hparams.embedding_l2 and not hparams.embedding_l2_rows else None
        table, sharding = tf.keras.layers.Embedding, {}
        if table_shards > 1:
            table, sharding = PartitionedEmbedding, {"shards": table_shards, "scope": self.name}
        self.field_embeddings = table(
            max(total_ids, 1), dim, embeddings_regularizer=regularizer,
            embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=0.01),
            name="field_embeddings", **sharding)
        self.linear_weights = table(
            max(total_ids, 1), 1, embeddings_regularizer=regularizer,
            embeddings_initializer="zeros", name="linear_weights", **sharding)
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
        parts, linear = [], []
        if self.layout.categorical:
            ids = _columns(features, self.layout.categorical, tf.int64)
            parts.append(self.field_embeddings(ids))
            linear.append(tf.reduce_sum(self.linear_weights(ids), axis=[1, 2])[:, None])
        if self.layout.numerical:
            values = _columns(features, self.layout.numerical, tf.float32)
            missing = tf.math.is_nan(values)
            values = tf.where(missing, 0.0, values)
            missing = tf.cast(missing, tf.float32)
            parts.append(values[:, :, None] * self.numeric_embeddings[None]
                         + missing[:, :, None] * self.missing_embeddings[None])
            linear.append(tf.reduce_sum(values * self.numeric_linear + missing * self.missing_linear,
                                        axis=1, keepdims=True))
        for name in self.layout.multivalent:
            # Only real tokens are looked up: a padding slot must not touch (or count as seeing) a row.
            # (Ragged shapes do not compile with XLA; neither trainer uses jit_compile.)
            ids = tf.RaggedTensor.from_tensor(tf.cast(features[name], tf.int64), padding=-1)
            count = tf.maximum(tf.cast(ids.row_lengths(), tf.float32), 1.0)[:, None]

            def mean(layer):
                rows = ids.with_flat_values(layer(ids.flat_values))
                return tf.reduce_sum(rows, axis=1) / count
            # Mean over the field's tokens: the field stays one FM "field".
            parts.append(mean(self.field_embeddings)[:, None])
            linear.append(mean(self.linear_weights))
        return tf.concat(parts, axis=1), tf.add_n(linear)

    def call(self, features: Dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        embeddings, first_order = self._fields(features)
        deep = tf.reshape(embeddings, [-1, self.layout.num_fields * self.hparams.embedding_dim])
        for layer in self.dnn:
            deep = layer(deep, training=training)
        return self.bias + first_order + self.fm(embeddings) + self.dnn_out(deep, training=training)
