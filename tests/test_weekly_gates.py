"""Weekly retraining on the real pipeline: every gate stops its week, and stopped weeks leave the window."""
import dataclasses
import json
import os

import pytest

from deepfm_tfx import model_repository
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator
from weekly_lifecycle import DRIFT, ROWS, SEED, make_world, versions

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    config, week = make_world(tmp_path_factory.mktemp("weekly"))
    code, first = week(1)
    assert code == 0 and first["pushed"], first.get("error")
    return config, week


def test_broken_column_is_stopped_by_the_drift_gate(world):
    config, week = world
    before = versions(config)
    code, summary = week(2, broken_column_span=2)
    assert code == 3 and summary["blocked_by"] == "DriftSkew" and not summary["pushed"]
    assert generator.BROKEN_COLUMN in summary["error"] and "drift" in summary["error"]
    assert versions(config) == before
    with open(config.summary_path) as f:
        assert json.load(f)["blocked_by"] == "DriftSkew"


def test_an_out_of_domain_label_pushes_nothing_and_names_file_row_and_column(world):
    config, week = world
    before = versions(config)
    generator.generate(config.data, rows=ROWS, spans=1, first_span=3, seed=SEED, drift=DRIFT)
    path = os.path.join(config.data, "span-3", "part-000.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[5] = "7" + lines[5][1:]  # a label outside {0, 1}
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(Exception) as raised:
        local.run(config)
    message = str(raised.value)
    assert "span-3/part-000.csv" in message and "row 6" in message and "'label'" in message
    assert versions(config) == before


def test_quarantined_weeks_leave_the_window_and_shuffled_labels_are_not_blessed(world):
    config, week = world
    before = versions(config)
    code, summary = week(4, shuffle_labels_span=4)
    # Span 2 was stopped and span 3 never ingested, so the window skips them.
    assert summary["window_spans"] == [1, 4]
    assert code == 3 and summary["blocked_by"] == "Evaluator" and not summary["blessed"]
    assert summary["auc"] < 0.6 and any("auc" in f for f in summary["evaluator_failures"])
    assert versions(config) == before


def test_a_model_identical_to_the_served_one_is_not_pushed(world):
    config, week = world
    before = versions(config)
    serving = model_repository.serving_version(config.model_repository, config.model_name)
    # A learning rate that is 0 in float32 (the flags refuse 0 itself): the warm-started weights
    # cannot move, as in the bug this guards against.
    # The floor is off: this week's Transform statistics (a new window) move last week's AUC
    # around the floor, and the check here is the pusher's, after a blessing.
    frozen = dataclasses.replace(config, min_auc=0.0,
                                 training=dataclasses.replace(config.training, learning_rate=1e-50))
    code, summary = week(5, run_config=frozen)
    assert summary["blessed"] and not summary["pushed"] and code == 0, json.dumps(summary, indent=1, default=str)
    assert summary["weight_change_max"] == 0.0
    assert f"identical to the serving version {serving}" in summary["not_pushed_reason"]
    assert versions(config) == before
