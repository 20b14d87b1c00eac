"""Reads a span's CSV/TSV rows typed by the feature spec, and refuses bad input; no TFX or
TensorFlow here.

SpecCsvExampleGen reads its files with this, and `deepfm-tfx run` scans the
newest span with it before any component starts, so a bad file fails in
a second with one line naming the file, row and column. The rules:

- A file is UTF-8 text, gzip-compressed or not whatever its name; a UTF-8
  BOM is skipped. Other archives, binary files and 0-byte files are refused.
- The label is 0 or 1. A number is a finite float32: `nan`, `inf` and values
  beyond float32 (1e39) are data errors, never read as missing; only an empty
  field is missing.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import os
import re
import zlib
from typing import BinaryIO, Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

BLOCK_BYTES = 16 << 20
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


class _RemoteFile(io.RawIOBase):
    """A TFX fileio (tf.io.gfile) file as a Python raw stream: Arrow and gzip need `closed`
    and `readinto`, which GFile lacks."""

    def __init__(self, f):
        super().__init__()
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._f.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


def open_raw(path: str) -> BinaryIO:
    if path.startswith("s3://"):
        # boto3, not tensorflow-io: the id survey and the data checks read here in the process that
        # parses the Airflow DAG, and a task process forked from one that used tensorflow-io's S3
        # client hangs in it.
        from deepfm_tfx import object_store
        return io.BufferedReader(_RemoteFile(object_store.open_object(path)), buffer_size=1 << 20)
    if "://" in path:
        from tfx.dsl.io import fileio  # remote filesystems only: TFX's import costs seconds
        return io.BufferedReader(_RemoteFile(fileio.open(path, "rb")), buffer_size=1 << 20)
    return open(path, "rb")


def sniff(path: str) -> Optional[str]:
    """'gzip' for gzip content, None for plain text; a DataError for anything else."""
    try:
        with open_raw(path) as f:
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
    raw = open_raw(path)
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


def shuffled(batch: pa.RecordBatch, path: str, block: int) -> pa.RecordBatch:
    # Deterministic per file and block: re-ingesting writes the same files.
    order = np.random.default_rng([zlib.crc32(os.path.basename(path).encode()), block])
    return batch.take(pa.array(order.permutation(batch.num_rows)))
