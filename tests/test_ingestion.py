"""The spec-typed CSV ingestion: real Criteo rows parse; bad input is named precisely."""
import csv
import os

import pytest
import tensorflow as tf

from deepfm_tfx.components.csv_rows import check_files
from deepfm_tfx.components.example_encoder import parse_file, request_examples
from deepfm_tfx.errors import DataError
from conftest import SHARED_SAMPLE
from deepfm_tfx.pipeline import validation
from deepfm_tfx.synthetic import generator
from deepfm_tfx.schemas import feature_spec

SPEC = feature_spec.load(feature_spec.DEFAULT_SPEC)


def examples(path, spec=SPEC):
    return [tf.train.Example.FromString(s) for s in parse_file(path, spec)]


@pytest.fixture
def criteo_sample():
    # CI and every machine of ours have ../shared: a skip here would hide a broken checkout.
    if not os.path.exists(SHARED_SAMPLE):
        pytest.fail(f"the shared Criteo sample is missing: {os.path.normpath(SHARED_SAMPLE)} (../shared/data/ "
                    f"beside the repository)", pytrace=False)
    return SHARED_SAMPLE


def test_real_criteo_sample_parses_with_types_and_missing_values(criteo_sample):
    with open(criteo_sample) as f:
        rows = list(csv.DictReader(f))
    parsed = examples(criteo_sample)
    assert len(parsed) == len(rows) == 200
    for row, ex in zip(rows, parsed):
        feats = ex.features.feature
        assert feats["label"].int64_list.value == [int(row["label"])]
        for col in SPEC.numerical:
            if row[col] == "":
                assert col not in feats or not feats[col].float_list.value
            else:
                assert feats[col].float_list.value[0] == pytest.approx(float(row[col]))
        for col in SPEC.categorical:
            if row[col] == "":
                assert col not in feats or not feats[col].bytes_list.value
            else:
                assert feats[col].bytes_list.value == [row[col].encode()]


def test_tsv_without_header_via_kaggle_spec(tmp_path, criteo_sample):
    spec = feature_spec.load(os.path.join(feature_spec.SPEC_DIR, "criteo_kaggle.yaml"))
    with open(criteo_sample) as f:
        rows = list(csv.reader(f))[1:6]
    path = tmp_path / "day_0.txt"
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    parsed = examples(str(path), spec)
    assert [e.features.feature["label"].int64_list.value[0] for e in parsed] == [int(r[0]) for r in rows]


def test_request_examples_are_the_rows_without_their_label(tmp_path, criteo_sample):
    generator.generate(str(tmp_path), rows=1500, spans=1, seed=1)
    files = [criteo_sample, str(tmp_path / "span-1" / "part-000.csv")]
    want = examples(files[0]) + examples(files[1])[:100]  # the limit falls inside the second file
    for ex in want:
        del ex.features.feature[SPEC.label]
    assert [tf.train.Example.FromString(r) for r in request_examples(files, SPEC, 300)] == want


def _span(tmp_path, text):
    span = tmp_path / "span-1"
    span.mkdir(parents=True, exist_ok=True)
    path = span / "part-000.csv"
    path.write_text(text)
    return str(path)


HEADER = ",".join(generator.COLUMNS)
GOOD = "1," + ",".join(["3"] * 13) + "," + ",".join(["0a0b0c0d"] * 26)


def test_non_numeric_value_names_file_row_and_column(tmp_path):
    bad = GOOD.split(",")
    bad[5] = "many"  # I5
    path = _span(tmp_path, "\n".join([HEADER, GOOD, GOOD, ",".join(bad), GOOD]) + "\n")
    with pytest.raises(DataError) as e:
        examples(path)
    assert str(e.value) == f"{path}, row 4, column 'I5': expected a number, got 'many'"


def test_malformed_row_names_file_and_row(tmp_path):
    path = _span(tmp_path, "\n".join([HEADER, GOOD, GOOD[:-9]]) + "\n")
    with pytest.raises(DataError, match=r"part-000.csv, row 3: expected 40 fields, got 39"):
        examples(path)


def test_missing_label_is_named(tmp_path):
    path = _span(tmp_path, "\n".join([HEADER, GOOD, "," + GOOD[2:]]) + "\n")
    with pytest.raises(DataError, match=r"row 3, column 'label': the label is missing"):
        examples(path)


def test_header_lacking_a_spec_column_is_named(tmp_path):
    path = _span(tmp_path, HEADER.replace(",C7,", ",C7x,") + "\n" + GOOD + "\n")
    with pytest.raises(DataError, match=r"part-000.csv: header lacks column\(s\) \['C7'\]"):
        check_files([path], SPEC, "span")


