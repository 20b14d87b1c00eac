"""The serving contract both trainers export: two signatures, one model (names in contracts).

`serving_default` (SERVING_SIGNATURE) takes serialized tf.Examples of raw features
under the input key `examples` (EXAMPLES_INPUT_KEY); the Evaluator and gRPC clients
that already build tf.Examples use it.

`features` (FEATURES_SIGNATURE) takes the raw features by name, one tensor of
shape [batch] each, so a JSON client needs no protobuf:
`{"signature_name": "features", "instances": [{"I1": 3, "C1": "05db9164"}]}`.
- numerical features are float32 (a JSON integer is accepted); NaN means missing;
- categorical features are strings; "" means missing (as an empty CSV field);
- multivalent features are one string joined by the spec's separator ("Comedy|Drama");
- an input left out entirely is missing for every row: the signature's
  `defaults` are empty tensors (TF Serving honours them over gRPC, as does
  `deepfm-tfx serve` over gRPC and REST).
Both apply the Transform graph inside the model and return the click
probability under `click_probability` (OUTPUT_KEY), shape [batch, 1].
"""
import inspect
import os
import re
from typing import Dict, List, Tuple

import tensorflow as tf
import tensorflow_transform as tft

from deepfm_tfx.contracts import (EXAMPLES_INPUT_KEY, FEATURES_SIGNATURE, OUTPUT_KEY, SAVED_MODEL_FILE,
                                  SERVING_SIGNATURE)
from deepfm_tfx.schemas.feature_spec import FeatureSpec

# Estimator names a receiver alternative's signature "<alternative>:<export output>".
_ESTIMATOR_FEATURES_SIGNATURE = f"{FEATURES_SIGNATURE}:{SERVING_SIGNATURE}"


def raw_feature_spec(transform_output: tft.TFTransformOutput, label: str) -> Dict:
    spec = dict(transform_output.raw_feature_spec())
    spec.pop(label, None)  # a serving request has no label
    return spec


def _input_key(name: str) -> str:
    """A feature name as a signature input key (and Python argument name)."""
    key = re.sub(r"\W", "_", name)
    return key if key.isidentifier() else f"f_{key}"


def features_input_specs(feature_spec: Dict) -> Dict[str, tf.TensorSpec]:
    """{feature: TensorSpec([None])}: strings stay strings, every number is float32."""
    return {name: tf.TensorSpec([None], tf.string if f.dtype == tf.string else tf.float32, name=_input_key(name))
            for name, f in sorted(feature_spec.items())}


def _missing(dtype: tf.DType):
    return tf.constant("" if dtype == tf.string else float("nan"), dtype)


def _row_count(columns: Dict[str, tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
    """The batch size (every input has it, or none: left out), and each input's rows in order."""
    sizes = tf.stack([tf.size(c) for c in columns.values()])  # the inputs are vectors
    batch = tf.reduce_max(sizes)
    ok = tf.reduce_all(tf.logical_or(tf.equal(sizes, 0), tf.equal(sizes, batch)))
    with tf.control_dependencies([tf.debugging.Assert(ok, [
            "every input of the features signature needs the same number of rows (or none); got",
            tf.constant(list(columns)), sizes], summarize=len(columns))]):
        return tf.identity(batch), sizes


def _sparse_columns(columns: List[tf.Tensor], sizes: tf.Tensor, dtypes: List[tf.DType],
                    batch: tf.Tensor) -> List[tf.SparseTensor]:
    """What parse_example gives single-valued VarLenFeatures ([batch, 1], the present values), for
    many inputs of one dtype at once: a fixed number of ops, whatever their count. One input at a
    time, 39 made about a thousand, which every export traces and saves and every load of the model
    (the Evaluator, the gates, each server) restores; a served call costs the same either way."""
    missing = _missing(columns[0].dtype)
    sizes = tf.cast(sizes, tf.int64)  # each input's rows, as _row_count counted them
    # Row r of input j: flat[start_j + r], or, for an input left out, the block of missing values after them.
    flat = tf.concat(columns + [tf.fill([batch], missing)], 0)
    start = tf.where(tf.equal(sizes, tf.cast(batch, tf.int64)), tf.cumsum(sizes, exclusive=True),
                     tf.reduce_sum(sizes))
    values = tf.gather(flat, start[:, None] + tf.range(tf.cast(batch, tf.int64), dtype=tf.int64)[None, :])
    present = tf.not_equal(values, "") if missing.dtype == tf.string else tf.logical_not(tf.math.is_nan(values))
    where = tf.where(present)  # (input, row), by input then row: each input's entries together, in row order
    counts = tf.reduce_sum(tf.cast(present, tf.int64), axis=1)
    indices = tf.split(tf.stack([where[:, 1], tf.zeros_like(where[:, 1])], axis=1), counts, num=len(columns))
    kept = tf.split(tf.gather_nd(values, where), counts, num=len(columns))
    shape = tf.stack([tf.cast(batch, tf.int64), tf.constant(1, tf.int64)])
    return [tf.SparseTensor(i, v if v.dtype == d else tf.cast(v, d), shape) for i, v, d in zip(indices, kept, dtypes)]


def raw_features_from_columns(columns: Dict[str, tf.Tensor], feature_spec: Dict, spec: FeatureSpec) -> Dict:
    """The features signature's inputs as parse_example would give them for the same rows."""
    batch, sizes = _row_count(columns)
    position = {name: i for i, name in enumerate(columns)}
    separators = {m.name: m.separator for m in spec.multivalent}
    raw = {}
    single = {}  # input dtype -> the single-valued varlen features, converted together
    for name, feature in feature_spec.items():
        column = columns[name]
        if name not in separators and isinstance(feature, tf.io.VarLenFeature):
            single.setdefault(column.dtype, []).append(name)
            continue
        # A left-out input (zero rows) becomes `batch` missing values; a full one gets nothing appended.
        column = tf.concat([column, tf.fill([batch - tf.shape(column)[0]], _missing(column.dtype))], 0)
        if name in separators:
            tokens = tf.strings.split(column, sep=separators[name])
            raw[name] = tf.ragged.boolean_mask(tokens, tf.not_equal(tokens, "")).to_sparse()
            continue
        present = tf.not_equal(column, "") if column.dtype == tf.string else tf.logical_not(tf.math.is_nan(column))
        # FixedLenFeature: a missing value takes the spec's default
        default = feature.default_value if feature.default_value is not None else _missing(column.dtype)
        dense = tf.where(present, column, tf.cast(default, column.dtype))
        raw[name] = tf.reshape(tf.cast(dense, feature.dtype), [-1] + list(feature.shape))
    for names in single.values():
        rows = tf.gather(sizes, [position[n] for n in names])
        raw.update(zip(names, _sparse_columns([columns[n] for n in names], rows, [feature_spec[n].dtype for n in names],
                                              batch)))
    return raw


def keras_signatures(model: tf.keras.Model, transform_output: tft.TFTransformOutput, spec: FeatureSpec,
                     transform_layer) -> Dict:
    # Tracked on the model so the Transform assets are saved with it.
    model.tft_layer = transform_layer
    feature_spec = raw_feature_spec(transform_output, spec.label)
    specs = features_input_specs(feature_spec)
    names = list(specs)

    def predict(raw):
        return {OUTPUT_KEY: tf.sigmoid(model(model.tft_layer(raw), training=False))}

    # No tensor-dependent branches below: AutoGraph would only step through the model and TFT's layer.
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT_KEY)], autograph=False)
    def serve(examples):
        return predict(tf.io.parse_example(examples, feature_spec))

    def serve_features(*columns):
        return predict(raw_features_from_columns(dict(zip(names, columns)), feature_spec, spec))

    # Python defaults on the traced function become the SignatureDef's `defaults`:
    # an empty tensor per input, so a client may leave any feature out.
    def with_defaults(*args, **kwargs):
        bound = with_defaults.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        return serve_features(*bound.args)

    with_defaults.__signature__ = inspect.Signature([
        inspect.Parameter(specs[n].name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                          default=tf.constant([], specs[n].dtype)) for n in names])
    features = tf.function(with_defaults, input_signature=[specs[n] for n in names], autograph=False)
    return {SERVING_SIGNATURE: serve.get_concrete_function(), FEATURES_SIGNATURE: features}


