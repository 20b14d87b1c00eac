"""Training loops the trainer section can pause and resume in windows, so
contenders run interleaved: a Keras model's compiled train function, and the
Estimator trainer's loop in a child process."""
from __future__ import annotations

from typing import Callable, Dict

from bench.common import quiet
from bench.transformed_data import data_accessor, load_numpy, trainer_inputs


class KerasLoop:
    """model.fit's inner loop: the compiled train_function on one persistent iterator."""

    def __init__(self, name: str, model, dataset, batch_size: int, steps_per_execution: int,
                 predict: Callable, note: str = ""):
        self.name, self.model, self.batch_size, self.note = name, model, batch_size, note
        self.spe = steps_per_execution
        self.iterator = iter(dataset)
        self.train_function = model.make_train_function()
        self._predict = predict
        self.steps_done = 0

    def step(self, n: int) -> None:
        if n % self.spe:
            raise ValueError(f"{self.name}: {n} steps is not a multiple of steps_per_execution {self.spe}")
        logs = None
        for _ in range(n // self.spe):
            logs = self.train_function(self.iterator)
        float(logs["loss"])  # wait for the device
        self.steps_done += n

    def predict(self, features):
        return self._predict(self, features)

    def close(self) -> None:
        pass


def _estimator_worker(conn, paths: Dict[str, str], total_steps: int, model_dir: str) -> None:
    """Child process: Keras layers built in a v1 graph (as model_fn does)
    invalidate Keras models built eagerly in the same process."""
    try:
        quiet()
        import numpy as np
        import tensorflow as tf

        from deepfm_tfx import contracts
        from deepfm_tfx.trainer_modules import estimator_trainer, training_setup
        inputs = trainer_inputs(paths["graph"], paths["num_ids"])
        # As estimator_trainer.run_fn configures it.
        run_config = tf.estimator.RunConfig(model_dir=model_dir, save_checkpoints_steps=max(total_steps // 2, 1),
                                            log_step_count_steps=100)
        estimator = tf.estimator.Estimator(estimator_trainer.make_model_fn(inputs, total_steps), config=run_config)
        accessor = data_accessor()

        class Gate(tf.estimator.SessionRunHook):
            allowed = started = 0

            def before_run(self, run_context):
                if self.started == self.allowed:
                    if self.started:
                        conn.send(("done", self.started))  # the previous step and all its hooks are done
                    self.allowed += conn.recv()[1]
                self.started += 1

        gate = Gate()
        estimator.train(lambda: training_setup.make_dataset(paths["train"], accessor, inputs, inputs.config.batch_size),
                        max_steps=total_steps, hooks=[gate])
        conn.send(("done", gate.started))  # after the final checkpoint
        conn.recv()
        features, _ = load_numpy(paths["eval"], inputs)
        input_fn = lambda: tf.data.Dataset.from_tensor_slices(features).batch(8192)  # noqa: E731
        probs = [p[contracts.OUTPUT_KEY] for p in estimator.predict(input_fn, yield_single_examples=False)]
        conn.send(("probs", np.concatenate(probs).reshape(-1)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        import traceback
        conn.send(("error", traceback.format_exc()))


class EstimatorLoop:
    """The Estimator trainer's train loop in a child process, paused between windows."""

    def __init__(self, name: str, paths: Dict[str, str], total_steps: int, model_dir: str, note: str = ""):
        import multiprocessing
        self.name, self.note, self.batch_size = name, note, 1024
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_estimator_worker, args=(child, paths, total_steps, model_dir), daemon=True)
        self.proc.start()

    def _reply(self, kind: str):
        got, value = self.conn.recv()
        if got == "error":
            raise RuntimeError(f"{self.name} failed in its process:\n{value}")
        assert got == kind, (got, kind)
        return value

    def step(self, n: int) -> None:
        self.conn.send(("step", n))
        self._reply("done")

    def predict(self, features):
        self.conn.send(("predict", 0))
        return self._reply("probs")

    def close(self) -> None:
        self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.terminate()


def keras_predict(loop, features):
    import numpy as np
    import tensorflow as tf
    logits = loop.model.predict(features, batch_size=8192, verbose=0)
    return np.reshape(tf.sigmoid(logits).numpy(), [-1])


def probability_predict(loop, features):
    import numpy as np
    return np.reshape(loop.model.predict(features, batch_size=8192, verbose=0), [-1])
