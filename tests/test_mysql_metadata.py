"""ml-metadata on MySQL (MariaDB here): the real local pipeline records its run over TCP."""
import os
import secrets
import shutil
import subprocess

import pytest
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from conftest import PIPELINE_UPSTREAM
from deepfm_tfx import model_repository
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.pipeline import metadata
from deepfm_tfx.pipeline import run_summary
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

NODES = set(PIPELINE_UPSTREAM)
HOSTS = ("127.0.0.1", "localhost")  # a TCP client from 127.0.0.1 may be matched as either


def root_sql(statement: str) -> str:
    """Runs SQL as MariaDB's root over the local socket (root has no TCP password here)."""
    proc = subprocess.run(["mariadb", "-uroot", "--batch", "--skip-column-names", "-e", statement],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode:
        raise RuntimeError(f"mariadb: {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture
def mysql_url():
    if not shutil.which("mariadb"):
        pytest.skip("the mariadb client is not installed")
    try:
        root_sql("SELECT 1")
    except RuntimeError as e:
        pytest.skip(f"MariaDB is not reachable as root: {e}")
    suffix = secrets.token_hex(4)
    db, user, password = f"deepfm_mlmd_{suffix}", f"deepfm_{suffix}", secrets.token_urlsafe(12)
    root_sql(f"CREATE DATABASE `{db}`; " + " ".join(
        f"CREATE USER '{user}'@'{h}' IDENTIFIED BY '{password}'; "
        f"GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'{h}';" for h in HOSTS))
    try:
        yield f"mysql://{user}:{password}@127.0.0.1:3306/{db}", db
    finally:
        root_sql(f"DROP DATABASE IF EXISTS `{db}`; " + " ".join(f"DROP USER IF EXISTS '{user}'@'{h}';" for h in HOSTS))
        assert root_sql(f"SHOW DATABASES LIKE '{db}'") == ""


def test_local_pipeline_records_its_run_in_mysql(tmp_path, mysql_url):
    url, db = mysql_url
    data = str(tmp_path / "data")
    generator.generate(data, rows=3000, spans=1, seed=3)
    config = configs.RunConfig(
        data=data, pipeline_root=str(tmp_path / "pipeline"), model_repository=str(tmp_path / "repo"),
        train_steps=30, eval_steps=3, metadata=url, min_auc=0.0,
        training={"batch_size": 256, "dnn_units": [32, 16]})
    summary = local.run(config)
    assert summary["pushed"] and summary["blessed"]

    connection = metadata.connection_config(url, config.pipeline_root)
    assert connection.WhichOneof("config") == "mysql" and connection.mysql.port == 3306
    assert not os.path.exists(os.path.join(config.pipeline_root, "metadata.sqlite"))

    executions = run_summary.executions_of_run(connection, configs.PIPELINE_NAME)
    assert {e["node"] for e in executions} == NODES
    assert {e["node"]: e["state"] for e in executions} == {node: "COMPLETE" for node in NODES}

    store = metadata_store.MetadataStore(connection)
    pushed = store.get_artifacts_by_type("PushedModel")
    assert len(pushed) == 1 and pushed[0].custom_properties["pushed"].int_value == 1
    version = pushed[0].custom_properties["pushed_version"].int_value
    assert model_repository.versions(config.model_repository, config.model_name) == [version]
    assert store.get_artifacts_by_type("ModelBlessing")[0].custom_properties["blessed"].int_value == 1

    # The rows are in MariaDB itself, not in some fallback store.
    stored = int(root_sql(f"SELECT COUNT(*) FROM `{db}`.`Execution`").strip())
    assert stored == len(store.get_executions()) >= len(NODES)
    states = root_sql(f"SELECT DISTINCT last_known_state FROM `{db}`.`Execution`").split()
    assert states == [str(metadata_store_pb2.Execution.COMPLETE)]
