import itertools

import numpy as np
import tensorflow as tf

from deepfm_tfx.trainer_modules.deepfm import DeepFM, FieldLayout, FMInteraction, ModelHParams

LAYOUT = FieldLayout(categorical=("c1", "c2", "c3"), numerical=("n1", "n2"), multivalent=("m",), num_ids=50)


def batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 50, (n, 4))
    m[:, 2:] = -1  # padding
    m[0, :] = -1   # a row with no tokens at all
    return {
        "c1": tf.constant(rng.integers(0, 50, n)), "c2": tf.constant(rng.integers(0, 50, n)),
        "c3": tf.constant(rng.integers(0, 50, n)),
        "n1": tf.constant(rng.normal(size=n), tf.float32), "n2": tf.constant(rng.normal(size=n), tf.float32),
        "m": tf.constant(m),
    }


def test_fm_equals_brute_force_pairwise_sum():
    emb = np.random.default_rng(1).normal(size=(5, 7, 3)).astype(np.float32)
    got = FMInteraction()(tf.constant(emb)).numpy()[:, 0]
    want = [sum(float(emb[b, i] @ emb[b, j]) for i, j in itertools.combinations(range(7), 2))
            for b in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_logit_is_bias_plus_linear_plus_fm_plus_dnn():
    model = DeepFM(LAYOUT, ModelHParams(embedding_dim=4, dnn_units=(8,), embedding_l2=3e-4))
    features = batch()
    logits = model(features).numpy()[:, 0]
    emb, first = model._fields(features)
    assert emb.shape == (6, LAYOUT.num_fields, 4)
    deep = tf.reshape(emb, [6, -1])
    for layer in model.dnn:
        deep = layer(deep)
    pairwise = [sum(float(emb[b, i].numpy() @ emb[b, j].numpy())
                    for i, j in itertools.combinations(range(LAYOUT.num_fields), 2)) for b in range(6)]
    want = model.bias.numpy()[0] + first.numpy()[:, 0] + np.array(pairwise) + model.dnn_out(deep).numpy()[:, 0]
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-5)


def test_fm_and_dnn_share_one_fused_embedding_table():
    model = DeepFM(LAYOUT, ModelHParams(embedding_dim=4, dnn_units=(8,), embedding_l2=3e-4))
    features = batch()
    model(features)
    emb, _ = model._fields(features)
    table = model.field_embeddings.embeddings.numpy()
    # Field c2 of row 3 is exactly its row of the one shared table.
    np.testing.assert_allclose(emb[3, 1].numpy(), table[int(features["c2"][3])])
    # Multivalent field: mean of its valid tokens; an all-padding row is zero.
    ids = features["m"].numpy()[1, :2]
    np.testing.assert_allclose(emb[1, 5].numpy(), table[ids].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(emb[0, 5].numpy(), 0.0)
    # Numeric field: value times its own embedding.
    np.testing.assert_allclose(emb[2, 3].numpy(), features["n1"][2].numpy() * model.numeric_embeddings[0].numpy(),
                               rtol=1e-6)


def test_missing_number_gets_its_own_embedding_and_weight():
    model = DeepFM(LAYOUT, ModelHParams(embedding_dim=4, dnn_units=(8,), embedding_l2=3e-4))
    features = batch()
    features["n2"] = tf.constant([np.nan, 0.0, np.nan, 1.0, 2.0, 3.0], tf.float32)
    model(features)
    model.missing_linear.assign([0.5, -1.5])
    emb, first = model._fields(features)
    np.testing.assert_allclose(emb[0, 4].numpy(), model.missing_embeddings[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb[1, 4].numpy(), 0.0)  # a present zero is not "missing"
    assert np.all(np.isfinite(model(features).numpy()))
    zeroed = dict(features, n2=tf.where(tf.math.is_nan(features["n2"]), 0.0, features["n2"]))
    _, first_zeroed = model._fields(zeroed)
    np.testing.assert_allclose((first - first_zeroed).numpy()[:, 0], [-1.5, 0, -1.5, 0, 0, 0], atol=1e-6)
