"""Airflow's Celery settings for the weekly DAG (AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS, which
airflow.celery_environment sets): Airflow's own, plus airflow_worker imported once by each worker.

Celery runs every task in a fork of its pool process, and that fork parses the DAG file: without the
import, each task loaded TensorFlow, TFX and the pipeline again, about 7 s of CPU and 0.9 GB before
its component started. A worker imports them once, before it forks its pool, so a task's parse finds
them loaded (as Airflow's own task runner does when it forks after its parse). The scheduler imports
this module too, to configure the executor: it stays light.
"""
from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

WORKER_IMPORTS = ("deepfm_tfx.pipeline.orchestrators.airflow_worker",)

CELERY_CONFIG = {**DEFAULT_CELERY_CONFIG,
                 "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), *WORKER_IMPORTS)}
