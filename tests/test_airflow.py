"""Apache Airflow: the DAG file loads with the pipeline's topology, and the whole DAG runs in Airflow."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import PIPELINE_UPSTREAM, RESOLVERS
from deepfm_tfx import model_repository
from deepfm_tfx.pipeline.orchestrators import airflow
from deepfm_tfx.synthetic import generator

DAG_ID = "deepfm_tfx"
UPSTREAM = PIPELINE_UPSTREAM
POSTGRES = dict(user="deepfm_airflow_test", password="deepfm-test-pw", database="deepfm_airflow_test")


@pytest.fixture
def airflow_env(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))  # effective if airflow is not imported yet
    monkeypatch.setenv("DEEPFM_TFX_HOME", str(tmp_path / "home"))
    # Importing TensorFlow can take longer than Airflow's default 30 s here.
    monkeypatch.setenv("AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT", "300")
    for key in [k for k in os.environ if k.startswith("DEEPFM_TFX_") and k != "DEEPFM_TFX_HOME"]:
        monkeypatch.delenv(key)
    return tmp_path


def load_dag(path):
    from airflow.models import DagBag
    bag = DagBag(dag_folder=str(path), include_examples=False, safe_mode=True)
    assert bag.import_errors == {}
    assert list(bag.dags) == [DAG_ID]
    return bag.dags[DAG_ID]


def test_dag_file_loads_with_weekly_schedule_and_the_pipeline_graph(airflow_env):
    dag = load_dag(airflow.DAG_FILE)
    assert dag.schedule_interval == "@weekly"
    assert dag.catchup is False
    assert dag.start_date.isoformat() == "2024-01-01T00:00:00+00:00"
    assert dag.max_active_runs == 1 and dag.max_active_tasks == 1  # SQLite ml-metadata: one writer
    assert {t.task_id: set(t.upstream_task_ids) for t in dag.tasks} == UPSTREAM
    home = str(airflow_env / "home")
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in dag.tasks}
    assert props["SpecCsvExampleGen"]["input_base"] == os.path.join(home, "data")
    assert "span-{SPAN}/*.csv" in props["SpecCsvExampleGen"]["input_config"]
    assert props["ModelRepositoryPusher"]["model_repository_dir"] == os.path.join(home, "model_repository")
    assert props["Trainer"]["run_fn"] == "deepfm_tfx.trainer_modules.keras_trainer.run_fn"


def test_installed_dag_bakes_in_flags_and_env_still_wins(airflow_env, monkeypatch):
    data = str(airflow_env / "weekly-data")
    path = airflow.install_dag(str(airflow_env / "dags"), {
        "data_root": data, "train_steps": 7, "eval_steps": 3, "beam_args": ["--direct_num_workers=2"]})
    monkeypatch.setenv("DEEPFM_TFX_SCHEDULE", "0 4 * * 1")
    monkeypatch.setenv("DEEPFM_TFX_EVAL_STEPS", "5")
    monkeypatch.setenv("DEEPFM_TFX_METADATA", "mysql://u:p@127.0.0.1:3306/mlmd")
    dag = load_dag(path)
    assert dag.schedule_interval == "0 4 * * 1"
    assert dag.max_active_tasks != 1  # MySQL takes concurrent writers
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in dag.tasks}
    assert props["SpecCsvExampleGen"]["input_base"] == data
    assert json.loads(props["Trainer"]["train_args"]) == {"num_steps": 7}
    assert json.loads(props["Trainer"]["eval_args"]) == {"num_steps": 5}
    trainer = next(t for t in dag.tasks if t.task_id == "Trainer")
    assert "--direct_num_workers=2" in trainer.python_callable.keywords["beam_pipeline_args"]
    assert trainer.python_callable.keywords["metadata_connection_config"].mysql.database == "mlmd"


def test_cli_compile_airflow_installs_the_dag_with_its_flags(airflow_env, capsys):
    from deepfm_tfx.pipeline import cli
    dags = airflow_env / "dags"
    assert cli.main(["compile", "--target", "airflow", "--output", str(dags),
                     "--model-repository", str(airflow_env / "served"), "--trainer", "estimator"]) == 0
    assert str(dags / "deepfm_tfx_dag.py") in capsys.readouterr().out
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in load_dag(dags / "deepfm_tfx_dag.py").tasks}
    assert props["ModelRepositoryPusher"]["model_repository_dir"] == str(airflow_env / "served")
    assert props["Trainer"]["run_fn"] == "deepfm_tfx.trainer_modules.estimator_trainer.run_fn"

    assert cli.main(["compile", "--target", "airflow", "--output", str(dags), "--image", "x:1"]) == 2
    assert "Kubeflow targets only" in capsys.readouterr().err


def test_postgres_helper_is_idempotent_and_falls_back_to_sqlite(tmp_path):
    import psycopg2
    try:
        first = airflow.setup_postgres_metadata_db(**POSTGRES)
        if not first.startswith("postgresql"):
            pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
        assert first == "postgresql+psycopg2://deepfm_airflow_test:deepfm-test-pw@127.0.0.1:5432/deepfm_airflow_test"
        assert airflow.setup_postgres_metadata_db(**POSTGRES) == first
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user=POSTGRES["user"],
                                password=POSTGRES["password"], dbname=POSTGRES["database"])
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE probe (x int)")  # the role owns the database
        conn.close()
    finally:
        airflow.drop_postgres_metadata_db(user=POSTGRES["user"], database=POSTGRES["database"])
    fallback = airflow.setup_postgres_metadata_db(port=1, sqlite_fallback=str(tmp_path / "a.db"))
    assert fallback == f"sqlite:///{tmp_path / 'a.db'}"


def _airflow(env, *args, log, timeout):
    started = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n$ airflow {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=env, stdout=f,
                              stderr=subprocess.STDOUT, timeout=timeout, cwd=os.path.dirname(log))
    return proc.returncode, time.monotonic() - started


def _tail(log, n=60):
    with open(log) as f:
        return "".join(f.readlines()[-n:])


@pytest.mark.e2e
def test_whole_dag_runs_in_airflow_on_postgres_and_pushes_a_model(tmp_path):
    import psycopg2
    url = airflow.setup_postgres_metadata_db(**POSTGRES)
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    try:
        home = tmp_path / "deepfm"
        generator.generate(str(home / "data"), rows=3000, spans=1, seed=5)
        dags = tmp_path / "dags"
        airflow.install_dag(str(dags), {
            "train_steps": 30, "eval_steps": 3, "min_auc": 0.0,
            "training": {"batch_size": 256, "dnn_units": [32, 16]}})
        env = dict(os.environ, DEEPFM_TFX_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
                   **airflow.airflow_environment(str(tmp_path / "airflow_home"), str(dags), url))
        log = str(tmp_path / "airflow.log")
        code, _ = _airflow(env, "db", "migrate", log=log, timeout=600)
        assert code == 0, _tail(log)
        code, seconds = _airflow(env, "dags", "test", DAG_ID, "2024-01-08", log=log, timeout=1500)
        print(f"airflow dags test: {seconds:.0f}s")
        assert code == 0, _tail(log)

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user=POSTGRES["user"],
                                password=POSTGRES["password"], dbname=POSTGRES["database"])
        with conn, conn.cursor() as cur:
            cur.execute("SELECT task_id, state FROM task_instance WHERE dag_id = %s", (DAG_ID,))
            states = dict(cur.fetchall())
            cur.execute("SELECT state FROM dag_run WHERE dag_id = %s", (DAG_ID,))
            runs = [r[0] for r in cur.fetchall()]
        conn.close()
        assert states == {task: "success" for task in UPSTREAM}, _tail(log)
        assert runs == ["success"]

        repo = str(home / "model_repository")
        versions = model_repository.versions(repo, "deepfm")
        assert len(versions) == 1
        assert model_repository.serving_version(repo, "deepfm") == versions[0]
        record = model_repository.read_record(repo, "deepfm", versions[0])
        assert record["trainer_runner"] == "keras" and "auc" in record["metrics"]
    finally:
        airflow.drop_postgres_metadata_db(user=POSTGRES["user"], database=POSTGRES["database"])
