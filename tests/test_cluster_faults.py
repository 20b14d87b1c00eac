"""A parameter server or the chief (the Keras trainer's coordinator) of the local training cluster
killed with SIGKILL: the run fails with a clear message, and running it again resumes from the last
checkpoint, not step 0; for both trainers."""
import logging

import pytest

from cluster_helpers import TRAIN_STEPS, Killer, checkpoint_steps, run_config, trained_info
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e
CLUSTER = "workers=1,ps=1"  # the Estimator's chief trains too; Keras' coordinator does not


def kill_after_checkpoint(pipeline_root, after_step):
    """Ready once the resume folder holds a checkpoint past `after_step`; returns its step."""
    def ready(_work_dir):
        steps = [s for s in checkpoint_steps(pipeline_root) if s > after_step]
        return steps[-1] if steps else None
    return ready


@pytest.mark.parametrize("trainer", ["estimator", "keras"])
def test_ps_then_chief_killed_each_fail_the_run_and_the_rerun_resumes(tmp_path, caplog, trainer):
    generator.generate(str(tmp_path / "data"), rows=4000, spans=1, seed=3)
    config = run_config(tmp_path, str(tmp_path / "data"), trainer=trainer, cluster=CLUSTER, checkpoint_every_steps=50)
    pipeline_root = config.pipeline_root

    resumed_at = 0
    for task in ("ps0", "chief"):
        killer = Killer(task, kill_after_checkpoint(pipeline_root, resumed_at))
        killer.start()
        with pytest.raises(local.RunFailed) as failed:
            local.run(config)
        killer.join()
        assert killer.killed, f"{task} was not killed"
        error = failed.value.summary["error"]
        assert f"the training cluster's {task} died (killed by SIGKILL)" in error
        saved = checkpoint_steps(pipeline_root)[-1]
        assert f"resumes from the last checkpoint (step {saved})" in error
        assert resumed_at < saved < TRAIN_STEPS
        resumed_at = saved

    with caplog.at_level(logging.INFO, logger="deepfm_tfx.progress"):
        summary = local.run(config)
    assert summary["pushed"] and summary["auc"] > 0.6
    [info] = trained_info(pipeline_root)
    # Workers train asynchronously: the chief names a checkpoint by the step it read, and another
    # worker's steps can land before the variables are written, so the step inside may be a few ahead.
    assert resumed_at <= info["resumed_from_step"] <= resumed_at + 10
    assert info["global_step_start"] == info["resumed_from_step"]
    assert info["global_step_end"] >= TRAIN_STEPS
    assert f"resuming from the checkpoint at step {info['resumed_from_step']}" in caplog.text
