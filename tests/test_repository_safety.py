"""The model repository writes and deletes only inside itself, serves only SavedModels that
parse, and a push killed half-way is finished, not repeated, by its retry.

Unit-speed: the SavedModels here are minimal saved_model.pb files built with
saved_model_check's own schema, so no TensorFlow is imported.
"""
import hashlib
import os
import signal
import subprocess
import sys

import pytest

from deepfm_tfx import model_repository as mr
from deepfm_tfx import saved_model_check
from deepfm_tfx.pipeline import cli

MODEL = "deepfm"
BAD_NAMES = ["../escaped", "a/b", 'x"y', "", ".", "..", ".hidden", "-rf", "a b", "tab\tname", "ünï", "x" * 256]


def write_saved_model(folder, signature="serving_default"):
    """A saved_model.pb TF Serving's checks accept: a `serve` MetaGraph with `signature`."""
    saved_model = saved_model_check._SavedModel()
    graph = saved_model.meta_graphs.add()
    graph.meta_info_def.tags.append("serve")
    entry = graph.signature_def.add(key=signature)
    entry.value.inputs.add(key="examples")
    entry.value.outputs.add(key="click_probability")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
        f.write(saved_model.SerializeToString())
    return str(folder)


def tree(root):
    """{relative path: sha256 of the bytes (None for a folder, 'link -> target' for a link)}."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                out[rel] = "link -> " + os.readlink(path)
            elif os.path.isdir(path):
                out[rel] = None
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path):
    """A repository with two versions, and a victim folder beside it shaped like a model's."""
    source = write_saved_model(tmp_path / "trainer" / "Format-Serving")
    repo = str(tmp_path / "repo")
    versions = [mr.push(repo, MODEL, source, {"source_model": f"run-{i}"}) for i in range(2)]
    victim = tmp_path / "victim"
    for v in ("1", "2", "3"):
        write_saved_model(victim / v)
    (victim / "report.tmp-final.csv").write_text("the user's own file\n")
    (victim / "1.record.json").write_text("{}")
    return tmp_path, repo, versions, source


@pytest.mark.parametrize("name", BAD_NAMES + ["<victim>"])
def test_every_repository_function_refuses_a_bad_model_name_and_touches_nothing(world, name):
    root, repo, (v1, _), source = world
    name = str(root / "victim") if name == "<victim>" else name
    before = tree(root)
    for call in (lambda: mr.versions(repo, name), lambda: mr.list_models(repo, name),
                 lambda: mr.push(repo, name, source, {}), lambda: mr.rollback(repo, name, v1),
                 lambda: mr.prune(repo, name, keep=1), lambda: mr.release(repo, name),
                 lambda: mr.canary(repo, name, v1), lambda: mr.promote(repo, name, v1),
                 lambda: mr.read_record(repo, name, v1)):
        with pytest.raises(mr.RepositoryError, match="is not allowed: TF Serving model names"):
            call()
    assert tree(root) == before


def test_good_model_names_pass():
    for name in ("deepfm", "ranker-v2", "ctr_model.2024", "_private", "A1"):
        assert mr.check_model_name(name) == name


MODELS_COMMANDS = [["list"], ["list", "--json"], ["rollback", "{v1}"], ["canary", "{v1}"], ["promote", "{v1}"],
                   ["release"], ["prune", "--keep", "1"], ["prune", "--keep", "1", "--dry-run"]]


def test_every_command_refuses_a_bad_model_name_before_any_work(world, capsys):
    """The issue's cases: prune deleting a victim's versions and files, run pushing to ../escaped,
    a quote injected into models.config."""
    root, repo, (v1, _), _ = world
    before = tree(root)
    victim = str(root / "victim")
    for name in (victim, "../escaped", 'evil" } config { name: "x', "."):
        for argv in MODELS_COMMANDS:
            argv = [a.format(v1=v1) for a in argv]
            assert cli.main(["models", *argv, "--model-name", name, "--model-repository", repo]) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and f"model name {name!r} is not allowed" in err, (argv, err)
        assert cli.main(["compile", "--target", "kubeflow-v2", "--output", str(root / "p.json"),
                         "--model-name", name]) == 2
        assert f"model name {name!r} is not allowed" in capsys.readouterr().err
    assert tree(root) == before


def test_run_refuses_a_bad_model_name_before_any_work(world, capsys):
    root, repo, _, _ = world
    before = tree(root)
    assert cli.main(["run", "--model-name", "../escaped", "--model-repository", repo,
                     "--pipeline-root", str(root / "pipeline"), "--data", str(root / "trainer")]) == 2
    assert capsys.readouterr().err == ("error: --model-name: model name '../escaped' is not allowed: TF Serving "
                                       "model names use letters, digits, '_', '-' and '.', start with a letter, "
                                       "digit or '_', and hold no path separator\n")
    assert tree(root) == before  # not even the pipeline root was created


