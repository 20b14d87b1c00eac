"""Frequency admission in the transform graph: which ids get their own row, counted
over the training window (cached spans included), and what it does to a model."""
import os
import tempfile

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from tensorflow_transform.beam import analyzer_cache
from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

from deepfm_tfx.contracts import FEATURE_SPEC_KEY
from deepfm_tfx.pipeline import id_space
from deepfm_tfx.schemas.feature_spec import FeatureSpec, Multivalent
from deepfm_tfx.trainer_modules import preprocessing

BUCKETS = 1 << 12
SPEC = FeatureSpec(name="t", label="label", categorical=["C1", "C2"], numerical=["I1"],
                   multivalent=[Multivalent("tags", "|", 2)], categorical_encoding="hash",
                   hash_buckets=BUCKETS, min_count=3, min_count_per_field={"C2": 2})
RAW = {"label": tf.io.VarLenFeature(tf.int64), "C1": tf.io.VarLenFeature(tf.string),
       "C2": tf.io.VarLenFeature(tf.string), "I1": tf.io.VarLenFeature(tf.float32),
       "tags": tf.io.VarLenFeature(tf.string)}


def _rows(c1, c2=None, tags=None):
    c2 = c2 or ["k"] * len(c1)
    tags = tags or [["t"]] * len(c1)
    return [{"label": [i % 2], "C1": [a.encode()], "C2": [b.encode()], "I1": [float(i)],
             "tags": [t.encode() for t in ts]} for i, (a, b, ts) in enumerate(zip(c1, c2, tags))]


def _transform(spec, span_rows, cache_dir, out_dir):
    """Transform's analysis over a window of spans as TFX runs it: spans analysed in an
    earlier run come from the analyzer cache, not from their rows."""
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(RAW))
    keys = {name: analyzer_cache.DatasetKey(name) for name in span_rows}
    cached = [keys[n] for n in span_rows if os.path.isdir(os.path.join(cache_dir, keys[n].key))] \
        if os.path.isdir(cache_dir) else []
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False), beam.Pipeline() as p:
        cache = p | "ReadCache" >> analyzer_cache.ReadAnalysisCacheFromFS(cache_dir, cached) if cached else {}
        data = {keys[n]: p | f"Create{n}" >> beam.Create(
            [] if keys[n] in cached else rows, reshuffle=False) for n, rows in span_rows.items()}
        transform_fn, new_cache = (data, cache, metadata) | tft_beam.AnalyzeDatasetWithCache(
            lambda inputs: preprocessing.preprocessing_fn(inputs, {FEATURE_SPEC_KEY: spec.to_dict()}))
        _ = new_cache | analyzer_cache.WriteAnalysisCacheToFS(p, cache_dir, sink=None)
        _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
    return tft.TFTransformOutput(out_dir)


def _ids(graph, c1, c2=None, tags=None):
    """The transform graph's ids of C1, C2 and tags for raw values, as a served model computes them."""
    n = len(c1)

    def column(values, dtype=tf.string):
        return tf.SparseTensor([[i, 0] for i in range(n)], tf.constant(values, dtype), [n, 1])
    out = graph.transform_raw_features({
        "C1": column(c1), "C2": column(c2 or ["k"] * n), "I1": column([1.0] * n, tf.float32),
        "label": column([0] * n, tf.int64), "tags": tf.ragged.constant(tags or [["t"]] * n).to_sparse()})
    return out["C1"].numpy().tolist(), out["C2"].numpy().tolist(), out["tags"].numpy().tolist()


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """Span 1 alone, then the window of spans 1 and 2 with span 1 from the analyzer cache."""
    root = tmp_path_factory.mktemp("admission")
    cache = str(root / "cache")
    # C1 counts. span 1: a x3, b x2, c x1, d x2; span 2: b x1, e x2, then "a" once more.
    span1 = _rows(list("aaabbcdd"), c2=list("xxyzzzzz"), tags=[["t", "u"]] * 3 + [["t"]] * 5)
    span2 = _rows(list("beea"), c2=list("yxxx"))
    alone = _transform(SPEC, {"span-1": span1}, cache, str(root / "graph-1"))
    both = _transform(SPEC, {"span-1": span1, "span-2": span2}, cache, str(root / "graph-2"))
    return alone, both, str(root / "graph-2")


