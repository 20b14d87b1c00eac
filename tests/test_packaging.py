"""What `pip install .` puts on sys.path: one import package, `deepfm_tfx`.

An installed deepfm-tfx must not shadow a user's own `pipeline`, `schemas` or
`components` package (Airflow appends its DAG folder to the end of sys.path).
"""
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
