"""Airflow DAG file for deepfm-tfx: weekly retraining of the DeepFM CTR model.

Put it in a dags_folder (`deepfm-tfx compile --target airflow --output DAGS`)
of an Airflow whose Python environment has deepfm-tfx installed. Settings come
from DEEPFM_TFX_* environment variables; see pipeline/airflow.py.
"""
import logging
import os

# TensorFlow's and Beam's chatter would otherwise flood every task log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
logging.getLogger("apache_beam").setLevel(logging.WARNING)

from deepfm_tfx.pipeline.orchestrators import airflow  # noqa: E402

# `deepfm-tfx compile --target airflow` rewrites the next line with its flags.
DEFAULTS: dict = {}

dag = airflow.create_dag(airflow.settings_from_env(defaults=DEFAULTS))
