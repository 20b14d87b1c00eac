"""What a Celery worker imports before forking its pool (airflow_celery.CELERY_CONFIG): the modules
the DAG file's parse and every component's run import, so each task's fork finds them loaded."""
import os

# As the DAG file does, before TensorFlow is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import airflow.operators.python  # noqa: E402,F401
import tfx.orchestration.airflow.airflow_dag_runner  # noqa: E402,F401

import deepfm_tfx.pipeline.orchestrators.airflow  # noqa: E402,F401
import deepfm_tfx.pipeline.pipeline  # noqa: E402,F401 - the components, their executors, TensorFlow
