"""What `pip install .` puts on sys.path: one import package, `deepfm_tfx`.

An installed deepfm-tfx must not shadow a user's own `pipeline`, `schemas` or
`components` package (Airflow appends its DAG folder to the end of sys.path).
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Not part of the source to build: environments, outputs, caches.
NOT_SOURCE = {".git", ".venv", ".ci", ".pytest_cache", "workspace", "model_repository", "build", "dist",
              "docker", "tests"}
CARD_FOLDERS = ("pipeline", "components", "trainer_modules", "schemas")


def _source_copy(dest):
    """The checkout without its outputs: pip builds in the source tree, which others share."""
    def ignore(folder, names):
        top = NOT_SOURCE if os.path.samefile(folder, ROOT) else set()
        return [n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")]
    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    source = _source_copy(str(tmp_path_factory.mktemp("src") / "deepfm-tfx"))
    target = str(tmp_path_factory.mktemp("site"))
    # --no-build-isolation: build with this venv's setuptools, no index needed.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", target, source],
                   check=True, capture_output=True, timeout=120)
    return target


def _python(code, site, cwd):
    env = dict(os.environ, PYTHONPATH=site)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)


def test_one_top_level_import_package(installed):
    entries = set(os.listdir(installed))
    dist_info = {e for e in entries if e.endswith(".dist-info")}
    assert [e.split("-")[0] for e in dist_info] == ["deepfm_tfx"]
    assert entries - dist_info == {"deepfm_tfx", "bin"}
    assert os.path.exists(os.path.join(installed, "bin", "deepfm-tfx"))
    package = os.path.join(installed, "deepfm_tfx")
    for folder in CARD_FOLDERS:
        assert os.path.exists(os.path.join(package, folder, "__init__.py")), folder
    # Data the pipeline reads at run time travels with it; the benchmark does not.
    assert os.path.exists(os.path.join(package, "schemas", "criteo_synthetic.yaml"))
    assert os.path.exists(os.path.join(package, "schemas", "criteo.schema.pbtxt"))
    assert not os.path.exists(os.path.join(package, "bench"))


def test_card_folders_import_only_under_deepfm_tfx(installed, tmp_path):
    neutral = str(tmp_path)  # not the checkout, whose folders would import from the working directory
    for name in CARD_FOLDERS + ("bench",):
        result = _python(f"import {name}", installed, neutral)
        assert result.returncode != 0, f"`import {name}` works in an installed environment"
        assert f"No module named '{name}'" in result.stderr
    result = _python("import deepfm_tfx.pipeline.configs as c, deepfm_tfx.schemas.feature_spec as f; "
                     "print(c.__file__); print(f.DEFAULT_SPEC)", installed, neutral)
    assert result.returncode == 0, result.stderr
    configs_file, default_spec = result.stdout.split()
    assert configs_file.startswith(installed) and default_spec.startswith(installed)
    assert os.path.exists(default_spec)


# --- commands an operator runs during an incident import no TensorFlow -----------------------

HEAVY = ("tensorflow", "tfx", "apache_beam", "tensorflow_transform", "tensorflow_model_analysis", "keras")


def _modules_after_cli(argv, cwd):
    """Runs `deepfm-tfx ARGV` in a fresh interpreter; returns (exit code, stdout, heavy modules loaded)."""
    code = ("import contextlib, io, json, sys\n"
            "from deepfm_tfx.pipeline.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try:\n"
            f"        code = main({list(argv)!r})\n"
            "    except SystemExit as e:\n"
            "        code = e.code\n"
            f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "print(json.dumps([code, out.getvalue(), heavy]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_help_imports_no_tensorflow(tmp_path):
    code, out, heavy = _modules_after_cli(["--help"], str(tmp_path))
    assert code == 0 and "models" in out and "compile" in out
    assert heavy == []


def test_models_list_imports_no_tensorflow(tmp_path):
    repo = tmp_path / "model_repository"
    version = repo / "deepfm" / "1795313945"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    (version / "variables" / "variables.index").write_bytes(b"")
    (repo / "deepfm" / "1795313945.record.json").write_text('{"metrics": {"auc": 0.8123}, "trainer_runner": "keras"}')
    (repo / "models.config").write_text(
        'model_config_list {\n  config {\n    name: "deepfm"\n    base_path: "/models/deepfm"\n'
        '    model_platform: "tensorflow"\n    model_version_policy { specific { versions: 1795313945 } }\n  }\n}\n')
    code, out, heavy = _modules_after_cli(["models", "list", "--model-repository", str(repo)], str(tmp_path))
    assert code == 0
    assert "1795313945" in out and "0.8123" in out  # it read the repository, not just parsed flags
    assert heavy == []
