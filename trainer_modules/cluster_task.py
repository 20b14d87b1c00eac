"""One task of a training cluster: `python -m deepfm_tfx.trainer_modules.cluster_task <task_config.json>`.

TF_CONFIG says which task this process is. A parameter server serves its
variables until it is stopped. With the Estimator the chief and the workers
run its own cluster loop; with Keras (ParameterServerStrategy) the workers
only serve too, and the chief is the coordinator that schedules their steps.

A local cluster starts one fork server instead (`--fork-server <task_config.json>`):
it imports TensorFlow and the trainer once, then forks each task from itself,
so five tasks and every restarted worker skip the 4 to 7 s of CPU an import
costs each. A TFJob's pods start tasks the first way, one process each.
"""
from __future__ import annotations

import ctypes
import json
import os
import select
import sys
import traceback

from deepfm_tfx.contracts import TRAINER_KEY
from deepfm_tfx.trainer_modules import local_cluster

PR_SET_NAME = 15


def main(argv) -> int:
    local_cluster.die_with_parent()  # first: the task must not outlive a killed Trainer
    if argv[1] == local_cluster.FORK_SERVER_FLAG:
        return serve_forks(argv[2])
    task_config = _prepare(argv[1])
    return run_task(task_config, json.loads(os.environ["TF_CONFIG"]))


def _prepare(config_file: str) -> dict:
    with open(config_file) as f:
        task_config = json.load(f)
    if _keras(task_config):
        # The coordinator learns at once that a worker or parameter server is gone (TF's
        # parameter-server guide), rather than after gRPC's reconnect backoff.
        os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    return task_config


def _keras(task_config: dict) -> bool:
    return task_config["custom_config"].get(TRAINER_KEY) == "keras"


def run_task(task_config: dict, tf_config: dict) -> int:
    import tensorflow as tf  # after TF_CPP_MIN_LOG_LEVEL is in the environment
    keras = _keras(task_config)
    kind, index = tf_config["task"]["type"], int(tf_config["task"]["index"])
    if kind == "ps" or (keras and kind == "worker"):
        server = tf.distribute.Server(tf.train.ClusterSpec(tf_config["cluster"]), job_name=kind, task_index=index,
                                      protocol="grpc", start=True)
        server.join()
        return 0
    if keras:
        from deepfm_tfx.trainer_modules import keras_trainer
        keras_trainer.run_coordinator(task_config)
        return 0
    if kind == "worker":
        _poll_chief_every(1.0)
    from deepfm_tfx.trainer_modules import estimator_trainer
    estimator_trainer.run_cluster_task(task_config)
    return 0


def _poll_chief_every(seconds: float) -> None:
    """A worker waits for the chief to initialise the variables, checking every 30 s by default
    (TF1's SessionManager, not configurable through the Estimator): longer than a short run takes."""
    import functools

    from tensorflow.python.training import session_manager
    session_manager.SessionManager.__init__ = functools.partialmethod(
        session_manager.SessionManager.__init__, recovery_wait_secs=seconds)


def serve_forks(config_file: str) -> int:
    """Reads {"name", "tf_config", "log"} lines on stdin, forks a task for each and answers {"pid"};
    answers {"exited", "code"} as each task ends. Ends when stdin closes; its tasks die with it.

    Safe to fork because nothing here has run a TensorFlow op: importing creates no runtime, no
    thread pools and no gRPC channels (each task creates its own after the fork)."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # first: a stray print, the imports' too, must not land in the replies
    task_config = _prepare(config_file)
    import tensorflow  # noqa: F401  the import the tasks share
    if _keras(task_config):
        from deepfm_tfx.trainer_modules import keras_trainer  # noqa: F401
    else:
        from deepfm_tfx.trainer_modules import estimator_trainer  # noqa: F401
    server = os.getpid()
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.1)
        while True:  # reap every task that ended, before taking new requests
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            replies.write(json.dumps({"exited": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return 0
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                _run_forked(request, task_config, server, replies.fileno())
            replies.write(json.dumps({"pid": pid}) + "\n")


def _run_forked(request: dict, task_config: dict, server: int, replies_fd: int) -> None:
    """The forked task: never returns into the server's loop."""
    code = 1
    try:
        local_cluster.die_with(server)
        # ps and top show the task, e.g. deepfm-worker1
        ctypes.CDLL("libc.so.6").prctl(PR_SET_NAME, f"{local_cluster.TASK_NAME_PREFIX}{request['name']}"[:15].encode())
        os.close(replies_fd)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ["TF_CONFIG"] = json.dumps(request["tf_config"])
        code = run_task(task_config, request["tf_config"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
