"""Reads a span's CSV/TSV files typed by the feature spec; no TFX or TensorFlow here.

SpecCsvExampleGen writes what this reads, and `deepfm-tfx run` scans the
newest span with it before any component starts, so a bad file fails in
a second with one line naming the file, row and column. The rules:

- A file is UTF-8 text, gzip-compressed or not whatever its name; a UTF-8
  BOM is skipped. Other archives, binary files and 0-byte files are refused.
- The label is 0 or 1. A number is a finite float32: `nan`, `inf` and values
  beyond float32 (1e39) are data errors, never read as missing; only an empty
  field is missing.
- A row's split is a pure function of its content (or of the spec's
  `split_key` column), and its tf.Example bytes are too: the same files give
  byte-identical splits in any process, on any runner.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import math
import os
import re
import zlib
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

BLOCK_BYTES = 16 << 20
# Fewer rows make the Evaluator's AUC noise (its standard error passes 0.05,
# five times the default --max-auc-drop) and the trainer's split pointless.
MIN_SPLIT_ROWS = 100
LABELS = (0, 1)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# Leading bytes of formats that are not CSV text.
_GZIP = b"\x1f\x8b"
_OTHER_FORMATS = ((b"PK\x03\x04", "a zip archive"), (b"BZh", "bzip2-compressed"),
                  (b"\xfd7zXZ\x00", "xz-compressed"), (b"\x28\xb5\x2f\xfd", "zstd-compressed"))
_BOM = b"\xef\xbb\xbf"
# What Arrow's parsers accept (checked against pyarrow 10): spaces around, no '+'.
_INTEGER = re.compile(r"[ \t]*-?[0-9]+[ \t]*")
_NUMBER = re.compile(r"[ \t]*-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*")
_NON_FINITE = re.compile(r"[ \t]*[+-]?(nan|inf|infinity)[ \t]*", re.IGNORECASE)
_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _open_raw(path: str) -> BinaryIO:
    if "://" in path:
        from tfx.dsl.io import fileio  # remote filesystems only: TFX's import costs seconds
        return fileio.open(path, "rb")
    return open(path, "rb")


def _size(path: str) -> int:
    if "://" in path:
        from tfx.dsl.io import fileio
        return fileio.stat(path).length
    return os.path.getsize(path)


def sniff(path: str) -> Optional[str]:
    """'gzip' for gzip content, None for plain text; a DataError for anything else."""
    try:
        with _open_raw(path) as f:
            head = f.read(4096)
    except OSError as e:
        raise DataError(f"{path}: cannot be read: {e.strerror or e}") from None
    if not head:
        raise DataError(f"{path}: the file is empty (0 bytes)")
    if head.startswith(_GZIP):
        return "gzip"
    for magic, what in _OTHER_FORMATS:
        if head.startswith(magic):
            raise DataError(f"{path}: is {what}, not CSV text; decompress it first (gzip is read as is)")
    if b"\x00" in head:
        raise DataError(f"{path}: is not a text file (it holds NUL bytes)")
    return None


def open_text_bytes(path: str) -> BinaryIO:
    """The file's bytes, gunzipped if they are gzip."""
    raw = _open_raw(path)
    return gzip.GzipFile(fileobj=raw) if sniff(path) == "gzip" else raw


def _arrow_input(path: str):
    compression = sniff(path)
    if "://" not in path:
        return pa.input_stream(path, compression=compression)
    return pa.PythonFile(open_text_bytes(path), mode="r")


