"""preprocessing_fn run for real with tft_beam on a few rows."""
import sys
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from deepfm_tfx.contracts import FEATURE_SPEC_KEY
from deepfm_tfx.schemas.feature_spec import FeatureSpec, Multivalent
from deepfm_tfx.trainer_modules import preprocessing

SPEC = FeatureSpec(name="t", label="label", categorical=["C1", "C2"], numerical=["I1"],
                   multivalent=[Multivalent("genres", "|", 3)], vocabulary_min_count=2, oov_buckets=1)

C1 = ["a", "a", "a", "a", "b", "b", "b", "c"]
C2 = ["x", "x", "y", None, "x", None, "x", "z"]   # x: 4 times; y, z once
I1 = [0.0, 1.0, None, 10.0, 100.0, 3.0, None, 7.0]
GENRES = [["g1", "g2"], ["g1"], [], ["g2", "g1", "g3", "g1"], ["g9"], ["g1"], ["g2"], ["g2"]]


def _rows():
    rows = []
    for i in range(len(C1)):
        row = {"label": [i % 2], "C1": [C1[i].encode()], "C2": [C2[i].encode()] if C2[i] else [],
               "I1": [I1[i]] if I1[i] is not None else [], "genres": [g.encode() for g in GENRES[i]]}
        rows.append(row)
    return rows


RAW_SPEC = {"label": tf.io.VarLenFeature(tf.int64), "C1": tf.io.VarLenFeature(tf.string),
            "C2": tf.io.VarLenFeature(tf.string), "I1": tf.io.VarLenFeature(tf.float32),
            "genres": tf.io.VarLenFeature(tf.string)}


def _run(spec, rows=None, raw_spec=RAW_SPEC, force_tf_compat_v1=False):
    """preprocessing_fn over `rows` (default: _rows()): the transformed rows, and the vocabulary if any."""
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw_spec))
    rows = _rows() if rows is None else rows
    with tempfile.TemporaryDirectory() as tmp, tft_beam.Context(temp_dir=tmp, force_tf_compat_v1=force_tf_compat_v1):
        (transformed, _), transform_fn = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, {FEATURE_SPEC_KEY: spec.to_dict()}),
            output_record_batches=False)
        transform_fn | tft_beam.WriteTransformFn(tmp)
        if spec.categorical_encoding != "vocabulary":
            return transformed, None
        vocab = tft.TFTransformOutput(tmp).vocabulary_by_name(preprocessing.VOCABULARY)
    return transformed, [v.decode() for v in vocab]


@pytest.fixture(scope="module")
def vocab_run():
    return _run(SPEC)


def test_shared_vocabulary_ids_and_oov(vocab_run):
    rows, vocab = vocab_run
    # Tokens are field-prefixed in one vocabulary; below min_count 2 -> OOV.
    assert set(vocab) == {"C1=a", "C1=b", "C2=x", "C2=", "genres=g1", "genres=g2"}
    assert vocab[0] == "genres=g1"  # most frequent first (5 times)
    ids = {t: i for i, t in enumerate(vocab)}
    oov = len(vocab)  # the single OOV bucket
    assert [r["C1"] for r in rows] == [ids["C1=a"]] * 4 + [ids["C1=b"]] * 3 + [oov]
    assert [r["C2"] for r in rows] == [ids["C2=x"], ids["C2=x"], oov, ids["C2="], ids["C2=x"], ids["C2="],
                                       ids["C2=x"], oov]
    assert preprocessing.num_ids(SPEC, len(vocab)) == len(vocab) + 1


def test_multivalent_padded_and_truncated(vocab_run):
    rows, vocab = vocab_run
    ids = {t: i for i, t in enumerate(vocab)}
    oov = len(vocab)
    g1, g2 = ids["genres=g1"], ids["genres=g2"]
    assert list(rows[0]["genres"]) == [g1, g2, -1]
    assert list(rows[2]["genres"]) == [-1, -1, -1]
    assert list(rows[3]["genres"]) == [g2, g1, oov]   # 4 tokens cut to max_length 3
    assert list(rows[4]["genres"]) == [oov, -1, -1]


