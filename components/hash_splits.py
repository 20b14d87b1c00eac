"""Each row's split, and how many rows each split gets; no TFX or TensorFlow here.

A row's split is a pure function of its content (or of the spec's `split_key`
column): sha256 of its tf.Example bytes, which example_encoder builds
deterministically. The same files give byte-identical splits in any process,
on any orchestrator.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
import pyarrow as pa

from deepfm_tfx.components import csv_rows, example_encoder, rows
from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

# Fewer rows make the Evaluator's AUC noise (its standard error passes 0.05,
# five times the default --max-auc-drop) and the trainer's split pointless.
MIN_SPLIT_ROWS = 100


@dataclasses.dataclass(frozen=True)
class Split:
    name: str
    hash_buckets: int


def split_indices(examples: pa.Array, batch: pa.RecordBatch, spec: FeatureSpec,
                  splits: Sequence[Split]) -> np.ndarray:
    """Each row's split: sha256 of its tf.Example bytes (or of its split_key value) into the buckets."""
    if spec.split_key:
        keys = batch.column(spec.split_key).cast(pa.binary()).fill_null(b"").to_pylist()
    else:
        keys = examples.to_pylist()
    total = sum(s.hash_buckets for s in splits)
    ends = np.cumsum([s.hash_buckets for s in splits])
    buckets = np.fromiter((int.from_bytes(hashlib.sha256(k).digest()[:8], "big") % total for k in keys),
                          np.int64, len(keys))
    return np.searchsorted(ends, buckets, side="right")


def split_file(path: str, spec: FeatureSpec, splits: Sequence[Split]) -> Iterator[Tuple[int, List[bytes], np.ndarray]]:
    """Per Arrow block, shuffled: (split index, its serialized Examples, their labels) for each split."""
    for block, batch in enumerate(rows.read_batches(path, spec)):
        batch = csv_rows.shuffled(batch, path, block)
        examples = example_encoder.encode(batch, spec)
        which = split_indices(examples, batch, spec, splits)
        labels = batch.column(spec.label).to_numpy(zero_copy_only=False)
        for i in range(len(splits)):
            picked = np.flatnonzero(which == i)
            if len(picked):
                yield i, examples.take(pa.array(picked)).to_pylist(), labels[picked]


Counts = Dict[str, Dict[int, int]]  # split name -> label -> rows


def _count(counts: Counts, batch: pa.RecordBatch, spec: FeatureSpec, splits: Sequence[Split]) -> None:
    """Adds one batch's rows to each split's label counts."""
    which = split_indices(example_encoder.encode(batch, spec), batch, spec, splits)
    labels = batch.column(spec.label).to_numpy(zero_copy_only=False)
    for i, split in enumerate(splits):
        for y in csv_rows.LABELS:
            counts[split.name][y] += int(np.count_nonzero((which == i) & (labels == y)))


def count_splits(files: Sequence[str], spec: FeatureSpec, splits: Sequence[Split]) -> Counts:
    """Reads every row (so every bad value is found) and counts each split's labels."""
    counts: Counts = {s.name: {y: 0 for y in csv_rows.LABELS} for s in splits}
    for path in files:
        for batch in rows.read_batches(path, spec):
            _count(counts, batch, spec, splits)
    return counts


# A split expected to hold this many distinct rows of each label cannot come out short of
# MIN_SPLIT_ROWS or without a label: each distinct row's split is an independent draw, and such a
# shortfall is below exp(-600). Then the scan reads and types every row (every bad value is found)
# but neither encodes nor hashes them: 4 of its 5 s at 500k rows. ExampleGen counts exactly anyway.
SURE_ROWS_PER_LABEL = 1000


def _distinct_per_label(batch: pa.RecordBatch, label: str) -> Dict[int, int]:
    """Distinct rows of each label in one batch (equal typed rows encode to equal Examples)."""
    distinct = pa.Table.from_batches([batch]).group_by(batch.schema.names).aggregate([])
    labels = distinct.column(label).to_numpy()
    return {y: int(np.count_nonzero(labels == y)) for y in csv_rows.LABELS}


def check_splits(files: Sequence[str], spec: FeatureSpec, splits: Sequence[Split], where: str) -> None:
    """Refuses a bad value, or a span too small to split (check_counts), in one read. The splits
    are counted exactly only where chance could leave one short: until one batch alone holds
    enough distinct rows of each label to make that impossible, and always with a split_key,
    which sends whole groups of rows to one split."""
    smallest = min(s.hash_buckets for s in splits) / sum(s.hash_buckets for s in splits)
    need = SURE_ROWS_PER_LABEL / smallest
    # The most distinct rows of each label in any one batch: a lower bound on the span's.
    seen = {y: 0 for y in csv_rows.LABELS}
    counts: Counts = {s.name: {y: 0 for y in csv_rows.LABELS} for s in splits}

    def sure() -> bool:
        return not spec.split_key and min(seen.values()) >= need
    for path in files:
        for batch in rows.read_batches(path, spec):  # read on when sure: a bad value is still found
            if not spec.split_key and not sure():
                for y, n in _distinct_per_label(batch, spec.label).items():
                    seen[y] = max(seen[y], n)
            if not sure():  # so, never sure, every batch was counted
                _count(counts, batch, spec, splits)
    if not sure():
        check_counts(counts, where)


def check_counts(counts: Counts, where: str) -> None:
    """Each split needs MIN_SPLIT_ROWS rows holding both labels, or the Evaluator has nothing to judge."""
    total = sum(sum(c.values()) for c in counts.values())
    parts = ", ".join(f"{sum(c.values())} {name} ({c[1]} with label 1)" for name, c in counts.items())
    for name, c in counts.items():
        if sum(c.values()) < MIN_SPLIT_ROWS or not all(c.values()):
            raise DataError(f"{where}: too few rows to train and evaluate on: {total} row(s), split {parts}; "
                            f"each split needs at least {MIN_SPLIT_ROWS} rows, holding both labels 0 and 1")
