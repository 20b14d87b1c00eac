"""Transform's preprocessing_fn, built from the feature spec in custom_config.

All categorical and multivalent fields share ONE id space: each token is
prefixed with its field ("C3=05db9164") and a single vocabulary (or hash) maps
it to an id. That is one analyzer pass instead of one per field, and the ids
index the model's fused embedding table directly.

Frequency admission (spec `min_count`, per field `min_count_per_field`): an id
seen fewer than min_count times in the Transform window shares its field's
rare row, placed after the table (id = table size + the field's place among
admitted fields). The counts are an analyzer over each token's field-tagged
52-bit hash (key_counts.py: tft.vocabulary's file, counted with numpy), so they
come from the whole window (and its analyzer cache), and the lookup is in the transform graph that both trainers, the
Evaluator and every server run. Admitted ids keep their hashed id, so weeks
stay warm-startable.

Outputs, keyed by the raw column names:
  categorical  -> int64 id [batch]
  numerical    -> float32 [batch], log and/or z-score; missing -> NaN, which the
                  model maps to a learned per-field "missing" embedding
  multivalent  -> int64 ids [batch, max_length], padded with -1
  label        -> int64 [batch]
"""
import contextlib
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

import tensorflow as tf
import tensorflow_transform as tft
from tensorflow.python.framework.ops import EagerTensor  # what TFT's own lookups check

from deepfm_tfx.contracts import (ADMISSION_FIELD_BITS, ADMISSION_TOTAL_KEY, ADMITTED_IDS_ASSET_PREFIX,
                                  FEATURE_SPEC_KEY)
from deepfm_tfx.schemas.feature_spec import FeatureSpec

PAD_ID = -1
VOCABULARY = "categorical_ids"


def num_ids(spec: FeatureSpec, vocabulary_size: int) -> int:
    """Size of the shared id space, OOV buckets and the admitted fields' rare rows included."""
    if spec.categorical_encoding == "hash":
        if spec.hash_buckets is None:
            raise ValueError(f"feature spec {spec.name!r}: hash_buckets is not set; the pipeline chooses it "
                             "from the data (deepfm_tfx.pipeline.id_space.resolve) before Transform runs")
        return spec.hash_buckets + len(spec.admitted_fields)
    return vocabulary_size + spec.oov_buckets + len(spec.admitted_fields)


def admission_groups(spec: FeatureSpec) -> Dict[int, List[str]]:
    """min_count -> the admitted fields counted with it: one analyzer per distinct count."""
    groups: Dict[int, List[str]] = {}
    for field in spec.admitted_fields:
        groups.setdefault(spec.min_count_of(field), []).append(field)
    return groups


def admission_keys(field_index: int, tokens: tf.Tensor) -> tf.Tensor:
    """What admission counts: the field-prefixed token's hash, tagged with its field in the high bits."""
    return tf.strings.to_hash_bucket_fast(tokens, ADMISSION_TOTAL_KEY) + (field_index << ADMISSION_FIELD_BITS)


def _lookup_counted(keys: tf.Tensor, vocabulary_path):
    """Index in a vocabulary written with its counts ("<count> <key>" lines), -1 when absent."""
    with contextlib.ExitStack() as stack:
        if tf.inside_function() and isinstance(vocabulary_path, (str, EagerTensor)):
            # Built once at load, as TFT's own lookups are: inside the function it would
            # re-read the file at every call.
            stack.enter_context(tf.init_scope())
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(vocabulary_path, tf.int64, 1, tf.int64,
                                          tf.lookup.TextFileIndex.LINE_NUMBER, delimiter=" "),
            default_value=-1)
    return table.lookup(keys), table.size()


class _Group(NamedTuple):
    """The admitted fields of one min_count, their keys hashed once for the analyzer and the lookups."""
    columns: List[int]  # its categorical fields' columns in the [batch, fields] tokens
    keys: Optional[tf.Tensor]  # their keys, [batch, len(columns)]
    multi: Dict[str, tf.Tensor]  # a multivalent field's keys, one per token
    vocabulary: Any  # the keys seen at least min_count times in the window, with their counts


