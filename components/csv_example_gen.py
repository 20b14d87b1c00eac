"""SpecCsvExampleGen: span-aware ingestion of CSV, TSV, Parquet or TFRecord typed by the feature spec.

TFX's CsvExampleGen infers column types per file (a categorical column whose
ids happen to be all digits turns into INT), reports a bad row as a Beam stack
trace, and parses about 4k rows/s; its ImportExampleGen takes seconds per MB of
Parquet. This executor keeps TFX's ExampleGen driver (spans, `{SPAN}` and date
patterns, caching) and replaces the rest with rows (csv_rows, parquet_rows or
tfrecord_rows, by the spec's `format`), example_encoder and hash_splits:
Arrow reads each file with the spec's column types, any bad input names its
file, row and column, and each row's split is a hash of its own tf.Example
bytes (or of the spec's split_key), which example_encoder builds deterministically,
so the same rows give the same splits whatever the format. The node keeps its
id SpecCsvExampleGen, which ml-metadata and the orchestrators know it by.

Each input file is written to one TFRecord per split, in the file's order
shuffled within each Arrow block: no global Reshuffle (under Beam's
DirectRunner it holds the whole split in memory, 5 GB at 1M rows), and the
same files give byte-identical splits. It refuses a span whose splits are
too small to train and evaluate on (hash_splits.check_counts).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics.metric import Metrics, MetricsFilter
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.example_gen import write_split
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.components.example_gen.component import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.components.util import examples_utils
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from deepfm_tfx import progress, spans
from deepfm_tfx.components import beam_caches, csv_rows, example_encoder, hash_splits, rows
from deepfm_tfx.schemas.feature_spec import FeatureSpec

_COUNTERS = "SpecCsvExampleGen"


def spec_to_custom_config(spec: FeatureSpec) -> example_gen_pb2.CustomConfig:
    struct = struct_pb2.Struct()
    struct.update({"feature_spec": spec.to_dict()})
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(struct)
    return config


def spec_from_exec_properties(exec_properties: Dict[str, Any]) -> FeatureSpec:
    config = example_gen_pb2.CustomConfig()
    json_format.Parse(exec_properties["custom_config"], config)
    struct = struct_pb2.Struct()
    config.custom_config.Unpack(struct)
    d = json_format.MessageToDict(struct)["feature_spec"]
    d["multivalent"] = [dict(m, max_length=int(m["max_length"])) for m in d["multivalent"]]
    for key in ("vocabulary_top_k", "vocabulary_min_count", "oov_buckets", "hash_buckets"):
        d[key] = None if d.get(key) is None else int(d[key])  # hash_buckets is None with a vocabulary
    return FeatureSpec.from_dict(d)


@beam.ptransform_fn
@beam.typehints.with_input_types(beam.Pipeline)
@beam.typehints.with_output_types(bytes)
def _CsvToExamples(pipeline: beam.Pipeline, exec_properties: Dict[str, Any],
                   split_pattern: str) -> beam.pvalue.PCollection:
    spec = spec_from_exec_properties(exec_properties)
    pattern = os.path.join(exec_properties["input_base"], split_pattern)
    files = sorted(fileio.glob(pattern))
    rows.check_files(files, spec, pattern)
    return (pipeline
            | "ListFiles" >> beam.Create(files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ParseRows" >> beam.FlatMap(example_encoder.parse_file, spec, shuffle=True))


def _write_file(item: Tuple[int, str], spec_dict: Dict[str, Any], splits: Sequence[hash_splits.Split],
                split_dirs: Sequence[str]) -> None:
    """Writes one input file's rows into one TFRecord per split, counting each split's labels."""
    import tensorflow as tf
    index, path = item
    spec = FeatureSpec.from_dict(spec_dict)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers: Dict[int, Any] = {}
    try:
        for i, examples, labels in hash_splits.split_file(path, spec, splits):
            if i not in writers:
                writers[i] = tf.io.TFRecordWriter(
                    os.path.join(split_dirs[i], f"data_tfrecord-{index:05d}.gz"), options)
            for example in examples:
                writers[i].write(example)
            for y in csv_rows.LABELS:
                Metrics.counter(_COUNTERS, f"{splits[i].name}:{y}").inc(int((labels == y).sum()))
            progress.INGEST.add(rows=len(labels))  # Beam's counters arrive only when the pipeline ends
        progress.INGEST.add(files=1)
    finally:
        for writer in writers.values():
            writer.close()


class Executor(beam_caches.Installed, BaseExampleGenExecutor):
    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
        return _CsvToExamples

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        """Ingests the span file by file; TFX's own Do would hash-split and Reshuffle the whole span."""
        input_config = example_gen_pb2.Input()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
        output_config = example_gen_pb2.Output()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
        examples = output_dict[standard_component_specs.EXAMPLES_KEY]
        artifact_utils.get_single_instance(examples).split_names = artifact_utils.encode_split_names(
            example_gen_utils.generate_output_split_names(input_config, output_config))
        [split_pattern] = [s.pattern for s in input_config.splits]
        splits = [hash_splits.Split(s.name, s.hash_buckets) for s in output_config.split_config.splits]
        spec = spec_from_exec_properties(exec_properties)
        pattern = os.path.join(exec_properties["input_base"], split_pattern)
        files = sorted(fileio.glob(pattern))
        rows.check_files(files, spec, pattern)
        split_dirs = [artifact_utils.get_split_uri(examples, s.name) for s in splits]
        for folder in split_dirs:
            fileio.makedirs(folder)

        pipeline = self._make_beam_pipeline()
        _ = (pipeline
             | "ListFiles" >> beam.Create(list(enumerate(files)))
             | "SpreadFiles" >> beam.Reshuffle()
             | "WriteSplits" >> beam.Map(_write_file, spec.to_dict(), splits, split_dirs))
        result = pipeline.run()
        result.wait_until_finish()
        counts: hash_splits.Counts = {s.name: {y: 0 for y in csv_rows.LABELS} for s in splits}
        for counter in result.metrics().query(MetricsFilter().with_namespace(_COUNTERS))["counters"]:
            name, y = counter.key.metric.name.rsplit(":", 1)
            counts[name][int(y)] += counter.committed if counter.committed is not None else counter.attempted
        hash_splits.check_counts(counts, pattern)

        payload_format = exec_properties.get(standard_component_specs.OUTPUT_DATA_FORMAT_KEY)
        file_format = exec_properties.get(standard_component_specs.OUTPUT_FILE_FORMAT_KEY)
        partition = split_pattern.split("/", 1)[0]
        for artifact in examples:
            if spec.partitions and partition.startswith(spec.partitions + "="):
                artifact.set_string_custom_property(spans.PARTITION, partition)
            if payload_format:
                examples_utils.set_payload_format(artifact, payload_format)
            if file_format:
                examples_utils.set_file_format(artifact, write_split.to_file_format_str(file_format))


def SpecCsvExampleGen(input_base: str, spec: FeatureSpec, **kwargs) -> FileBasedExampleGen:
    """TFX's FileBasedExampleGen with the spec-typed executor."""
    return FileBasedExampleGen(
        input_base=input_base,
        custom_config=spec_to_custom_config(spec),
        custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
        **kwargs)
