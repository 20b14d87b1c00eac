"""The weekly DAG on Airflow's CeleryExecutor with two workers that share no disk.

Redis (127.0.0.1:6379) is the broker, PostgreSQL holds Airflow's metadata,
MariaDB ml-metadata; the data, the pipeline root and the model repository are
in a bucket of moto's S3 server. The scheduler and each worker are separate
processes, each with its own empty folder (AIRFLOW_HOME, working folder,
TMPDIR, its own copy of the DAG file): what one worker writes, the next task
on the other finds only in the bucket or the databases.
"""
import glob
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time

import pytest

import s3_server
import weekly_scenario as scenario
from test_mysql_metadata import mysql_url  # noqa: F401 - a fresh MariaDB database for ml-metadata
from deepfm_tfx import model_repository, object_store
from deepfm_tfx.pipeline.orchestrators import airflow
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

DAG_ID = "deepfm_tfx"
WORKERS = 2


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=2).close()
        return True
    except OSError:
        return False


def _start(args, env, folder, log):
    return subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env, cwd=folder, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process):
    """The process and every process under it: Celery's forks, the scheduler's file processors, and
    the task processes, which Airflow puts in process groups of their own."""
    import psutil
    try:
        family = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=60)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def _tasks_logged(airflow_home):
    """Task ids this worker ran: Airflow writes each task's log on the worker that ran it."""
    return {os.path.basename(p)[len("task_id="):]
            for p in glob.glob(os.path.join(airflow_home, "logs", f"dag_id={DAG_ID}", "run_id=*", "task_id=*"))}


def test_one_weekly_run_on_two_celery_workers_sharing_only_a_bucket_and_the_databases(tmp_path, mysql_url):  # noqa: F811
    if not _redis_up():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    suffix = secrets.token_hex(4)
    postgres = dict(user=f"deepfm_celery_{suffix}", password=secrets.token_urlsafe(12),
                    database=f"deepfm_celery_{suffix}")
    sql = airflow.setup_postgres_metadata_db(**postgres)
    if not sql.startswith("postgresql"):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    queue = f"deepfm-tfx-{suffix}"
    redis_db = 1 + int(suffix, 16) % 15  # and a queue of its own: other tests may share the number
    processes, logs = [], []
    try:
        with s3_server.running() as s3:
            data = tmp_path / "data"
            generator.generate(str(data), rows=scenario.ROWS, spans=1, seed=scenario.SEED)
            s3.upload_folder(str(data), "data")
            defaults = dict(scenario.KNOBS, data_root=s3.url("data"), pipeline_root=s3.url("pipeline"),
                            model_repository=s3.url("repository"))
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", DEEPFM_TFX_METADATA=mysql_url[0],
                       DEEPFM_TFX_START_DATE="2024-01-01",
                       AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
                       AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL="600",  # parse once: it imports TensorFlow
                       **airflow.celery_environment(f"redis://127.0.0.1:6379/{redis_db}", sql, queue))
            env.pop("DEEPFM_TFX_HOME", None)

            def own_folder(name):
                home = tmp_path / name
                (home / "tmp").mkdir(parents=True)
                airflow.install_dag(str(home / "dags"), defaults)
                e = dict(env, **airflow.airflow_environment(str(home), str(home / "dags"), sql))
                e.update(airflow.celery_environment(f"redis://127.0.0.1:6379/{redis_db}", sql, queue),
                         TMPDIR=str(home / "tmp"), XDG_CACHE_HOME=str(home / "cache"))
                log = open(tmp_path / f"{name}.log", "w")
                logs.append(log)
                return home, e, log

            home, scheduler_env, log = own_folder("scheduler")
            migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=scheduler_env,
                                     cwd=home, stdout=log, stderr=subprocess.STDOUT, timeout=600)
            assert migrate.returncode == 0, _tail(log)
            workers = []
            for n in range(1, WORKERS + 1):
                worker_home, worker_env, worker_log = own_folder(f"worker{n}")
                workers.append(worker_home)
                processes.append(_start(["celery", "worker", "-q", queue, "--celery-hostname",
                                         f"worker{n}-{suffix}@%h", "--skip-serve-logs"],
                                        worker_env, worker_home, worker_log))
            processes.append(_start(["scheduler"], scheduler_env, home, log))

            state, started = None, time.monotonic()
            while state not in ("success", "failed"):
                assert all(p.poll() is None for p in processes), _tail(log)
                assert time.monotonic() - started < 2400, f"the DAG run is still {state}"
                time.sleep(10)
                state = _dag_run_state(postgres)
            task_states = _task_states(postgres)
            assert state == "success", task_states
            # Each worker's pool process, which Celery forks a task from, loaded TensorFlow and the
            # pipeline before any task (airflow_celery.CELERY_CONFIG): a task does not import them again.
            for worker in processes[:WORKERS]:
                assert all(_loaded_tensorflow(pool) for pool in _pool_processes(worker)), _tail(log)

            # Both workers ran tasks, each task on one of them.
            ran = [_tasks_logged(str(w)) for w in workers]
            assert all(ran), ran
            assert not ran[0] & ran[1] and ran[0] | ran[1] == set(task_states), (ran, task_states)
            assert set(task_states.values()) == {"success"}
            # Every task process exited 0: Celery reports a non-zero exit (tensorflow-io's abort at exit is
            # 134) as the task failing, and logs "succeeded" only for 0.
            for n in range(1, WORKERS + 1):
                received, succeeded = _celery_outcomes(tmp_path / f"worker{n}.log")
                assert received and received == succeeded, (n, received, succeeded)
            # The week pushed a model into the bucket, which the week's final step reported there.
            repo = s3.url("repository")
            versions = model_repository.versions(repo, "deepfm")
            assert len(versions) == 1 and model_repository.serving_version(repo, "deepfm") == versions[0]
            summary = json.loads(object_store.Store(s3.url("pipeline")).read("summary.json"))
            assert summary["pushed"] and summary["pushed_version"] == versions[0]
            assert summary["auc"] > 0.5  # the Evaluator's verdict on the week, read back from the bucket
    finally:
        for process in processes:
            _stop(process)
        for log in logs:
            log.close()
        _drop_redis_keys(redis_db, queue)
        airflow.drop_postgres_metadata_db(user=postgres["user"], database=postgres["database"])