def _admission(spec: FeatureSpec, names: Sequence[str], tokens: Optional[tf.Tensor],
               multi: Dict[str, tf.SparseTensor]) -> List[_Group]:
    """One counting analyzer per min_count over its fields' keys, and the keys themselves."""
    from deepfm_tfx.trainer_modules import key_counts  # Beam: only where Transform runs
    place = {name: i for i, name in enumerate(spec.id_fields)}

    def totals(field_index, keys):  # one total key per token: its count is the field's occurrences
        return tf.broadcast_to(tf.constant(field_index << ADMISSION_FIELD_BITS | ADMISSION_TOTAL_KEY, tf.int64),
                               tf.shape(keys))
    groups = []
    for min_count, fields in admission_groups(spec).items():
        columns = [i for i, n in enumerate(names) if n in fields]
        keys, counted = None, []
        if columns:
            group = tokens if columns == list(range(len(names))) else tf.gather(tokens, columns, axis=1)
            field_index = np.array([place[names[i]] for i in columns], np.int64)
            keys = admission_keys(field_index, group)
            counted += [keys, totals(field_index, keys)]
        multi_keys = {f: admission_keys(place[f], multi[f].values) for f in fields if f in multi}
        for f, k in multi_keys.items():
            counted += [k, totals(place[f], k)]
        vocabulary = key_counts.counted_vocabulary(tf.concat([tf.reshape(c, [-1]) for c in counted], axis=0),
                                                   min_count, f"{ADMITTED_IDS_ASSET_PREFIX}{min_count}")
        groups.append(_Group(columns, keys, multi_keys, vocabulary))
    return groups


def _is_admitted(keys: tf.Tensor, vocabulary) -> tf.Tensor:
    return tft.apply_vocabulary(keys, vocabulary, lookup_fn=_lookup_counted) >= 0


