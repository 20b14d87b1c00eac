"""The serving contract both runners export.

`serving_default` takes serialized tf.Examples of raw features under the input
key `examples`, applies the Transform graph inside the model, and returns the
click probability under `click_probability` ([batch, 1]).
"""
from typing import Dict

import tensorflow as tf
import tensorflow_transform as tft

INPUT_KEY = "examples"
OUTPUT_KEY = "click_probability"
SIGNATURE = "serving_default"


def raw_feature_spec(transform_output: tft.TFTransformOutput, label: str) -> Dict:
    spec = dict(transform_output.raw_feature_spec())
    spec.pop(label, None)  # a serving request has no label
    return spec


def keras_signatures(model: tf.keras.Model, transform_output: tft.TFTransformOutput, label: str) -> Dict:
    # Tracked on the model so the Transform assets are saved with it.
    model.tft_layer = transform_output.transform_features_layer()
    feature_spec = raw_feature_spec(transform_output, label)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_KEY)])
    def serve(examples):
        transformed = model.tft_layer(tf.io.parse_example(examples, feature_spec))
        return {OUTPUT_KEY: tf.sigmoid(model(transformed, training=False))}

    return {SIGNATURE: serve.get_concrete_function()}


def estimator_receiver_fn(transform_output: tft.TFTransformOutput, label: str):
    feature_spec = raw_feature_spec(transform_output, label)

    def receiver_fn():
        examples = tf.compat.v1.placeholder(tf.string, [None], name=INPUT_KEY)
        transformed = transform_output.transform_raw_features(tf.io.parse_example(examples, feature_spec))
        return tf.estimator.export.ServingInputReceiver(transformed, {INPUT_KEY: examples})

    return receiver_fn
