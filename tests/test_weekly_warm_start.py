"""Weekly retraining on the real pipeline: warm starts that learn, and a rollback held through the next push."""
import json

import pytest

from deepfm_tfx import model_repository
from deepfm_tfx.components.model_repository_pusher import identical_weights
from deepfm_tfx.pipeline import cli
from weekly_lifecycle import make_world, versions

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("weekly"))


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


def test_after_a_rollback_the_next_good_week_is_not_served_until_release(world, capsys):
    config, week = world
    repo, name = config.model_repository, config.model_name
    first = versions(config)[0]
    assert cli.main(["models", "rollback", str(first), "--model-repository", repo]) == 0
    code, summary = week(3)
    assert code == 0 and summary["pushed"]
    assert model_repository.serving_version(repo, name) == first
    assert model_repository.read_record(repo, name, summary["pushed_version"])["served_on_push"] is False
    capsys.readouterr()
    assert cli.main(["models", "release", "--model-repository", repo]) == 0
    assert f"released the hold on version {first}" in capsys.readouterr().out
    assert model_repository.serving_version(repo, name) == first
