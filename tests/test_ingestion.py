"""The spec-typed CSV ingestion: real Criteo rows parse; bad input is named precisely."""
import csv
import os

import pytest
import tensorflow as tf

from deepfm_tfx.components.csv_example_gen import check_files, parse_file
from deepfm_tfx.errors import DataError
from conftest import SHARED_SAMPLE
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator
from deepfm_tfx.schemas import feature_spec

SPEC = feature_spec.load(feature_spec.DEFAULT_SPEC)


def examples(path, spec=SPEC):
    return [tf.train.Example.FromString(s) for s in parse_file(path, spec)]


@pytest.mark.skipif(not os.path.exists(SHARED_SAMPLE), reason="shared Criteo sample not present")
def test_real_criteo_sample_parses_with_types_and_missing_values():
    with open(SHARED_SAMPLE) as f:
        rows = list(csv.DictReader(f))
    parsed = examples(SHARED_SAMPLE)
    assert len(parsed) == len(rows) == 200
    for row, ex in zip(rows, parsed):
        feats = ex.features.feature
        assert feats["label"].int64_list.value == [int(row["label"])]
        for col in SPEC.numerical:
            if row[col] == "":
                assert col not in feats or not feats[col].float_list.value
            else:
                assert feats[col].float_list.value[0] == pytest.approx(float(row[col]))
        for col in SPEC.categorical:
            if row[col] == "":
                assert col not in feats or not feats[col].bytes_list.value
            else:
                assert feats[col].bytes_list.value == [row[col].encode()]


@pytest.mark.skipif(not os.path.exists(SHARED_SAMPLE), reason="shared Criteo sample not present")
def test_tsv_without_header_via_kaggle_spec(tmp_path):
    spec = feature_spec.load(os.path.join(feature_spec.SPEC_DIR, "criteo_kaggle.yaml"))
    with open(SHARED_SAMPLE) as f:
        rows = list(csv.reader(f))[1:6]
    path = tmp_path / "day_0.txt"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    parsed = examples(str(path), spec)
    assert [e.features.feature["label"].int64_list.value[0] for e in parsed] == [int(r[0]) for r in rows]


def _span(tmp_path, text):
    span = tmp_path / "span-1"
    span.mkdir(parents=True, exist_ok=True)
    path = span / "part-000.csv"
    path.write_text(text)
    return str(path)


HEADER = ",".join(generator.COLUMNS)
GOOD = "1," + ",".join(["3"] * 13) + "," + ",".join(["0a0b0c0d"] * 26)


def test_non_numeric_value_names_file_row_and_column(tmp_path):
    bad = GOOD.split(",")
    bad[5] = "many"  # I5
    path = _span(tmp_path, "\n".join([HEADER, GOOD, GOOD, ",".join(bad), GOOD]) + "\n")
    with pytest.raises(DataError) as e:
        examples(path)
    assert str(e.value) == f"{path}, row 4, column 'I5': expected a number, got 'many'"


def test_malformed_row_names_file_and_row(tmp_path):
    path = _span(tmp_path, "\n".join([HEADER, GOOD, GOOD[:-9]]) + "\n")
    with pytest.raises(DataError, match=r"part-000.csv, row 3: expected 40 fields, got 39"):
        examples(path)


def test_missing_label_is_named(tmp_path):
    path = _span(tmp_path, "\n".join([HEADER, GOOD, "," + GOOD[2:]]) + "\n")
    with pytest.raises(DataError, match=r"row 3, column 'label': the label is missing"):
        examples(path)


def test_header_lacking_a_spec_column_is_named(tmp_path):
    path = _span(tmp_path, HEADER.replace(",C7,", ",C7x,") + "\n" + GOOD + "\n")
    with pytest.raises(DataError, match=r"part-000.csv: header lacks column\(s\) \['C7'\]"):
        check_files([path], SPEC, "span")


def test_empty_span_and_missing_dir(tmp_path):
    _span(tmp_path, HEADER + "\n")
    with pytest.raises(DataError, match="span is empty"):
        local.input_layout(str(tmp_path), SPEC)
    with pytest.raises(DataError, match="does not exist"):
        local.input_layout(str(tmp_path / "nope"), SPEC)


def test_input_layout_picks_the_newest_span(tmp_path):
    generator.generate(str(tmp_path), rows=1500, spans=3, seed=1)
    assert local.input_layout(str(tmp_path), SPEC) == ("span-{SPAN}/*.csv", 3)
