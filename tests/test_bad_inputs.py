"""The bad-input corpus: every bad file, value, spec and flag found so far, run through `deepfm-tfx run`.

Each case must exit 2 with exactly one line on stderr, naming the file, row
and column where they apply, before any work: the pipeline root is never
created and an existing model repository stays byte-identical. Data is read
by the pre-run scan (csv_rows), so no case starts the pipeline.

Add a case for every new bug: CASES is the corpus. `python tests/test_bad_inputs.py`
prints it as a table of inputs, exit codes and messages.
"""
import gzip
import os
import sys

import pytest

from deepfm_tfx import model_repository as mr
from deepfm_tfx.pipeline import cli
from deepfm_tfx.synthetic import generator
from test_repository_safety import tree, write_saved_model

HEADER = ",".join(generator.COLUMNS)
GOOD = "1," + ",".join(["3"] * 13) + "," + ",".join(["0a0b0c0d"] * 26)
FILE = "span-1/part-000.csv"


def row(**changes) -> str:
    """The good row with some columns changed, e.g. row(I5="many")."""
    values = dict(zip(generator.COLUMNS, GOOD.split(",")))
    values.update(changes)
    return ",".join(values[c] for c in generator.COLUMNS)


def csv_text(*rows: str) -> bytes:
    """A file: the header, two good rows, then `rows` (so a bad row is row 4)."""
    return ("\n".join([HEADER, GOOD, GOOD, *rows]) + "\n").encode()


def balanced(n: int) -> bytes:
    """n valid, distinct rows with both labels."""
    return ("\n".join([HEADER] + [row(label=str(i % 2), I1=str(i)) for i in range(n)]) + "\n").encode()


MULTIVALENT_SPEC = (b"label: label\nfile_pattern: '*.csv'\ncategorical: [C1]\nnumerical: [I1]\n"
                    b"multivalent: [{name: C2, separator: '|', max_length: 3}]\n")
NOT_FINITE = "(non-finite numbers are data errors; leave the field empty for a missing value)"
SPLITS = "each split needs at least 100 rows, holding both labels 0 and 1"
NAME_RULES = ("TF Serving model names use letters, digits, '_', '-' and '.', start with a letter, digit or '_', "
              "and hold no path separator")

