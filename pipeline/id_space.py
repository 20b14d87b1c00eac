"""The size of the hashed id space when the feature spec does not set `hash_buckets`,
and which `slices` columns are few-valued enough to slice the evaluation by.

The run counts the distinct field-prefixed ids of the newest span (what
Transform will hash: "C3=05db9164", the empty id of each field included) and
takes the next power of two at least FACTOR times that. Power-of-two counts
keep ids nested (fingerprint mod 2^k), and the choice only grows within a
pipeline root (recorded in <pipeline_root>/id_space.json): a week with a few
more or fewer ids keeps the same table, so last week's model can warm-start.

Counting is exact up to SKETCH_SIZE ids and a k-minimum-values estimate
(about 0.4% error) beyond, so memory stays bounded at Criteo's 33.8M ids.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from deepfm_tfx import spans
from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

# 2x: about a fifth to two fifths of ids share a row, nearly all of them rare
# ones (a rare id carries little signal); 4x doubles the table for little more.
FACTOR = 2
MIN_BUCKETS, MAX_BUCKETS = 2 ** 10, 2 ** 24
# When the data cannot be read where the pipeline is compiled (e.g. gs://).
UNREADABLE_DEFAULT = 2 ** 22
SKETCH_SIZE = 2 ** 16
# A `slices` column with more values than this in the newest span is not sliced by.
MAX_SLICE_VALUES = 100
RECORD = "id_space.json"


def buckets_for(distinct_ids: int) -> int:
    needed = max(int(distinct_ids) * FACTOR, 1)
    return int(min(max(1 << (needed - 1).bit_length(), MIN_BUCKETS), MAX_BUCKETS))


class DistinctCounter:
    """Distinct values over many batches: the SKETCH_SIZE smallest 64-bit hashes."""

    def __init__(self, size: int = SKETCH_SIZE):
        self.size = size
        self.smallest = np.zeros(0, np.uint64)

    def add(self, hashes: np.ndarray) -> None:
        merged = np.unique(np.concatenate([self.smallest, hashes.astype(np.uint64)]))
        self.smallest = merged[:self.size]

    def count(self) -> int:
        if len(self.smallest) < self.size:
            return int(len(self.smallest))
        # k-minimum values: the k-th smallest of n uniform hashes sits near k / n of the range.
        return int(round((self.size - 1) / (float(self.smallest[-1]) / 2.0 ** 64)))


def count_distinct_ids(files: Sequence[str], spec: FeatureSpec) -> int:
    """Distinct (field, id) pairs in the files, as Transform's shared id space sees them."""
    return survey(files, spec)[0]


def survey(files: Sequence[str], spec: FeatureSpec) -> Tuple[int, Dict[str, int]]:
    """Distinct (field, id) pairs in the files, and the values of each `slices` column
    (counted exactly up to MAX_SLICE_VALUES + 1)."""
    import pandas as pd
    import pyarrow.compute as pc

    from deepfm_tfx.components import rows

    counter = DistinctCounter()
    fields = list(spec.categorical) + [m.name for m in spec.multivalent]
    separators = {m.name: m.separator for m in spec.multivalent}
    slice_values: Dict[str, set] = {name: set() for name in spec.slices}
    for path in files:
        for batch in rows.read_batches(path, spec):
            for i, name in enumerate(fields):
                column = batch.column(name)
                if name in separators:
                    column = pc.list_flatten(pc.split_pattern(column.fill_null(""), separators[name]))
                values = pc.unique(column.cast("string").fill_null("")).to_numpy(zero_copy_only=False)
                # A key per field: the same id in two fields is two ids, as "C1=x" and "C2=x" are.
                counter.add(pd.util.hash_array(values.astype(object), hash_key=f"deepfm-field{i:04d}"))
                if name in slice_values and len(slice_values[name]) <= MAX_SLICE_VALUES:
                    slice_values[name].update(values[:MAX_SLICE_VALUES + 1].tolist())
    return counter.count(), {name: len(v) for name, v in slice_values.items()}


def _newest_files(data_root: str, spec: FeatureSpec) -> Optional[list]:
    if not os.path.isdir(data_root):
        return None
    try:
        folder = spans.newest_folder(data_root, spec.partitions) or data_root
    except DataError:  # a partition folder validation.check_data refuses, naming it
        return None
    return sorted(glob.glob(os.path.join(folder, spec.file_pattern))) or None


def _signature(files: Sequence[str]) -> list:
    return [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]


def _read(path: str) -> Dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def resolve(spec: FeatureSpec, data_root: str, pipeline_root: Optional[str] = None) -> FeatureSpec:
    """The spec with `hash_buckets` set (as given, or chosen from the newest span's distinct
    ids), and without `slices` columns that hold too many values to slice by."""
    needs_buckets = spec.categorical_encoding == "hash" and spec.hash_buckets is None
    if not needs_buckets and not spec.slices:
        return spec
    record_path = os.path.join(pipeline_root, RECORD) if pipeline_root and "://" not in pipeline_root else None
    record = _read(record_path) if record_path else {}
    files = _newest_files(data_root, spec)
    if files is None:
        if not needs_buckets:
            return spec
        buckets = record.get("hash_buckets") or UNREADABLE_DEFAULT
        print(f"deepfm-tfx: cannot read {data_root} here to count its ids; hash_buckets {buckets:,}", flush=True)
        return dataclasses.replace(spec, hash_buckets=buckets)
    signature = _signature(files)
    if record.get("files") == signature and set(record.get("slice_values", {})) == set(spec.slices):
        distinct, slice_values = record["distinct_ids"], record["slice_values"]  # this span was counted before
    else:
        distinct, slice_values = survey(files, spec)
    too_many = [name for name in spec.slices if slice_values.get(name, 0) > MAX_SLICE_VALUES]
    if too_many:
        # Every value is a slice with its own metrics: tens of thousands would swamp the Evaluator.
        print(f"deepfm-tfx: not slicing by {', '.join(too_many)}: more than {MAX_SLICE_VALUES} values "
              f"in the newest span", flush=True)
        spec = dataclasses.replace(spec, slices=[name for name in spec.slices if name not in too_many])
    if not needs_buckets:
        return spec
    # Only grow: a smaller week keeps the table, and with it the warm start.
    buckets = max(buckets_for(distinct), record.get("hash_buckets") or 0)
    if record_path:
        os.makedirs(pipeline_root, exist_ok=True)
        with open(record_path + ".tmp", "w") as f:
            json.dump({"hash_buckets": buckets, "distinct_ids": distinct, "slice_values": slice_values,
                       "files": signature}, f, indent=2)
        os.replace(record_path + ".tmp", record_path)
    return dataclasses.replace(spec, hash_buckets=buckets)


def chosen(pipeline_root: str) -> Dict:
    """What resolve() recorded for a pipeline root ({} if the spec set the count)."""
    return _read(os.path.join(pipeline_root, RECORD))
