"""The size of the hashed id space when the feature spec does not set `hash_buckets`,
and which `slices` columns are few-valued enough to slice the evaluation by.

The run counts the distinct field-prefixed ids of the newest span (what
Transform will hash: "C3=05db9164", the empty id of each field included) and
takes the next power of two at least FACTOR times that. Power-of-two counts
keep ids nested (fingerprint mod 2^k), and the choice only grows within a
pipeline root (recorded in <pipeline_root>/id_space.json), and only when the
ids need GROWTH_SLACK times the recorded table: a week with a few more or
fewer ids keeps the same table, so last week's model can warm-start.

With frequency admission (the spec's `min_count`), only ids seen at least
min_count times in the newest span count: the others share their field's rare
row, which Transform places after the table. Counting is exact up to
SAMPLE_CAP ids per field and a hash sample beyond.

`admission()` reads what Transform counted over the whole window: per field,
the ids it admitted and the share of the field's occurrences on the rare row.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from deepfm_tfx import artifact_files, object_store, spans
from deepfm_tfx.contracts import ADMISSION_FIELD_BITS, ADMISSION_TOTAL_KEY, ADMITTED_IDS_ASSET_PREFIX
from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

# 2x: about a fifth to two fifths of ids share a row, nearly all of them rare
# ones (a rare id carries little signal); 4x doubles the table for little more.
FACTOR = 2
GROWTH_SLACK = 1.5
MIN_BUCKETS, MAX_BUCKETS = 2 ** 10, 2 ** 24
# When the data cannot be read where the pipeline is compiled (e.g. gs://).
UNREADABLE_DEFAULT = 2 ** 22
SAMPLE_CAP = 2 ** 22
# A `slices` column with more values than this in the newest span is not sliced by.
MAX_SLICE_VALUES = 100
RECORD = "id_space.json"


def buckets_for(distinct_ids: int, factor: float = FACTOR) -> int:
    needed = max(int(distinct_ids * factor), 1)
    return int(min(max(1 << (needed - 1).bit_length(), MIN_BUCKETS), MAX_BUCKETS))


class IdCounts:
    """How often each id of one field occurs, over many batches of (hash, count).

    Exact up to `cap` ids; beyond that a hash sample (the ids whose hash is below
    2^64 >> shift, the shift growing whenever the sample outgrows `cap`), scaled
    back up, so memory stays bounded at Criteo's 33.8M ids."""

    def __init__(self, cap: int = SAMPLE_CAP):
        self.cap, self.shift = cap, 0
        self.keys = np.zeros(0, np.uint64)
        self.counts = np.zeros(0, np.int64)

    def _sampled(self, keys: np.ndarray) -> np.ndarray:
        return keys >> np.uint64(64 - self.shift) == 0 if self.shift else np.ones(len(keys), bool)

    def add(self, hashes: np.ndarray, counts: np.ndarray) -> None:
        hashes = hashes.astype(np.uint64)
        keep = self._sampled(hashes)
        keys, inverse = np.unique(np.concatenate([self.keys, hashes[keep]]), return_inverse=True)
        weights = np.concatenate([self.counts, np.asarray(counts, np.int64)[keep]])
        self.keys, self.counts = keys, np.bincount(inverse, weights=weights, minlength=len(keys)).astype(np.int64)
        while len(self.keys) > self.cap:
            self.shift += 1
            keep = self._sampled(self.keys)
            self.keys, self.counts = self.keys[keep], self.counts[keep]

    def distinct(self) -> int:
        return int(len(self.keys)) << self.shift

    def at_least(self, min_count: int) -> int:
        return int((self.counts >= min_count).sum()) << self.shift


def count_distinct_ids(files: Sequence[str], spec: FeatureSpec) -> int:
    """Distinct (field, id) pairs in the files, as Transform's shared id space sees them."""
    return sum(f["seen"] for f in survey(files, spec)[0].values())


