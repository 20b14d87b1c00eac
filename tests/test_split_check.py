"""The scan before a run refuses a span too small to split, counting the splits exactly only
where chance could leave one short (hash_splits.check_splits)."""
import dataclasses

import pytest

from deepfm_tfx.components import hash_splits
from deepfm_tfx.errors import DataError
from deepfm_tfx.pipeline.pipeline import splits
from deepfm_tfx.schemas import feature_spec
from test_bad_inputs import HEADER, row

SPEC = feature_spec.load(feature_spec.DEFAULT_SPEC)
ROWS = 24_000  # 12,000 distinct rows per label, above the 10,000 that make a short eval split impossible


def write(tmp_path, lines):
    path = tmp_path / "part-000.csv"
    path.write_text("\n".join([HEADER] + lines) + "\n")
    return [str(path)]


def test_a_large_span_of_distinct_rows_is_not_hashed_and_its_exact_splits_agree(tmp_path, monkeypatch):
    files = write(tmp_path, [row(label=str(i % 2), I1=str(i)) for i in range(ROWS)])
    exact = hash_splits.count_splits(files, SPEC, splits())
    hash_splits.check_counts(exact, "span")  # what the skipped count would have found: enough of each
    assert min(exact["eval"].values()) > hash_splits.MIN_SPLIT_ROWS

    def refuse(*args):
        raise AssertionError("hashed a row to count the splits exactly")
    monkeypatch.setattr(hash_splits, "split_indices", refuse)
    hash_splits.check_splits(files, SPEC, splits(), "span")


def test_copies_of_two_rows_are_counted_exactly_and_refused(tmp_path):
    """As many rows as above, but two distinct ones: each goes whole to one split."""
    files = write(tmp_path, [row(label=str(i % 2)) for i in range(ROWS)])
    with pytest.raises(DataError, match="too few rows to train and evaluate on: 24000 row"):
        hash_splits.check_splits(files, SPEC, splits(), "span")


def test_a_split_key_held_by_every_row_is_counted_exactly_and_refused(tmp_path):
    files = write(tmp_path, [row(label=str(i % 2), I1=str(i)) for i in range(ROWS)])
    with pytest.raises(DataError, match="too few rows to train and evaluate on"):
        hash_splits.check_splits(files, dataclasses.replace(SPEC, split_key="C1"), splits(), "span")


def test_a_bad_value_in_a_large_span_is_still_found(tmp_path):
    lines = [row(label=str(i % 2), I1=str(i)) for i in range(ROWS)]
    lines[20_000] = row(I2="many")
    files = write(tmp_path, lines)
    with pytest.raises(DataError, match="row 20002, column 'I2'"):
        hash_splits.check_splits(files, SPEC, splits(), "span")
