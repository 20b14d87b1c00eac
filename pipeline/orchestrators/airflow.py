"""Runs the pipeline on Apache Airflow, retraining weekly; airflow_dag.py beside it is the DAG file.

Settings come from DEEPFM_TFX_* environment variables, because the DAG file is
parsed by Airflow's scheduler and workers, not by our CLI:

    DEEPFM_TFX_HOME              ~/deepfm-tfx; the default root of the three paths below
    DEEPFM_TFX_PIPELINE_ROOT     <home>/pipeline (also holds the SQLite ml-metadata)
    DEEPFM_TFX_DATA_ROOT         <home>/data, holding span-<N>/ folders
    DEEPFM_TFX_MODEL_REPOSITORY  <home>/model_repository
    DEEPFM_TFX_METADATA          mysql://user:pass@host:port/db (default: SQLite)
    DEEPFM_TFX_FEATURES, DEEPFM_TFX_TRAINER, DEEPFM_TFX_TRAIN_STEPS, DEEPFM_TFX_EVAL_STEPS,
    DEEPFM_TFX_MIN_AUC, DEEPFM_TFX_MAX_AUC_DROP, DEEPFM_TFX_BEAM_ARGS (shell-quoted),
    DEEPFM_TFX_TRAINING (JSON, e.g. {"batch_size": 1024})
    DEEPFM_TFX_SCHEDULE          @weekly (any Airflow schedule)
    DEEPFM_TFX_START_DATE        2024-01-01 (UTC)
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import sys
import urllib.parse
from typing import Any, Dict, Mapping, Optional

from deepfm_tfx.pipeline import configs

ENV_PREFIX = "DEEPFM_TFX_"
DEFAULT_SCHEDULE = "@weekly"
DEFAULT_START_DATE = "2024-01-01"
DAG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "airflow_dag.py")

POSTGRES_USER = "deepfm_airflow"
POSTGRES_PASSWORD = "deepfm_airflow"
POSTGRES_DATABASE = "deepfm_airflow"


@dataclasses.dataclass
class AirflowSettings:
    run: configs.RunConfig
    schedule: str = DEFAULT_SCHEDULE
    start_date: datetime.datetime = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def _parse(field: dataclasses.Field, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = str(field.type)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "bool":
        return value.lower() in ("1", "true", "yes")
    if field.name == "beam_args":
        return shlex.split(value)
    if field.name == "training":
        return json.loads(value)
    return value


def settings_from_env(env: Optional[Mapping[str, str]] = None,
                      defaults: Optional[Dict[str, Any]] = None) -> AirflowSettings:
    """DEEPFM_TFX_<KEY> wins over defaults[<key>], which wins over RunConfig's default.

    Every RunConfig field is a key (`data_root` names the `data` field).
    `defaults` is what `deepfm-tfx compile --target airflow` wrote into the DAG file.
    """
    env = os.environ if env is None else env
    defaults = defaults or {}

    def get(key: str, fallback: Any) -> Any:
        value = env.get(ENV_PREFIX + key.upper())
        return value if value not in (None, "") else defaults.get(key, fallback)

    home = os.path.expanduser(get("home", os.path.join("~", "deepfm-tfx")))
    paths = {"data": os.path.join(home, "data"), "pipeline_root": os.path.join(home, "pipeline"),
             "model_repository": os.path.join(home, "model_repository")}
    knobs = {}
    for field in dataclasses.fields(configs.RunConfig):
        key = "data_root" if field.name == "data" else field.name
        value = get(key, paths.get(field.name))
        if value is not None:
            knobs[field.name] = _parse(field, value)
    run = configs.RunConfig(**knobs)
    start = datetime.date.fromisoformat(str(get("start_date", DEFAULT_START_DATE)))
    return AirflowSettings(
        run=run, schedule=get("schedule", DEFAULT_SCHEDULE),
        start_date=datetime.datetime(start.year, start.month, start.day, tzinfo=datetime.timezone.utc))


FINAL_TASK = "week_end"


def finish_week_task(run_config: Dict[str, Any], **context) -> Dict[str, Any]:
    """The DAG's last task: pipeline/week_end.py, red (raising) when the week pushed nothing."""
    from deepfm_tfx.pipeline import metadata, week_end
    from deepfm_tfx.schemas import feature_spec

    config = configs.RunConfig(**run_config)
    dag_run = context["dag_run"]
    failed = sorted(ti.task_id for ti in dag_run.get_task_instances()
                    if ti.task_id != FINAL_TASK and ti.state in ("failed", "upstream_failed"))
    summary, exit_code = week_end.finish_week(
        config, feature_spec.load(config.features),
        metadata.connection_config(config.metadata, config.pipeline_root),
        run_id=dag_run.run_id, failed_tasks=failed)
    if exit_code:
        raise week_end.WeekNotPushed(summary, exit_code)
    return week_end.notification(summary, exit_code)


