"""Exact counts of int64 keys over Transform's whole dataset, as a vocabulary file.

What `tft.vocabulary(keys, frequency_threshold=m, store_frequency=True)` writes
("<count> <key>" lines, largest count first, then largest key as text), but
counted with numpy: each batch becomes its unique keys and their counts, and
partial counts merge by sorting. tft.vocabulary hands Beam one element per key
occurrence (beam.combiners.Count.PerElement), which made counting the ids of
500k Criteo rows cost Transform about as much as everything else it does.

Imported by preprocessing_fn only, where Transform runs Beam. A cacheable analyzer: the per-span counts go into Transform's analyzer cache,
so a window re-counts only its new spans, as tft.vocabulary's do.
"""
from __future__ import annotations

import io
import os
from typing import List, Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

# A partial count is (unique keys ascending, their counts), both int64.
Counts = Tuple[np.ndarray, np.ndarray]
# Pending per-batch counts are merged once they hold this many entries, bounding memory.
MERGE_AT = 4_000_000
# What tft.vocabulary writes when nothing reaches the threshold: lookups fail on an empty file.
EMPTY_LINE = b"1 -1\n"


def merge(parts: List[Counts]) -> Counts:
    """One partial count from several: keys unique and ascending, counts summed exactly."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts)


def count(keys: np.ndarray) -> Counts:
    unique, counts = np.unique(np.asarray(keys, np.int64).reshape(-1), return_counts=True)
    return unique, counts.astype(np.int64)


def vocabulary_lines(counts: Counts, min_count: int) -> bytes:
    """The vocabulary file tft.vocabulary writes for these counts with frequency_threshold=min_count."""
    keys, n = counts
    kept = n >= min_count
    entries = sorted(zip(n[kept].tolist(), [str(k).encode() for k in keys[kept].tolist()]), reverse=True)
    if not entries:
        return EMPTY_LINE
    out = io.BytesIO()
    for c, k in entries:
        out.write(b"%d %s\n" % (c, k))
    return out.getvalue()


class _Accumulate(beam.CombineFn):
    """Partial counts of batches (tuples of one key array) or of partial counts."""

    def __init__(self, of_batches: bool):
        self.of_batches = of_batches

    def create_accumulator(self):
        return []

    def add_input(self, parts, element):
        parts.append(count(element[0]) if self.of_batches else element)
        if sum(len(p[0]) for p in parts) > MERGE_AT:
            parts = [merge(parts)]
        return parts

    def merge_accumulators(self, accumulators):
        return [merge([p for parts in accumulators for p in parts])]

    def extract_output(self, parts):
        return merge(parts)


class _Stable:
    """A repr without the object's address: Transform's analyzer cache keys hash it."""

    def __repr__(self):
        return f"<{type(self).__name__}>"


class _CountBatches(_Stable, beam.PTransform):
    def expand(self, pcoll):
        return pcoll | "CountBatches" >> beam.CombineGlobally(_Accumulate(of_batches=True))


class _MergeCounts(_Stable, beam.PTransform):
    def expand(self, pcoll):
        return pcoll | "MergeCounts" >> beam.CombineGlobally(_Accumulate(of_batches=False))


class _Write(_Stable, tft_beam.experimental.PTransformAnalyzer):
    """The vocabulary file of the merged counts, in Transform's temporary folder; outputs its path."""

    def __init__(self, min_count: int, filename: str):
        super().__init__()
        self.min_count, self.filename = min_count, filename

    def expand(self, pcoll):
        return pcoll | "WriteVocabulary" >> beam.Map(self._write)

    def _write(self, counts: Counts):
        tf.io.gfile.makedirs(self.base_temp_dir)
        path = os.path.join(self.base_temp_dir, self.filename)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(vocabulary_lines(counts, self.min_count))
        return np.array(path.encode())


class _CountsCoder(tft.experimental.PTransformAnalyzerCacheCoder):
    """A span's partial count in the analyzer cache: both arrays as .npy bytes."""

    def encode_cache(self, counts: Counts) -> bytes:
        out = io.BytesIO()
        np.save(out, np.stack(counts) if len(counts[0]) else np.zeros((2, 0), np.int64))
        return out.getvalue()

    def decode_cache(self, encoded: bytes) -> Counts:
        both = np.load(io.BytesIO(encoded))
        return both[0], both[1]


def counted_vocabulary(keys: tf.Tensor, min_count: int, filename: str) -> tf.Tensor:
    """The path of the vocabulary file of `keys` seen at least min_count times in the dataset,
    registered under `filename` (TFTransformOutput.vocabulary_file_by_name)."""
    analyzer = tft.experimental.CacheablePTransformAnalyzer(_CountBatches(), _MergeCounts(),
                                                            _Write(min_count, filename), _CountsCoder())
    path, = tft.experimental.ptransform_analyzer(
        inputs=[tf.reshape(tf.cast(keys, tf.int64), [-1])], ptransform=analyzer,
        output_dtypes=[tf.string], output_shapes=[[]], output_asset_default_values=[EMPTY_LINE],
        name=filename)
    tft.annotate_asset(filename, filename)
    return path