def _pool_processes(worker):
    import psutil
    pools = psutil.Process(worker.pid).children()
    assert pools, "the Celery worker has no pool process"
    return pools


def _loaded_tensorflow(process):
    with open(f"/proc/{process.pid}/maps") as f:
        return "_pywrap_tensorflow_internal" in f.read()


def _celery_outcomes(log_path):
    with open(log_path) as f:
        text = f.read()
    return tuple(sorted(re.findall(r"execute_command\[([0-9a-f-]+)\] " + word, text))
                 for word in ("received", "succeeded"))


def _tail(log, n=60):
    log.flush()
    with open(log.name) as f:
        return "".join(f.readlines()[-n:])


def _query(postgres, statement):
    import psycopg2
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user=postgres["user"], password=postgres["password"],
                            dbname=postgres["database"])
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, (DAG_ID,))
            return cur.fetchall()
    except psycopg2.Error:  # the tables are not there yet
        return []
    finally:
        conn.close()


def _dag_run_state(postgres):
    rows = _query(postgres, "SELECT state FROM dag_run WHERE dag_id = %s")
    assert len(rows) <= 1, rows  # one weekly run, no catch-up
    return rows[0][0] if rows else None


def _task_states(postgres):
    return dict(_query(postgres, "SELECT task_id, state FROM task_instance WHERE dag_id = %s"))


def _drop_redis_keys(db, queue):
    import redis
    client = redis.Redis(host="127.0.0.1", port=6379, db=db)
    try:
        keys = [k for k in client.scan_iter(match=f"*{queue}*")]
        if keys:
            client.delete(*keys)
    finally:
        client.close()
