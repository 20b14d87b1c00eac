"""The versioned model repository: push, rollback, prune, the `models` CLI, and a push killed mid-copy."""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from deepfm_tfx import model_repository as mr
from deepfm_tfx import models_config
from deepfm_tfx.pipeline import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "deepfm"
RECORD = {"trainer_runner": "keras", "metrics": {"auc": 0.7512, "logloss": 0.4431}, "spans": [1, 2],
          "warm_started": True, "pipeline_run_id": "run-42", "data_fingerprint": "0123456789abcdef0123"}


class _Scale(tf.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = tf.Variable(factor)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def serve(self, x):
        return {"y": x * self.factor}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Two tiny SavedModels that tell themselves apart by their output."""
    out = {}
    for factor in (2.0, 3.0):
        path = str(tmp_path_factory.mktemp("sm") / f"x{int(factor)}")
        module = _Scale(factor)
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
        out[factor] = path
    return out


def _served_output(repo, version):
    loaded = tf.saved_model.load(os.path.join(repo, MODEL, str(version)))
    return float(loaded.signatures["serving_default"](tf.constant([1.0]))["y"].numpy()[0])


def _config(repo):
    with open(os.path.join(repo, mr.CONFIG_FILE)) as f:
        return f.read()


def _loaded(repo):
    """(versions TF Serving loads, labels, base_path), read with TF Serving's proto."""
    entry = models_config.find(models_config.read(os.path.join(repo, mr.CONFIG_FILE)), MODEL)
    return models_config.specific_versions(entry), models_config.labels(entry), entry.base_path


def _digit_entries(repo):
    return sorted(n for n in os.listdir(os.path.join(repo, MODEL)) if n.isdigit())


def _run_cli(argv):
    return cli.main(argv)


@pytest.fixture
def three_versions(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    vs = [mr.push(repo, MODEL, saved_models[2.0], dict(RECORD, pipeline_run_id=f"run-{i}")) for i in range(3)]
    return repo, vs


def test_push_twice_serves_the_newest_with_records(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    v1 = mr.push(repo, MODEL, saved_models[2.0], RECORD)
    v2 = mr.push(repo, MODEL, saved_models[3.0], dict(RECORD, warm_started=False, spans=[3]))

    assert v2 > v1 and mr.versions(repo, MODEL) == [v1, v2]
    assert _digit_entries(repo) == sorted([str(v1), str(v2)])
    assert mr.serving_version(repo, MODEL) == v2
    assert _loaded(repo) == ([v2], {"stable": v2, "canary": v2}, f"/models/{MODEL}")
    assert _served_output(repo, v1) == 2.0 and _served_output(repo, v2) == 3.0

    r1, r2 = mr.read_record(repo, MODEL, v1), mr.read_record(repo, MODEL, v2)
    for key in ("trainer_runner", "metrics", "pipeline_run_id", "data_fingerprint"):
        assert r1[key] == RECORD[key]
    assert (r1["spans"], r1["warm_started"]) == ([1, 2], True)
    assert (r2["spans"], r2["warm_started"]) == ([3], False)
    assert r2["version"] == v2 and r2["path"] == os.path.abspath(os.path.join(repo, MODEL, str(v2)))
    assert time.strptime(r2["created_at"], "%Y-%m-%dT%H:%M:%SZ")
    assert [e["serving"] for e in mr.list_models(repo, MODEL)] == [False, True]


def test_push_refuses_a_folder_without_a_saved_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(mr.RepositoryError, match="no complete SavedModel"):
        mr.push(str(tmp_path / "repo"), MODEL, str(tmp_path / "empty"), {})
    assert mr.versions(str(tmp_path / "repo"), MODEL) == []


def test_pushing_one_model_keeps_the_other_models_pin(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    a = mr.push(repo, "a", saved_models[2.0], {})
    b = mr.push(repo, "b", saved_models[3.0], {})
    mr.push(repo, "b", saved_models[3.0], {})
    mr.rollback(repo, "b", b)
    assert (mr.serving_version(repo, "a"), mr.serving_version(repo, "b")) == (a, b)


def test_rollback_changes_only_what_is_served(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    v1 = mr.push(repo, MODEL, saved_models[2.0], RECORD)
    v2 = mr.push(repo, MODEL, saved_models[3.0], RECORD)
    files_before = sorted(os.listdir(os.path.join(repo, MODEL)))

    mr.rollback(repo, MODEL, v1)

    assert mr.serving_version(repo, MODEL) == v1
    assert _loaded(repo)[:2] == ([v1], {"stable": v1, "canary": v1}) and str(v2) not in _config(repo)
    # Nothing moved or vanished; the only new file is the rollback's hold.
    assert sorted(os.listdir(os.path.join(repo, MODEL))) == sorted(files_before + [mr.HOLD_FILE])
    assert mr.versions(repo, MODEL) == [v1, v2]


def test_a_rollback_holds_until_release(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    v1 = mr.push(repo, MODEL, saved_models[2.0], RECORD)
    mr.push(repo, MODEL, saved_models[3.0], RECORD)
    mr.rollback(repo, MODEL, v1)

    held_push = mr.push(repo, MODEL, saved_models[3.0], RECORD)
    assert mr.serving_version(repo, MODEL) == v1 and _served_output(repo, v1) == 2.0
    assert mr.read_record(repo, MODEL, held_push)["served_on_push"] is False
    assert mr.held(repo, MODEL)["version"] == v1

    assert mr.release(repo, MODEL)["version"] == v1
    assert mr.serving_version(repo, MODEL) == v1  # release alone changes nothing served
    assert mr.release(repo, MODEL) is None
    after = mr.push(repo, MODEL, saved_models[3.0], RECORD)
    assert mr.serving_version(repo, MODEL) == after
    assert mr.read_record(repo, MODEL, after)["served_on_push"] is True


def test_rollback_to_an_unknown_or_incomplete_version_fails_and_changes_nothing(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    v1 = mr.push(repo, MODEL, saved_models[2.0], RECORD)
    config = _config(repo)
    with pytest.raises(mr.RepositoryError, match=f"no version {v1 + 100} in .*; versions are {v1}$"):
        mr.rollback(repo, MODEL, v1 + 100)
    # A numeric folder copied in by hand and cut short.
    half = os.path.join(repo, MODEL, str(v1 - 5))
    shutil.copytree(saved_models[2.0], half)
    os.remove(os.path.join(half, "variables", "variables.index"))
    with pytest.raises(mr.RepositoryError, match="incomplete"):
        mr.rollback(repo, MODEL, v1 - 5)
    assert _config(repo) == config


def test_prune_keeps_the_serving_and_the_newest(three_versions):
    repo, (v1, v2, v3) = three_versions
    mr.rollback(repo, MODEL, v1)

    assert mr.prune(repo, MODEL, keep=1, dry_run=True) == [v2]
    assert mr.versions(repo, MODEL) == [v1, v2, v3]
    assert mr.prune(repo, MODEL, keep=1) == [v2]

    assert mr.versions(repo, MODEL) == [v1, v3]
    assert sorted(os.listdir(os.path.join(repo, MODEL))) == sorted(
        [str(v1), str(v3), f"{v1}.record.json", f"{v3}.record.json", mr.HOLD_FILE])
    assert mr.serving_version(repo, MODEL) == v1
    assert _served_output(repo, v1) == 2.0
    with pytest.raises(mr.RepositoryError, match="at least 1"):
        mr.prune(repo, MODEL, keep=0)


def test_the_next_writer_clears_what_a_dead_prune_left(three_versions, saved_models):
    repo, (v1, v2, v3) = three_versions
    base = os.path.join(repo, MODEL)
    # A prune killed after its rename, before removing the record and the folder.
    os.rename(os.path.join(base, str(v1)), os.path.join(base, f".incoming-deleted-{v1}"))
    assert mr.versions(repo, MODEL) == [v2, v3]
    v4 = mr.push(repo, MODEL, saved_models[3.0], RECORD)
    assert sorted(os.listdir(base)) == sorted(
        [str(v) for v in (v2, v3, v4)] + [f"{v}.record.json" for v in (v2, v3, v4)])


def test_cli_list_prints_a_table_and_json(three_versions, capsys):
    repo, (v1, v2, v3) = three_versions
    mr.rollback(repo, MODEL, v2)

    assert _run_cli(["models", "list", "--model-repository", repo]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{repo}/{MODEL}: 3 version(s), serving {v2} (held by a rollback since ")
    assert out[1].split() == ["VERSION", "LABELS", "CREATED", "TRAINER", "AUC", "LOGLOSS", "SPANS", "WARM",
                              "RUN", "ID", "DATA"]
    rows = {int(line.split()[0]): line for line in out[2:]}
    assert sorted(rows) == [v1, v2, v3]
    assert rows[v2].split()[1] == "canary,stable" and "stable" not in rows[v1] + rows[v3]
    assert rows[v2].split()[3:] == ["keras", "0.7512", "0.4431", "1,2", "yes", "run-1", "0123456789ab"]

    assert _run_cli(["models", "list", "--model-repository", repo, "--model-name", MODEL, "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["serving_version"] == v2
    assert [(r["version"], r["serving"], r["pipeline_run_id"]) for r in listing["versions"]] == [
        (v1, False, "run-0"), (v2, True, "run-1"), (v3, False, "run-2")]
    assert listing["versions"][0]["data_fingerprint"] == RECORD["data_fingerprint"]
    assert listing["versions"][0]["auc"] == 0.7512


def test_cli_list_of_an_empty_repository(tmp_path, capsys):
    assert _run_cli(["models", "list", "--model-repository", str(tmp_path)]) == 0
    assert "no versions" in capsys.readouterr().out


def test_cli_on_a_missing_repository_or_a_file_exits_2_saying_so(tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a repository")
    for path, problem in ((tmp_path / "none", "no such folder"),
                          (tmp_path / "a_file", "is a file, not a model repository folder")):
        for argv in (["list"], ["rollback", "1"], ["prune", "--keep", "1"], ["release"]):
            assert _run_cli(["models", *argv, "--model-repository", str(path)]) == 2
            assert capsys.readouterr().err == f"error: --model-repository {path}: {problem}\n"
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_cli_defaults_match_the_run_config():
    import importlib
    parser = argparse.ArgumentParser()
    importlib.import_module("deepfm_tfx.pipeline.cli.models").configure(parser)
    args = parser.parse_args(["prune", "--keep", "2"])
    assert (args.model_repository, args.model_name, args.keep) == ("model_repository", "deepfm", 2)


def test_cli_rollback_and_prune(three_versions, capsys):
    repo, (v1, v2, v3) = three_versions
    config = _config(repo)
    assert _run_cli(["models", "rollback", str(v3 + 1), "--model-repository", repo]) == 2
    assert f"no version {v3 + 1}" in capsys.readouterr().err
    assert _config(repo) == config

    assert _run_cli(["models", "rollback", str(v1), "--model-repository", repo]) == 0
    assert f"serving version {v1} (was {v3})" in capsys.readouterr().out
    assert mr.serving_version(repo, MODEL) == v1

    assert _run_cli(["models", "prune", "--keep", "1", "--model-repository", repo]) == 0
    out = capsys.readouterr().out
    assert f"removed {MODEL} version {v2}" in out and f"kept {v1}, {v3} (serving {v1})" in out
    assert mr.versions(repo, MODEL) == [v1, v3] and mr.read_record(repo, MODEL, v2) is None

    assert _run_cli(["models", "prune", "--keep", "0", "--model-repository", repo]) == 2
    assert "at least 1" in capsys.readouterr().err


_PUSH = """
import sys
sys.path.insert(0, sys.argv[1])
from deepfm_tfx import model_repository
model_repository.push(sys.argv[2], "deepfm", sys.argv[3], {"trainer_runner": "killed"})
"""


def _copying(base):
    """True once the padding is partly copied into an `.incoming-*` folder."""
    for name in os.listdir(base):
        try:
            if name.startswith(".incoming-") and os.path.getsize(os.path.join(base, name, "assets", "padding.bin")):
                return True
        except OSError:
            pass
    return False


def test_a_push_killed_mid_copy_leaves_the_repository_as_it_was(tmp_path, saved_models):
    repo = str(tmp_path / "repo")
    old = mr.push(repo, MODEL, saved_models[2.0], RECORD)
    config = _config(repo)
    big = str(tmp_path / "big")
    shutil.copytree(saved_models[3.0], big)
    with open(os.path.join(big, "assets", "padding.bin"), "wb") as f:
        f.truncate(256 << 20)  # sparse here, written out in full by the copy

    proc = subprocess.Popen([sys.executable, "-c", _PUSH, ROOT, repo, big])
    base = os.path.join(repo, MODEL)
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if _copying(base):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the push finished before it could be killed"

    new = [int(n) for n in _digit_entries(repo) if int(n) != old]
    if new:  # killed after the rename: the version must be whole, and not yet served
        assert mr.versions(repo, MODEL) == [old] + new and _served_output(repo, new[0]) == 3.0
    else:
        assert any(n.startswith(".incoming-") for n in os.listdir(base))
        assert mr.versions(repo, MODEL) == [old]
    assert _config(repo) == config and mr.serving_version(repo, MODEL) == old
    assert _served_output(repo, old) == 2.0

    # The dead push held the lock; the kernel dropped it, so this does not wait.
    nxt = mr.push(repo, MODEL, saved_models[3.0], RECORD)
    assert not any(n.startswith(".incoming-") or ".tmp-" in n for n in os.listdir(base))
    assert mr.serving_version(repo, MODEL) == nxt and nxt == mr.versions(repo, MODEL)[-1]
    assert _served_output(repo, nxt) == 3.0
