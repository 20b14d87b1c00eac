"""Weekly retraining on the real pipeline: windows, warm start and every gate."""
import json
import os

import pytest

from deepfm_tfx import model_repository
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

ROWS = 6000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("weekly")
    config = configs.RunConfig(
        data=str(root / "data"), pipeline_root=str(root / "pipeline"), model_repository=str(root / "repo"),
        train_steps=80, eval_steps=4, window_spans=2, min_auc=0.6,
        training={"batch_size": 256, "dnn_units": [32, 16]})
    weeks = {}

    def week(n, **bad):
        generator.generate(config.data, rows=ROWS, spans=1, first_span=n, seed=21, **bad)
        try:
            weeks[n] = (0, local.run(config))
        except local.RunFailed as failed:
            weeks[n] = (failed.exit_code, failed.summary)
        return weeks[n]

    return config, week


def versions(config):
    return model_repository.versions(config.model_repository, config.model_name)


def test_good_weeks_push_and_the_second_is_warm_started(world):
    config, week = world
    code, first = week(1)
    assert code == 0 and first["pushed"] and first["warm_started"] is False
    code, second = week(2)
    assert code == 0 and second["pushed"] and second["pushed_version"] > first["pushed_version"]
    assert second["warm_started"] is True and "warm start" in second["warm_start_note"]
    assert second["window_spans"] == [1, 2] and second["baseline_auc"] is not None
    record = model_repository.read_record(config.model_repository, config.model_name, second["pushed_version"])
    assert record["warm_started"] is True and record["spans"] == [1, 2]
    assert record["pipeline_run_id"] == second["pipeline_run_id"] and len(record["data_fingerprint"]) == 16
    assert model_repository.serving_version(config.model_repository, config.model_name) == second["pushed_version"]


def test_broken_column_is_stopped_by_the_drift_gate(world):
    config, week = world
    before = versions(config)
    code, summary = week(3, broken_column_span=3)
    assert code == 3 and summary["blocked_by"] == "DriftSkew" and not summary["pushed"]
    assert generator.BROKEN_COLUMN in summary["error"] and "drift" in summary["error"]
    assert versions(config) == before
    with open(config.summary_path) as f:
        assert json.load(f)["blocked_by"] == "DriftSkew"


def test_schema_anomaly_pushes_nothing_and_names_the_anomaly(world):
    config, week = world
    before = versions(config)
    generator.generate(config.data, rows=ROWS, spans=1, first_span=4, seed=21)
    path = os.path.join(config.data, "span-4", "part-000.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[5] = "7" + lines[5][1:]  # a label outside the schema's domain {0, 1}
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        local.run(config)
        pytest.fail("an anomalous span must stop the run")
    except local.RunFailed as failed:
        assert failed.exit_code == 3 and failed.summary["blocked_by"] == "ExampleValidator"
        assert "label" in failed.summary["error"]
    assert versions(config) == before


def test_quarantined_weeks_leave_the_window_and_shuffled_labels_are_not_blessed(world):
    config, week = world
    before = versions(config)
    code, summary = week(5, shuffle_labels_span=5)
    # Spans 3 and 4 were blocked, so the window skips them.
    assert summary["window_spans"] == [2, 5]
    assert code == 3 and summary["blocked_by"] == "Evaluator" and not summary["blessed"]
    assert summary["auc"] < 0.6 and any("auc" in f for f in summary["evaluator_failures"])
    assert versions(config) == before