def survey(files: Sequence[str], spec: FeatureSpec) -> Tuple[Dict[str, Dict[str, int]], Dict[str, int]]:
    """Per id field, the ids seen and those seen at least its min_count times (admitted),
    and the values of each `slices` column (counted exactly up to MAX_SLICE_VALUES + 1)."""
    import pandas as pd
    import pyarrow.compute as pc

    from deepfm_tfx.components import rows

    fields = spec.id_fields
    counts = {name: IdCounts() for name in fields}
    separators = {m.name: m.separator for m in spec.multivalent}
    slice_values: Dict[str, set] = {name: set() for name in spec.slices}
    for path in files:
        for batch in rows.read_batches(path, spec):
            for i, name in enumerate(fields):
                column = batch.column(name)
                if name in separators:
                    column = pc.list_flatten(pc.split_pattern(column.fill_null(""), separators[name]))
                tally = pc.value_counts(column.cast("string").fill_null(""))
                values = tally.field("values").to_numpy(zero_copy_only=False)
                # A key per field: the same id in two fields is two ids, as "C1=x" and "C2=x" are.
                counts[name].add(pd.util.hash_array(values.astype(object), hash_key=f"deepfm-field{i:04d}"),
                                 tally.field("counts").to_numpy(zero_copy_only=False))
                if name in slice_values and len(slice_values[name]) <= MAX_SLICE_VALUES:
                    slice_values[name].update(values[:MAX_SLICE_VALUES + 1].tolist())
    per_field = {name: {"seen": c.distinct(), "admitted": c.at_least(spec.min_count_of(name))}
                 for name, c in counts.items()}
    return per_field, {name: len(v) for name, v in slice_values.items()}


def table_ids(spec: FeatureSpec, fields: Dict[str, Dict[str, int]]) -> int:
    """The ids that need a hashed row: the admitted ones, or every id of a field without admission."""
    return sum(f["admitted"] if spec.min_count_of(name) > 1 else f["seen"] for name, f in fields.items())


def _newest_files(data_root: str, spec: FeatureSpec) -> Optional[list]:
    if not os.path.isdir(data_root):
        return None
    try:
        folder = spans.newest_folder(data_root, spec.partitions) or data_root
    except DataError:  # a partition folder validation.check_data refuses, naming it
        return None
    return sorted(glob.glob(os.path.join(folder, spec.file_pattern))) or None


def newest_objects(data_root: str, spec: FeatureSpec) -> Optional[list]:
    """[url, size, ETag] of the newest span's files in a bucket, from one listing."""
    import fnmatch

    from deepfm_tfx import object_store

    try:
        objects = object_store.Store(data_root).list()
    except (OSError, ValueError):
        return None
    folders = {k.split("/", 1)[0] for k in objects if "/" in k}
    if spec.partitions:  # ISO dates sort as dates
        dated = sorted(f for f in folders if f.startswith(spec.partitions + "=") and not f.endswith(spans.HIVE_NULL))
        newest = dated[-1] if dated else None
    else:
        found = [(int(m.group(1)), f) for f in folders if (m := spans.SPAN_FOLDER.fullmatch(f))]
        newest = max(found)[1] if found else None
    pattern = f"{newest}/{spec.file_pattern}" if newest else spec.file_pattern
    return [[f"{data_root.rstrip('/')}/{k}", size, tag] for k, (size, tag) in sorted(objects.items())
            if fnmatch.fnmatchcase(k, pattern)] or None


def _signature(files: Sequence[str]) -> list:
    return [[os.path.abspath(f), os.path.getsize(f), int(os.path.getmtime(f))] for f in files]


def _read(path: str) -> Dict:
    try:
        return json.loads(artifact_files.read_text(path))
    except (OSError, ValueError):
        return {}