def estimator_receiver_fn(transform_output: tft.TFTransformOutput, spec: FeatureSpec):
    """serving_default's examples, and the features signature as a receiver alternative.

    Both feed one Transform + model graph: each side's inputs default to zero
    rows, and the two sides' rows are concatenated, so whichever signature is
    called supplies all the rows. finish_estimator_export names the alternative.
    """
    feature_spec = raw_feature_spec(transform_output, spec.label)
    specs = features_input_specs(feature_spec)

    def receiver_fn():
        examples = tf.compat.v1.placeholder_with_default(tf.constant([], tf.string), [None], name=EXAMPLES_INPUT_KEY)
        columns = {name: tf.compat.v1.placeholder_with_default(tf.constant([], s.dtype), [None], name=s.name)
                   for name, s in specs.items()}
        parsed = tf.io.parse_example(examples, feature_spec)
        given = raw_features_from_columns(columns, feature_spec, spec)
        raw = {name: tf.sparse.concat(0, [parsed[name], given[name]], expand_nonconcat_dims=True)
               if isinstance(parsed[name], tf.SparseTensor) else tf.concat([parsed[name], given[name]], 0)
               for name in feature_spec}
        transformed = transform_output.transform_raw_features(raw)
        return tf.estimator.export.ServingInputReceiver(
            transformed, {EXAMPLES_INPUT_KEY: examples},
            receiver_tensors_alternatives={FEATURES_SIGNATURE: {specs[n].name: c for n, c in columns.items()}})

    return receiver_fn


def finish_estimator_export(export_dir: str) -> None:
    """Renames the Estimator's `features:serving_default` to `features` and gives its
    inputs the same empty defaults the Keras export has."""
    from tensorflow.core.protobuf import saved_model_pb2
    from tensorflow.python.saved_model.pywrap_saved_model import fingerprinting

    path = os.path.join(export_dir, SAVED_MODEL_FILE)
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        signatures = meta_graph.signature_def
        if _ESTIMATOR_FEATURES_SIGNATURE not in signatures:
            continue
        features = signatures[FEATURES_SIGNATURE]
        features.CopyFrom(signatures[_ESTIMATOR_FEATURES_SIGNATURE])
        for key in [k for k in signatures if k.startswith(FEATURES_SIGNATURE + ":")]:
            del signatures[key]
        for key, info in features.inputs.items():
            features.defaults[key].CopyFrom(tf.make_tensor_proto([], tf.dtypes.as_dtype(info.dtype)))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString())
    # The fingerprint hashes saved_model.pb; keep it true to the file.
    with tf.io.gfile.GFile(os.path.join(export_dir, "fingerprint.pb"), "wb") as f:
        f.write(fingerprinting.CreateFingerprintDef(export_dir))
