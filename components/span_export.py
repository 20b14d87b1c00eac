"""A CSV span's rows written as Parquet or GZIP TFRecord; no TFX or TensorFlow here.

`deepfm-tfx generate-data --format` writes the synthetic data as a Hive table or as TFRecord
with it, and the bench's ingest section the same rows in each format. The rows are typed by the
spec as ingestion types them, so reading the export back gives the CSV's tf.Examples.
"""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from deepfm_tfx.components import csv_rows, example_encoder, tfrecord_rows
from deepfm_tfx.schemas.feature_spec import FeatureSpec

EXTENSIONS = {"parquet": ".parquet", "tfrecord": ".tfrecord.gz"}
ROW_GROUP_ROWS = 128 * 1024


def export(csv_path: str, spec: FeatureSpec, fmt: str, folder: str) -> str:
    """Writes the CSV file's rows into `folder` as `fmt`, under the CSV's name; returns the new path."""
    stem = os.path.splitext(os.path.basename(csv_path))[0]
    path = os.path.join(folder, stem + EXTENSIONS[fmt])
    batches = list(csv_rows.read_batches(csv_path, spec))  # one file: the generator writes 250k rows at most
    if fmt == "parquet":
        pq.write_table(pa.Table.from_batches(batches), path, row_group_size=ROW_GROUP_ROWS)
    else:
        tfrecord_rows.write(path, (e for batch in batches for e in example_encoder.encode(batch, spec).to_pylist()))
    return path