def resolve(spec: FeatureSpec, data_root: str, pipeline_root: Optional[str] = None) -> FeatureSpec:
    """The spec with `hash_buckets` set (as given, or chosen from the ids the newest span
    admits), and without `slices` columns that hold too many values to slice by."""
    needs_buckets = spec.categorical_encoding == "hash" and spec.hash_buckets is None
    if not needs_buckets and not spec.slices:
        return spec
    record_path = artifact_files.join(pipeline_root, RECORD) if pipeline_root else None
    record = _read(record_path) if record_path else {}
    in_store = newest_objects(data_root, spec) if object_store.is_url(data_root) else None
    files = [f[0] for f in in_store] if in_store else None if object_store.is_url(data_root) else \
        _newest_files(data_root, spec)
    if files is None:
        if not needs_buckets:
            return spec
        buckets = record.get("hash_buckets") or UNREADABLE_DEFAULT
        print(f"deepfm-tfx: cannot read {data_root} here to count its ids; hash_buckets {buckets:,}", flush=True)
        return dataclasses.replace(spec, hash_buckets=buckets)
    signature = in_store or _signature(files)
    min_counts = {name: spec.min_count_of(name) for name in spec.id_fields}
    same_admission = record.get("min_counts") == min_counts
    if record.get("files") == signature and same_admission and set(record.get("slice_values", {})) == set(spec.slices):
        fields, slice_values = record["fields"], record["slice_values"]  # this span was counted before
    else:
        fields, slice_values = survey(files, spec)
    too_many = [name for name in spec.slices if slice_values.get(name, 0) > MAX_SLICE_VALUES]
    if too_many:
        # Every value is a slice with its own metrics: tens of thousands would swamp the Evaluator.
        print(f"deepfm-tfx: not slicing by {', '.join(too_many)}: more than {MAX_SLICE_VALUES} values "
              f"in the newest span", flush=True)
        spec = dataclasses.replace(spec, slices=[name for name in spec.slices if name not in too_many])
    if not needs_buckets:
        return spec
    # Only grow, and only when outgrown by half: a week with fewer or a few more ids keeps the
    # table, and with it the warm start (admitted counts hover around a power of two too).
    ids = table_ids(spec, fields)
    recorded = (same_admission and record.get("hash_buckets")) or 0
    buckets = recorded if buckets_for(ids, FACTOR / GROWTH_SLACK) <= recorded else max(buckets_for(ids), recorded)
    if record_path:
        artifact_files.write_text(record_path, json.dumps(
            {"hash_buckets": buckets, "distinct_ids": sum(f["seen"] for f in fields.values()),
             "admitted_ids": table_ids(spec, fields), "fields": fields, "min_counts": min_counts,
             "slice_values": slice_values, "files": signature}, indent=2))
    return dataclasses.replace(spec, hash_buckets=buckets)


def chosen(pipeline_root: str) -> Dict:
    """What resolve() recorded for a pipeline root ({} if the spec set the count)."""
    return _read(os.path.join(pipeline_root, RECORD))


def admission(transform_graph: str, spec: FeatureSpec) -> Dict[str, Dict[str, float]]:
    """Per admitted field, what Transform counted over the window: the ids it admitted and
    the share of the field's occurrences that fall on its rare row ({} without admission)."""
    fields = spec.id_fields
    admitted = {name: 0 for name in spec.admitted_fields}
    own = dict(admitted)
    total = dict(admitted)
    assets = os.path.join(transform_graph, "transform_fn", "assets")
    for path in artifact_files.glob(os.path.join(assets, ADMITTED_IDS_ASSET_PREFIX + "*")):
        for line in artifact_files.read_text(path).splitlines():
            if line.strip():
                count, key = line.split()
                field = fields[int(key) >> ADMISSION_FIELD_BITS]
                if field not in admitted:
                    continue
                if int(key) & ADMISSION_TOTAL_KEY == ADMISSION_TOTAL_KEY:
                    total[field] += int(count)
                else:
                    admitted[field] += 1
                    own[field] += int(count)
    return {name: {"admitted": admitted[name],
                   "rare_share": round(1 - own[name] / total[name], 4) if total[name] else None}
            for name in admitted}
