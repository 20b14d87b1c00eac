"""What the cluster tests share: a small run's config, and finding and killing a task of the
local training cluster the Trainer started in this process."""
import glob
import json
import logging
import os
import signal
import threading
import time

import pytest

from deepfm_tfx import training_info
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.trainer_modules import local_cluster

# Batches of 512: a cluster step's cost is mostly its RPCs, so fewer, larger steps train the same
# examples for less CPU (250 steps: each world 27 to 29 s of CPU less than 1,000 steps of 128).
TRAIN_STEPS, BATCH = 250, 512
TASK_MODULE = local_cluster.TASK_MODULE


def run_config(root, data_root, train_steps=TRAIN_STEPS, trainer="estimator", **training):
    return configs.RunConfig(
        data=data_root, pipeline_root=str(root / "pipeline"), model_repository=str(root / "repo"),
        trainer=trainer, train_steps=train_steps, eval_steps=4, min_auc=0.5, max_auc_drop=1.0,
        training={"batch_size": BATCH, "dnn_units": [32, 16], **training})


def cluster_tasks():
    """{task name: (pid, its work dir)} of the tasks of the clusters this process started: the
    children of its fork servers, named by their process names."""
    servers, parents = {}, {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        pid = int(stat.split("/")[2])
        try:
            with open(stat) as f:
                parents[pid] = int(f.read().rsplit(")", 1)[1].split()[1])
            if parents[pid] != os.getpid():
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode().split("\0")
        except (OSError, IndexError, ValueError):
            continue
        if TASK_MODULE in argv and local_cluster.FORK_SERVER_FLAG in argv:
            servers[pid] = os.path.dirname(argv[argv.index(local_cluster.FORK_SERVER_FLAG) + 1])
    tasks = {}
    for pid, parent in parents.items():
        if parent not in servers:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            continue
        if name.startswith(local_cluster.TASK_NAME_PREFIX):
            tasks[name[len(local_cluster.TASK_NAME_PREFIX):]] = (pid, servers[parent])
    return tasks


def task_steps(work_dir, name):
    try:
        with open(os.path.join(work_dir, "progress", f"{name}.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def checkpoint_steps(pipeline_root):
    """The resume folder's latest checkpoint step, from its state file, as the Trainer reads it."""
    steps = [local_cluster.last_checkpoint_step(d)
             for d in glob.glob(os.path.join(pipeline_root, "Trainer", "resume", "*")) if os.path.isdir(d)]
    return sorted(s for s in steps if s is not None)


class Killer(threading.Thread):
    """SIGKILLs the task `name` once `ready(work_dir)` holds; records what it saw then."""

    def __init__(self, name, ready, timeout=600):
        super().__init__(daemon=True)
        self.name_, self.ready, self.timeout = name, ready, timeout
        self.killed = None

    def run(self):
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.killed is None:
            tasks = cluster_tasks()
            if self.name_ in tasks:
                pid, work_dir = tasks[self.name_]
                seen = self.ready(work_dir)
                if seen is not None:
                    os.kill(pid, signal.SIGKILL)
                    self.killed = seen
                    return
            time.sleep(0.05)


def trained_info(pipeline_root):
    """training_info.json of the Trainer executions that finished, newest last."""
    done = [d for d in glob.glob(os.path.join(pipeline_root, "Trainer", "model", "*"))
            if os.path.exists(training_info.path_in(d))]
    return [training_info.read(d) for d in sorted(done, key=lambda d: int(os.path.basename(d)))]


def kill_after_checkpoint(pipeline_root, after_step):
    """Ready once the resume folder holds a checkpoint past `after_step`; returns its step."""
    def ready(_work_dir):
        steps = [s for s in checkpoint_steps(pipeline_root) if s > after_step]
        return steps[-1] if steps else None
    return ready


def ps_then_chief_killed(config, train_steps, first_checkpoint_within=None):
    """Runs `config` twice, killing ps0 then the chief once a new checkpoint is saved: each run fails
    naming the task and the checkpoint the next run resumes from, at most `first_checkpoint_within`
    steps after the run's start when given. Returns that checkpoint's step."""
    resumed_at = 0
    for task in ("ps0", "chief"):
        killer = Killer(task, kill_after_checkpoint(config.pipeline_root, resumed_at))
        killer.start()
        with pytest.raises(local.RunFailed) as failed:
            local.run(config)
        killer.join()
        assert killer.killed, f"{task} was not killed"
        error = failed.value.summary["error"]
        assert f"the training cluster's {task} died (killed by SIGKILL)" in error
        saved = checkpoint_steps(config.pipeline_root)[-1]
        assert f"resumes from the last checkpoint (step {saved})" in error
        assert resumed_at < saved < train_steps, (task, resumed_at, saved, error)
        if first_checkpoint_within:
            assert saved - resumed_at <= first_checkpoint_within, (task, resumed_at, saved)
        resumed_at = saved
    return resumed_at


def check_resumed(info, resumed_at, train_steps, log_text):
    """The rerun's Trainer started at the checkpoint the failed runs left, not at step 0."""
    # Workers train asynchronously: the chief names a checkpoint by the step it read, and another
    # worker's steps can land before the variables are written, so the step inside may be a few ahead.
    assert resumed_at <= info["resumed_from_step"] <= resumed_at + 10
    assert info["global_step_start"] == info["resumed_from_step"]
    assert info["global_step_end"] >= train_steps
    assert f"resuming from the checkpoint at step {info['resumed_from_step']}" in log_text


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def faults_then_killed_worker(config, train_steps, worker_steps, first_checkpoint_within=None):
    """A world's cluster runs, on its pipeline root (only the Trainer and what follows run again): ps0
    then the chief killed (ps_then_chief_killed), then the run that finishes, resuming from their
    checkpoint with worker1 killed once it ran `worker_steps` steps. Returns that run's summary and
    training_info."""
    finished_before = len(trained_info(config.pipeline_root))
    resumed_at = ps_then_chief_killed(config, train_steps, first_checkpoint_within)
    killer = Killer("worker1", lambda work_dir: (task_steps(work_dir, "worker1").get("steps", 0) >= worker_steps
                                                 or None) and task_steps(work_dir, "worker1"))
    killer.start()
    logger, lines = logging.getLogger("deepfm_tfx.progress"), _Lines()  # a module fixture has no caplog
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.INFO)
    try:
        summary = local.run(config)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    killer.join()
    assert killer.killed and killer.killed["global_step"] < train_steps  # killed mid-training
    finished = trained_info(config.pipeline_root)
    assert len(finished) == finished_before + 1  # the failed runs' Trainers finished nothing
    check_resumed(finished[-1], resumed_at, train_steps, "\n".join(lines.lines))
    return summary, finished[-1]
