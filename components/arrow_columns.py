"""Columns of a Parquet or TFRecord file typed as csv_rows types a CSV's; no TFX or TensorFlow here.

The label becomes int64, numbers float32, ids and multivalent features strings, so
example_encoder writes the same tf.Example bytes whatever the format: an int64 id is its
decimal string, as a CSV holds it, and a list is joined with the spec's separator. Null, an
empty string and an empty list are missing, as an empty CSV field is. Bad values are refused
as in a CSV: a label not 0 or 1, a non-finite number or one beyond float32, bytes that are
not UTF-8.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from deepfm_tfx.components import csv_rows
from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

# The file and row of a batch's i-th row, e.g. "part-0.parquet, row group 1, row 17".
Where = Callable[[int], str]

FLOAT32_MAX = float(np.finfo(np.float32).max)
NOT_FINITE = "(non-finite numbers are data errors; write null for a missing value)"


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) \
        or pa.types.is_large_binary(t)


def _is_id(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(t)


def value_type(t: pa.DataType) -> pa.DataType:
    """The type a column's values have: a dictionary's values, without large_ variants."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(value_type(t.value_type))
    return {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}.get(t, t)


def type_problem(spec: FeatureSpec, name: str, t: pa.DataType) -> Optional[str]:
    """Why a column of type `t` cannot be the spec's column `name`, or None."""
    t = value_type(t)
    multivalent = {m.name: m for m in spec.multivalent}
    if pa.types.is_null(t):  # all missing, as a writer may type a column it saw no value in
        return None
    if name == spec.label:
        ok, want = pa.types.is_integer(t) or pa.types.is_boolean(t), "integer labels 0 or 1"
    elif name in spec.numerical:
        ok, want = pa.types.is_integer(t) or pa.types.is_floating(t), "a number (integer or floating point)"
    elif name in multivalent:
        ok = _is_id(t) or (pa.types.is_list(t) and _is_id(t.value_type))
        want = f"a list of ids or a {multivalent[name].separator!r}-joined string"
    else:
        ok, want = _is_id(t), "an id (string, binary or integer)"
    return None if ok else f"expected {want}, got {t}"


def _first(mask: pa.Array) -> Optional[int]:
    hits = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
    return int(hits[0]) if len(hits) else None


class _Cells:
    """Names a column's cells in errors: '<file, row ...>, column 'I5''."""

    def __init__(self, where: Where, noun: str, name: str):
        self.where, self.noun, self.name = where, noun, name

    def __call__(self, row: int) -> str:
        return f"{self.where(row)}, {self.noun} '{self.name}'"


def _label(column: pa.Array, cell: _Cells) -> pa.Array:
    if column.null_count:
        raise DataError(f"{cell(_first(column.is_null()))}: the label is missing")
    values = column.cast(pa.int64(), safe=False)
    bad = _first(pc.invert(pc.is_in(values, pa.array(csv_rows.LABELS, pa.int64()))))
    if bad is not None:
        raise DataError(f"{cell(bad)}: expected a label 0 or 1, got {column[bad].as_py()!r}")
    return values


def _number(column: pa.Array, cell: _Cells) -> pa.Array:
    wide = column.cast(pa.float64())
    bad = _first(pc.invert(pc.is_finite(wide).fill_null(True)))
    if bad is not None:
        raise DataError(f"{cell(bad)}: expected a finite number, got {column[bad].as_py()!r} {NOT_FINITE}")
    bad = _first(pc.greater(pc.abs(wide), FLOAT32_MAX).fill_null(False))
    if bad is not None:
        raise DataError(f"{cell(bad)}: expected a number within float32's range (±3.4e38), "
                        f"got {column[bad].as_py()!r}")
    return wide.cast(pa.float32(), safe=False)


def _text(values: pa.Array, cell: Callable[[int], str]) -> pa.Array:
    """Ids as strings: integers in decimal, bytes checked to be UTF-8 as a CSV's are."""
    try:
        return values.cast(pa.string())
    except pa.ArrowInvalid:
        for i, value in enumerate(values.cast(pa.binary()).to_pylist()):
            try:
                (value or b"").decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{cell(i)}: not UTF-8 text (byte {value[e.start]:#04x})") from None
        raise


def _missing_if_empty(column: pa.Array) -> pa.Array:
    return pc.if_else(pc.equal(column, ""), pa.scalar(None, pa.string()), column)


def _joined(column: pa.Array, separator: str, cell: _Cells) -> pa.Array:
    """A list column as the separator-joined string a CSV would hold."""
    flat = column.flatten()
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    token_cell = lambda i: cell(int(parents[i]))  # noqa: E731 - the cell holding the list's i-th token
    if flat.null_count:
        raise DataError(f"{token_cell(_first(flat.is_null()))}: a null inside the list")
    tokens = _text(flat, token_cell)
    bad = _first(pc.match_substring(tokens, separator))
    if bad is not None:
        raise DataError(f"{token_cell(bad)}: the id {tokens[bad].as_py()!r} holds the separator {separator!r}")
    offsets = column.offsets
    if len(column) and offsets[0].as_py():  # a sliced list: its tokens start at the first offset
        offsets = pc.subtract(offsets, offsets[0])
    lists = pa.ListArray.from_arrays(offsets.cast(pa.int32()), tokens, mask=column.is_null())
    return _missing_if_empty(pc.binary_join(lists, separator))


def typed_batch(columns: Dict[str, pa.Array], spec: FeatureSpec, path: str, where: Where,
                noun: str = "column") -> pa.RecordBatch:
    """The spec's columns typed as csv_rows.read_batches gives them; a type the spec cannot
    take, or a bad value, raises a DataError naming `path`, the row (`where`) and the column."""
    multivalent = {m.name: m.separator for m in spec.multivalent}
    out = []
    for name in spec.all_columns:
        column, cell = columns[name], _Cells(where, noun, name)
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        problem = type_problem(spec, name, column.type)
        if problem:
            raise DataError(f"{path}, {noun} '{name}': {problem}")
        if name == spec.label:
            column = _label(column, cell)
        elif name in spec.numerical:
            column = _number(column, cell)
        elif name in multivalent and (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            column = _joined(column, multivalent[name], cell)
        else:
            column = _missing_if_empty(_text(column, cell))
        out.append(column)
    return pa.RecordBatch.from_arrays(out, names=spec.all_columns)
