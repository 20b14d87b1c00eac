"""Sparse training of the id tables, in both loops: a step changes only the
rows its batch looked up (values and optimizer slots), and no dense gradient
of a table is ever built. The dense recipe ("adam") is the control: it moves
rows the batch never saw."""
import numpy as np
import pytest
import tensorflow as tf

from deepfm_tfx import contracts
from deepfm_tfx.schemas.feature_spec import FeatureSpec
from deepfm_tfx.trainer_modules import estimator_trainer, keras_trainer, optimizers
from deepfm_tfx.trainer_modules.deepfm import DeepFM, FieldLayout, is_table
from deepfm_tfx.trainer_modules.training_setup import TrainerInputs, TrainingConfig

NUM_IDS = 400
LAYOUT = FieldLayout(categorical=("c1", "c2", "c3"), numerical=("n1",), multivalent=("m",), num_ids=NUM_IDS)
SPEC = FeatureSpec(name="t", label="y", categorical=["c1", "c2", "c3"], numerical=["n1"], multivalent=[])


def batch(low: int, high: int, n: int = 64, seed: int = 0):
    """Features whose ids all lie in [low, high), and labels."""
    rng = np.random.default_rng(seed)
    multi = rng.integers(low, high, (n, 3))
    multi[:, 2] = -1  # padding is not a row
    features = {"c1": rng.integers(low, high, n), "c2": rng.integers(low, high, n),
                "c3": rng.integers(low, high, n), "n1": rng.normal(size=n).astype(np.float32), "m": multi}
    return features, rng.integers(0, 2, n).astype(np.float32)


def looked_up(features) -> np.ndarray:
    ids = np.concatenate([features[c].ravel() for c in ("c1", "c2", "c3", "m")])
    return np.unique(ids[ids >= 0])


def inputs_for(optimizer: str) -> TrainerInputs:
    # A constant rate: the cosine schedule's first step would also be fine, but this is plainer.
    config = TrainingConfig(embedding_dim=4, dnn_units=(8,), embedding_optimizer=optimizer,
                            learning_rate_decay="none", steps_per_execution=1, learning_rate=0.01)
    return TrainerInputs(SPEC, config, transform_output=None, layout=LAYOUT, trainer="test")


def check_rows(before, after, touched: np.ndarray, moves_others: bool):
    """Rows outside `touched` unchanged (or, for the dense control, changed); touched rows changed."""
    untouched = np.setdiff1d(np.arange(NUM_IDS), touched)
    for name in before:
        moved = np.any(before[name] != after[name], axis=tuple(range(1, before[name].ndim)))
        if moves_others:
            assert moved[untouched].any(), f"{name}: the dense recipe should move rows the batch did not see"
        else:
            assert not moved[untouched].any(), f"{name}: rows {untouched[moved[untouched]][:10]} changed"
        if "slot" not in name and "linear" not in name:
            assert moved[touched].all(), f"{name}: a looked-up row did not move"


def keras_tables(model) -> dict:
    out = {v.name: v.numpy() for v in model.weights if is_table(v)}
    out.update({f"slot {v.name}": v.numpy() for v in model.optimizer.variables
                if len(v.shape) == 2 and v.shape[0] == NUM_IDS})
    return out


@pytest.mark.parametrize("optimizer", ["lazy_adam", "adagrad", "adam"])
def test_keras_step_changes_only_the_rows_its_batch_looked_up(optimizer):
    tf.keras.utils.set_random_seed(1)
    model = keras_trainer.build_model(inputs_for(optimizer), train_steps=10)
    first, labels = batch(0, 200)
    second, labels2 = batch(200, 400, seed=1)  # disjoint ids
    model.train_on_batch({k: tf.constant(v) for k, v in first.items()}, labels)
    before = keras_tables(model)
    model.train_on_batch({k: tf.constant(v) for k, v in second.items()}, labels2)
    check_rows(before, keras_tables(model), looked_up(second), moves_others=optimizer == "adam")


def test_no_dense_gradient_of_a_table():
    model = DeepFM(LAYOUT, TrainingConfig(embedding_dim=4, dnn_units=(8,)).model)
    features, labels = batch(0, 50)
    with tf.GradientTape() as tape:
        logits = model({k: tf.constant(v) for k, v in features.items()})
        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels[:, None], logits))
    assert not model.losses  # the tables' L2 is the optimizer's, on looked-up rows
    tables = [v for v in model.trainable_variables if is_table(v)]
    assert len(tables) == 2
    for grad in tape.gradient(loss, tables):
        assert isinstance(grad, tf.IndexedSlices)
    dense = DeepFM(LAYOUT, TrainingConfig(embedding_dim=4, dnn_units=(8,), embedding_optimizer="adam").model)
    dense({k: tf.constant(v) for k, v in features.items()})
    assert len(dense.losses) == 2  # the dense recipe: a table-wide regularizer per table


def test_the_l2_of_a_looked_up_row_is_weighted_by_steps_per_sighting():
    table = tf.Variable(np.ones((5, 2), np.float32))
    sightings = tf.Variable(np.array([0, 3, 0, 9, 0], np.float32))
    rows = tf.constant([1, 3, 4])
    values, counted = optimizers.sighting_weighted_l2(table, sightings, rows, tf.zeros((3, 2)), step=10, l2=0.5)
    # Step 10: row 1 seen 4 times (weight 10/4), row 3 ten times (1), row 4 once (10).
    np.testing.assert_allclose(values.numpy()[:, 0], [2 * 0.5 * 10 / 4, 2 * 0.5 * 1, 2 * 0.5 * 10])
    np.testing.assert_allclose(sightings.numpy(), [0, 4, 0, 10, 1])


@pytest.mark.parametrize("optimizer", ["lazy_adam", "adagrad", "adam"])
def test_estimator_step_changes_only_the_rows_its_batch_looked_up(optimizer):
    model_fn = estimator_trainer.make_model_fn(inputs_for(optimizer), train_steps=10)
    first, labels = batch(0, 200)
    second, labels2 = batch(200, 400, seed=1)
    with tf.Graph().as_default():
        tf.compat.v1.set_random_seed(1)
        placeholders = {k: tf.compat.v1.placeholder(tf.constant(v).dtype, [None] + list(v.shape[1:]))
                        for k, v in first.items()}
        label = tf.compat.v1.placeholder(tf.float32, [None])
        spec = model_fn(placeholders, label, tf.estimator.ModeKeys.TRAIN)
        tables = [v for v in tf.compat.v1.global_variables()
                  if (is_table(v) or contracts.is_slot_name(v.op.name)) and v.shape[0] == NUM_IDS]
        assert any(contracts.is_slot_name(v.op.name) for v in tables), [v.name for v in tables]
        with tf.compat.v1.Session() as sess:
            sess.run([tf.compat.v1.global_variables_initializer(), tf.compat.v1.local_variables_initializer()])

            def step(features, y):
                sess.run(spec.train_op, {**{placeholders[k]: v for k, v in features.items()}, label: y})

            def snapshot():
                return {("slot " if contracts.is_slot_name(v.op.name) else "") + v.name: sess.run(v) for v in tables}
            step(first, labels)
            before = snapshot()
            step(second, labels2)
            after = snapshot()
            assert sess.run(tf.compat.v1.train.get_global_step()) == 2
    check_rows(before, after, looked_up(second), moves_others=optimizer == "adam")