def test_every_command_writes_and_deletes_only_inside_the_repository(world, capsys):
    root, repo, (v1, v2), source = world
    base = os.path.join(repo, MODEL)
    stray = os.path.join(base, "notes.tmp-final.csv")  # not ours: never cleared as a leftover
    with open(stray, "w") as f:
        f.write("an operator's notes\n")
    dead_write = os.path.join(base, f"{v1}.record.json.tmp-99999")  # ours: a dead writer's
    with open(dead_write, "w") as f:
        f.write("{")
    outside = {k: v for k, v in tree(root).items() if not k.startswith("repo")}

    v3 = mr.push(repo, MODEL, source, {"source_model": "run-3"})
    for argv in (["list"], ["canary", str(v2)], ["promote"], ["rollback", str(v1)], ["release"],
                 ["prune", "--keep", "1", "--dry-run"], ["prune", "--keep", "1"]):
        assert cli.main(["models", *argv, "--model-repository", repo]) == 0, argv
    capsys.readouterr()

    assert {k: v for k, v in tree(root).items() if not k.startswith("repo")} == outside
    assert os.path.exists(stray) and not os.path.exists(dead_write)
    assert mr.versions(repo, MODEL) == [v1, v3] and mr.serving_version(repo, MODEL) == v1


def test_a_model_folder_that_is_a_symbolic_link_is_refused(world):
    root, repo, _, source = world
    os.symlink(str(root / "victim"), os.path.join(repo, "linked"))
    before = tree(root)
    for call in (lambda: mr.prune(repo, "linked", keep=1), lambda: mr.push(repo, "linked", source, {}),
                 lambda: mr.versions(repo, "linked")):
        with pytest.raises(mr.RepositoryError, match="is a symbolic link"):
            call()
    assert tree(root) == before


# --- only a SavedModel that parses, with serving_default, is served ------------------------------

def _config(repo):
    with open(os.path.join(repo, mr.CONFIG_FILE), "rb") as f:
        return f.read()


@pytest.mark.parametrize("junk, why", [
    (b"junk", "saved_model.pb does not parse as a SavedModel protobuf"),
    (b"", "saved_model.pb is empty"),
    (None, "saved_model.pb has no 'serving_default' signature (it has ['predict'])"),
])
def test_rollback_refuses_a_version_that_cannot_be_served(world, capsys, junk, why):
    root, repo, (v1, v2), _ = world
    bad = v1 - 10
    folder = os.path.join(repo, MODEL, str(bad))
    if junk is None:
        write_saved_model(folder, signature="predict")
    else:
        os.makedirs(folder)
        with open(os.path.join(folder, "saved_model.pb"), "wb") as f:
            f.write(junk)
    config = _config(repo)
    assert cli.main(["models", "rollback", str(bad), "--model-repository", repo]) == 2
    assert capsys.readouterr().err == f"error: version {bad} of 'deepfm' cannot be served: {why}; not serving it\n"
    assert _config(repo) == config and mr.serving_version(repo, MODEL) == v2
    with pytest.raises(mr.RepositoryError, match="cannot be served"):
        mr.canary(repo, MODEL, bad)


def test_push_refuses_a_saved_model_without_serving_default(world):
    root, repo, _, _ = world
    other = write_saved_model(root / "other", signature="predict")
    before = tree(root)
    with pytest.raises(mr.RepositoryError, match="cannot be served: saved_model.pb has no 'serving_default'"):
        mr.push(repo, MODEL, other, {})
    assert tree(root) == before


# --- a push killed between its rename and its record -------------------------------------------

_KILLED_PUSH = """
import os, signal, sys
from deepfm_tfx import model_repository as mr
# Dies the moment the version folder has appeared, before labels or the record beside it.
mr._move_labels = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
mr.push(sys.argv[1], "deepfm", sys.argv[2], {"source_model": "trainer/model/7", "trainer_runner": "keras"})
"""


def test_a_push_killed_after_its_rename_is_finished_by_the_retry_not_repeated(world):
    root, repo, (v1, v2), source = world
    config = _config(repo)
    proc = subprocess.run([sys.executable, "-c", _KILLED_PUSH, repo, source], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    [new] = [v for v in mr.versions(repo, MODEL) if v not in (v1, v2)]
    assert not os.path.exists(mr.record_path(repo, MODEL, new))
    assert _config(repo) == config and mr.serving_version(repo, MODEL) == v2
    # The version's own record appeared with it: `models list` shows it, the pusher knows it is unfinished.
    inside = mr.read_record(repo, MODEL, new)
    assert inside["source_model"] == "trainer/model/7" and inside["version"] == new
    assert mr.version_of_source(repo, MODEL, "trainer/model/7") is None

    again = mr.push(repo, MODEL, source, {"source_model": "trainer/model/7", "trainer_runner": "keras"})

    assert again == new and mr.versions(repo, MODEL) == [v1, v2, new]
    assert mr.serving_version(repo, MODEL) == new
    record = mr.read_record(repo, MODEL, new)
    assert record["created_at"] == inside["created_at"] and record["served_on_push"] is True
    assert mr.version_of_source(repo, MODEL, "trainer/model/7") == new


def test_a_finished_push_retried_changes_nothing(world):
    root, repo, (v1, v2), source = world
    mr.rollback(repo, MODEL, v1)
    mr.release(repo, MODEL)
    before = tree(root)
    assert mr.push(repo, MODEL, source, {"source_model": "run-1"}) == v2
    assert tree(root) == before and mr.serving_version(repo, MODEL) == v1
