"""Parquet and TFRecord ingestion: the same rows give the same tf.Examples and splits as CSV,
Hive partitions are spans, and every bad input is one error line before any work."""
import csv
import datetime
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from deepfm_tfx import model_repository as mr
from deepfm_tfx import spans
from deepfm_tfx.components import csv_rows, example_encoder, hash_splits, rows
from deepfm_tfx.errors import DataError
from deepfm_tfx.pipeline import cli, validation
from deepfm_tfx.pipeline.pipeline import splits
from deepfm_tfx.schemas import feature_spec
from deepfm_tfx.synthetic import generator
from test_repository_safety import tree

SPEC = feature_spec.load(feature_spec.DEFAULT_SPEC)
INT_ID = "C5"  # written as int64 ids in Parquet and TFRecord, as decimal strings in the CSV
DICTIONARY = "C1"


def spec_file(folder, fmt, **extra) -> str:
    """The shipped Criteo spec in another format."""
    lines = [f"name: criteo_{fmt}", f"format: {fmt}", f"file_pattern: '{extra.pop('file_pattern', '*')}'",
             "label: label", f"numerical: {SPEC.numerical}", f"categorical: {SPEC.categorical}",
             "categorical_encoding: hash", f"schema: {SPEC.schema_file}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = os.path.join(folder, f"{fmt}.yaml")
    with open(path, "w") as f:
        f.write("\n".join(lines).replace("'", '"') + "\n")
    return path


def criteo_csv(folder, rows=3000, seed=5) -> str:
    """The generator's CSV with INT_ID's hex ids as decimal strings, so an int64 column can hold them."""
    generator.generate(str(folder / "generated"), rows=rows, spans=1, seed=seed)
    with open(folder / "generated" / "span-1" / "part-000.csv", newline="") as f:
        table = list(csv.reader(f))
    column = table[0].index(INT_ID)
    for row in table[1:]:
        row[column] = str(int(row[column], 16)) if row[column] else ""
    path = folder / "criteo.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(table)
    return str(path)


def arrow_table(csv_path) -> pa.Table:
    """The CSV's rows as a Spark job might write them: an int8 label, an integer count, int64 ids,
    a dictionary-encoded column, nulls where the CSV is empty."""
    table = pa.Table.from_batches(list(csv_rows.read_batches(csv_path, SPEC)))
    columns = {name: table.column(name) for name in table.column_names}
    columns["label"] = columns["label"].cast(pa.int8())
    columns["I1"] = columns["I1"].cast(pa.float64())
    columns[INT_ID] = columns[INT_ID].cast(pa.int64())
    columns[DICTIONARY] = columns[DICTIONARY].combine_chunks().dictionary_encode()
    return pa.table(columns)


def write_parquet(table: pa.Table, folder, files=2, row_group_size=400) -> list:
    """The table in `files` files of several row groups each."""
    os.makedirs(folder, exist_ok=True)
    per_file = -(-table.num_rows // files)
    paths = []
    for i in range(files):
        path = os.path.join(folder, f"part-{i:05d}.parquet")
        pq.write_table(table.slice(i * per_file, per_file), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def example(row: dict) -> tf.train.Example:
    """A tf.Example as another system writes it: its own feature order, ints for ids and counts, no
    feature for a missing value."""
    ex = tf.train.Example()
    for name in reversed(list(row)):
        value = row[name]
        if value is None:
            continue
        feature = ex.features.feature[name]
        if name == "label" or name == INT_ID:
            feature.int64_list.value.append(int(value))
        elif name in SPEC.numerical:
            feature.float_list.value.append(value)
        else:
            feature.bytes_list.value.append(value.encode())
    return ex


def write_tfrecord(table: pa.Table, path, compression="GZIP") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type=compression)) as writer:
        for row in table.to_pylist():
            writer.write(example(row).SerializeToString())
    return str(path)


def as_spec(fmt, spec=SPEC, **changes):
    return feature_spec.FeatureSpec.from_dict(dict(spec.to_dict(), format=fmt, **changes))


@pytest.fixture(scope="module")
def same_rows(tmp_path_factory):
    """One set of rows as CSV, as Parquet (2 files, row groups of 400) and as GZIP TFRecord."""
    tmp = tmp_path_factory.mktemp("formats")
    csv_path = criteo_csv(tmp)
    table = arrow_table(csv_path)
    return {"csv": [csv_path], "parquet": write_parquet(table, str(tmp / "parquet")),
            "tfrecord": [write_tfrecord(table, tmp / "tfrecord" / "part-00000.gz")]}


def parsed(files, spec):
    return [e for path in files for e in example_encoder.parse_file(path, spec)]


def test_the_same_rows_give_byte_identical_examples_and_splits_in_every_format(same_rows):
    parquet = pq.ParquetFile(same_rows["parquet"][0])
    assert parquet.num_row_groups > 1 and pa.types.is_dictionary(parquet.schema_arrow.field(DICTIONARY).type)
    assert parquet.schema_arrow.field(INT_ID).type == pa.int64()
    want = parsed(same_rows["csv"], SPEC)
    assert len(want) == 3000
    for fmt in ("parquet", "tfrecord"):
        assert parsed(same_rows[fmt], as_spec(fmt)) == want, fmt
    counts = {fmt: hash_splits.count_splits(files, as_spec(fmt), splits()) for fmt, files in same_rows.items()}
    assert counts["parquet"] == counts["tfrecord"] == counts["csv"]


def test_an_int64_id_and_its_decimal_string_are_the_same_id(same_rows):
    first = tf.train.Example.FromString(parsed(same_rows["parquet"][:1], as_spec("parquet"))[0])
    value = first.features.feature[INT_ID].bytes_list.value[0]
    assert value.decode().isdigit()


MULTI_SPEC = feature_spec.FeatureSpec(name="m", label="y", categorical=["user"], numerical=["age"],
                                      multivalent=[feature_spec.Multivalent("genres", "|", 4)])


def test_a_list_column_is_the_separator_joined_string_and_an_empty_list_is_missing(tmp_path):
    lists = pa.table({"y": pa.array([1, 0, 1, 0], pa.int64()), "user": pa.array(["u1", "", None, "u4"]),
                      "age": pa.array([30, None, 41, 7], pa.int32()),
                      "genres": pa.array([["drama", "war"], [], None, ["comedy"]], pa.list_(pa.string()))})
    pq.write_table(lists, tmp_path / "lists.parquet")
    (tmp_path / "joined.csv").write_text("y,user,age,genres\n1,u1,30,drama|war\n0,,,\n1,,41,\n0,u4,7,comedy\n")
    want = parsed([str(tmp_path / "joined.csv")], MULTI_SPEC)
    spec = as_spec("parquet", MULTI_SPEC)
    assert parsed([str(tmp_path / "lists.parquet")], spec) == want
    with tf.io.TFRecordWriter(str(tmp_path / "plain.tfrecord")) as writer:  # plain, not GZIP
        for e in want:
            writer.write(e)
    spec = as_spec("tfrecord", MULTI_SPEC)
    assert parsed([str(tmp_path / "plain.tfrecord")], spec) == want


def test_a_feature_held_empty_in_every_record_is_missing_whatever_its_kind(tmp_path):
    examples = tf_examples(200)
    for e in examples:
        e.features.feature["I1"].ClearField("float_list")
        e.features.feature["I1"].bytes_list.SetInParent()  # an empty bytes_list
    from deepfm_tfx.components import tfrecord_rows
    tfrecord_rows.write(str(tmp_path / "f.gz"), [e.SerializeToString() for e in examples])
    spec = feature_spec.FeatureSpec(name="s", label="label", categorical=["C1", "C3"], numerical=["I1", "I5"],
                                    multivalent=[], format="tfrecord")
    [batch] = rows.read_batches(str(tmp_path / "f.gz"), spec)
    assert batch.column("I1").null_count == 200 and batch.column("I5").null_count == 0


def test_a_token_holding_the_separator_names_its_row(tmp_path):
    table = pa.table({"y": [1, 0], "user": ["a", "b"], "age": [1.0, 2.0], "genres": [["x"], ["war|peace"]]})
    pq.write_table(table, tmp_path / "f.parquet")
    spec = as_spec("parquet", MULTI_SPEC)
    with pytest.raises(DataError, match=r"f.parquet, row group 0, row 1, column 'genres': the id 'war\|peace' "
                                        r"holds the separator '\|'"):
        parsed([str(tmp_path / "f.parquet")], spec)


# Hive partitions.

def day(text):
    return (datetime.date.fromisoformat(text) - datetime.date(1970, 1, 1)).days


def test_partitions_are_spans_numbered_by_date_and_tfx_resolves_the_newest(tmp_path):
    from tfx.components.example_gen import utils
    from tfx.proto import example_gen_pb2
    for value in ("2026-11-29", "2026-11-30", "2026-12-01", spans.HIVE_NULL):
        (tmp_path / f"dt={value}").mkdir()
        (tmp_path / f"dt={value}" / "part-0.parquet").write_bytes(b"x")
    assert spans.partitions(str(tmp_path), "dt") == [
        (day("2026-11-29"), "dt=2026-11-29"), (day("2026-11-30"), "dt=2026-11-30"),
        (day("2026-12-01"), "dt=2026-12-01")]
    split = example_gen_pb2.Input.Split(name="all", pattern=spans.input_pattern("*.parquet", "dt"))
    _, span, _ = utils.calculate_splits_fingerprint_span_and_version(str(tmp_path), [split])
    assert span == day("2026-12-01") and split.pattern == "dt=2026-12-01/*.parquet"


def test_the_window_of_k_spans_is_the_newest_k_partitions():
    from tfx.types import standard_artifacts
    from deepfm_tfx.components.span_window import RollingSpanWindowStrategy
    artifacts = []
    for i, value in enumerate(["2026-11-25", "2026-11-27", "2026-11-28", "2026-11-30"]):
        a = standard_artifacts.Examples()
        a.id = i + 1
        a.set_int_custom_property("span", day(value))
        a.set_string_custom_property(spans.PARTITION, f"dt={value}")
        artifacts.append(a)
    window = RollingSpanWindowStrategy(num_spans=3).window(artifacts)
    assert [spans.partition_of(a) for a in window] == ["dt=2026-11-30", "dt=2026-11-28", "dt=2026-11-27"]


def test_check_data_reads_the_newest_partition_only(tmp_path, same_rows):
    table = arrow_table(same_rows["csv"][0])
    write_parquet(table, str(tmp_path / "dt=2026-11-30"))
    (tmp_path / "dt=2026-11-29").mkdir()
    (tmp_path / "dt=2026-11-29" / "part-0.parquet").write_text("an older partition is not read again")
    spec = as_spec("parquet", partitions="dt", file_pattern="*.parquet")
    assert validation.check_data(str(tmp_path), spec) == ("dt={YYYY}-{MM}-{DD}/*.parquet", day("2026-11-30"))


# Bad inputs: one error line, exit 2, before any work; the repository unchanged.

def parquet_bytes(table: pa.Table, **kwargs) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **kwargs)
    return sink.getvalue()


