"""One task of a training cluster: `python -m deepfm_tfx.trainer_modules.cluster_task <task_config.json>`.

TF_CONFIG says which task this process is. A parameter server serves its
variables until it is stopped. With the Estimator the chief and the workers
run its own cluster loop; with Keras (ParameterServerStrategy) the workers
only serve too, and the chief is the coordinator that schedules their steps.
"""
from __future__ import annotations

import json
import os
import sys

from deepfm_tfx.contracts import TRAINER_KEY


def main(argv) -> int:
    from deepfm_tfx.trainer_modules import local_cluster
    local_cluster.die_with_parent()  # first: the task must not outlive a killed Trainer
    with open(argv[1]) as f:
        task_config = json.load(f)
    tf_config = json.loads(os.environ["TF_CONFIG"])
    keras = task_config["custom_config"].get(TRAINER_KEY) == "keras"
    if keras:
        # The coordinator learns at once that a worker or parameter server is gone (TF's
        # parameter-server guide), rather than after gRPC's reconnect backoff.
        os.environ.setdefault("GRPC_FAIL_FAST", "use_caller")
    import tensorflow as tf  # after TF_CPP_MIN_LOG_LEVEL is in the environment
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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
