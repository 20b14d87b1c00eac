"""Reads a span's TFRecord files of tf.Example, plain or GZIP, typed by the feature spec; no TFX
or TensorFlow here.

Records are unframed and their crc32c checked here, as TensorFlow writes them, then decoded in
batches by tfx_bsl's C++ decoder into Arrow lists, which arrow_columns types as csv_rows types a
CSV's. A feature the spec names and a record lacks (or holds empty) is missing; a feature of the
wrong kind, or with several values where the spec wants one, is an error naming the file, the
record (counted from 0) and the feature.
"""
from __future__ import annotations

import contextlib
import gzip
import struct
import zlib
from typing import Dict, Iterable, Iterator, List, Sequence

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tfx_bsl.coders import example_coder

from deepfm_tfx.components import arrow_columns, csv_rows
from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

BATCH_RECORDS = 16 * 1024
_GZIP = b"\x1f\x8b"
_KIND = {pa.int64(): "int64_list", pa.float32(): "float_list", pa.binary(): "bytes_list"}


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _kinds(spec: FeatureSpec, name: str) -> List[str]:
    if name == spec.label:
        return ["int64_list"]
    if name in spec.numerical:
        return ["float_list", "int64_list"]
    return ["bytes_list", "int64_list"]


def records(path: str) -> Iterator[bytes]:
    """The file's records, each checked against its crc32c."""
    raw = csv_rows.open_raw(path)
    with raw:
        head = raw.read(2)
        raw.seek(0)
        f = gzip.GzipFile(fileobj=raw) if head == _GZIP else raw
        index = 0
        try:
            while header := f.read(12):
                if len(header) < 12:
                    raise DataError(f"{path}, record {index}: truncated (a partial record header)")
                (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
                if crc != _masked_crc(header[:8]):
                    if index == 0:
                        raise DataError(f"{path}: is not a TFRecord file (its first record header's checksum "
                                        f"does not match)")
                    raise DataError(f"{path}, record {index}: corrupt (the record header's checksum does not match)")
                data, footer = f.read(length), f.read(4)
                if len(data) < length or len(footer) < 4:
                    raise DataError(f"{path}, record {index}: truncated ({len(data)} of {length} bytes)")
                if struct.unpack("<I", footer)[0] != _masked_crc(data):
                    raise DataError(f"{path}, record {index}: corrupt (the record's checksum does not match)")
                yield data
                index += 1
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}, record {index}: gzip data is corrupt or truncated ({e})") from None


def write(path: str, serialized: Iterable[bytes]) -> None:
    """GZIP TFRecord, as tf.io.TFRecordWriter writes it, without TensorFlow."""
    with gzip.open(path, "wb") as f:
        for data in serialized:
            length = struct.pack("<Q", len(data))
            f.write(length + struct.pack("<I", _masked_crc(length)) + data + struct.pack("<I", _masked_crc(data)))


def check_files(files: Sequence[str], spec: FeatureSpec, where: str) -> None:
    """Each file is TFRecord (its first record checks out) and the span has records."""
    if not files:
        raise DataError(f"{where}: no data files match the pattern")
    has_rows = False
    for path in files:
        with contextlib.closing(records(path)) as first:
            has_rows = next(first, None) is not None or has_rows
    if not has_rows:
        raise DataError(f"{where}: the span is empty (its files hold no records)")


def _kind_of(column: pa.Array) -> str:
    return _KIND.get(arrow_columns.value_type(column.type).value_type, str(column.type))


def _locate(path: str, spec: FeatureSpec, chunk: List[bytes], start: int, why: Exception) -> DataError:
    """Decodes a chunk the batch decoder refused record by record, to name the record and feature."""
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    first: Dict[str, str] = {}
    for i, record in enumerate(chunk):
        where = f"{path}, record {start + i}"
        try:
            batch = decoder.DecodeBatch([record])
        except RuntimeError:
            return DataError(f"{where}: is not a tf.Example")
        for name in spec.all_columns:
            if name not in batch.schema.names or pa.types.is_null(batch.column(name).type):
                continue
            kind = _kind_of(batch.column(name))
            if kind not in _kinds(spec, name):
                return DataError(f"{where}, feature '{name}': is a {kind}, expected {' or '.join(_kinds(spec, name))}")
            if first.setdefault(name, kind) != kind:
                return DataError(f"{where}, feature '{name}': is a {kind}, but earlier records hold a "
                                 f"{first[name]}; a feature keeps one kind")
    return DataError(f"{path}, records {start} to {start + len(chunk) - 1}: cannot be decoded "
                     f"({str(why).splitlines()[0]})")


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _feature(batch: pa.RecordBatch, spec: FeatureSpec, name: str, path: str, start: int) -> pa.Array:
    """A spec feature as one value per record (a list for multivalent ones), null where missing."""
    n = batch.num_rows
    if name not in batch.schema.names or pa.types.is_null(batch.column(name).type):
        return pa.nulls(n)
    column = batch.column(name)
    lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
    if not lengths.any():  # empty lists of any kind are missing values
        return pa.nulls(n)
    kind = _kind_of(column)
    if kind not in _kinds(spec, name):
        row = start + _first_row(lengths > 0)
        raise DataError(f"{path}, record {row}, feature '{name}': is a {kind}, expected "
                        f"{' or '.join(_kinds(spec, name))}")
    if name in {m.name for m in spec.multivalent}:
        return column
    if (lengths > 1).any():
        row = _first_row(lengths > 1)
        raise DataError(f"{path}, record {start + row}, feature '{name}': holds {lengths[row]} values, expected one")
    # Each record holds 0 or 1 values: the i-th value belongs to the i-th record holding one.
    position = np.cumsum(lengths) - 1
    return column.flatten().take(pa.array(position, mask=lengths == 0))


def read_batches(path: str, spec: FeatureSpec) -> Iterator[pa.RecordBatch]:
    """The file's records in Arrow batches, typed; a bad record raises a DataError naming it and the feature."""
    decoder = example_coder.ExamplesToRecordBatchDecoder()
    start = 0
    chunk: List[bytes] = []
    for record in records(path):
        chunk.append(record)
        if len(chunk) == BATCH_RECORDS:
            yield _typed(decoder, chunk, spec, path, start)
            start += len(chunk)
            chunk = []
    if chunk:
        yield _typed(decoder, chunk, spec, path, start)


def _typed(decoder, chunk: List[bytes], spec: FeatureSpec, path: str, start: int) -> pa.RecordBatch:
    try:
        batch = decoder.DecodeBatch(chunk)
    except RuntimeError as e:  # a record that is not an Example, or one feature in two kinds
        raise _locate(path, spec, chunk, start, e) from None
    columns = {name: _feature(batch, spec, name, path, start) for name in spec.all_columns}
    return arrow_columns.typed_batch(columns, spec, path, lambda i: f"{path}, record {start + i}", noun="feature")
