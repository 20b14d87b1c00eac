"""The weekly-retraining world the lifecycle tests share: each test file plays its own weeks in it.

Warm starts that learn and rollbacks are in test_weekly_warm_start.py, every
gate in test_weekly_gates.py; each file runs only the weeks it needs, so the
two run side by side on separate workers.
"""
from deepfm_tfx import model_repository
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator

ROWS = 6000
SEED = 21
# A strong weekly drift, so last week's model is clearly stale on ~600 eval rows.
DRIFT = 0.15


def make_world(root):
    """(config, week): week(n, run_config=None, **bad) generates span n and runs it -> (exit code, summary)."""
    config = configs.RunConfig(
        data=str(root / "data"), pipeline_root=str(root / "pipeline"), model_repository=str(root / "repo"),
        train_steps=80, eval_steps=4, window_spans=2, min_auc=0.6, warm_start=True,
        training={"batch_size": 256, "dnn_units": [32, 16]})

    def week(n, run_config=None, **bad):
        generator.generate(config.data, rows=ROWS, spans=1, first_span=n, seed=SEED, drift=DRIFT, **bad)
        try:
            return 0, local.run(run_config or config)
        except local.RunFailed as failed:
            return failed.exit_code, failed.summary

    return config, week


def versions(config):
    return model_repository.versions(config.model_repository, config.model_name)