def create_dag(settings: Optional[AirflowSettings] = None):
    """The Airflow DAG of pipeline.py's topology: one task per component, then the week's final step."""
    from airflow.operators.python import PythonOperator
    from airflow.utils.trigger_rule import TriggerRule
    from tfx.orchestration.airflow.airflow_dag_runner import AirflowDagRunner, AirflowPipelineConfig

    from deepfm_tfx import spans
    from deepfm_tfx.pipeline import metadata, validation
    from deepfm_tfx.pipeline.pipeline import create_pipeline_from_config
    from deepfm_tfx.schemas import feature_spec

    from deepfm_tfx import object_store

    settings = settings or settings_from_env()
    config = settings.run
    # A bad setting fails the DAG's import, where Airflow shows it, not a task a week later.
    validation.validate(config, paths=False, connect=False)
    if any(object_store.is_url(p or "") for p in (config.pipeline_root, config.data)):
        # Each task process parses this file, then runs its component here. Airflow ends its forked
        # task processes with os._exit, so tensorflow-io's abort at exit never reaches a task's state.
        object_store.register_tf_filesystem()
    spec = feature_spec.load(config.features)
    # Weekly data arrives as span-<N>/ (or Hive dt=<date>/) folders; ExampleGen takes the newest at run time.
    pipeline = create_pipeline_from_config(
        config, spec, spans.input_pattern(spec.file_pattern, spec.partitions),
        metadata_connection_config=metadata.connection_config(config.metadata, config.pipeline_root))
    dag_config: Dict[str, Any] = {
        "schedule": settings.schedule,
        "start_date": settings.start_date,
        "catchup": False,
        "max_active_runs": 1,
        "description": "DeepFM CTR model: retrain on the newest span, gate, push",
        "tags": ["deepfm-tfx"],
    }
    if not config.metadata:
        # SQLite ml-metadata takes one writer at a time.
        dag_config["max_active_tasks"] = 1
    dag = AirflowDagRunner(AirflowPipelineConfig(airflow_dag_config=dag_config)).run(pipeline)
    components = list(dag.tasks)
    final = PythonOperator(task_id=FINAL_TASK, python_callable=finish_week_task, dag=dag,
                           op_kwargs={"run_config": dataclasses.asdict(config)},
                           # Also after a gate stopped the week: that is when its quarantine matters.
                           trigger_rule=TriggerRule.ALL_DONE)
    final.set_upstream(components)
    return dag


def install_dag(dags_folder: str, defaults: Optional[Dict[str, Any]] = None) -> str:
    """Writes the DAG file into an Airflow dags_folder, with `defaults` baked in."""
    with open(DAG_FILE) as f:
        text = f.read()
    marker = "DEFAULTS: dict = {}\n"
    if marker not in text:
        raise RuntimeError(f"{DAG_FILE} lost its '{marker.strip()}' line")
    text = text.replace(marker, f"DEFAULTS: dict = {dict(defaults or {})!r}\n")
    os.makedirs(dags_folder, exist_ok=True)
    path = os.path.join(dags_folder, "deepfm_tfx_dag.py")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def setup_postgres_metadata_db(*, host: str = "127.0.0.1", port: int = 5432, admin_user: str = "postgres",
                               admin_password: Optional[str] = None, user: str = POSTGRES_USER,
                               password: str = POSTGRES_PASSWORD, database: str = POSTGRES_DATABASE,
                               sqlite_fallback: Optional[str] = None, connect_timeout: int = 5) -> str:
    """Creates (idempotently) a role and database for Airflow's metadata; returns the SQLAlchemy URL.

    Falls back to SQLite (Airflow's SequentialExecutor only) when Postgres is unreachable.
    """
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(host=host, port=port, user=admin_user, password=admin_password,
                                dbname="postgres", connect_timeout=connect_timeout)
    except psycopg2.OperationalError as e:
        path = os.path.abspath(sqlite_fallback or os.path.join(
            os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow")), "airflow.db"))
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"PostgreSQL at {host}:{port} unreachable ({first_line}); using SQLite {path}", file=sys.stderr)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return f"sqlite:///{path}"
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(user)), (password,))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(user)))
    finally:
        conn.close()
    quote = urllib.parse.quote
    return f"postgresql+psycopg2://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"


def drop_postgres_metadata_db(*, host: str = "127.0.0.1", port: int = 5432, admin_user: str = "postgres",
                              admin_password: Optional[str] = None, user: str = POSTGRES_USER,
                              database: str = POSTGRES_DATABASE) -> None:
    import psycopg2
    from psycopg2 import sql

    conn = psycopg2.connect(host=host, port=port, user=admin_user, password=admin_password, dbname="postgres")
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(user)))
    finally:
        conn.close()


def celery_environment(broker_url: str, sql_alchemy_conn: str, queue: str = "default") -> Dict[str, str]:
    """The AIRFLOW__* variables, beside airflow_environment's, for the CeleryExecutor: the broker
    (e.g. redis://host:6379/0), task results in Airflow's own database, and the queue the DAG's tasks
    go to (`airflow celery worker -q <queue>`)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + sql_alchemy_conn.replace("+psycopg2", ""),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,
        # One task at a time per worker: a TFX component takes the worker's cores.
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        # Each worker imports TensorFlow and the pipeline once, not once per task.
        "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "deepfm_tfx.pipeline.orchestrators.airflow_celery.CELERY_CONFIG",
    }


def airflow_environment(airflow_home: str, dags_folder: str, sql_alchemy_conn: str) -> Dict[str, str]:
    """The AIRFLOW__* variables for running this DAG with the given metadata DB."""
    return {
        "AIRFLOW_HOME": os.path.abspath(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": os.path.abspath(dags_folder),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor" if sql_alchemy_conn.startswith("sqlite") else "LocalExecutor",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # Importing TensorFlow alone can exceed the default 30 s on a small machine.
        "AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT": "300",
        "AIRFLOW__CORE__DAG_FILE_PROCESSOR_TIMEOUT": "300",
    }
