"""Reads a span's Parquet files typed by the feature spec, and refuses bad input; no TFX or
TensorFlow here.

Arrow reads each row group in record batches of the spec's columns only (never pandas, never
row by row); arrow_columns types them as csv_rows types a CSV's, so the same rows give the same
tf.Examples. Dictionary-encoded columns and many row groups per file are the normal case. A
spec column a file lacks is read from a Hive folder on its path (`country=fr/`), as Hive and
Spark leave partition columns out of the files. An error names the file, the row group and the
row within it (both counted from 0, as pyarrow counts them) and the column.
"""
from __future__ import annotations

import os
import urllib.parse
from typing import Dict, Iterator, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from deepfm_tfx import spans
from deepfm_tfx.components import arrow_columns
from deepfm_tfx.errors import DataError
from deepfm_tfx.schemas.feature_spec import FeatureSpec

BATCH_ROWS = 64 * 1024


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: is not a Parquet file ({str(e).splitlines()[0]})") from None


def path_columns(path: str, spec: FeatureSpec) -> Dict[str, Optional[str]]:
    """The spec's columns a file's path holds as Hive folders, `<column>=<value>/`."""
    found = {}
    for folder in os.path.normpath(path).split(os.sep)[:-1]:
        name, eq, value = folder.partition("=")
        if eq and name in spec.all_columns:
            found[name] = None if value == spans.HIVE_NULL else urllib.parse.unquote(value)
    return found


def _constant(path: str, spec: FeatureSpec, name: str, value: Optional[str], rows: int) -> pa.Array:
    """A path column's value on every row, typed as the spec's column."""
    if value is None:
        return pa.nulls(rows)
    if not (name == spec.label or name in spec.numerical):
        return pa.array([value] * rows, pa.string())
    try:
        number = int(value) if name == spec.label else float(value)
    except ValueError:
        raise DataError(f"{path}, column '{name}': its folder's value {value!r} is not a number") from None
    return pa.array([number] * rows)


def check_files(files: Sequence[str], spec: FeatureSpec, where: str) -> None:
    """From the files' footers: each has the spec's columns with types the spec takes, the files
    agree on each column's type, and the span has rows."""
    if not files:
        raise DataError(f"{where}: no data files match the pattern")
    first: Dict[str, tuple] = {}
    rows = 0
    for path in files:
        parquet = _open(path)
        schema = parquet.schema_arrow
        in_path = path_columns(path, spec)
        missing = [c for c in spec.all_columns if c not in schema.names and c not in in_path]
        if missing:
            raise DataError(f"{path}: lacks column(s) {missing} named by feature spec '{spec.name}' (it has "
                            f"{schema.names[:8]}{'...' if len(schema.names) > 8 else ''})")
        for name in [c for c in spec.all_columns if c in schema.names]:
            t = schema.field(name).type
            problem = arrow_columns.type_problem(spec, name, t)
            if problem:
                raise DataError(f"{path}, column '{name}': {problem}")
            if pa.types.is_null(arrow_columns.value_type(t)):  # no values, so no type to disagree with
                continue
            seen = first.setdefault(name, (arrow_columns.value_type(t), path))
            if seen[0] != arrow_columns.value_type(t):
                raise DataError(f"{path}, column '{name}': is {arrow_columns.value_type(t)} here but {seen[0]} in "
                                f"{seen[1]}; the files of one span must agree on each column's type")
        rows += parquet.metadata.num_rows
    if not rows:
        raise DataError(f"{where}: the span is empty (its files hold no data rows)")


def read_batches(path: str, spec: FeatureSpec) -> Iterator[pa.RecordBatch]:
    """The file's rows in Arrow batches, typed; any bad value raises a DataError naming its row and column."""
    parquet = _open(path)
    names = set(parquet.schema_arrow.names)  # pyarrow builds the schema anew on each access
    in_file = [c for c in spec.all_columns if c in names]
    in_path = {c: v for c, v in path_columns(path, spec).items() if c not in in_file}
    missing = [c for c in spec.all_columns if c not in in_file and c not in in_path]
    if missing:
        raise DataError(f"{path}: lacks column(s) {missing} named by feature spec '{spec.name}'")
    for group in range(parquet.num_row_groups):
        start = 0
        try:
            for batch in parquet.iter_batches(BATCH_ROWS, row_groups=[group], columns=in_file):
                columns = dict(zip(batch.schema.names, batch.columns))
                columns.update({c: _constant(path, spec, c, v, batch.num_rows) for c, v in in_path.items()})
                yield arrow_columns.typed_batch(
                    columns, spec, path, lambda i, s=start: f"{path}, row group {group}, row {s + i}")
                start += batch.num_rows
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}, row group {group}: cannot be read ({str(e).splitlines()[0]})") from None