def tfrecord_bytes(examples, tmp) -> bytes:
    path = os.path.join(tmp, "scratch.tfrecord.gz")
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for e in examples:
            writer.write(e.SerializeToString())
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    return data


SMALL = ("label: label\nnumerical: [I1, I5]\ncategorical: [C1, C3]\ncategorical_encoding: hash\n"
         "file_pattern: '*.{ext}'\nformat: {fmt}\n")


def good(n=300):
    return pa.table({"label": pa.array([i % 2 for i in range(n)], pa.int64()),
                     "I1": pa.array([float(i) for i in range(n)]), "I5": pa.array(range(n), pa.int32()),
                     "C1": pa.array([f"a{i % 7}" for i in range(n)], pa.string()).dictionary_encode(),
                     "C3": pa.array([i % 11 for i in range(n)], pa.int64())})


def changed(table, name, values):
    return table.set_column(table.column_names.index(name), name, values)


def tf_examples(n=300):
    out = []
    for row in good(n).to_pylist():
        e = tf.train.Example()
        e.features.feature["label"].int64_list.value.append(row["label"])
        e.features.feature["I1"].float_list.value.append(row["I1"])
        e.features.feature["I5"].int64_list.value.append(row["I5"])
        e.features.feature["C1"].bytes_list.value.append(row["C1"].encode())
        e.features.feature["C3"].int64_list.value.append(row["C3"])
        out.append(e)
    return out


