"""deepfm-tfx: a TFX pipeline that trains, gates and ships a DeepFM CTR model."""
import setuptools

setuptools.setup(
    name="deepfm-tfx",
    version="0.1.0",
    description="End-to-end TFX pipeline for a DeepFM click-through-rate model",
    python_requires=">=3.10,<3.11",
    packages=setuptools.find_packages(include=["pipeline*", "components*", "trainer_modules*", "schemas*"]),
    package_data={"schemas": ["*.yaml", "*.pbtxt"]},
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
    ],
    extras_require={
        # Not tfx[airflow]: it pulls mysqlclient, which needs C headers.
        "airflow": ["apache-airflow>=2.9,<3", "psycopg2-binary"],
        "test": ["pytest", "scikit-learn"],
    },
    entry_points={"console_scripts": ["deepfm-tfx=pipeline.cli:main"]},
)
