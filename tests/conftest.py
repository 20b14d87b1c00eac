import os

import pytest

# Quiet TF before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "..", "shared", "data", "criteo_sample.txt")


def without_preload():
    """This environment without LD_PRELOAD: make test preloads jemalloc for its processes, and a
    test of a command's own re-exec onto it starts the command without."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def mapped_libraries(pid):
    with open(f"/proc/{pid}/maps") as f:
        return {os.path.realpath(line.split()[-1]) for line in f if "/" in line}


# Seconds each long file took in `make test` (2026-12-07, this 2-core machine, three workers), to
# hand files out longest first. Only the order depends on them: a file missing here comes after
# them, end-to-end files before the rest.
FILE_SECONDS = {
    "test_cluster_keras.py": 181, "test_cluster_estimator.py": 177, "test_airflow.py": 166,
    "test_weekly_warm_start.py": 151, "test_airflow_celery.py": 145, "test_weekly_own_data.py": 138,
    "test_weekly_gates.py": 123, "test_trainer_resume.py": 115, "test_object_store_e2e.py": 111,
    "test_pipeline_e2e.py": 108, "test_kubeflow.py": 86, "test_report.py": 84, "test_progress.py": 62,
    "test_admission.py": 59, "test_latency_gate.py": 58, "test_serving.py": 56, "test_formats.py": 55,
    "test_preprocessing.py": 51, "test_mysql_metadata.py": 31, "test_synthetic_data.py": 30,
}


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the real pipeline on small data (minutes)")
    # xdist's default hands out files with the most tests first, which put the long end-to-end
    # files (one to four tests each) last, running alone at the end: keep the order below instead.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


# Each cluster world runs a fork server and five TF tasks. Started together (the workers take the
# first files at once) they slowed each other and Airflow's weeks: 358 -> 459 s for the two worlds,
# 166 -> 220 s for Airflow, the suite 731 -> 765 s (2026-12-07).
APART = ("test_cluster_keras.py", "test_cluster_estimator.py")


def pytest_collection_modifyitems(session, config, items):
    """The longest files first (longest processing time first: `make test` hands each worker whole
    files in this order, so no long file starts when the others are nearly done), then the other
    files with end-to-end tests, then the rest; the files in APART not among the first files the
    workers start together."""
    e2e_files = {item.path for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: (-FILE_SECONDS.get(item.path.name, 0), item.path not in e2e_files))
    files = list(dict.fromkeys(item.path.name for item in items))
    workers = getattr(config.option, "numprocesses", None) or 1
    apart = [name for name in files if name in APART]
    for name in apart[1:]:
        if files.index(name) < workers:
            files.remove(name)
            files.insert(min(workers, len(files)), name)
    items.sort(key=lambda item: files.index(item.path.name))

# The pipeline's task graph (node -> its upstream nodes), as every orchestrator must compile it.
PIPELINE_UPSTREAM = {
    "SpecCsvExampleGen": set(),
    "ImportSchemaGen": set(),
    "latest_blessed_model_resolver": {"SpecCsvExampleGen"},
    "latest_transform_cache": {"SpecCsvExampleGen"},
    "previous_statistics": {"SpecCsvExampleGen"},
    "training_window": {"SpecCsvExampleGen"},
    "StatisticsGen": {"SpecCsvExampleGen", "previous_statistics"},
    "ExampleValidator": {"StatisticsGen", "ImportSchemaGen"},
    "AnomalyGate": {"ExampleValidator"},
    "DriftGate": {"StatisticsGen", "ImportSchemaGen", "previous_statistics"},
    "Transform": {"training_window", "ImportSchemaGen", "AnomalyGate", "DriftGate", "latest_transform_cache"},
    "Trainer": {"training_window", "Transform", "ImportSchemaGen"},  # plus latest_blessed_model_resolver with --warm-start
    "Evaluator": {"SpecCsvExampleGen", "Trainer", "latest_blessed_model_resolver"},
    "PairedAucGate": {"Trainer", "latest_blessed_model_resolver", "Evaluator", "training_window"},
    "ModelRepositoryPusher": {"Trainer", "Evaluator", "PairedAucGate", "training_window"},
}
RESOLVERS = {"latest_blessed_model_resolver", "latest_transform_cache", "previous_statistics", "training_window"}


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """An existing model repository with one served version, for checking a refused input left it as it was."""
    from deepfm_tfx import model_repository
    from test_repository_safety import write_saved_model
    root = tmp_path_factory.mktemp("existing")
    repo = str(root / "model_repository")
    model_repository.push(repo, "deepfm", write_saved_model(root / "trainer"), {"source_model": "week-1"})
    return repo