def _dense_column(x: Any, default: Any) -> tf.Tensor:
    """A [batch, 0 or 1] varlen feature as a dense [batch] tensor."""
    if not isinstance(x, tf.SparseTensor):
        return tf.reshape(x, [-1])
    dense = tf.sparse.to_dense(
        tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    return tf.squeeze(dense, axis=1)


# ---- The per-field apply ops, fused: one op per step over a [batch, fields] tensor.
# Per field, 26 categorical and 13 numeric fields made about a thousand small ops, and
# every trace pays for each (Transform traces preprocessing_fn several times; the Trainer
# and the Evaluator load the graph): fused, a 3,000-row run's Transform took 9.6 s instead
# of 14.2, its Trainer 9.0 instead of 11.7. Served calls cost the same either way. The
# values are the per-field ops' exactly (same strings, same hashes, same lookups).

def dense_columns(columns: Sequence[Any], default: Any, dtype: tf.DType) -> Tuple[tf.Tensor, tf.Tensor]:
    """Single-valued features ([batch, 0 or 1] sparse, or dense) as one dense [batch, fields]
    tensor of `dtype` (missing -> `default`) and its presence mask."""
    if not all(isinstance(c, tf.SparseTensor) for c in columns):
        dense = tf.stack([tf.cast(_dense_column(c, tf.cast(default, c.dtype)), dtype) for c in columns], axis=1)
        present = tf.stack([_dense_column(tf.sparse.map_values(lambda v: tf.ones_like(v, tf.bool), c), False)
                            if isinstance(c, tf.SparseTensor) else tf.ones_like(tf.reshape(c, [-1]), tf.bool)
                            for c in columns], axis=1)
        return dense, present
    # Slicing each column's shape or offsetting each column's indices would add three constants
    # and an op per column to every trace: one op over all columns instead.
    widths = tf.stack([c.dense_shape for c in columns])[:, 1]
    # A second value in a row would land in the next field's column: refuse it, as the per-field
    # to_dense did (index out of bounds).
    with tf.control_dependencies([tf.debugging.assert_less_equal(
            widths, tf.constant(1, tf.int64), message="a single-valued feature has more than one value in a row")]):
        ends = tf.cumsum(tf.stack([tf.size(c.values, out_type=tf.int64) for c in columns]))
        field = tf.searchsorted(ends, tf.range(ends[-1]), side="right", out_type=tf.int64)  # each value's column
        indices = tf.concat([c.indices for c in columns], axis=0) + tf.stack([tf.zeros_like(field), field], axis=1)
    values = tf.concat([c.values if c.values.dtype == dtype else tf.cast(c.values, dtype) for c in columns], axis=0)
    shape = tf.stack([columns[0].dense_shape[0], tf.constant(len(columns), tf.int64)])
    # Each (row, field) is set at most once, so the indices need no ordering.
    dense = tf.raw_ops.SparseToDense(sparse_indices=indices, output_shape=shape, sparse_values=values,
                                     default_value=tf.constant(default, dtype), validate_indices=False)
    present = tf.raw_ops.SparseToDense(sparse_indices=indices, output_shape=shape,
                                       sparse_values=tf.fill(tf.shape(values), True),
                                       default_value=False, validate_indices=False)
    return dense, present


def categorical_tokens(inputs: Dict[str, Any], names: Sequence[str]) -> tf.Tensor:
    """The fields' field-prefixed tokens ("C3=05db9164"; missing: "C3="), [batch, fields]."""
    dense, _ = dense_columns([inputs[n] for n in names], b"", tf.string)
    prefixes = tf.constant([f"{n}=" for n in names])
    return tf.strings.join([tf.broadcast_to(prefixes, tf.shape(dense)), dense])


def categorical_ids(spec: FeatureSpec, names: Sequence[str], tokens: tf.Tensor, to_ids, groups: List[_Group],
                    table_rows: Any) -> Dict[str, tf.Tensor]:
    """{field: int64 id [batch]} for the [batch, fields] tokens: one id lookup, and one table
    lookup per admission group, for all the fields."""
    ids = to_ids(tokens)
    column = {}  # field -> its column in `admitted`; 0: always admitted
    parts = [tf.fill(tf.stack([tf.shape(tokens)[0], 1]), True)]
    width = 1
    for group in groups:
        if not group.columns:
            continue
        parts.append(_is_admitted(group.keys, group.vocabulary))
        column.update({names[i]: width + k for k, i in enumerate(group.columns)})
        width += len(group.columns)
    if column:
        if len(parts) == 2 and width == len(names) + 1:  # one group, every field, in order
            admitted = parts[1]
        else:
            admitted = tf.gather(tf.concat(parts, axis=1), [column.get(n, 0) for n in names], axis=1)
        offsets = tf.constant([spec.admitted_fields.index(n) if n in column else 0 for n in names], tf.int64)
        ids = tf.where(admitted, ids, tf.cast(table_rows, tf.int64) + offsets)
    return dict(zip(names, tf.unstack(ids, num=len(names), axis=1)))


def _log(values: tf.Tensor) -> tf.Tensor:
    # Signed log1p: Criteo counts are heavy-tailed and a few are -1.
    return tf.sign(values) * tf.math.log1p(tf.abs(values))


NON_FINITE_STATISTIC = "is not finite"


def _finite(statistic: tf.Tensor, spec: FeatureSpec, what: str) -> tf.Tensor:
    """The per-column statistic, failing the Transform if one is nan or inf: it would map
    every value of its column to the same number."""
    return tf.stack([
        tf.debugging.check_numerics(
            column, f"Transform: the z-score {what} of numeric column '{name}' {NON_FINITE_STATISTIC}")
        for column, name in zip(tf.unstack(statistic, num=len(spec.numerical)), spec.numerical)])


def _numerical(inputs: Dict[str, Any], spec: FeatureSpec) -> Dict[str, tf.Tensor]:
    """All numeric columns z-scored with one set of (elementwise) analyzers."""
    how = spec.numerical_transform
    columns = [inputs[name] for name in spec.numerical]
    values, present = dense_columns(columns, 0, tf.float32)
    present = tf.cast(present, tf.float32)
    if how in ("log", "log_zscore"):
        values = _log(values)
    if how in ("zscore", "log_zscore"):
        # Statistics over present values only, in float64: float32 squares overflow past 1.8e19.
        present64, values64 = tf.cast(present, tf.float64), tf.cast(values, tf.float64)
        count = tft.sum(present64, reduce_instance_dims=False)
        mean = tft.sum(values64 * present64, reduce_instance_dims=False) / tf.maximum(count, 1.0)
        mean_sq = tft.sum(tf.square(values64) * present64, reduce_instance_dims=False) / tf.maximum(count, 1.0)
        std = tf.sqrt(tf.maximum(mean_sq - tf.square(mean), 0.0))
        mean, std = _finite(mean, spec, "mean"), _finite(std, spec, "standard deviation")
        values = tf.cast(tf.where(std > 0, (values64 - mean) / tf.where(std > 0, std, 1.0), 0.0), tf.float32)
    # Missing is not "at the mean": the model gives it its own embedding.
    values = tf.where(present > 0, values, float("nan"))
    return dict(zip(spec.numerical, tf.unstack(values, num=len(spec.numerical), axis=1)))


def _prefixed(field: str, tokens):
    prefix = tf.constant(field + "=")
    if isinstance(tokens, tf.SparseTensor):
        return tf.sparse.map_values(lambda v: tf.strings.join([prefix, v]), tokens)
    return tf.strings.join([prefix, tokens])


def preprocessing_fn(inputs: Dict[str, Any], custom_config: Dict[str, Any]) -> Dict[str, Any]:
    spec = FeatureSpec.from_dict(custom_config[FEATURE_SPEC_KEY])
    outputs = {spec.label: tf.cast(_dense_column(inputs[spec.label], 0), tf.int64)}
    # A missing id is a category of its own (""), as in Criteo.
    names = list(spec.categorical)
    tokens = categorical_tokens(inputs, names) if names else None
    multi = {m.name: _prefixed(m.name, inputs[m.name]) for m in spec.multivalent}

    table_rows = None  # the first rare row, when fields are admitted
    if spec.categorical_encoding == "hash":
        table_rows = spec.hash_buckets
        if table_rows is None:
            num_ids(spec, 0)  # raises: the pipeline sets it before Transform runs
        to_ids = lambda t: tft.hash_strings(t, table_rows)  # noqa: E731
    else:
        everything = ([tf.reshape(tf.transpose(tokens), [-1])] if names else []) + [t.values for t in multi.values()]
        vocabulary = tft.vocabulary(
            tf.concat(everything, axis=0), top_k=spec.vocabulary_top_k,
            frequency_threshold=spec.vocabulary_min_count, vocab_filename=VOCABULARY)
        to_ids = lambda t: tft.apply_vocabulary(t, vocabulary, num_oov_buckets=spec.oov_buckets)  # noqa: E731

    groups = _admission(spec, names, tokens, multi)
    if groups and spec.categorical_encoding != "hash":
        table_rows = tf.cast(tft.experimental.get_vocabulary_size_by_name(VOCABULARY), tf.int64) + spec.oov_buckets

    def admit(name: str, ids: tf.Tensor) -> tf.Tensor:
        group = next((g for g in groups if name in g.multi), None)
        if group is None:
            return ids
        rare = table_rows + spec.admitted_fields.index(name)
        return tf.where(_is_admitted(group.multi[name], group.vocabulary), ids, tf.cast(rare, tf.int64))

    if names:
        outputs.update(categorical_ids(spec, names, tokens, to_ids, groups, table_rows))
    for m in spec.multivalent:
        ids = to_ids(multi[m.name])
        ids = tf.SparseTensor(ids.indices, admit(m.name, ids.values), ids.dense_shape)
        batch = ids.dense_shape[0]
        kept = tf.sparse.slice(ids, [0, 0], [batch, m.max_length])  # drop tokens past max_length
        kept = tf.SparseTensor(kept.indices, kept.values, [batch, m.max_length])
        outputs[m.name] = tf.sparse.to_dense(kept, default_value=PAD_ID)
    outputs.update(_numerical(inputs, spec))
    return outputs