def test_an_id_at_min_count_has_its_own_row_and_one_below_it_or_unseen_the_fields_rare_row(window):
    alone, _, _ = window
    c1, c2, tags = _ids(alone, ["a", "b", "c", "never-seen"], c2=["x", "y", "z", "never-seen"],
                        tags=[["t", "u"], ["u", "zzz"], [], []])
    rare_c1, rare_c2, rare_tags = BUCKETS, BUCKETS + 1, BUCKETS + 2  # after the table, in field order
    assert c1[0] < BUCKETS  # "a": 3 times, min_count 3
    assert c1[1:] == [rare_c1] * 3  # "b" twice, "c" once, and one never seen: all on C1's rare row
    assert c2[0] < BUCKETS and c2[2] < BUCKETS  # C2's own min_count is 2: "x" twice, "z" five times
    assert c2[1] == c2[3] == rare_c2  # "y" once, and one never seen
    assert tags[0][0] < BUCKETS and tags[0][1] < BUCKETS and tags[1] == [tags[0][1], rare_tags]
    assert preprocessing.num_ids(SPEC, 0) == BUCKETS + 3


def test_counts_come_from_the_whole_window_with_earlier_spans_from_the_analyzer_cache(window):
    alone, both, graph_dir = window
    # "b": 2 + 1 and "e": 0 + 2 ... only "b" reaches 3 over the window; "d" stays at 2.
    before = _ids(alone, ["b", "d", "e"])[0]
    after = _ids(both, ["b", "d", "e"])[0]
    assert before == [BUCKETS] * 3
    assert after[0] < BUCKETS and after[1:] == [BUCKETS, BUCKETS]
    # What the run summary reads from the graph: C1's admitted ids over the window ("a", "b"),
    # and the share of its 12 occurrences on the rare row ("c", "d" x2, "e" x2).
    report = id_space.admission(graph_dir, SPEC)
    assert report["C1"] == {"admitted": 2, "rare_share": round(5 / 12, 4)}


def test_the_admission_bench_computes_the_ids_the_transform_graph_computes(window):
    from bench import admission
    alone, _, _ = window
    values = list("aaabbcdd")  # span 1's C1, as the fixture's Transform counted it
    probe = ["a", "b", "c", "d", "never-seen"]
    fingerprints = lambda vs: tf.strings.to_hash_bucket_fast(  # noqa: E731
        [f"C1={v}" for v in vs], admission.FINGERPRINT_MOD).numpy()
    data = {"fingerprints": {"C1": np.concatenate([fingerprints(values), fingerprints(probe)])},
            "train": np.arange(len(values))}
    bench_ids = admission.ids(data, admission.admitted_sets(data, 3), BUCKETS, 3)["C1"][len(values):]
    assert bench_ids.tolist() == _ids(alone, probe)[0]


def test_a_spec_sets_min_count_per_dataset_and_per_field(tmp_path):
    from deepfm_tfx.schemas import feature_spec
    path = tmp_path / "spec.yaml"
    path.write_text("label: y\ncategorical: [a, b]\nmin_count: 5\nmin_count_per_field: {b: 1}\n")
    spec = feature_spec.load(str(path))
    assert spec.admitted_fields == ["a"] and spec.min_count_of("a") == 5
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    path.write_text("label: y\ncategorical: [a]\nmin_count_per_field: {c: 2}\n")
    with pytest.raises(feature_spec.FeatureSpecError, match="names 'c', which is not a categorical"):
        feature_spec.load(str(path))


def _movielens_rows(n: int, seed: int):
    """MovieLens-like clicks: every user rates a few dozen movies (MovieLens keeps users with
    20 ratings or more), movies are Zipf-popular with a long tail; genres, an age; the label
    from user and movie biases, their dot product and the genres."""
    rng = np.random.default_rng(seed)
    users, movies = 400, 1500
    user_vec, movie_vec = rng.normal(0, 0.7, (users, 4)), rng.normal(0, 0.7, (movies, 4))
    user_bias, movie_bias, genre_bias = rng.normal(0, 0.6, users), rng.normal(0, 0.6, movies), rng.normal(0, 0.5, 12)
    movie_genres = [rng.choice(12, size=rng.integers(1, 4), replace=False) for _ in range(movies)]
    u = rng.integers(0, users, n)
    m = np.minimum(rng.zipf(1.1, n) - 1, movies - 1)
    age = rng.integers(15, 70, n).astype(float)
    logit = user_bias[u] + movie_bias[m] + np.sum(user_vec[u] * movie_vec[m], 1) \
        + np.array([genre_bias[movie_genres[j]].mean() for j in m]) - 0.01 * (age - 40)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return [{"label": [int(y)], "user_id": [f"u{a}".encode()], "movie_id": [f"m{b}".encode()],
             "age": [float(g)], "genres": [f"g{x}".encode() for x in movie_genres[b]]}
            for y, a, b, g in zip(labels, u, m, age)]


