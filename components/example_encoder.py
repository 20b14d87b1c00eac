"""tf.Example bytes built column by column from Arrow batches; no TFX or TensorFlow here.

tfx_bsl's encoder serializes each tf.Example's feature map in a per-process
random order, so the same row gives different bytes in different runs and
a hash of them splits differently. These are the same Examples with the
features in the spec's column order: a row's bytes are a function of the row.
"""
from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepfm_tfx.components import csv_rows, rows
from deepfm_tfx.schemas.feature_spec import FeatureSpec


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


def encode(batch: pa.RecordBatch, spec: FeatureSpec, label: bool = True) -> pa.Array:
    """Serialized tf.Examples, one per row, byte-for-byte a function of the row; without `label`,
    as a client sends them."""
    multivalent = {m.name: m for m in spec.multivalent}
    entries = []
    for name in spec.all_columns if label else [c for c in spec.all_columns if c != spec.label]:
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


def parse_file(path: str, spec: FeatureSpec, shuffle: bool = False) -> Iterator[bytes]:
    """One serialized tf.Example per row of a data file, in file order unless `shuffle`."""
    for block, batch in enumerate(rows.read_batches(path, spec)):
        if shuffle:
            batch = csv_rows.shuffled(batch, path, block)
        yield from encode(batch, spec).to_pylist()


def request_examples(files: Sequence[str], spec: FeatureSpec, limit: int) -> List[bytes]:
    """The first `limit` rows of labelled files as requests: serialized tf.Examples without the label."""
    requests: List[bytes] = []
    for path in files:
        for batch in rows.read_batches(path, spec):
            requests += encode(batch, spec, label=False).to_pylist()[:limit - len(requests)]
            if len(requests) == limit:
                return requests
    return requests
