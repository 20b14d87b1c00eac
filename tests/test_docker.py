"""docker/: pinned images and paths that exist (written and parsed here, never built: no Docker engine)."""
import fnmatch
import importlib.metadata
import os
import re
import subprocess
import urllib.parse

import pytest
import yaml

from deepfm_tfx import machine, model_repository
from deepfm_tfx.pipeline.orchestrators import kubeflow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.path.join(REPO, "docker")
COMPOSE_FILES = ["serving/docker-compose.yml", "airflow/docker-compose.yml"]
_VAR_MOUNT = re.compile(r"^\$\{(\w+):-([^}]+)\}$")


def split_volume(volume: str):
    """(source, target) of a short-syntax volume; a ${VAR:-default} source holds a colon."""
    if volume.startswith("${"):
        end = volume.index("}") + 1
        source, rest = volume[:end], volume[end + 1:]
    else:
        source, _, rest = volume.partition(":")
    return source, rest.split(":")[0]


def assert_pinned(image: str) -> None:
    name, _, tag = image.rpartition(":")
    assert name and "/" not in tag and tag and tag != "latest", f"{image} is not pinned to a tag"


def dockerfile_instructions():
    with open(os.path.join(DOCKER, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", f.read())
    return [line.split(None, 1) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_builds_from_pinned_tfx_and_installs_the_lock():
    instructions = dockerfile_instructions()
    froms = [args for op, args in instructions if op == "FROM"]
    assert froms == ["tensorflow/tfx:1.15.1"]
    for image in froms:
        assert_pinned(image)
    assert froms[0].endswith(":" + importlib.metadata.version("tfx"))  # the TFX this repo compiles with
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert "--no-deps -r requirements.lock" in runs and "--no-deps -e ." in runs
    assert [args for op, args in instructions if op == "WORKDIR"] == [kubeflow.IMAGE_PROJECT_DIR]
    # Every process in the image on jemalloc, from the package apt installs (Airflow's and Kubeflow's
    # task processes have no command to re-execute, as `deepfm-tfx run` does).
    env = dict(args.split("=", 1) for op, args in instructions if op == "ENV")
    assert env["LD_PRELOAD"] in machine.JEMALLOC_PATHS and "libjemalloc2" in runs


def _setup_package_dir():
    with open(os.path.join(REPO, "setup.py")) as f:
        source = f.read()
    scope = {"__file__": os.path.join(REPO, "setup.py")}
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        exec(source.split("setuptools.setup(")[0], scope)
    finally:
        os.chdir(cwd)
    return scope["PACKAGE_DIR"]


def test_dockerfile_copies_existing_sources_and_every_package():
    copied = []
    for op, args in dockerfile_instructions():
        if op == "COPY":
            *sources, _ = args.split()
            for source in sources:
                assert os.path.exists(os.path.join(REPO, source)), source
                copied.append(source.rstrip("/"))
    # Every folder setup.py maps into the deepfm_tfx package, and nothing else (bench/ is a tool).
    folders = {path.split("/")[0] for path in _setup_package_dir().values()}
    assert folders == {"deepfm_tfx", "pipeline", "components", "trainer_modules", "schemas"}
    assert folders <= set(copied) and "bench" not in copied and {"requirements.lock", "setup.py"} <= set(copied)
    with open(os.path.join(DOCKER, "Dockerfile.dockerignore")) as f:
        ignored = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source


def test_default_image_tag_is_the_package_version():
    assert_pinned(kubeflow.DEFAULT_IMAGE)
    assert kubeflow.DEFAULT_IMAGE.rsplit(":", 1)[1] == importlib.metadata.version("deepfm-tfx")


def _gitignored(path: str) -> bool:
    # The trailing slash: a folder pattern like model_repository/ matches only folders.
    proc = subprocess.run(["git", "-C", REPO, "check-ignore", "-q", os.path.relpath(path, REPO) + "/"])
    return proc.returncode == 0


@pytest.mark.parametrize("compose", COMPOSE_FILES)
def test_compose_images_are_pinned_and_local_paths_exist(compose):
    path = os.path.join(DOCKER, compose)
    folder = os.path.dirname(path)
    with open(path) as f:
        text = f.read()
    services = yaml.safe_load(text)["services"]
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert services
    for name, service in services.items():
        assert "image" in service, name
        assert_pinned(service["image"])
        if "build" in service:
            context = os.path.normpath(os.path.join(folder, service["build"]["context"]))
            assert os.path.isfile(os.path.join(context, service["build"]["dockerfile"])), name
        for volume in service.get("volumes", []):
            source, _ = split_volume(volume)
            if not source.startswith((".", "/", "$")):
                continue  # a named volume
            if m := _VAR_MOUNT.match(source):
                # A run-time folder the user points at: documented, and git-ignored by default.
                assert m.group(1) in header, f"{compose}: ${m.group(1)} is not documented"
                default = os.path.normpath(os.path.join(folder, m.group(2)))
                assert default.startswith(REPO + os.sep) and _gitignored(default), default
            else:
                assert os.path.exists(os.path.normpath(os.path.join(folder, source))), source


def test_serving_reads_the_repository_models_config():
    with open(os.path.join(DOCKER, "serving/docker-compose.yml")) as f:
        serving = yaml.safe_load(f)["services"]["serving"]
    assert serving["image"] == "tensorflow/serving:2.15.1"
    source = next(s for s, t in map(split_volume, serving["volumes"]) if t == "/models")
    assert _VAR_MOUNT.match(source).group(1) == "MODEL_REPOSITORY"
    assert f"--model_config_file=/models/{model_repository.CONFIG_FILE}" in serving["command"]
    config = model_repository.render_config("/any/host/path", "deepfm", 3)
    assert 'base_path: "/models/deepfm"' in config  # resolves inside the /models mount


def test_airflow_compose_runs_the_dag_on_its_postgres():
    with open(os.path.join(DOCKER, "airflow/docker-compose.yml")) as f:
        services = yaml.safe_load(f)["services"]
    postgres = services["postgres"]["environment"]
    for name in ("airflow-init", "airflow-scheduler", "airflow-webserver"):
        service = services[name]
        assert service["image"] == kubeflow.DEFAULT_IMAGE
        env = service["environment"]
        url = urllib.parse.urlparse(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert url.scheme == "postgresql+psycopg2" and url.hostname == "postgres"
        assert (url.username, url.password, url.path.strip("/")) == (
            postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
        dag_mount = next(v for v in service["volumes"] if "airflow_dag.py" in v)
        source, target = split_volume(dag_mount)
        assert os.path.samefile(os.path.join(DOCKER, "airflow", source), os.path.join(REPO, "pipeline/orchestrators/airflow_dag.py"))
        assert os.path.dirname(target) == env["AIRFLOW__CORE__DAGS_FOLDER"]
        assert int(env["AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT"]) >= 120