def test_numeric_log_zscore_with_missing_as_nan(vocab_run):
    rows, _ = vocab_run
    present = np.log1p([0.0, 1.0, 10.0, 100.0, 3.0, 7.0])
    want = (present - present.mean()) / present.std()
    got = np.array([rows[i]["I1"] for i in (0, 1, 3, 4, 5, 7)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.isnan(rows[2]["I1"]) and np.isnan(rows[6]["I1"])
    assert [r["label"] for r in rows] == [0, 1, 0, 1, 0, 1, 0, 1]


def test_hash_encoding_is_stable_and_bounded():
    spec = FeatureSpec.from_dict(dict(SPEC.to_dict(), categorical_encoding="hash", hash_buckets=1000))
    rows, vocab = _run(spec)
    assert vocab is None
    assert all(0 <= r["C1"] < 1000 for r in rows)
    assert rows[0]["C1"] == rows[1]["C1"] != rows[4]["C1"]
    assert preprocessing.num_ids(spec, 0) == 1000


def _numeric_rows(values):
    return [{"label": [i % 2], "C1": [b"a"], "C2": [], "I1": [v], "genres": []} for i, v in enumerate(values)]


def test_zscore_statistics_do_not_overflow_on_large_finite_numbers(monkeypatch):
    # float32 would square 1e30 to inf, and every I1 would become 0.
    values = [1e30, 2e30, 3e30, 4e30]
    monkeypatch.setattr(sys.modules[__name__], "_rows", lambda: _numeric_rows(values))
    rows, _ = _run(FeatureSpec.from_dict(dict(SPEC.to_dict(), numerical_transform="zscore")))
    want = (np.array(values) - np.mean(values)) / np.std(values)
    np.testing.assert_allclose([r["I1"] for r in rows], want, rtol=1e-5)


def test_a_non_finite_statistic_fails_the_transform_naming_the_column(monkeypatch):
    # Ingestion refuses nan and inf; this is the guard behind it.
    monkeypatch.setattr(sys.modules[__name__], "_rows", lambda: _numeric_rows([1.0, float("nan"), 3.0, 4.0]))
    with pytest.raises(Exception, match=r"z-score mean of numeric column 'I1' is not finite"):
        _run(SPEC)


def test_the_fused_dense_columns_equal_the_per_field_ones_and_refuse_a_second_value():
    # Field 2 has no value in the batch, so its dense shape is [3, 0]: it must not shift field 3's column.
    columns = [tf.SparseTensor([[0, 0], [2, 0]], [b"a", b"b"], [3, 1]),
               tf.SparseTensor(tf.zeros([0, 2], tf.int64), tf.constant([], tf.string), [3, 0]),
               tf.SparseTensor([[1, 0]], [b"c"], [3, 1])]
    dense, present = preprocessing.dense_columns(columns, b"", tf.string)
    per_field = np.stack([preprocessing._dense_column(c, b"").numpy() for c in columns], axis=1)
    np.testing.assert_array_equal(dense.numpy(), per_field)
    np.testing.assert_array_equal(present.numpy(), [[True, False, False], [False, False, True], [True, False, False]])
    tokens = preprocessing.categorical_tokens({"C1": columns[0], "C2": columns[1], "C3": columns[2]}, ["C1", "C2", "C3"])
    assert tokens.numpy()[0].tolist() == [b"C1=a", b"C2=", b"C3="]
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than one value"):
        preprocessing.dense_columns([tf.SparseTensor([[0, 0], [0, 1]], [b"a", b"b"], [1, 2])], b"", tf.string)


def test_the_tf1_transform_graph_gives_the_tf2_graphs_outputs(tmp_path):
    """The pipeline's Transform writes a TF1 graph (cheaper to build) except for the Keras trainer on a
    cluster: both must give every id the same and every float the same to float32 rounding, on the
    default spec's rows."""
    import pandas as pd

    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.synthetic import generator
    # The pipeline sizes the table from the data before Transform runs (id_space.resolve).
    spec = FeatureSpec.from_dict(dict(feature_spec.load(feature_spec.DEFAULT_SPEC).to_dict(), hash_buckets=1 << 12))
    generator.generate(str(tmp_path / "data"), rows=1500, spans=1, seed=3)
    frame = pd.read_csv(next((tmp_path / "data" / "span-1").glob("*.csv")), dtype=str, keep_default_na=False)
    types = {spec.label: (tf.int64, int), **{c: (tf.float32, float) for c in spec.numerical},
             **{c: (tf.string, str.encode) for c in spec.categorical}}
    rows = [{c: [cast(v)] if v != "" else [] for c, (_, cast) in types.items() for v in [row[c]]}
            for row in frame.to_dict("records")]
    raw_spec = {c: tf.io.VarLenFeature(dtype) for c, (dtype, _) in types.items()}
    tf1_rows, tf2_rows = (_run(spec, rows, raw_spec, force_tf_compat_v1=tf1)[0] for tf1 in (True, False))
    assert len(tf1_rows) == len(tf2_rows) == len(rows) and len(tf1_rows[0]) == len(spec.feature_columns) + 1
    for a, b in zip(tf1_rows, tf2_rows):
        assert a.keys() == b.keys()
        for key in a:
            if np.issubdtype(np.asarray(a[key]).dtype, np.floating):
                # The z-score's mean and variance are float sums in an order Beam does not fix (one
                # suite run here differed by 4.8e-7 in 1.23).
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
            else:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