def test_empty_span_and_missing_dir(tmp_path):
    _span(tmp_path, HEADER + "\n")
    with pytest.raises(DataError, match="span is empty"):
        validation.check_data(str(tmp_path), SPEC)
    with pytest.raises(DataError, match="does not exist"):
        validation.check_data(str(tmp_path / "nope"), SPEC)


def test_input_layout_picks_the_newest_span(tmp_path):
    generator.generate(str(tmp_path), rows=1500, spans=3, seed=1)
    assert validation.check_data(str(tmp_path), SPEC) == ("span-{SPAN}/*.csv", 3)


# --- ExampleGen: splits are a pure function of the rows ------------------------------------------

def _ingest(data_root, out, spec=SPEC, pattern="span-1/*.csv"):
    """Runs SpecCsvExampleGen's executor alone on the files, as the pipeline would; returns {file: bytes}."""
    from tfx.dsl.components.base import base_beam_executor
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from deepfm_tfx.components import csv_example_gen
    from deepfm_tfx.pipeline import configs
    from deepfm_tfx.pipeline.pipeline import splits

    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    output = example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(splits=[
        example_gen_pb2.SplitConfig.Split(name=s.name, hash_buckets=s.hash_buckets) for s in splits()]))
    properties = {
        "input_base": str(data_root),
        "input_config": proto_utils.proto_to_json(example_gen_pb2.Input(
            splits=[example_gen_pb2.Input.Split(name="all", pattern=pattern)])),
        "output_config": proto_utils.proto_to_json(output),
        "custom_config": proto_utils.proto_to_json(csv_example_gen.spec_to_custom_config(spec))}
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=configs.DEFAULT_BEAM_ARGS,
                                                          tmp_dir=str(out / ".tmp"))
    csv_example_gen.Executor(context).Do({}, {"examples": [examples]}, properties)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("Split-*/*"))}


def _records(content):
    import gzip
    import struct
    data, out = gzip.decompress(content), []
    while data:
        (n,) = struct.unpack("<Q", data[:8])
        out.append(data[12:12 + n])
        data = data[16 + n:]
    return out


def test_the_same_files_ingested_twice_give_byte_identical_splits(tmp_path):
    generator.generate(str(tmp_path / "data"), rows=3000, spans=1, seed=4)
    first = _ingest(tmp_path / "data", tmp_path / "a")
    second = _ingest(tmp_path / "data", tmp_path / "b")
    assert sorted(first) == ["Split-eval/data_tfrecord-00000.gz", "Split-train/data_tfrecord-00000.gz"]
    assert first == second
    # A pure function of each row: its eval rows are those whose tf.Example bytes hash into the 10th bucket,
    # and the bytes are what a fresh read of the file encodes.
    import hashlib
    [path] = (tmp_path / "data" / "span-1").glob("*.csv")
    eval_rows = set(_records(first["Split-eval/data_tfrecord-00000.gz"]))
    every_row = list(parse_file(str(path), SPEC))
    assert eval_rows == {r for r in every_row if int.from_bytes(hashlib.sha256(r).digest()[:8], "big") % 10 == 9}
    assert len(eval_rows) + len(_records(first["Split-train/data_tfrecord-00000.gz"])) == 3000


def test_the_split_key_keeps_each_key_in_one_split(tmp_path):
    import dataclasses
    rows = [GOOD.split(",") for _ in range(3000)]
    for i, r in enumerate(rows):  # 400 users, 7-8 rows each, both labels
        r[0], r[1], r[14 + 7] = str(i % 2), str(i), f"user{i % 400}"
    _span(tmp_path / "data", "\n".join([HEADER] + [",".join(r) for r in rows]) + "\n")
    spec = dataclasses.replace(SPEC, split_key="C8")
    found = _ingest(tmp_path / "data", tmp_path / "out", spec)
    users = {split: {tf.train.Example.FromString(r).features.feature["C8"].bytes_list.value[0]
                     for r in _records(content)} for split, content in found.items()}
    train, evaluation = users["Split-train/data_tfrecord-00000.gz"], users["Split-eval/data_tfrecord-00000.gz"]
    assert train.isdisjoint(evaluation) and len(train | evaluation) == 400


def test_example_gen_refuses_a_span_too_small_to_evaluate(tmp_path):
    # The pre-run scan stops this in `deepfm-tfx run`; ExampleGen stops it on other orchestrators.
    generator.generate(str(tmp_path / "data"), rows=300, spans=1, seed=4)
    with pytest.raises(DataError, match=r"span-1/\*\.csv: too few rows to train and evaluate on: 300 row\(s\), "
                                        r"split \d+ train .*each split needs at least 100 rows"):
        _ingest(tmp_path / "data", tmp_path / "out")
