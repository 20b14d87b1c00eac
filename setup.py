"""deepfm-tfx: a TFX pipeline that trains, gates and ships a DeepFM CTR model.

Everything installs under one import package, `deepfm_tfx`, so an installed
deepfm-tfx never shadows a user's own `pipeline` or `schemas` package (Airflow
appends its DAG folder to sys.path). The design card's top-level folders are
mapped into it; `bench/` and `tests/` are not installed.
"""
import setuptools

CARD_FOLDERS = ("pipeline", "components", "trainer_modules", "schemas")


def _packages():
    packages = {"deepfm_tfx": "deepfm_tfx"}
    for sub in setuptools.find_packages(where="deepfm_tfx"):
        packages[f"deepfm_tfx.{sub}"] = f"deepfm_tfx/{sub.replace('.', '/')}"
    for folder in CARD_FOLDERS:
        packages[f"deepfm_tfx.{folder}"] = folder
        for sub in setuptools.find_packages(where=folder):
            packages[f"deepfm_tfx.{folder}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    return packages


PACKAGE_DIR = _packages()

setuptools.setup(
    name="deepfm-tfx",
    version="0.1.0",
    description="End-to-end TFX pipeline for a DeepFM click-through-rate model",
    python_requires=">=3.10,<3.11",
    packages=sorted(PACKAGE_DIR),
    package_dir=PACKAGE_DIR,
    package_data={"deepfm_tfx.schemas": ["*.yaml", "*.pbtxt"]},
    install_requires=[
        "tfx[kfp]==1.15.1",
        "tensorflow==2.15.1",
        "tensorflow-estimator==2.15.0",
        "tensorflow-transform==1.15.0",
        "tensorflow-model-analysis==0.46.0",
        "ml-metadata==1.15.0",
        "tfx-bsl==1.15.1",
        "apache-beam[gcp]==2.59.0",
        "pyyaml",
        "rich",  # the run's live progress line on a terminal
    ],
    extras_require={
        # Not tfx[airflow]: it pulls mysqlclient, which needs C headers.
        "airflow": ["apache-airflow>=2.9,<3", "psycopg2-binary"],
        "test": ["pytest", "scikit-learn"],
    },
    entry_points={"console_scripts": ["deepfm-tfx=deepfm_tfx.pipeline.cli:main"]},
)
