"""Weekly retraining as on a user's own data: the Estimator trainer and a spec with no curated schema."""
import os

import pytest
import yaml

from deepfm_tfx import model_repository
from deepfm_tfx.components.model_repository_pusher import identical_weights
from deepfm_tfx.pipeline import cli, configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.schemas import feature_spec, frozen_schema
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

ROWS = 5000


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("own_data")
    with open(feature_spec.DEFAULT_SPEC) as f:
        spec = yaml.safe_load(f)
    spec.pop("schema")  # as a user who has not curated one
    spec["name"] = "own_data"
    spec_path = root / "own_data.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    config = configs.RunConfig(
        data=str(root / "data"), features=str(spec_path), pipeline_root=str(root / "pipeline"),
        model_repository=str(root / "repo"), trainer="estimator", train_steps=60, eval_steps=4,
        window_spans=2, min_auc=0.55, warm_start=True, training={"batch_size": 256, "dnn_units": [32, 16]})

    def week(n, **bad):
        generator.generate(config.data, rows=ROWS, spans=1, first_span=n, seed=5, drift=0.15, **bad)
        try:
            return 0, local.run(config)
        except local.RunFailed as failed:
            return failed.exit_code, failed.summary

    return config, week


def test_the_first_run_freezes_its_inferred_schema_with_thresholds(world, tmp_path):
    config, week = world
    code, summary = week(1)
    assert code == 0 and summary["pushed"]
    frozen = frozen_schema.path(config.pipeline_root)
    assert summary["frozen_schema"] == frozen and os.path.exists(frozen)
    text = open(frozen).read()
    assert "infinity_norm" in text and "jensen_shannon_divergence" in text
    out = tmp_path / "review.pbtxt"
    assert cli.main(["schema", "export", "--pipeline-root", config.pipeline_root, "--out", str(out)]) == 0
    assert out.read_text() == text


def test_the_warm_started_estimator_week_trains_from_step_zero(world):
    config, week = world
    code, summary = week(2)
    assert code == 0 and summary["pushed"] and summary["warm_started"] is True
    assert summary["global_step_start"] == 0 and summary["learning_rate_first_step"] > 1e-3
    assert summary["warm_start_slots"] == "reset" and summary["weight_change_max"] > 0.01
    repo, name = config.model_repository, config.model_name
    v1, v2 = model_repository.versions(repo, name)
    assert not identical_weights(model_repository.version_dir(repo, name, v2),
                                 model_repository.version_dir(repo, name, v1))


def test_a_broken_week_is_stopped_by_a_gate_of_the_frozen_schema(world):
    config, week = world
    before = model_repository.versions(config.model_repository, config.model_name)
    code, summary = week(3, broken_column_span=3)
    assert code == 3 and summary["blocked_by"] in ("DriftSkew", "ExampleValidator") and not summary["pushed"]
    assert generator.BROKEN_COLUMN in summary["error"]
    assert model_repository.versions(config.model_repository, config.model_name) == before
