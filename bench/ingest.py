"""The ingest section: rows/s and peak memory of reading one span as CSV, Parquet and GZIP
TFRecord, the same rows in each.

Each format is read in its own process, as ExampleGen reads a file: typed batches, tf.Example
bytes, each row's split (hash_splits.split_file); writing the splits is left out, as it is the
same for every format. Reading alone (the typed batches) is timed too: the encoding and
hashing after it are the same work for every format. The process's peak RSS (VmHWM) is reported beside the peak it had
before reading, so the reader's own memory shows. Target: Parquet takes at most a third of
CSV's time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict

from bench.common import fmt, ratio, table, verdict

FORMATS = ("csv", "parquet", "tfrecord")
TARGET_PARQUET_OVER_CSV = 1 / 3
_FILES = {"csv": "part-*.csv", "parquet": "part-*.parquet", "tfrecord": "part-*.tfrecord.gz"}

# Run in a fresh interpreter per format, so one reader's memory is not another's.
_CHILD = """
import glob, json, sys, time
import pyarrow as pa, pyarrow.compute as pc
from deepfm_tfx.components import hash_splits, rows
from deepfm_tfx.schemas import feature_spec
spec = feature_spec.FeatureSpec.from_dict(dict(feature_spec.load(feature_spec.DEFAULT_SPEC).to_dict(),
                                               format=sys.argv[1]))
splits = [hash_splits.Split("train", 9), hash_splits.Split("eval", 1)]  # pipeline.splits(), without TFX
files = sorted(glob.glob(sys.argv[2]))
# Arrow's first compute call costs a second, and TFRecord's decoder an import: not ingestion.
pc.sum(pa.array([1]))
rows._reader(spec)
def peak_mb():  # VmHWM, not getrusage: ru_maxrss keeps the parent's peak across fork and exec
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
before = peak_mb()
started = time.perf_counter()
for path in files:
    for _ in rows.read_batches(path, spec):
        pass
read_seconds = time.perf_counter() - started
started = time.perf_counter()
n = sum(len(labels) for path in files for _, _, labels in hash_splits.split_file(path, spec, splits))
seconds = time.perf_counter() - started
print(json.dumps({"rows": n, "seconds": seconds, "read_seconds": read_seconds, "rss_before_mb": before,
                  "peak_rss_mb": peak_mb()}))
"""


def add_arguments(p) -> None:
    p.add_argument("--ingest-rows", type=int, default=None,
                   help="rows to ingest per format (default 500,000 of the criteo profile; --quick: "
                        "20,000 of the small one)")


def _write_formats(folder: str, rows: int, profile: str) -> None:
    """The generator's span as CSV, then the same rows as Parquet (row groups and dictionary
    pages, as pyarrow writes it) and as GZIP TFRecord."""
    from deepfm_tfx.components import span_export
    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.synthetic import generator

    generator.generate(folder, rows=rows, spans=1, seed=7, profile=profile)
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    span = os.path.join(folder, "span-1")
    for path in sorted(p for p in os.listdir(span) if p.endswith(".csv")):
        for fmt_name in span_export.EXTENSIONS:
            span_export.export(os.path.join(span, path), spec, fmt_name, span)


def _measure(fmt_name: str, pattern: str) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", _CHILD, fmt_name, pattern], check=True, capture_output=True,
                         text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["rows_per_s"] = ratio(result["rows"], result["seconds"])
    result["read_rows_per_s"] = ratio(result["rows"], result["read_seconds"])
    return result


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    rows = args.ingest_rows or (20_000 if args.quick else 500_000)
    profile = "small" if args.quick else "criteo"  # criteo's id spaces take seconds to draw
    folder = os.path.join(args.workdir, f"ingest-{profile}-{rows}")
    if not os.path.isdir(os.path.join(folder, "span-1")):
        _write_formats(folder, rows, profile)
    span = os.path.join(folder, "span-1")
    out: Dict[str, Any] = {"rows": rows, "profile": profile, "formats": {
        name: _measure(name, os.path.join(span, _FILES[name])) for name in FORMATS}}
    by = out["formats"]
    out["parquet_over_csv_seconds"] = ratio(by["parquet"]["seconds"], by["csv"]["seconds"])
    out["parquet_over_csv_read_seconds"] = ratio(by["parquet"]["read_seconds"], by["csv"]["read_seconds"])
    out["verdict"] = verdict(out["parquet_over_csv_seconds"], TARGET_PARQUET_OVER_CSV, higher_is_better=False)
    return out


def show(res: Dict[str, Any]) -> None:
    rows = [[name, v["rows"], v["seconds"], v["rows_per_s"], v["read_rows_per_s"], v["rss_before_mb"],
             v["peak_rss_mb"]] for name, v in res["formats"].items()]
    print(table(["format", "rows", "seconds", "rows/s", "read-only rows/s", "RSS before MB", "peak RSS MB"], rows,
                title=f"\nIngest: one span of {res['rows']:,} {res['profile']} rows, read, encoded and split"))
    print(f"  Parquet/CSV time {fmt(res['parquet_over_csv_seconds'])} (target <= {TARGET_PARQUET_OVER_CSV:.3f}) "
          f"-> {res['verdict']}; reading alone {fmt(res['parquet_over_csv_read_seconds'])}")