def _auc_of_a_trained_model(spec, train, test):
    import types

    from deepfm_tfx.synthetic.generator import auc
    from deepfm_tfx.trainer_modules import hparams, keras_trainer
    from deepfm_tfx.trainer_modules.deepfm import FieldLayout
    raw = {"label": tf.io.VarLenFeature(tf.int64), "user_id": tf.io.VarLenFeature(tf.string),
           "movie_id": tf.io.VarLenFeature(tf.string), "age": tf.io.VarLenFeature(tf.float32),
           "genres": tf.io.VarLenFeature(tf.string)}
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw))
    with tft_beam.Context(temp_dir=tempfile.mkdtemp(), force_tf_compat_v1=False):
        (train_out, _), transform_fn = (train, metadata) | tft_beam.AnalyzeAndTransformDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, {FEATURE_SPEC_KEY: spec.to_dict()}),
            output_record_batches=False)
        test_out, _ = ((test, metadata), transform_fn) | tft_beam.TransformDataset(output_record_batches=False)

    def arrays(rows):
        return ({k: np.stack([r[k] for r in rows]) for k in ("user_id", "movie_id", "age", "genres")},
                np.array([r["label"] for r in rows], np.float32))
    tf.keras.utils.set_random_seed(0)
    config = hparams.TrainingConfig(batch_size=256, steps_per_execution=10)
    layout = FieldLayout(categorical=("user_id", "movie_id"), numerical=("age",), multivalent=("genres",),
                         num_ids=preprocessing.num_ids(spec, 0))
    model = keras_trainer.build_model(types.SimpleNamespace(layout=layout, config=config), 5 * 12_000 // 256)
    x, y = arrays(train_out)
    model.fit(x, y, batch_size=256, epochs=5, verbose=0, shuffle=True)
    tx, ty = arrays(test_out)
    return auc(ty, model.predict(tx, batch_size=4096, verbose=0).reshape(-1))


def test_admission_does_not_lower_auc_on_a_movielens_style_spec():
    rows = _movielens_rows(16_000, seed=1)
    train, test = rows[:12_000], rows[12_000:]
    spec = FeatureSpec(name="movies", label="label", categorical=["user_id", "movie_id"], numerical=["age"],
                       multivalent=[Multivalent("genres", "|", 3)], categorical_encoding="hash", hash_buckets=1 << 13)
    without = _auc_of_a_trained_model(spec, train, test)
    admitted = _auc_of_a_trained_model(FeatureSpec.from_dict(dict(spec.to_dict(), min_count=3)), train, test)
    assert without > 0.6  # the model learnt something to compare
    assert admitted >= without - 0.002  # slack for thread-order float differences between machines


def test_on_the_200_real_criteo_rows_transform_admits_what_the_counts_say(tmp_path):
    import csv
    import dataclasses

    from conftest import SHARED_SAMPLE
    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    fields, _ = id_space.survey([SHARED_SAMPLE], spec)
    spec = dataclasses.replace(spec, hash_buckets=id_space.buckets_for(id_space.table_ids(spec, fields)))
    with open(SHARED_SAMPLE) as f:
        table = list(csv.DictReader(f))
    raw = {spec.label: tf.io.VarLenFeature(tf.int64)}
    raw.update({n: tf.io.VarLenFeature(tf.float32) for n in spec.numerical})
    raw.update({n: tf.io.VarLenFeature(tf.string) for n in spec.categorical})
    rows = [{spec.label: [int(r[spec.label])],
             **{n: [float(r[n])] if r[n] else [] for n in spec.numerical},
             **{n: [r[n].encode()] if r[n] else [] for n in spec.categorical}} for r in table]
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(raw))
    with tft_beam.Context(temp_dir=str(tmp_path / "tmp"), force_tf_compat_v1=False):
        transform_fn = (rows, metadata) | tft_beam.AnalyzeDataset(
            lambda inputs: preprocessing.preprocessing_fn(inputs, {FEATURE_SPEC_KEY: spec.to_dict()}))
        _ = transform_fn | tft_beam.WriteTransformFn(str(tmp_path / "graph"))
    report = id_space.admission(str(tmp_path / "graph"), spec)
    for name in spec.categorical:
        counts = {}
        for r in table:
            counts[r[name]] = counts.get(r[name], 0) + 1  # "" (missing) is an id of its own
        kept = [c for c in counts.values() if c >= spec.min_count]
        assert report[name] == {"admitted": len(kept), "rare_share": round(1 - sum(kept) / len(table), 4)}, name
        assert fields[name]["admitted"] == len(kept) and fields[name]["seen"] == len(counts), name
