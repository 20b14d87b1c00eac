"""Weekly retraining on the real pipeline: windows, warm start that learns, every gate, rollback."""
import dataclasses
import json
import os

import pytest

from deepfm_tfx import model_repository
from deepfm_tfx.components.model_repository_pusher import identical_weights
from deepfm_tfx.pipeline import cli, configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

ROWS = 6000
# A strong weekly drift, so last week's model is clearly stale on ~600 eval rows.
DRIFT = 0.15


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("weekly")
    config = configs.RunConfig(
        data=str(root / "data"), pipeline_root=str(root / "pipeline"), model_repository=str(root / "repo"),
        train_steps=80, eval_steps=4, window_spans=2, min_auc=0.6, warm_start=True,
        training={"batch_size": 256, "dnn_units": [32, 16]})
    weeks = {}

    def week(n, run_config=None, **bad):
        generator.generate(config.data, rows=ROWS, spans=1, first_span=n, seed=21, drift=DRIFT, **bad)
        try:
            weeks[n] = (0, local.run(run_config or config))
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


def test_the_warm_started_week_trained_and_beats_last_weeks_model_on_its_rows(world):
    config, _ = world
    repo, name = config.model_repository, config.model_name
    v1, v2 = versions(config)[:2]
    with open(config.summary_path) as f:
        second = json.load(f)
    assert second["pushed_version"] == v2 and second["warm_started"] is True
    # This run's schedule started at its own step 0, not where last week's ended.
    assert second["global_step_start"] == 0 and second["learning_rate_first_step"] > 1e-3
    assert second["learning_rate_last_step"] < second["learning_rate_first_step"]
    assert second["weight_change_max"] > 0.01
    assert not identical_weights(model_repository.version_dir(repo, name, v2),
                                 model_repository.version_dir(repo, name, v1))
    # On the drifted week's own eval rows, the new model beats last week's.
    assert second["auc"] > second["baseline_auc"]
    assert second["stale_bayes_auc"] < second["bayes_auc"]
    record = model_repository.read_record(repo, name, v2)
    assert record["learning_rate_first_step"] > 1e-3 and record["weight_change_max"] > 0.01


def test_broken_column_is_stopped_by_the_drift_gate(world):
    config, week = world
    before = versions(config)
    code, summary = week(3, broken_column_span=3)
    assert code == 3 and summary["blocked_by"] == "DriftSkew" and not summary["pushed"]
    assert generator.BROKEN_COLUMN in summary["error"] and "drift" in summary["error"]
    assert versions(config) == before
    with open(config.summary_path) as f:
        assert json.load(f)["blocked_by"] == "DriftSkew"


def test_an_out_of_domain_label_pushes_nothing_and_names_file_row_and_column(world):
    config, week = world
    before = versions(config)
    generator.generate(config.data, rows=ROWS, spans=1, first_span=4, seed=21, drift=DRIFT)
    path = os.path.join(config.data, "span-4", "part-000.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[5] = "7" + lines[5][1:]  # a label outside {0, 1}
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(Exception) as raised:
        local.run(config)
    message = str(raised.value)
    assert "span-4/part-000.csv" in message and "row 6" in message and "'label'" in message
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
    code, summary = week(6, run_config=frozen)
    assert summary["blessed"] and not summary["pushed"] and code == 0, json.dumps(summary, indent=1, default=str)
    assert summary["weight_change_max"] == 0.0
    assert f"identical to the serving version {serving}" in summary["not_pushed_reason"]
    assert versions(config) == before


def test_after_a_rollback_the_next_good_week_is_not_served_until_release(world, capsys):
    config, week = world
    repo, name = config.model_repository, config.model_name
    first = versions(config)[0]
    assert cli.main(["models", "rollback", str(first), "--model-repository", repo]) == 0
    code, summary = week(7)
    assert code == 0 and summary["pushed"]
    assert model_repository.serving_version(repo, name) == first
    assert model_repository.read_record(repo, name, summary["pushed_version"])["served_on_push"] is False
    capsys.readouterr()
    assert cli.main(["models", "release", "--model-repository", repo]) == 0
    assert f"released the hold on version {first}" in capsys.readouterr().out
    assert model_repository.serving_version(repo, name) == first
