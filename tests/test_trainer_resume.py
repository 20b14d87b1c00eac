"""A pipeline killed with SIGKILL while training resumes from its last checkpoint when re-run,
for both trainers, and says from which step."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from deepfm_tfx import training_info
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

TRAIN_STEPS, EVERY = 600, 50
DEEPFM_TFX = os.path.join(os.path.dirname(sys.executable), "deepfm-tfx")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    generator.generate(str(root), rows=4000, spans=1, seed=11, profile="small")
    return str(root)


def command(tmp, data_root, trainer):
    return [DEEPFM_TFX, "run", "--trainer", trainer, "--data", data_root, "--pipeline-root", str(tmp / "pipeline"),
            "--model-repository", str(tmp / "repo"), "--train-steps", str(TRAIN_STEPS), "--eval-steps", "4",
            "--batch-size", "128", "--dnn-units", "32,16", "--min-auc", "0.5",
            "--checkpoint-every-steps", str(EVERY), "--steps-per-execution", "10", "--progress-every", "1"]


def checkpoint_steps(pipeline_root):
    """Steps of the checkpoints in the Trainer's resume folder (Keras: ckpt-N, Estimator: model.ckpt-N)."""
    names = glob.glob(os.path.join(pipeline_root, "Trainer", "resume", "*", "*ckpt-*.index"))
    return sorted(int(re.search(r"ckpt-(\d+)\.index$", n).group(1)) for n in names)


def run_killed_at_first_checkpoint(cmd, pipeline_root, timeout=600):
    """Starts the run, SIGKILLs it once a checkpoint past step 0 exists; returns that checkpoint's step."""
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            steps = [s for s in checkpoint_steps(pipeline_root) if s > 0]
            if steps:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return checkpoint_steps(pipeline_root)[-1]
            assert process.poll() is None, "the run ended before its first checkpoint"
            time.sleep(0.05)
        raise AssertionError("no checkpoint within the timeout")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def trained_info(pipeline_root):
    """training_info.json of the Trainer execution that finished (the killed one wrote none)."""
    [done] = [d for d in glob.glob(os.path.join(pipeline_root, "Trainer", "model", "*"))
              if os.path.exists(training_info.path_in(d))]
    return training_info.read(done)


@pytest.mark.parametrize("trainer", ["keras", "estimator"])
def test_a_killed_trainer_resumes_at_its_last_checkpoint(tmp_path, data_root, trainer):
    cmd = command(tmp_path, data_root, trainer)
    pipeline_root = str(tmp_path / "pipeline")
    killed_at = run_killed_at_first_checkpoint(cmd, pipeline_root)
    assert 0 < killed_at < TRAIN_STEPS

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resumed from step {killed_at}" in rerun.stdout
    summary = json.load(open(os.path.join(pipeline_root, "summary.json")))
    assert summary["pushed"] and summary["auc"] > 0.6
    info = trained_info(pipeline_root)
    assert info["resumed_from_step"] == killed_at
    # The schedule continued where the killed run stopped, and the run ended at its last step.
    assert info["global_step_start"] == killed_at and info["global_step_end"] >= TRAIN_STEPS
    assert checkpoint_steps(pipeline_root) == []  # exported: nothing left to resume
