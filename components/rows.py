"""A span's rows as typed Arrow batches, whatever the spec's format; no TFX or TensorFlow here.

Every reader gives the same batches (label int64, numbers float32, ids and multivalent
features strings) and refuses bad input with the file, row and column named, so
example_encoder writes the same tf.Examples from a CSV, a Parquet or a TFRecord file.
"""
from __future__ import annotations

import importlib
from typing import Iterator, Sequence

import pyarrow as pa

from deepfm_tfx.schemas.feature_spec import FeatureSpec

_READERS = {"csv": "csv_rows", "tsv": "csv_rows", "parquet": "parquet_rows", "tfrecord": "tfrecord_rows"}


def _reader(spec: FeatureSpec):
    # Imported when used: the TFRecord reader's decoder costs a second to import.
    return importlib.import_module(f"deepfm_tfx.components.{_READERS[spec.format]}")


def check_files(files: Sequence[str], spec: FeatureSpec, where: str) -> None:
    """Cheap checks before any work: the files are of the spec's format, hold its columns, and the span has rows."""
    _reader(spec).check_files(files, spec, where)


def read_batches(path: str, spec: FeatureSpec) -> Iterator[pa.RecordBatch]:
    """The file's rows in typed Arrow batches; a bad value raises a DataError naming its row and column."""
    return _reader(spec).read_batches(path, spec)
