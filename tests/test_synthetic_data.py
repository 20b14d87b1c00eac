import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from deepfm_tfx.synthetic import generator


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    generator.generate(str(tmp_path / "a"), rows=2000, spans=2, seed=7)
    generator.generate(str(tmp_path / "b"), rows=2000, spans=2, seed=7)
    generator.generate(str(tmp_path / "c"), rows=2000, spans=2, seed=8)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


@pytest.mark.parametrize("profile", ["small", "criteo"])
def test_files_written_by_worker_processes_are_the_bytes_of_one_process(tmp_path, monkeypatch, profile):
    # Several files per span, so the worker processes write them; a planted broken and shuffled week too.
    monkeypatch.setattr(generator, "_ROWS_PER_FILE", 700)
    options = dict(rows=2000, spans=3, seed=4, shuffle_labels_span=2, broken_column_span=3, profile=profile)
    parallel = generator.generate(str(tmp_path / "parallel"), **options)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    serial = generator.generate(str(tmp_path / "serial"), **options)
    assert len(os.listdir(tmp_path / "serial" / "span-2")) == 3 + 1  # three files and bayes.json
    assert digest(tmp_path / "parallel") == digest(tmp_path / "serial") and parallel == serial


def test_later_span_does_not_depend_on_how_many_were_generated(tmp_path):
    generator.generate(str(tmp_path / "all"), rows=1000, spans=3, seed=1)
    generator.generate(str(tmp_path / "only3"), rows=1000, spans=1, seed=1, first_span=3)
    assert digest(tmp_path / "all" / "span-3") == digest(tmp_path / "only3" / "span-3")