def header_columns(path: str, spec: FeatureSpec) -> List[str]:
    if not spec.header:
        return list(spec.column_names)
    try:
        with open_text_bytes(path) as f:
            first = f.readline()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: gzip data is corrupt or truncated ({e})") from None
    if first.startswith(_BOM):
        first = first[len(_BOM):]
    try:
        text = first.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}, row 1: the header is not UTF-8 text (byte {first[e.start]:#04x} at "
                        f"offset {e.start})") from None
    return next(csv.reader([text.rstrip("\r\n")], delimiter=spec.delimiter), [])


def check_files(files: Sequence[str], spec: FeatureSpec, where: str) -> None:
    """Cheap checks before any work: files exist, are text, have the spec's columns; the span has rows."""
    if not files:
        raise DataError(f"{where}: no data files match the pattern")
    has_rows = False
    for path in files:
        columns = header_columns(path, spec)
        missing = [c for c in spec.all_columns if c not in columns]
        if missing:
            raise DataError(f"{path}: header lacks column(s) {missing} named by feature spec "
                            f"'{spec.name}' (header has {columns[:8]}{'...' if len(columns) > 8 else ''})")
        with open_text_bytes(path) as f:
            lines = [f.readline() for _ in range(2 if spec.header else 1)]
        has_rows = has_rows or bool(lines[-1].strip())
    if not has_rows:
        raise DataError(f"{where}: the span is empty (its files hold no data rows)")


def _column_types(spec: FeatureSpec) -> Dict[str, pa.DataType]:
    # Strings, not binary: Arrow then refuses text that is not UTF-8.
    types = {spec.label: pa.int64()}
    types.update({c: pa.float32() for c in spec.numerical})
    types.update({c: pa.string() for c in spec.categorical})
    types.update({m.name: pa.string() for m in spec.multivalent})
    return types


def _open_csv(path: str, spec: FeatureSpec) -> pcsv.CSVStreamingReader:
    read = pcsv.ReadOptions(block_size=BLOCK_BYTES, column_names=None if spec.header else spec.column_names)
    return pcsv.open_csv(
        _arrow_input(path), read_options=read,
        parse_options=pcsv.ParseOptions(delimiter=spec.delimiter),
        convert_options=pcsv.ConvertOptions(
            column_types=_column_types(spec), include_columns=spec.all_columns,
            # Only an empty field is missing: Arrow's default list would read 'nan', 'NULL'... as missing.
            strings_can_be_null=True, quoted_strings_can_be_null=True, null_values=[""]))


def _bad_value(name: str, kind: str, value: str) -> Optional[str]:
    """Why `value` is not a valid `kind` ('label' or 'number'), or None."""
    if kind == "label":
        if not _INTEGER.fullmatch(value):
            return f"expected a label 0 or 1, got {value!r}"
        if int(value) not in LABELS:
            return f"expected a label 0 or 1, got {value!r}"
        return None
    if _NON_FINITE.fullmatch(value):
        return f"expected a finite number, got {value!r} (non-finite numbers are data errors; leave the field " \
               f"empty for a missing value)"
    if not _NUMBER.fullmatch(value):
        return f"expected a number, got {value!r}"
    if not math.isfinite(float(value)) or abs(float(value)) > _FLOAT32_MAX:
        return f"expected a number within float32's range (±3.4e38), got {value!r}"
    return None


def _decoded_lines(f: BinaryIO) -> Iterator[str]:
    first = True
    for line in f:
        if first and line.startswith(_BOM):
            line = line[len(_BOM):]
        first = False
        # Undecodable bytes survive as lone surrogates, so the field holding them can be named.
        yield line.decode("utf-8", "surrogateescape").rstrip("\r\n")


def locate_bad_row(path: str, spec: FeatureSpec, why: object) -> DataError:
    """Re-scans a file the fast reader refused, in Python, to name the row and column."""
    kinds = {spec.label: "label", **{c: "number" for c in spec.numerical}}
    try:
        with open_text_bytes(path) as f:
            reader = csv.reader(_decoded_lines(f), delimiter=spec.delimiter)
            columns = next(reader) if spec.header else list(spec.column_names)
            index = {c: i for i, c in enumerate(columns)}
            for row in reader:
                if not row:
                    continue
                where = f"{path}, row {reader.line_num}"
                if len(row) != len(columns):
                    return DataError(f"{where}: expected {len(columns)} fields, got {len(row)}")
                for name in spec.all_columns:
                    value = row[index[name]]
                    if bad := _UNDECODABLE.search(value):
                        byte = ord(bad.group()) - 0xdc00
                        return DataError(f"{where}, column '{name}': not UTF-8 text (byte {byte:#04x})")
                    if name == spec.label and value == "":
                        return DataError(f"{where}, column '{name}': the label is missing")
                    # Only an empty field is missing; one of spaces is not a number (nor is it to Arrow).
                    if name in kinds and value != "" and (problem := _bad_value(name, kinds[name], value)):
                        return DataError(f"{where}, column '{name}': {problem}")
    except (OSError, EOFError, zlib.error) as e:
        return DataError(f"{path}: gzip data is corrupt or truncated ({e})")
    except csv.Error as e:
        return DataError(f"{path}: not parseable as {spec.format.upper()}: {e}")
    return DataError(f"{path}: could not be parsed: {str(why).splitlines()[0] if str(why) else why!r}")


def read_batches(path: str, spec: FeatureSpec) -> Iterator[pa.RecordBatch]:
    """The file's rows in Arrow blocks, typed; any bad value raises a DataError naming its row and column."""
    numerical = spec.numerical
    try:
        for batch in _open_csv(path, spec):
            label = batch.column(spec.label)
            if label.null_count or not pc.all(pc.is_in(label, pa.array(LABELS, pa.int64()))).as_py():
                raise locate_bad_row(path, spec, "a label that is not 0 or 1")
            for name in numerical:
                column = batch.column(name)
                if pc.any(pc.invert(pc.is_finite(column).fill_null(True))).as_py():
                    raise locate_bad_row(path, spec, f"a non-finite number in '{name}'")
            yield batch
    except (pa.ArrowInvalid, OSError, EOFError, zlib.error) as e:
        raise locate_bad_row(path, spec, e) from None


# --- tf.Example bytes, built column by column ---------------------------------------------------
#
# tfx_bsl's encoder serializes each tf.Example's feature map in a per-process
# random order, so the same row gives different bytes in different runs and
# a hash of them splits differently. These are the same Examples with the
# features in the spec's column order.

def _binary(lengths: np.ndarray, data: np.ndarray) -> pa.Array:
    offsets = np.zeros(len(lengths) + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _varints(values: np.ndarray) -> pa.Array:
    """Protobuf varints of non-negative integers, one per row."""
    if not len(values) or values.max() < 0x80:  # the common case: one byte each
        return _binary(np.ones(len(values), np.int64), values.astype(np.uint8))
    v = values.astype(np.uint64)
    nbytes = 1 + sum((v >= np.uint64(1 << (7 * i))).astype(np.int64) for i in range(1, 5))
    table = np.zeros((len(v), 5), np.uint8)
    for i in range(5):
        more = (nbytes > i + 1).astype(np.uint8) << 7
        table[:, i] = ((v >> np.uint64(7 * i)) & np.uint64(0x7F)).astype(np.uint8) | more
    return _binary(nbytes, table[np.arange(5) < nbytes[:, None]])


def _varint_len(values: np.ndarray) -> np.ndarray:
    return 1 + sum((values >= (1 << (7 * i))).astype(np.int64) for i in range(1, 5))


def _lengths(array: pa.Array) -> np.ndarray:
    return pc.binary_length(array).to_numpy(zero_copy_only=False).astype(np.int64)


def _join(*parts) -> pa.Array:
    parts = [pa.scalar(p, pa.binary()) if isinstance(p, bytes) else p for p in parts]
    return pc.binary_join_element_wise(*parts, pa.scalar(b"", pa.binary()))


def _bytes_feature(values: pa.Array) -> pa.Array:
    """Feature{bytes_list{value: v}} per row; a missing row gets an empty Feature, as tfx_bsl writes it."""
    values = values.cast(pa.binary())
    n = _lengths(values.fill_null(b""))
    inner = n + 1 + _varint_len(n)  # BytesList
    feature = _join(b"\x0a", _varints(inner), b"\x0a", _varints(n), values.fill_null(b""))
    return pc.if_else(values.is_null(), pa.scalar(b"", pa.binary()), feature)


def _multi_bytes_feature(lists: pa.Array) -> pa.Array:
    """Feature{bytes_list{value: v1, v2...}} per row."""
    tokens = lists.flatten().cast(pa.binary())
    n = _lengths(tokens)
    entries = _join(b"\x0a", _varints(n), tokens)
    offsets = lists.offsets
    joined = pc.binary_join(pa.ListArray.from_arrays(offsets, entries), pa.scalar(b"", pa.binary()))
    inner = _lengths(joined.fill_null(b""))
    feature = _join(b"\x0a", _varints(inner), joined.fill_null(b""))
    return pc.if_else(lists.is_null(), pa.scalar(b"", pa.binary()), feature)


def _float_feature(values: pa.Array) -> pa.Array:
    """Feature{float_list{value: x}} per row: 12 06 0a 04 <float32, little-endian>."""
    present = ~values.is_null().to_numpy(zero_copy_only=False)
    x = values.fill_null(0.0).to_numpy(zero_copy_only=False).astype("<f4")
    table = np.empty((len(x), 8), np.uint8)
    table[:, :4] = np.frombuffer(b"\x12\x06\x0a\x04", np.uint8)
    table[:, 4:] = x.view(np.uint8).reshape(-1, 4)
    return _binary(np.where(present, 8, 0), table[present].ravel())


def _label_feature(values: pa.Array) -> pa.Array:
    """Feature{int64_list{value: y}} for y in {0, 1}: 1a 03 0a 01 <y>."""
    y = values.to_numpy(zero_copy_only=False).astype(np.uint8)
    table = np.empty((len(y), 5), np.uint8)
    table[:, :4] = np.frombuffer(b"\x1a\x03\x0a\x01", np.uint8)
    table[:, 4] = y
    return _binary(np.full(len(y), 5), table.ravel())


def _map_entry(name: str, feature: pa.Array) -> pa.Array:
    """Features' field 1 (the map) holding one {key: name, value: feature} entry per row."""
    key = name.encode()
    head = b"\x0a" + _varint_bytes(len(key)) + key + b"\x12"
    flen = _lengths(feature)
    entry = len(head) + _varint_len(flen) + flen
    return _join(b"\x0a", _varints(entry), head, _varints(flen), feature)


def _varint_bytes(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def encode(batch: pa.RecordBatch, spec: FeatureSpec) -> pa.Array:
    """Serialized tf.Examples, one per row, byte-for-byte a function of the row."""
    multivalent = {m.name: m for m in spec.multivalent}
    entries = []
    for name in spec.all_columns:
        column = batch.column(name)
        if name == spec.label:
            feature = _label_feature(column)
        elif name in multivalent:
            feature = _multi_bytes_feature(pc.split_pattern(column, multivalent[name].separator))
        elif name in spec.numerical:
            feature = _float_feature(column)
        else:
            feature = _bytes_feature(column)
        entries.append(_map_entry(name, feature))
    features = _join(*entries) if len(entries) > 1 else entries[0]
    return _join(b"\x0a", _varints(_lengths(features)), features)


# --- splits ------------------------------------------------------------------------------------

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


def shuffled(batch: pa.RecordBatch, path: str, block: int) -> pa.RecordBatch:
    # Deterministic per file and block: re-ingesting writes the same files.
    order = np.random.default_rng([zlib.crc32(os.path.basename(path).encode()), block])
    return batch.take(pa.array(order.permutation(batch.num_rows)))


def split_file(path: str, spec: FeatureSpec, splits: Sequence[Split],
               shuffle: bool = True) -> Iterator[Tuple[int, List[bytes], np.ndarray]]:
    """Per Arrow block: (split index, its serialized Examples, their labels) for each split."""
    for block, batch in enumerate(read_batches(path, spec)):
        if shuffle:
            batch = shuffled(batch, path, block)
        examples = encode(batch, spec)
        which = split_indices(examples, batch, spec, splits)
        labels = batch.column(spec.label).to_numpy(zero_copy_only=False)
        for i in range(len(splits)):
            rows = np.flatnonzero(which == i)
            if len(rows):
                yield i, examples.take(pa.array(rows)).to_pylist(), labels[rows]


def parse_file(path: str, spec: FeatureSpec, shuffle: bool = False) -> Iterator[bytes]:
    """One serialized tf.Example per row of a CSV/TSV file, in file order unless `shuffle`."""
    for block, batch in enumerate(read_batches(path, spec)):
        if shuffle:
            batch = shuffled(batch, path, block)
        yield from encode(batch, spec).to_pylist()


# --- how many rows each split gets ------------------------------------------------------------

Counts = Dict[str, Dict[int, int]]  # split name -> label -> rows


def count_splits(files: Sequence[str], spec: FeatureSpec, splits: Sequence[Split]) -> Counts:
    """Reads every row (so every bad value is found) and counts each split's labels."""
    counts: Counts = {s.name: {y: 0 for y in LABELS} for s in splits}
    for path in files:
        for i, _, labels in split_file(path, spec, splits, shuffle=False):
            for y in LABELS:
                counts[splits[i].name][y] += int(np.count_nonzero(labels == y))
    return counts


def check_counts(counts: Counts, where: str) -> None:
    """Each split needs MIN_SPLIT_ROWS rows holding both labels, or the Evaluator has nothing to judge."""
    total = sum(sum(c.values()) for c in counts.values())
    parts = ", ".join(f"{sum(c.values())} {name} ({c[1]} with label 1)" for name, c in counts.items())
    for name, c in counts.items():
        if sum(c.values()) < MIN_SPLIT_ROWS or not all(c.values()):
            raise DataError(f"{where}: too few rows to train and evaluate on: {total} row(s), split {parts}; "
                            f"each split needs at least {MIN_SPLIT_ROWS} rows, holding both labels 0 and 1")
