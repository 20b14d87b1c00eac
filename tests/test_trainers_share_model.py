"""The Estimator's model_fn and the Keras trainer compute the same logits from
the same weights: the model is defined once."""
import numpy as np
import tensorflow as tf

from deepfm_tfx.schemas.feature_spec import FeatureSpec
from deepfm_tfx.trainer_modules import estimator_trainer
from deepfm_tfx.trainer_modules.deepfm import DeepFM, FieldLayout
from deepfm_tfx.trainer_modules.training_setup import TrainerInputs, TrainingConfig

LAYOUT = FieldLayout(categorical=("c1", "c2"), numerical=("n1",), multivalent=(), num_ids=30)


def test_estimator_model_fn_logits_equal_keras_logits():
    rng = np.random.default_rng(0)
    raw = {"c1": rng.integers(0, 30, 8), "c2": rng.integers(0, 30, 8), "n1": rng.normal(size=8).astype(np.float32)}
    config = TrainingConfig(embedding_dim=4, dnn_units=(16, 8))
    keras_model = DeepFM(LAYOUT, config.model)
    keras_logits = keras_model({k: tf.constant(v) for k, v in raw.items()}).numpy()
    weights = {v.name: v.numpy() for v in keras_model.weights}

    spec = FeatureSpec(name="t", label="y", categorical=["c1", "c2"], numerical=["n1"], multivalent=[])
    inputs = TrainerInputs(spec, config, transform_output=None, layout=LAYOUT, trainer="estimator")
    model_fn = estimator_trainer.make_model_fn(inputs, train_steps=100)
    with tf.Graph().as_default():
        features = {k: tf.constant(v) for k, v in raw.items()}
        spec_out = model_fn(features, None, tf.estimator.ModeKeys.PREDICT)
        variables = tf.compat.v1.global_variables()
        # Same layer implementation -> same variable names and shapes in both worlds.
        assert sorted(v.name for v in variables) == sorted(weights)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for v in variables:
                v.load(weights[v.name], sess)
            estimator_logits = sess.run(spec_out.predictions[estimator_trainer.LOGITS])
    np.testing.assert_allclose(estimator_logits, keras_logits, rtol=1e-5, atol=1e-6)