def test_criteo_format_and_power_law(tmp_path):
    generator.generate(str(tmp_path), rows=20000, spans=1, seed=3)
    frame = pd.read_csv(tmp_path / "span-1" / "part-000.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == generator.COLUMNS
    assert set(frame["label"]) == {"0", "1"}
    ids = frame["C8"][frame["C8"] != ""]
    assert ids.str.fullmatch(r"[0-9a-f]{8}").all()
    counts = ids.value_counts().to_numpy()
    # Power law: the top id is far more common than the median one.
    assert counts[0] > 20 * np.median(counts)
    assert (frame.drop(columns="label") == "").to_numpy().any(), "some fields must be missing"


def test_bayes_auc_matches_sklearn_on_true_probabilities(tmp_path):
    truth = generator.GroundTruth.create(5)
    rng = np.random.default_rng(0)
    data = truth.sample(rng, 30000)
    labels = (rng.random(30000) < data["_prob"]).astype(int)
    assert abs(generator.auc(labels, data["_prob"]) - roc_auc_score(labels, data["_prob"])) < 1e-9
    report = generator.generate(str(tmp_path), rows=30000, spans=1, seed=5)[0]
    with open(tmp_path / "span-1" / "bayes.json") as f:
        assert json.load(f) == report
    assert 0.7 < report["bayes_auc"] < 0.95
    assert 0.15 < report["ctr"] < 0.35


def test_bayes_on_rows_recomputes_the_truth_from_written_columns_of_a_drifted_span(tmp_path):
    report = generator.generate(str(tmp_path), rows=3000, spans=3, seed=9)[2]
    frame = pd.read_csv(tmp_path / "span-3" / "part-000.csv", dtype=str, keep_default_na=False)
    columns = {c: frame[c].to_numpy() for c in generator.COLUMNS[1:]}
    labels = frame["label"].astype(int).to_numpy()
    again = generator.bayes_of_rows(report, [(columns, labels)])
    assert again["bayes_auc"] == pytest.approx(report["bayes_auc"], abs=1e-12)
    assert again["bayes_logloss"] == pytest.approx(report["bayes_logloss"], abs=1e-12)
    # A subset of rows has its own optimum, which a model scored on it must be compared with.
    half = generator.bayes_of_rows(report, [({c: v[:1500] for c, v in columns.items()}, labels[:1500])])
    assert half["bayes_rows"] == 1500 and half["bayes_auc"] != report["bayes_auc"]


def test_truth_reads_missing_numbers_as_empty_strings_or_nan_alike():
    truth = generator.GroundTruth.create(3)
    data = truth.sample(np.random.default_rng(1), 2000)
    prob = data.pop("_prob")
    as_float = {c: (np.where(v == "", "nan", v).astype(float) if c in generator.NUMERICAL else v)
                for c, v in data.items()}
    assert any((data[c] == "").any() for c in generator.NUMERICAL)
    np.testing.assert_allclose(truth.probability_of(data), prob, rtol=1e-12)
    np.testing.assert_allclose(truth.probability_of(as_float), prob, rtol=1e-12)


# --- the realistic ("criteo") profile -----------------------------------------------------------

def test_realistic_ids_map_back_to_their_index():
    from deepfm_tfx.synthetic import realistic
    x = np.random.default_rng(0).integers(0, 2 ** 32, 10_000).astype(np.uint64)
    assert (realistic.unmix32(realistic.mix32(x)) == x).all()
    values, valid = realistic.parse_hex8(realistic.hex8(x))
    assert valid.all() and (values == x).all()
    values, valid = realistic.parse_hex8(np.array(["", "deadbeef", "DEADBEEF", "xyz", "0000000g", "123456789"]))
    assert valid.tolist() == [False, True, True, False, False, False] and values[1] == 0xDEADBEEF


def test_realistic_profile_has_kaggle_id_spaces_a_long_tail_and_criteo_bayes_auc(tmp_path):
    from deepfm_tfx.synthetic import realistic
    rows = 60_000
    report = generator.generate(str(tmp_path), rows=rows, spans=1, seed=42, profile="criteo")[0]
    assert report["profile"] == "criteo"
    frame = pd.read_csv(tmp_path / "span-1" / "part-000.csv", dtype=str, keep_default_na=False)
    assert list(frame.columns) == generator.COLUMNS
    distinct = seen_once = 0
    for f, name in enumerate(generator.CATEGORICAL):
        ids = frame[name][frame[name] != ""]
        assert ids.str.fullmatch(r"[0-9a-f]{8}").all()
        counts = ids.value_counts()
        assert len(counts) <= realistic.KAGGLE_CARDINALITIES[f]
        distinct += len(counts)
        seen_once += int((counts == 1).sum())
    # More distinct ids than rows, most of them seen once (at 500k rows: ~870k, 71% once).
    assert distinct > rows and seen_once > distinct / 2
    assert frame["C9"].nunique() <= 3 and frame["C3"].nunique() > rows / 10
    # Bayes AUC in Criteo's range (a 60k-row estimate; 0.803 at 200k rows).
    assert 0.77 < report["bayes_auc"] < 0.83 and 0.15 < report["ctr"] < 0.35


def test_realistic_truth_is_recomputed_from_written_columns_of_a_drifted_span(tmp_path):
    report = generator.generate(str(tmp_path), rows=3000, spans=3, seed=9, profile="criteo")[2]
    frame = pd.read_csv(tmp_path / "span-3" / "part-000.csv", dtype=str, keep_default_na=False)
    columns = {c: frame[c].to_numpy() for c in generator.COLUMNS[1:]}
    labels = frame["label"].astype(int).to_numpy()
    again = generator.bayes_of_rows(report, [(columns, labels)])
    assert again["bayes_auc"] == pytest.approx(report["bayes_auc"], abs=1e-12)
    # Last week's truth is a different model: drift is real on this profile too.
    assert again["stale_bayes_auc"] != pytest.approx(again["bayes_auc"], abs=1e-6)


def test_rare_ids_carry_little_signal():
    from deepfm_tfx.synthetic import realistic
    truth = realistic.RealisticTruth.create(42)
    field = 2  # C3, 10M ids
    head, tail = np.arange(0, 50), np.arange(5_000_000, 5_000_050)
    w_head, _ = truth.categorical_weights(field, head)
    w_tail, _ = truth.categorical_weights(field, tail)
    if truth.informative[field]:
        assert np.abs(w_tail).mean() < 0.05 * np.abs(w_head).mean()
