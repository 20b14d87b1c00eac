import os

import pytest

# Quiet TF before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SHARED_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "..", "shared", "data", "criteo_sample.txt")


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the real pipeline on small data (minutes)")


def pytest_collection_modifyitems(session, config, items):
    """Files with end-to-end tests first. `make test` hands each worker whole files in this order, and
    the alphabetical one put the longest (the weekly scenarios) last, all three running at the end."""
    e2e_files = {item.path for item in items if item.get_closest_marker("e2e")}
    items.sort(key=lambda item: item.path not in e2e_files)

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
