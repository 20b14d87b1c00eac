"""--cluster: what it accepts, and one error line for what it does not."""
import os
import signal
import subprocess
import sys
import time

import pytest

from deepfm_tfx.errors import ConfigError
from deepfm_tfx.pipeline import configs, validation
from deepfm_tfx.trainer_modules import local_cluster


def test_cluster_shape_and_its_loopback_addresses():
    shape = local_cluster.parse("workers=2,ps=1")
    assert (shape.workers, shape.ps) == (2, 1) and str(shape) == "workers=2,ps=1"
    spec = local_cluster.cluster_spec(shape)
    assert {job: len(tasks) for job, tasks in spec.items()} == {"chief": 1, "worker": 2, "ps": 1}
    addresses = [a for tasks in spec.values() for a in tasks]
    assert len(set(addresses)) == 4 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert "worker" not in local_cluster.cluster_spec(local_cluster.parse("ps=2,workers=0"))


@pytest.mark.parametrize("text, message", [
    ("workers=2", "--cluster takes workers=N,ps=M"),
    ("workers=two,ps=1", "--cluster takes workers=N,ps=M"),
    ("workers=2,ps=0", "at least one parameter server"),
])
def test_a_bad_cluster_is_one_config_error(text, message):
    with pytest.raises(ConfigError, match=message):
        validation.validate(configs.RunConfig(trainer="estimator", training={"cluster": text}), paths=False)


def test_the_keras_trainer_needs_a_worker_its_coordinator_does_not_train():
    validation.validate(configs.RunConfig(trainer="keras", training={"cluster": "workers=1,ps=1"}), paths=False)
    with pytest.raises(ConfigError, match="at least one worker"):
        validation.validate(configs.RunConfig(trainer="keras", training={"cluster": "workers=0,ps=1"}), paths=False)


def test_only_the_id_tables_are_split_across_the_parameter_servers():
    import tensorflow as tf

    from deepfm_tfx.trainer_modules import keras_trainer
    partition = keras_trainer.table_partitioner(num_ids=1000, shards=2)
    assert partition(tf.TensorShape([1000, 8]), tf.float32) == [2, 1]  # the embeddings
    assert partition(tf.TensorShape([1000, 1]), tf.float32) == [2, 1]  # the first-order weights
    assert partition(tf.TensorShape([312, 32]), tf.float32) == [1, 1]  # a dense layer
    assert partition(tf.TensorShape([]), tf.int64) == []  # the step counter


def test_last_checkpoint_step_is_read_from_the_state_file(tmp_path):
    assert local_cluster.last_checkpoint_step(str(tmp_path)) is None
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/x/model.ckpt-250"\n'
                                         'all_model_checkpoint_paths: "/x/model.ckpt-200"\n')
    assert local_cluster.last_checkpoint_step(str(tmp_path)) == 250


def test_two_threads_writing_a_tasks_progress_never_fail(tmp_path):
    """The Keras coordinator's progress thread and its main thread both write a worker's progress file;
    with one shared side file, one's os.replace found nothing and the coordinator exited 1 after
    training (a CI run's "chief died near step 1000")."""
    import json
    import threading

    from deepfm_tfx.trainer_modules import cluster_training
    path, errors = str(tmp_path / "worker0.json"), []

    def write():
        try:
            for i in range(2000):
                cluster_training.write_progress(path, i, i)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and os.listdir(tmp_path) == ["worker0.json"]
    with open(path) as f:
        assert json.load(f) == {"steps": 1999, "global_step": 1999}


def _state(pid):
    """(state letter, parent pid) from /proc, (None, None) once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except FileNotFoundError:
        return None, None


def _gone(pid, seconds):
    """The process ends within `seconds` (a zombie counts: init reaps an orphan shortly)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _state(pid)[0] in (None, "Z"):
            return True
        time.sleep(0.05)
    return False


def _kill(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_task_dies_with_the_process_that_started_it_and_an_orphan_exits(tmp_path):
    """PR_SET_DEATHSIG, set by the task itself after exec (not in a preexec_fn, which ran Python in a
    fork of the Trainer's threads): SIGKILL the starter, the task goes; a task whose starter is already
    gone exits at once."""

    task = ("import sys, time; from deepfm_tfx.trainer_modules import local_cluster; "
            "local_cluster.die_with_parent(); print('ready', flush=True); time.sleep(120)")
    starter = ("import os, subprocess, sys, time; from deepfm_tfx.trainer_modules import local_cluster; "
               f"env = dict(os.environ, **{{local_cluster.PARENT_PID_ENV: str(os.getpid())}}); "
               f"p = subprocess.Popen([sys.executable, '-c', {task!r}], env=env, stdout=subprocess.PIPE, text=True); "
               "p.stdout.readline(); print(p.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    if not _gone(child, 10):
        _kill([child])
        raise AssertionError("the task outlived the process that started it")

    orphan = subprocess.run([sys.executable, "-c", task], env=dict(os.environ, **{local_cluster.PARENT_PID_ENV: "1"}),
                            capture_output=True, text=True, timeout=60)
    assert orphan.returncode == 1 and "ready" not in orphan.stdout


def test_the_fork_server_forks_named_tasks_reports_their_ends_and_they_die_with_the_trainer(tmp_path):
    """A local cluster's tasks are forks of one server that imported TensorFlow once: each is named
    in ps and top, its end is reported as Popen would (a signal as its negative number), and killing
    the process that started the server (the Trainer) takes the server and its tasks with it."""
    import json

    from deepfm_tfx.contracts import TRAINER_KEY

    config = tmp_path / "task_config.json"
    config.write_text(json.dumps({"custom_config": {TRAINER_KEY: "estimator"}}))

    def ps_task(name):  # a parameter server of a cluster of its own: serves until stopped
        port = local_cluster.free_ports(1)[0]
        return name, {"cluster": {"ps": [f"127.0.0.1:{port}"]}, "task": {"type": "ps", "index": 0}}, \
            str(tmp_path / f"{name}.log")

    server = local_cluster.ForkServer(str(config), str(tmp_path / "fork_server.log"))
    try:
        first, second = server.fork(*ps_task("ps0")), server.fork(*ps_task("ps1"))
        for task, name in ((first, "ps0"), (second, "ps1")):
            assert _state(task.pid)[1] == server.process.pid and task.poll() is None
            deadline = time.monotonic() + 10
            while open(f"/proc/{task.pid}/comm").read().strip() != f"deepfm-{name}" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert open(f"/proc/{task.pid}/comm").read().strip() == f"deepfm-{name}"
        first.kill()
        second.terminate()
        assert first.wait(30) == -signal.SIGKILL and second.wait(30) == -signal.SIGTERM
    finally:
        server.close()
    assert server.process.returncode == 0

    starter = ("import json, sys, time; from deepfm_tfx.trainer_modules import local_cluster; "
               f"server = local_cluster.ForkServer({str(config)!r}, {str(tmp_path / 'second.log')!r}); "
               f"task = server.fork(*json.loads(sys.argv[1])); "
               "print(server.process.pid, task.pid, flush=True); time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", starter, json.dumps(ps_task("ps0"))], stdout=subprocess.PIPE,
                              text=True)
    server_pid, task_pid = map(int, parent.stdout.readline().split())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    if not (_gone(server_pid, 30) and _gone(task_pid, 30)):
        _kill([server_pid, task_pid])
        raise AssertionError("the fork server or its task outlived the process that started them")