def _bytes_i5(e):
    e.features.feature["I5"].ClearField("int64_list")
    e.features.feature["I5"].bytes_list.value.append(b"many")


def _two_c1(e):
    e.features.feature["C1"].bytes_list.value.append(b"again")


def _no_label(e):
    del e.features.feature["label"]


P = "span-1/part-0.parquet"
T = "span-1/part-0.tfrecord.gz"
BAD = [
    ("parquet: not Parquet", "parquet", lambda tmp: {P: b"label,I1\n1,2\n"},
     "{data}/" + P + ": is not a Parquet file (Parquet magic bytes not found in footer. Either the file is "
                     "corrupted or this is not a parquet file.)"),
    ("parquet: a column of the wrong type", "parquet",
     lambda tmp: {P: parquet_bytes(changed(good(), "I5", pa.array([str(i) for i in range(300)])))},
     "{data}/" + P + ", column 'I5': expected a number (integer or floating point), got string"),
    ("parquet: a spec column the file lacks", "parquet", lambda tmp: {P: parquet_bytes(good().drop(["C3"]))},
     "{data}/" + P + ": lacks column(s) ['C3'] named by feature spec 'spec' (it has ['label', 'I1', 'I5', 'C1'])"),
    ("parquet: files disagree on a column's type", "parquet",
     lambda tmp: {P: parquet_bytes(good()),
                  "span-1/part-1.parquet": parquet_bytes(changed(good(), "C3",
                                                                 pa.array([str(i) for i in range(300)])))},
     "{data}/span-1/part-1.parquet, column 'C3': is string here but int64 in {data}/" + P
     + "; the files of one span must agree on each column's type"),
    ("parquet: an empty partition", "parquet", lambda tmp: {P: parquet_bytes(good(0))},
     "{data}/span-1/*.parquet: the span is empty (its files hold no data rows)"),
    ("parquet: a label 2 in the second row group", "parquet",
     lambda tmp: {P: parquet_bytes(changed(good(), "label", pa.array([i % 2 if i != 103 else 2 for i in range(300)])),
                                   row_group_size=100)},
     "{data}/" + P + ", row group 1, row 3, column 'label': expected a label 0 or 1, got 2"),
    ("parquet: nan", "parquet",
     lambda tmp: {P: parquet_bytes(changed(good(), "I1",
                                           pa.array([float("nan") if i == 7 else 1.0 for i in range(300)])))},
     "{data}/" + P + ", row group 0, row 7, column 'I1': expected a finite number, got nan (non-finite numbers "
                     "are data errors; write null for a missing value)"),
    ("parquet: a column of nulls only is missing values, a label of nulls only is not", "parquet",
     lambda tmp: {P: parquet_bytes(changed(changed(good(), "C3", pa.nulls(300)), "label", pa.nulls(300)))},
     "{data}/" + P + ", row group 0, row 0, column 'label': the label is missing"),
    ("parquet: binary ids that are not UTF-8", "parquet",
     lambda tmp: {P: parquet_bytes(changed(good(), "C1", pa.array([b"ok"] * 40 + [b"\xffno"] * 260, pa.binary())))},
     "{data}/" + P + ", row group 0, row 40, column 'C1': not UTF-8 text (byte 0xff)"),
    ("parquet: a null label", "parquet",
     lambda tmp: {P: parquet_bytes(changed(good(), "label", pa.array([None] + [1] * 299, pa.int64())))},
     "{data}/" + P + ", row group 0, row 0, column 'label': the label is missing"),
    ("tfrecord: not TFRecord", "tfrecord", lambda tmp: {T: b"label,I1\n1,2\n" * 10},
     "{data}/" + T + ": is not a TFRecord file (its first record header's checksum does not match)"),
    ("tfrecord: a feature of the wrong kind", "tfrecord",
     lambda tmp: {T: tfrecord_bytes(tf_examples_with(7, _bytes_i5), tmp)},
     "{data}/" + T + ", record 7, feature 'I5': is a bytes_list, expected float_list or int64_list"),
    ("tfrecord: two values for one id", "tfrecord", lambda tmp: {T: tfrecord_bytes(tf_examples_with(12, _two_c1), tmp)},
     "{data}/" + T + ", record 12, feature 'C1': holds 2 values, expected one"),
    ("tfrecord: a record without its label", "tfrecord",
     lambda tmp: {T: tfrecord_bytes(tf_examples_with(5, _no_label), tmp)},
     "{data}/" + T + ", record 5, feature 'label': the label is missing"),
    ("tfrecord: a record that is not a tf.Example", "tfrecord",
     lambda tmp: {T: tfrecord_gzip([e.SerializeToString() for e in tf_examples()[:9]] + [b"\xff\xff\xff"])},
     "{data}/" + T + ", record 9: is not a tf.Example"),
    ("tfrecord: truncated", "tfrecord", lambda tmp: {T: truncated(tfrecord_bytes(tf_examples(), tmp))},
     None),
    ("tfrecord: an empty partition", "tfrecord", lambda tmp: {T: tfrecord_bytes([], tmp)},
     "{data}/span-1/*.tfrecord.gz: the span is empty (its files hold no records)"),
    ("partitions: a value that is not a date", "parquet-dt",
     lambda tmp: {"dt=2026-11-30/part-0.parquet": parquet_bytes(good()), "dt=latest/part-0.parquet": b""},
     "{data}/dt=latest: a partition's value must be an ISO date (YYYY-MM-DD), got 'latest'"),
    ("partitions: an empty newest partition", "parquet-dt",
     lambda tmp: {"dt=2026-11-30/part-0.parquet": parquet_bytes(good()),
                  "dt=2026-12-01/part-0.parquet": parquet_bytes(good(0))},
     "{data}/dt=2026-12-01/*.parquet: the span is empty (its files hold no data rows)"),
    ("partitions: no partition folders", "parquet-dt", lambda tmp: {"part-0.parquet": parquet_bytes(good())},
     "{data}: holds no dt=<YYYY-MM-DD>/ partition folders, which feature spec 'spec' names with "
     "'partitions: dt'"),
]


