"""The hashed id space's size, chosen from the data when the spec does not set it."""
import dataclasses
import os

import numpy as np
import pytest

from deepfm_tfx.pipeline import id_space
from deepfm_tfx.schemas import feature_spec
from deepfm_tfx.synthetic import generator

SPEC = feature_spec.load(feature_spec.DEFAULT_SPEC)


def test_shipped_synthetic_spec_leaves_the_bucket_count_to_the_data_and_kaggle_sets_it():
    assert SPEC.categorical_encoding == "hash" and SPEC.hash_buckets is None
    kaggle = feature_spec.load(os.path.join(feature_spec.SPEC_DIR, "criteo_kaggle.yaml"))
    assert kaggle.hash_buckets == 2 ** 22


def test_buckets_are_the_next_power_of_two_at_least_twice_the_ids():
    assert id_space.buckets_for(2400) == 8192
    assert id_space.buckets_for(4096) == 8192
    assert id_space.buckets_for(4097) == 16384
    assert id_space.buckets_for(3) == id_space.MIN_BUCKETS
    assert id_space.buckets_for(10 ** 9) == id_space.MAX_BUCKETS


def test_id_counts_are_exact_when_small_and_a_close_sample_when_large():
    rng = np.random.default_rng(0)
    small = id_space.IdCounts(cap=1000)
    keys = rng.integers(0, 2 ** 63, 500, dtype=np.uint64)
    small.add(keys, np.full(500, 2))
    small.add(keys[:100], np.ones(100))  # 100 ids now seen 3 times
    assert (small.distinct(), small.at_least(3), small.at_least(4)) == (500, 100, 0)
    big = id_space.IdCounts(cap=4096)
    values = rng.integers(0, 2 ** 63, 200_000, dtype=np.uint64) * np.uint64(2)
    for chunk in np.array_split(np.concatenate([values, values[:50_000]]), 7):  # repeats add up
        big.add(chunk, np.ones(len(chunk)))
    assert len(big.keys) <= 4096
    assert big.distinct() == pytest.approx(200_000, rel=0.1)
    assert big.at_least(2) == pytest.approx(50_000, rel=0.15)


def test_the_table_is_sized_from_the_admitted_field_prefixed_ids_recorded_and_only_grows(tmp_path):
    generator.generate(str(tmp_path / "data"), rows=2000, spans=1, seed=3)
    files = sorted((tmp_path / "data" / "span-1").glob("*.csv"))
    import pandas as pd
    frame = pd.read_csv(files[0], dtype=str, keep_default_na=False)
    want = sum(frame[c].nunique() for c in SPEC.categorical)  # "" is an id of its own, as in Transform
    assert id_space.count_distinct_ids([str(f) for f in files], SPEC) == want
    root = str(tmp_path / "pipeline")
    resolved = id_space.resolve(SPEC, str(tmp_path / "data"), root)
    admitted = sum(int((frame[c].value_counts() >= SPEC.min_count).sum()) for c in SPEC.categorical)
    assert 0 < admitted < want and resolved.hash_buckets == id_space.buckets_for(admitted)
    assert id_space.chosen(root)["distinct_ids"] == want and id_space.chosen(root)["admitted_ids"] == admitted
    # Without admission every id needs a row.
    everyone = dataclasses.replace(SPEC, min_count=1)
    assert id_space.resolve(everyone, str(tmp_path / "data"), None).hash_buckets == id_space.buckets_for(want)
    # A recorded larger table is kept: the next week's model can warm-start from this one.
    record = id_space.chosen(root)
    record["hash_buckets"] = 2 ** 20
    with open(os.path.join(root, id_space.RECORD), "w") as f:
        import json
        json.dump(record, f)
    assert id_space.resolve(SPEC, str(tmp_path / "data"), root).hash_buckets == 2 ** 20
    # A spec that sets the count is used as is.
    fixed = dataclasses.replace(SPEC, hash_buckets=1234)
    assert id_space.resolve(fixed, str(tmp_path / "data"), root).hash_buckets == 1234


def test_a_slice_column_with_too_many_values_is_left_out(tmp_path, capsys):
    generator.generate(str(tmp_path / "data"), rows=2000, spans=1, seed=3, profile="criteo")
    spec = dataclasses.replace(SPEC, slices=["C3", "C9"])  # C3: thousands of ids here, C9: 3
    resolved = id_space.resolve(spec, str(tmp_path / "data"), str(tmp_path / "pipeline"))
    assert resolved.slices == ["C9"] and "not slicing by C3" in capsys.readouterr().out
    fixed = dataclasses.replace(spec, hash_buckets=2 ** 20)
    assert id_space.resolve(fixed, str(tmp_path / "data"), None).slices == ["C9"]


def test_a_few_more_ids_keep_the_recorded_table_and_many_more_grow_it(tmp_path):
    import json
    generator.generate(str(tmp_path / "data"), rows=2000, spans=1, seed=3)
    root = str(tmp_path / "pipeline")
    first = id_space.resolve(SPEC, str(tmp_path / "data"), root).hash_buckets
    record = id_space.chosen(root)
    ids = record["admitted_ids"]
    # The same span with a smaller table recorded: kept while the ids fit it with the slack, else grown.
    enough = id_space.buckets_for(ids, id_space.FACTOR / id_space.GROWTH_SLACK)
    assert enough < first  # a few ids more than the smaller table was made for
    for recorded, want in ((enough, enough), (enough // 2, first)):
        with open(os.path.join(root, id_space.RECORD), "w") as f:
            json.dump(dict(record, hash_buckets=recorded, files=None), f)
        assert id_space.resolve(SPEC, str(tmp_path / "data"), root).hash_buckets == want
