"""Apache Airflow: the DAG file loads with the pipeline's topology, and the whole DAG runs in Airflow."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest

import weekly_scenario as scenario
from conftest import PIPELINE_UPSTREAM
from deepfm_tfx import model_repository
from deepfm_tfx.pipeline import metadata
from deepfm_tfx.pipeline.orchestrators import airflow

DAG_ID = "deepfm_tfx"
UPSTREAM = PIPELINE_UPSTREAM
# The week's final step runs after every component, whatever became of them.
UPSTREAM_WITH_FINAL = dict(UPSTREAM, **{airflow.FINAL_TASK: set(UPSTREAM)})
POSTGRES = dict(user="deepfm_airflow_test", password="deepfm-test-pw", database="deepfm_airflow_test")


@pytest.fixture(autouse=True, scope="module")
def _root_logging_restored():
    # Importing Airflow points the root logger at stdout; later tests in this worker
    # (a server's log in a CLI's JSON output) must not see it.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_partitioned_spec_compiles_to_a_date_pattern(airflow_env):
    from deepfm_tfx.schemas import feature_spec
    path = airflow.install_dag(str(airflow_env / "dags"), {
        "features": os.path.join(feature_spec.SPEC_DIR, "criteo_synthetic_parquet.yaml")})
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in load_dag(path).tasks if t.task_id != airflow.FINAL_TASK}
    assert "dt={YYYY}-{MM}-{DD}/" in props["SpecCsvExampleGen"]["input_config"]


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
    assert {t.task_id: set(t.upstream_task_ids) for t in dag.tasks} == UPSTREAM_WITH_FINAL
    assert dag.get_task(airflow.FINAL_TASK).trigger_rule == "all_done"
    home = str(airflow_env / "home")
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in dag.tasks if t.task_id != airflow.FINAL_TASK}
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
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in dag.tasks if t.task_id != airflow.FINAL_TASK}
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
                     "--model-repository", str(airflow_env / "served"), "--trainer", "estimator",
                     "--latency-budget-ms", "15", "--memory-budget-mb", "900"]) == 0
    assert str(dags / "deepfm_tfx_dag.py") in capsys.readouterr().out
    props = {t.task_id: t.op_kwargs["exec_properties"] for t in load_dag(dags / "deepfm_tfx_dag.py").tasks
             if t.task_id != airflow.FINAL_TASK}
    assert props["ModelRepositoryPusher"]["model_repository_dir"] == str(airflow_env / "served")
    # Every compile flag reaches the DAG: the pusher's serving check among them.
    assert props["ModelRepositoryPusher"]["latency_budget_ms"] == 15
    assert props["ModelRepositoryPusher"]["memory_budget_mb"] == 900
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
def test_three_weeks_in_airflow_push_twice_then_stop_and_quarantine_the_broken_one(tmp_path):
    """The weekly scenario (tests/weekly_scenario.py) with `airflow dags test` per week, Airflow on PostgreSQL."""
    import psycopg2
    url = airflow.setup_postgres_metadata_db(**POSTGRES)
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    try:
        home = tmp_path / "deepfm"
        data, root, repo = str(home / "data"), str(home / "pipeline"), str(home / "model_repository")
        dags = tmp_path / "dags"
        spec = scenario.spec_without_schema(tmp_path)
        # Generous budgets: the pusher's task serves each candidate in a process of its own first.
        airflow.install_dag(str(dags), dict(scenario.KNOBS, features=spec, latency_budget_ms=60_000.0,
                                            memory_budget_mb=100_000.0))
        env = dict(os.environ, DEEPFM_TFX_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
                   **airflow.airflow_environment(str(tmp_path / "airflow_home"), str(dags), url))
        log = str(tmp_path / "airflow.log")
        code, _ = _airflow(env, "db", "migrate", log=log, timeout=600)
        assert code == 0, _tail(log)
        codes = {}
        for week, date in ((1, "2024-01-08"), (2, "2024-01-15"), (3, "2024-01-22")):
            scenario.add_week(data, week)
            codes[week], seconds = _airflow(env, "dags", "test", DAG_ID, date, log=log, timeout=1500)
            print(f"week {week}: airflow dags test {seconds:.0f}s")
            scenario.check_week(week, scenario.read_summary(root))
        # The broken week's run is red: its drift gate failed, and the final step says so.
        assert codes[1] == 0 and codes[2] == 0 and codes[3] != 0, _tail(log)

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user=POSTGRES["user"],
                                password=POSTGRES["password"], dbname=POSTGRES["database"])
        with conn, conn.cursor() as cur:
            cur.execute("SELECT r.execution_date::date::text, t.task_id, t.state FROM task_instance t "
                        "JOIN dag_run r ON r.run_id = t.run_id AND r.dag_id = t.dag_id WHERE t.dag_id = %s", (DAG_ID,))
            states = {}
            for date, task, state in cur.fetchall():
                states.setdefault(date, {})[task] = state
        conn.close()
        # Without a curated schema, SchemaGen infers week 1's and hands on the frozen one after.
        tasks = {"SchemaGen" if task == "ImportSchemaGen" else task for task in UPSTREAM_WITH_FINAL}
        assert states["2024-01-15"] == {task: "success" for task in tasks}
        broken = states["2024-01-22"]
        assert broken["DriftGate"] == "failed" and broken["Transform"] == "upstream_failed"
        assert broken[airflow.FINAL_TASK] == "failed"  # it ran after the failure, and reports the week red

        assert len(model_repository.versions(repo, "deepfm")) == 2
        connection = metadata.connection_config(None, root)
        assert scenario.quarantined_spans(connection) == [scenario.BROKEN_WEEK]
        scenario.check_frozen_schema(root, connection, spec)
        record = model_repository.read_record(repo, "deepfm", model_repository.versions(repo, "deepfm")[-1])
        assert record["spans"] == [1, 2]
        for version in model_repository.versions(repo, "deepfm"):
            check = model_repository.read_record(repo, "deepfm", version)["serving_check"]
            assert check["latency_budget_ms"] == 60_000 and 0 < check["p99_ms"] < 60_000 and check["loaded_mb"] > 0
    finally:
        airflow.drop_postgres_metadata_db(user=POSTGRES["user"], database=POSTGRES["database"])