def tfrecord_gzip(records) -> bytes:
    """GZIP TFRecord of any bytes, Examples or not."""
    import tempfile
    from deepfm_tfx.components import tfrecord_rows
    with tempfile.NamedTemporaryFile(suffix=".gz") as f:
        tfrecord_rows.write(f.name, records)
        return open(f.name, "rb").read()


def tf_examples_with(index, change):
    """The good examples with the index-th changed."""
    examples = tf_examples()
    change(examples[index])
    return examples


def truncated(data: bytes) -> bytes:
    return data[:len(data) // 2]


@pytest.mark.parametrize("case, fmt, files, expected", BAD, ids=[c[0] for c in BAD])
def test_bad_input_exits_2_with_one_line_and_leaves_the_repository_as_it_was(
        tmp_path, repository, capsys, case, fmt, files, expected):
    data = tmp_path / "data"
    for relative, content in files(str(tmp_path)).items():
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        (data / relative).write_bytes(content)
    spec = SMALL.format(fmt=fmt.split("-")[0], ext="parquet" if fmt.startswith("parquet") else "tfrecord.gz")
    if fmt.endswith("-dt"):
        spec += "partitions: dt\n"
    (tmp_path / "spec.yaml").write_text(spec)
    before = tree(repository)
    code = cli.main(["run", "--data", str(data), "--features", str(tmp_path / "spec.yaml"),
                     "--model-repository", repository, "--pipeline-root", str(tmp_path / "pipeline")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    if expected is None:  # the exact record depends on where gzip's stream breaks
        assert err.startswith(f"error: {data}/{T}, record ") and "truncated" in err, err
    else:
        assert err == f"error: {expected.format(data=data)}\n"
    assert tree(repository) == before
    assert not os.path.exists(tmp_path / "pipeline")


# End to end: `deepfm-tfx run` on a Hive-partitioned Parquet table and on a folder of GZIP TFRecord.

KNOBS = ["--train-steps", "30", "--eval-steps", "3", "--min-auc", "0", "--batch-size", "256", "--dnn-units", "32,16"]


def ingested(pipeline_root):
    """ExampleGen's output: each split's serialized tf.Examples, sorted."""
    import glob
    out = {}
    for split in ("train", "eval"):
        files = sorted(glob.glob(os.path.join(pipeline_root, "SpecCsvExampleGen", "examples", "*", f"Split-{split}",
                                              "*.gz")))
        out[split] = sorted(r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    return out


def csv_splits(csv_path):
    """What ExampleGen writes from the CSV, by split, sorted."""
    out = {s.name: [] for s in splits()}
    for i, examples, _ in hash_splits.split_file(csv_path, SPEC, splits()):
        out[splits()[i].name] += examples
    return {name: sorted(examples) for name, examples in out.items()}


def run_pipeline(tmp, data, spec_path):
    argv = ["run", "--data", str(data), "--features", spec_path, "--pipeline-root", str(tmp / "pipeline"),
            "--model-repository", str(tmp / "repo"), "--summary", str(tmp / "summary.json")] + KNOBS
    assert cli.main(argv) == 0
    with open(tmp / "summary.json") as f:
        return json.load(f)


@pytest.mark.e2e
def test_a_hive_partitioned_parquet_table_runs_end_to_end_to_a_pushed_model(tmp_path, same_rows, capsys):
    table = tmp_path / "click_log"
    write_parquet(arrow_table(same_rows["csv"][0]), str(table / "dt=2026-11-30"), files=3, row_group_size=300)
    write_parquet(arrow_table(same_rows["csv"][0]).slice(0, 500), str(table / "dt=2026-11-29"))
    (table / "_SUCCESS").write_text("")  # as Spark leaves it
    summary = run_pipeline(tmp_path, table, spec_file(str(tmp_path), "parquet", partitions="dt",
                                                      file_pattern="*.parquet"))
    assert summary["pushed"] and summary["blessed"]
    assert summary["partition"] == "dt=2026-11-30" and summary["span"] == day("2026-11-30")
    assert summary["window_partitions"] == ["dt=2026-11-30"]
    assert ingested(str(tmp_path / "pipeline")) == csv_splits(same_rows["csv"][0])
    repo = str(tmp_path / "repo")
    assert mr.read_record(repo, "deepfm", summary["pushed_version"])["partitions"] == ["dt=2026-11-30"]
    capsys.readouterr()
    assert cli.main(["models", "list", "--model-repository", repo]) == 0
    assert "  dt=2026-11-30  " in capsys.readouterr().out  # the SPANS column


@pytest.mark.e2e
def test_a_folder_of_gzip_tfrecord_runs_end_to_end_to_a_pushed_model(tmp_path, same_rows):
    table = arrow_table(same_rows["csv"][0])
    data = tmp_path / "tfrecords"
    write_tfrecord(table.slice(0, 1800), data / "part-00000.tfrecord.gz")
    write_tfrecord(table.slice(1800), data / "part-00001.tfrecord.gz")
    summary = run_pipeline(tmp_path, data, spec_file(str(tmp_path), "tfrecord", file_pattern="*.tfrecord.gz"))
    assert summary["pushed"] and summary["blessed"] and summary["partition"] is None
    assert ingested(str(tmp_path / "pipeline")) == csv_splits(same_rows["csv"][0])


def test_tfrecord_written_without_tensorflow_reads_as_tensorflow_reads_it(tmp_path, same_rows):
    from deepfm_tfx.components import tfrecord_rows
    want = parsed(same_rows["csv"], SPEC)[:50]
    tfrecord_rows.write(str(tmp_path / "part.gz"), want)
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "part.gz"), compression_type="GZIP")] == want
    assert list(tfrecord_rows.records(str(tmp_path / "part.gz"))) == want


def test_a_spec_column_in_a_hive_folder_below_or_above_is_read_as_a_column(tmp_path):
    spec = feature_spec.FeatureSpec(name="p", label="y", categorical=["user", "country", "region"],
                                    numerical=["age", "hour"], multivalent=[], format="parquet")
    table = pa.table({"y": [1, 0], "user": ["u1", "u2"], "age": [3.0, None]})
    for country, hour in (("fr", "7"), (spans.HIVE_NULL, spans.HIVE_NULL)):
        folder = tmp_path / "region=west%2Fcoast" / "dt=2026-11-30" / f"country={country}" / f"hour={hour}"
        folder.mkdir(parents=True)
        pq.write_table(table, folder / "part-0.parquet")
    (tmp_path / "want.csv").write_text("y,user,age,country,region,hour\n1,u1,3,fr,west/coast,7\n"
                                       "0,u2,,fr,west/coast,7\n1,u1,3,,west/coast,\n0,u2,,,west/coast,\n")
    files = sorted(str(p) for p in tmp_path.glob("region=*/dt=*/country=*/hour=*/*.parquet"))
    rows.check_files(files, spec, "table")
    want = parsed([str(tmp_path / "want.csv")], as_spec("csv", spec))
    assert sorted(parsed(files, spec)) == sorted(want)


def test_generate_data_writes_the_same_rows_as_a_hive_table_of_parquet_and_as_tfrecord(tmp_path, capsys):
    import glob
    common = ["generate-data", "--rows", "1500", "--spans", "2", "--profile", "small", "--seed", "3"]
    assert cli.main(common + ["--out", str(tmp_path / "csv")]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "table"), "--format", "parquet", "--partitions", "dt"]) == 0
    assert cli.main(common + ["--out", str(tmp_path / "tfrecord"), "--format", "tfrecord"]) == 0
    assert sorted(os.listdir(tmp_path / "table")) == ["dt=2026-11-01", "dt=2026-11-02"]
    assert json.load(open(tmp_path / "table" / "dt=2026-11-02" / "bayes.json"))["span"] == 2
    specs = {fmt: feature_spec.load(os.path.join(feature_spec.SPEC_DIR, f"criteo_synthetic_{fmt}.yaml"))
             for fmt in ("parquet", "tfrecord")}
    for span, date in ((1, "2026-11-01"), (2, "2026-11-02")):
        want = parsed(sorted(glob.glob(str(tmp_path / "csv" / f"span-{span}" / "*.csv"))), SPEC)
        assert parsed(sorted(glob.glob(str(tmp_path / "table" / f"dt={date}" / "*.parquet"))), specs["parquet"]) == want
        assert parsed(sorted(glob.glob(str(tmp_path / "tfrecord" / f"span-{span}" / "*.tfrecord.gz"))),
                      specs["tfrecord"]) == want
    assert validation.check_data(str(tmp_path / "table"), specs["parquet"])[1] == day("2026-11-02")
    assert generator.read_bayes(str(tmp_path / "table"), day("2026-11-02"))["span"] == 2  # the summary's Bayes AUC