# (case, {path under the data folder: bytes}, extra flags, the one stderr line after "error: ").
# {data}, {file}, {repo} and {tmp} are filled in; flags may use them too.
CASES = [
    # A column type given a wrong type.
    ("numeric: a word", {FILE: csv_text(row(I5="many"))}, [],
     "{file}, row 4, column 'I5': expected a number, got 'many'"),
    ("numeric: nan", {FILE: csv_text(row(I3="nan"))}, [],
     f"{{file}}, row 4, column 'I3': expected a finite number, got 'nan' {NOT_FINITE}"),
    ("numeric: NaN", {FILE: csv_text(row(I3="NaN"))}, [],
     f"{{file}}, row 4, column 'I3': expected a finite number, got 'NaN' {NOT_FINITE}"),
    ("numeric: inf", {FILE: csv_text(row(I4="inf"))}, [],
     f"{{file}}, row 4, column 'I4': expected a finite number, got 'inf' {NOT_FINITE}"),
    ("numeric: -Infinity", {FILE: csv_text(row(I4="-Infinity"))}, [],
     f"{{file}}, row 4, column 'I4': expected a finite number, got '-Infinity' {NOT_FINITE}"),
    ("numeric: beyond float32", {FILE: csv_text(row(I6="1e39"))}, [],
     "{file}, row 4, column 'I6': expected a number within float32's range (±3.4e38), got '1e39'"),
    ("numeric: leading +", {FILE: csv_text(row(I1="+3"))}, [],
     "{file}, row 4, column 'I1': expected a number, got '+3'"),
    ("numeric: decimal comma", {FILE: csv_text(row(I1='"1,5"'))}, [],
     "{file}, row 4, column 'I1': expected a number, got '1,5'"),
    ("numeric: hex", {FILE: csv_text(row(I1="0x1F"))}, [],
     "{file}, row 4, column 'I1': expected a number, got '0x1F'"),
    ("numeric: only spaces", {FILE: csv_text(row(I2="  "))}, [],
     "{file}, row 4, column 'I2': expected a number, got '  '"),
    ("label: a word", {FILE: csv_text(row(label="yes"))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got 'yes'"),
    ("label: a fraction", {FILE: csv_text(row(label="0.5"))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got '0.5'"),
    ("label: 2", {FILE: csv_text(row(label="2"))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got '2'"),
    ("label: -1", {FILE: csv_text(row(label="-1"))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got '-1'"),
    ("label: nan", {FILE: csv_text(row(label="nan"))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got 'nan'"),
    ("label: missing", {FILE: csv_text(row(label=""))}, [],
     "{file}, row 4, column 'label': the label is missing"),
    ("numeric: a categorical id", {FILE: csv_text(row(I7="0a0b0c0d"))}, [],
     "{file}, row 4, column 'I7': expected a number, got '0a0b0c0d'"),
    ("label: a categorical id", {FILE: csv_text(row(label="0a0b0c0d"))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got '0a0b0c0d'"),
    ("label: a space", {FILE: csv_text(row(label=" "))}, [],
     "{file}, row 4, column 'label': expected a label 0 or 1, got ' '"),
    ("multivalent: not UTF-8", {FILE: csv_text(row(C2="g1|g\xe9")).replace("g\xe9".encode(), b"g\xe9"),
                                "spec.yaml": MULTIVALENT_SPEC}, ["--features", "{data}/spec.yaml"],
     "{file}, row 4, column 'C2': not UTF-8 text (byte 0xe9)"),
    ("categorical: not UTF-8", {FILE: csv_text(row(C3="caf\xe9")).replace("caf\xe9".encode(), b"caf\xe9")}, [],
     "{file}, row 4, column 'C3': not UTF-8 text (byte 0xe9)"),
    # Rows of the wrong shape.
    ("row: a field short", {FILE: csv_text(GOOD.rsplit(",", 1)[0])}, [],
     "{file}, row 4: expected 40 fields, got 39"),
    ("row: a field extra", {FILE: csv_text(GOOD + ",x")}, [],
     "{file}, row 4: expected 40 fields, got 41"),
    # Encoding faults.
    ("bytes: not UTF-8 in a number", {FILE: csv_text(row(I5="\xff")).replace("\xff".encode(), b"\xff")}, [],
     "{file}, row 4, column 'I5': not UTF-8 text (byte 0xff)"),
    ("bytes: not UTF-8 in the header", {FILE: b"label,I1\xff," + csv_text()[len("label,I1,"):]}, [],
     "{file}, row 1: the header is not UTF-8 text (byte 0xff at offset 8)"),
    ("bytes: truncated gzip", {FILE: gzip.compress(balanced(300))[:-40]}, [],
     "{file}: gzip data is corrupt or truncated (Compressed file ended before the end-of-stream marker "
     "was reached)"),
    ("bytes: a zip archive", {FILE: b"PK\x03\x04" + b"\x00" * 60}, [],
     "{file}: is a zip archive, not CSV text; decompress it first (gzip is read as is)"),
    ("bytes: binary", {FILE: b"\x00\x01\x02binary\x00"}, [],
     "{file}: is not a text file (it holds NUL bytes)"),
    ("bytes: 0-byte file", {FILE: b"", "span-1/part-001.csv": balanced(3000)}, [],
     "{file}: the file is empty (0 bytes)"),
    # Files and spans.
    ("span: header only", {FILE: (HEADER + "\n").encode()}, [],
     "{data}/span-1/*.csv: the span is empty (its files hold no data rows)"),
    ("span: no matching files", {"span-1/part-000.txt": balanced(10)}, [],
     "{data}/span-1/*.csv: no data files match the pattern"),
    ("header: a column missing", {FILE: csv_text().replace(b",C7,", b",C7x,")}, [],
     "{file}: header lacks column(s) ['C7'] named by feature spec 'criteo_synthetic' (header has "
     "['label', 'I1', 'I2', 'I3', 'I4', 'I5', 'I6', 'I7']...)"),
    # Too little data to split and evaluate.
    ("rows: 1", {FILE: balanced(1)}, [],
     f"{{data}}/span-1/*.csv: too few rows to train and evaluate on: 1 row(s), split 1 train (0 with label 1), "
     f"0 eval (0 with label 1); {SPLITS}"),
    ("rows: 2000 copies of one row", {FILE: ("\n".join([HEADER] + [GOOD] * 2000) + "\n").encode()}, [],
     f"{{data}}/span-1/*.csv: too few rows to train and evaluate on: 2000 row(s), split 2000 train (2000 with "
     f"label 1), 0 eval (0 with label 1); {SPLITS}"),
    # Flags and paths, checked before the data is read.
    ("flag: --train-steps 0", {FILE: balanced(3)}, ["--train-steps", "0"],
     "--train-steps must be at least 1, got 0"),
    ("flag: --eval-steps -1", {FILE: balanced(3)}, ["--eval-steps=-1"], "--eval-steps must be at least 1, got -1"),
    ("flag: --window-spans 0", {FILE: balanced(3)}, ["--window-spans", "0"],
     "--window-spans must be at least 1, got 0"),
    ("flag: --min-auc 1.5", {FILE: balanced(3)}, ["--min-auc", "1.5"],
     "--min-auc must be between 0.0 and 1.0, got 1.5"),
    ("flag: --max-auc-drop nan", {FILE: balanced(3)}, ["--max-auc-drop", "nan"],
     "--max-auc-drop must be between 0.0 and 1.0, got nan"),
    ("flag: --batch-size 0", {FILE: balanced(3)}, ["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("flag: --learning-rate 0", {FILE: balanced(3)}, ["--learning-rate", "0"],
     "--learning-rate must be a positive number, got 0.0"),
    ("flag: --beam-arg without --", {FILE: balanced(3)}, ["--beam-arg", "direct_num_workers=2"],
     "--beam-arg takes Beam options like --beam-arg=--direct_num_workers=2, got 'direct_num_workers=2'"),
    ("flag: --model-name ../escaped", {FILE: balanced(3)}, ["--model-name", "../escaped"],
     f"--model-name: model name '../escaped' is not allowed: {NAME_RULES}"),
    ("flag: --model-name with a quote", {FILE: balanced(3)}, ["--model-name", 'a"b'],
     f"--model-name: model name 'a\"b' is not allowed: {NAME_RULES}"),
    ("flag: --model-repository a file", {FILE: balanced(3)}, ["--model-repository", "{data}/span-1/part-000.csv"],
     "--model-repository {data}/span-1/part-000.csv: is a file, not a folder"),
    ("flag: --data a file", {FILE: balanced(3)}, ["--data", "{data}/span-1/part-000.csv"],
     "--data {data}/span-1/part-000.csv: is a file, not a folder"),
    ("flag: --data missing", {FILE: balanced(3)}, ["--data", "{tmp}/nowhere"], "--data {tmp}/nowhere: no such folder"),
    ("flag: --pipeline-root under a file", {FILE: balanced(3)}, ["--pipeline-root", "{file}/pipeline"],
     "--pipeline-root {file}/pipeline: cannot be created, {file} is a file"),
    ("flag: --summary a folder", {FILE: balanced(3)}, ["--summary", "{data}"], "--summary {data}: is a folder, not a file"),
    ("flag: --features missing", {FILE: balanced(3)}, ["--features", "{tmp}/none.yaml"],
     "--features {tmp}/none.yaml: no such file"),
    ("flag: --metadata malformed", {FILE: balanced(3)}, ["--metadata", "mysql://deepfm:s3cret-pw@db:port/mlmd"],
     "--metadata: its port is not a number; it must look like mysql://user:pass@host:port/db or sqlite:///path"),
    ("flag: --metadata unreachable", {FILE: balanced(3)}, ["--metadata", "mysql://deepfm:s3cret-pw@127.0.0.1:1/mlmd"],
     "--metadata mysql://deepfm:***@127.0.0.1:1/mlmd: cannot connect to ml-metadata (mysql_real_connect failed: "
     "errno: , error:); check the server is up and the user, password and database are right"),
    ("flag: --metadata wrong password", {FILE: balanced(3)},
     ["--metadata", "mysql://root:s3cret-pw@127.0.0.1:3306/mysql"],
     "--metadata mysql://root:***@127.0.0.1:3306/mysql: cannot connect to ml-metadata (mysql_real_connect failed: "
     "errno: , error:); check the server is up and the user, password and database are right"),
    # Feature specs.
    ("spec: invalid YAML", {FILE: balanced(3), "spec.yaml": b"label: [unclosed\n"}, ["--features", "{data}/spec.yaml"],
     "{data}/spec.yaml, line 2, column 1: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("spec: split_key not categorical", {FILE: balanced(3), "spec.yaml": b"label: label\nnumerical: [I1]\n"
                                         b"categorical: [C1]\nsplit_key: I1\n"}, ["--features", "{data}/spec.yaml"],
     "{data}/spec.yaml: 'split_key' must name one of the categorical columns, got 'I1'"),
]


def run_case(tmp, repo, files, flags, capsys):
    data = tmp / "data"
    for relative, content in files.items():
        (data / relative).parent.mkdir(parents=True, exist_ok=True)
        (data / relative).write_bytes(content)
    fill = {"data": str(data), "file": str(data / FILE), "repo": repo, "tmp": str(tmp)}
    argv = ["run", "--data", str(data), "--model-repository", repo, "--pipeline-root", str(tmp / "pipeline")]
    code = cli.main(argv + [f.format(**fill) for f in flags])
    return code, capsys.readouterr().err, fill


@pytest.mark.parametrize("case, files, flags, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_leaves_everything_as_it_was(
        tmp_path, repository, capsys, case, files, flags, expected):
    before = tree(repository)
    code, err, fill = run_case(tmp_path, repository, files, flags, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert err == f"error: {expected.format(**fill)}\n"
    assert "s3cret-pw" not in err
    assert tree(repository) == before
    assert not os.path.exists(tmp_path / "pipeline")  # no work was done


def test_gzip_content_a_bom_and_crlf_are_read_as_plain_csv(tmp_path, repository, capsys):
    """Not bad inputs: the same rows gzipped under a .csv name, with a UTF-8 BOM, with CRLF line ends."""
    from deepfm_tfx.components import csv_rows, example_encoder
    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    plain = balanced(50)
    variants = {"plain": plain, "gzip": gzip.compress(plain), "bom": b"\xef\xbb\xbf" + plain,
                "crlf": plain.replace(b"\n", b"\r\n"), "bom-crlf-gzip": gzip.compress(b"\xef\xbb\xbf" + plain.replace(
                    b"\n", b"\r\n"))}
    parsed = {}
    for name, content in variants.items():
        path = tmp_path / name / "part-000.csv"
        path.parent.mkdir()
        path.write_bytes(content)
        csv_rows.check_files([str(path)], spec, str(path))
        parsed[name] = list(example_encoder.parse_file(str(path), spec))
    assert len(parsed["plain"]) == 50 and all(p == parsed["plain"] for p in parsed.values())


@pytest.mark.e2e
def test_a_data_error_inside_example_gen_is_one_line_without_a_traceback(tmp_path, repository, capsys, monkeypatch):
    """Kubeflow and Airflow have no pre-run scan, so ExampleGen's own error must read the same (the
    scan is skipped here to get there): no Beam traceback before it, nothing pushed."""
    from deepfm_tfx.components import hash_splits
    monkeypatch.setattr(hash_splits, "check_splits", lambda files, spec, splits, where: None)
    lines = balanced(1500).decode().splitlines()
    lines[699] = row(I1="many")
    before = tree(repository)
    code, err, fill = run_case(tmp_path, repository, {FILE: ("\n".join(lines) + "\n").encode()},
                               ["--train-steps", "5"], capsys)
    assert code == 2
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: {fill['file']}, row 700, column 'I1': expected a number, got 'many'"]
    # A run that started writes its report under <model>/runs/, failed or not; versions, records
    # and models.config must not change.
    assert {k: v for k, v in tree(repository).items() if not k.startswith("deepfm/runs")} == before


def markdown_table() -> str:
    """The corpus as run: input, exit code, message (for the issue's closing note)."""
    import tempfile

    class Capture:
        def readouterr(self):
            out = type("Out", (), {})()
            out.err = sys.stderr.getvalue()
            sys.stderr.truncate(0), sys.stderr.seek(0)
            return out

    import io
    import pathlib
    lines = ["| bad input | exit | message |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as root:
        repo = os.path.join(root, "model_repository")
        mr.push(repo, "deepfm", write_saved_model(os.path.join(root, "trainer")), {})
        real, sys.stderr = sys.stderr, io.StringIO()
        real_out, sys.stdout = sys.stdout, io.StringIO()
        try:
            for i, (case, files, flags, _) in enumerate(CASES):
                tmp = pathlib.Path(root) / f"case{i}"
                code, err, _ = run_case(tmp, repo, files, flags, Capture())
                message = err.strip().replace(str(tmp), "…").replace("|", "\\|")
                lines.append(f"| {case} | {code} | `{message}` |")
        finally:
            sys.stderr, sys.stdout = real, real_out
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
