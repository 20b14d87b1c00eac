"""`deepfm-tfx bench`: pipeline, trainer, parity and serving benchmarks.

cli.py adds it with `bench.register(sub)`. Every figure is measured on this
machine in this run: medians over repeats, comparisons as ratios of figures
taken in the same process. Results go to a table on stdout and a JSON file.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

SECTIONS = ("pipeline", "trainer", "serving", "parity")
SYNTHETIC_COLUMNS = 40  # label + 13 numerical + 26 categorical

# The reference: a plain TFX pipeline on a 12-column CSV (seconds).
REFERENCE = {
    "columns": 12,
    "rows": 1_000_000,
    "total_seconds": 644.0,
    "total_seconds_100k": 160.0,
    "components": {"CsvExampleGen": 234.0, "Transform": 192.0, "Evaluator": 136.0,
                   "StatisticsGen": 58.0, "Trainer": 22.0},
}
# Our component that does the reference component's job.
REFERENCE_NODE = {"CsvExampleGen": "SpecCsvExampleGen"}

TARGETS = {
    "trainer_speedup_vs_deepctr": 2.0,      # Keras runner / DeepCTR examples/s, at >= AUC
    "parity_max_auc_gap": 0.005,
    "serving_p50_ms": 2.0,
    "serving_batch1024_examples_per_s": 200_000.0,
    "cached_rerun_max_ratio": 0.10,
}


# ---------------------------------------------------------------- pure helpers

def median(values: Iterable[float]) -> float:
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("median of no values")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def percentile(values: Iterable[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(float(v) for v in values)
    if not xs:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def ratio(numerator: Optional[float], denominator: Optional[float]) -> Optional[float]:
    if numerator is None or denominator in (None, 0):
        return None
    return numerator / denominator


def parse_list(text: str, kind: Callable = str) -> List:
    return [kind(x.strip().replace("_", "")) if kind is int else kind(x.strip())
            for x in text.split(",") if x.strip()]


def per_row_per_column(seconds: float, rows: int, columns: int) -> float:
    """Microseconds per cell: how pipelines over different tables compare."""
    return seconds / (rows * columns) * 1e6


def growth(seconds_by_rows: Dict[int, float]) -> List[Dict[str, float]]:
    """Seconds per row at each size over the smallest size's: 1.0 is linear cost."""
    sizes = sorted(seconds_by_rows)
    if not sizes:
        return []
    base = seconds_by_rows[sizes[0]] / sizes[0]
    return [{"rows": n, "us_per_row": seconds_by_rows[n] / n * 1e6,
             "per_row_vs_smallest": (seconds_by_rows[n] / n) / base} for n in sizes]


def verdict(value: Optional[float], target: float, higher_is_better: bool = True) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "NOT met"


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(values):
        # First column left-aligned (names), the rest right-aligned (numbers).
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths)))

    out = [title] if title else []
    out += [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]
    return "\n".join(out)


def merge_results(path: str, update: Dict[str, Any]) -> Dict[str, Any]:
    """Sections run now replace theirs; other sections' earlier results stay."""
    results: Dict[str, Any] = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                results = json.load(f)
        except (OSError, ValueError):
            results = {}
    results.setdefault("sections", {}).update(update.get("sections", {}))
    results.update({k: v for k, v in update.items() if k != "sections"})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, default=str)
    os.replace(tmp, path)
    return results


# ---------------------------------------------------------------- pipeline runs

class TreeSampler:
    """Polls the resident set size of a process and all its descendants;
    with `log`, also the peak per component the run's progress lines name."""

    def __init__(self, pid: int, interval: float = 0.5, log: Optional[str] = None):
        import psutil
        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self.log = log
        self.peak_by_component: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except self._psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except self._psutil.Error:
                pass  # exited between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)
        current = self._current_component()
        if current:
            self.peak_by_component[current] = max(self.peak_by_component.get(current, 0), total)
        return total

    def _current_component(self) -> Optional[str]:
        if not self.log:
            return None
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - 4096, 0))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        started = [line.split("▶", 1)[1].split()[0] for line in tail.splitlines() if "▶" in line]
        return started[-1] if started else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _cli() -> List[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "deepfm-tfx")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "deepfm_tfx.pipeline.cli"]


def ensure_data(rows: int, seed: int = 42) -> str:
    """The run command's default data folder, generated outside the timed run."""
    from deepfm_tfx.pipeline.configs import RunConfig
    root = RunConfig(rows=rows, seed=seed).data_root
    if not os.path.exists(os.path.join(root, "span-1", "bayes.json")):
        print(f"  generating {rows:,} synthetic rows into {root}", flush=True)
        subprocess.run(_cli() + ["generate-data", "--rows", str(rows), "--seed", str(seed), "--out", root],
                       check=True, stdout=subprocess.DEVNULL)
    return root


def run_pipeline(root: str, rows: int, trainer: str = "keras", extra: Sequence[str] = (),
                 log_name: str = "run") -> Dict[str, Any]:
    """`deepfm-tfx run` as a subprocess: its summary, wall time and peak tree RSS."""
    os.makedirs(root, exist_ok=True)
    summary_path = os.path.join(root, f"summary-{log_name}.json")
    log_path = os.path.join(root, f"{log_name}.log")
    cmd = _cli() + ["run", "--pipeline-root", os.path.join(root, "pipeline"),
                    "--model-repository", os.path.join(root, "repo"), "--rows", str(rows),
                    "--trainer", trainer, "--summary", summary_path] + list(extra)
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        with TreeSampler(proc.pid, log=log_path) as sampler:
            code = proc.wait()
    wall = time.monotonic() - started
    summary: Dict[str, Any] = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    return {"command": " ".join(cmd), "exit_code": code, "process_seconds": round(wall, 1),
            "peak_rss_mb": round(sampler.peak_bytes / 2**20),
            "peak_rss_mb_by_component": {k: round(v / 2**20) for k, v in sampler.peak_by_component.items()},
            "summary": summary, "log": log_path}


def default_run(workdir: str, trainer: str, rows: int, extra: Sequence[str], rerun: bool) -> Dict[str, Any]:
    """One pipeline run whose Transform output and pushed model other sections use; reused if present."""
    root = os.path.join(workdir, "runs", f"default-{rows}-{trainer}")
    record = os.path.join(root, "bench-run.json")
    if not rerun and os.path.exists(record):
        with open(record) as f:
            previous = json.load(f)
        if previous["exit_code"] == 0 and os.path.isdir(previous["summary"].get("pushed_path") or ""):
            print(f"  reusing pipeline run {root} (--rerun to redo)", flush=True)
            return previous
    ensure_data(rows)
    print(f"  running the pipeline ({trainer} runner, {rows:,} rows) in {root}", flush=True)
    result = run_pipeline(root, rows, trainer, extra)
    result["pipeline_root"] = os.path.join(root, "pipeline")
    if result["exit_code"] != 0:
        raise RuntimeError(f"pipeline run failed (exit {result['exit_code']}); see {result['log']}")
    with open(record, "w") as f:
        json.dump(result, f, indent=2)
    return result


def transform_output(pipeline_root: str) -> Dict[str, str]:
    """The newest Transform execution's transformed examples and graph."""
    def newest(kind):
        dirs = [d for d in glob.glob(os.path.join(pipeline_root, "Transform", kind, "*")) if os.path.isdir(d)]
        if not dirs:
            raise FileNotFoundError(f"no Transform {kind} under {pipeline_root}")
        return max(dirs, key=lambda d: int(os.path.basename(d)) if os.path.basename(d).isdigit() else -1)
    examples = newest("transformed_examples")
    return {"train": os.path.join(examples, "Split-train", "*"), "eval": os.path.join(examples, "Split-eval", "*"),
            "graph": newest("transform_graph")}


# ---------------------------------------------------------------- trainer

def _data_accessor():
    from tfx.components.trainer.fn_args_utils import DataAccessor
    from tfx.components.util import tfxio_utils
    from tfx.proto import example_gen_pb2

    def factory(file_pattern, options, schema):
        files = file_pattern if isinstance(file_pattern, list) else [file_pattern]
        return tfxio_utils.make_tfxio(
            file_pattern=files, telemetry_descriptors=["bench"],
            payload_format=example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE, schema=schema).TensorFlowDataset(options)
    return DataAccessor(tf_dataset_factory=factory, record_batch_factory=None, data_view_decode_fn=None)


def _trainer_inputs(graph_dir: str, **config):
    import tensorflow_transform as tft

    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.trainer_modules import hparams, training_setup
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    tft_out = tft.TFTransformOutput(graph_dir)
    return training_setup.TrainerInputs(spec, hparams.TrainingConfig(**config), tft_out,
                                        training_setup.field_layout(spec, tft_out), "keras")


def load_numpy(files: str, inputs, limit: Optional[int] = None):
    """A split of the Transform output as in-memory arrays (features dict, labels)."""
    import numpy as np
    from tfx_bsl.public import tfxio
    ds = _data_accessor().tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=8192, num_epochs=1, shuffle=False,
                                              label_key=inputs.spec.label),
        inputs.transform_output.transformed_metadata.schema)
    feats: Dict[str, list] = {}
    labels = []
    for x, y in ds:
        for k, v in x.items():
            feats.setdefault(k, []).append(np.reshape(v.numpy(), [-1]))
        labels.append(np.reshape(y.numpy(), [-1]))
        if limit and sum(len(a) for a in labels) >= limit:
            break
    out = {k: np.concatenate(v)[:limit] for k, v in feats.items()}
    return out, np.concatenate(labels)[:limit].astype(np.float32)


def _array_dataset(features, labels, batch_size: int):
    """What model.fit builds from numpy: shuffled each pass, batched by index gathers."""
    from keras.src.engine import data_adapter
    usable = len(labels) // batch_size * batch_size  # full batches only, as every contender
    adapter = data_adapter.TensorLikeDataAdapter(
        {k: v[:usable] for k, v in features.items()}, labels[:usable], batch_size=batch_size,
        epochs=10_000, shuffle=True)
    return adapter.get_dataset()


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
        _quiet()
        import numpy as np
        import tensorflow as tf

        from deepfm_tfx.trainer_modules import estimator_trainer

        from deepfm_tfx.trainer_modules import serving

        from deepfm_tfx.trainer_modules import training_setup
        inputs = _trainer_inputs(paths["graph"])
        # As estimator_trainer.run_fn configures it.
        run_config = tf.estimator.RunConfig(model_dir=model_dir, save_checkpoints_steps=max(total_steps // 2, 1),
                                            log_step_count_steps=100)
        estimator = tf.estimator.Estimator(estimator_trainer.make_model_fn(inputs, total_steps), config=run_config)
        accessor = _data_accessor()

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
        probs = [p[serving.OUTPUT_KEY] for p in estimator.predict(input_fn, yield_single_examples=False)]
        conn.send(("probs", np.concatenate(probs).reshape(-1)))
    except BaseException:  # noqa: BLE001 - reported to the parent
        import traceback
        conn.send(("error", traceback.format_exc()))


class EstimatorLoop:
    """The Estimator runner's train loop in a child process, paused between windows."""

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


def _keras_predict(loop, features):
    import numpy as np
    import tensorflow as tf
    logits = loop.model.predict(features, batch_size=8192, verbose=0)
    return np.reshape(tf.sigmoid(logits).numpy(), [-1])


def _probability_predict(loop, features):
    import numpy as np
    return np.reshape(loop.model.predict(features, batch_size=8192, verbose=0), [-1])


def _adam(config, steps: int):
    """The runners' optimizer and learning-rate schedule, for every contender."""
    import tensorflow as tf

    from deepfm_tfx.trainer_modules import training_setup
    return tf.keras.optimizers.Adam(training_setup.learning_rate(config, steps))


def _runner_model(inputs, steps: int, jit_compile: bool = False):
    """keras_trainer.build_model, with jit_compile as the one optional change."""
    import tensorflow as tf

    from deepfm_tfx.trainer_modules import keras_trainer
    from deepfm_tfx.trainer_modules.deepfm import DeepFM
    if not jit_compile:
        return keras_trainer.build_model(inputs, steps)
    model = DeepFM(inputs.layout, inputs.config.model)
    model.compile(optimizer=_adam(inputs.config, steps),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")],
                  steps_per_execution=inputs.config.steps_per_execution, jit_compile=True)
    return model


def _import_deepctr():
    """deepctr's __init__ only starts a thread that asks PyPI for newer
    releases; load the package without it."""
    import importlib.util
    import types
    if "deepctr" not in sys.modules:
        found = importlib.util.find_spec("deepctr")
        if found is None:
            raise ImportError("deepctr is not installed; uv pip install --no-deps -r requirements-bench.txt")
        package = types.ModuleType("deepctr")
        package.__path__ = list(found.submodule_search_locations)
        package.__version__ = "0.9.4"
        sys.modules["deepctr"] = package


def _deepctr_model(inputs, vocabulary_sizes: Dict[str, int], steps_per_execution: int, steps: int):
    import tensorflow as tf
    _import_deepctr()
    from deepctr.feature_column import DenseFeat, SparseFeat
    from deepctr.models import DeepFM as DeepCTRDeepFM
    c, layout = inputs.config, inputs.layout
    columns = [SparseFeat(n, vocabulary_size=vocabulary_sizes[n], embedding_dim=c.embedding_dim, dtype="int32")
               for n in layout.categorical] + [DenseFeat(n, 1) for n in layout.numerical]
    model = DeepCTRDeepFM(columns, columns, dnn_hidden_units=tuple(c.dnn_units), l2_reg_linear=c.embedding_l2,
                          l2_reg_embedding=c.embedding_l2, l2_reg_dnn=0, dnn_dropout=0, task="binary")
    model.compile(optimizer=_adam(c, steps), loss="binary_crossentropy",
                  metrics=[tf.keras.metrics.AUC(name="auc")], steps_per_execution=steps_per_execution)
    return model


class DeepCTREncoder:
    """Per-field compact ids, as DeepCTR's examples prepare data (LabelEncoder
    per sparse field); 0 is kept for ids the training split never saw."""

    def __init__(self, train_features, layout):
        import numpy as np
        self.layout = layout
        self.uniques = {n: np.unique(train_features[n]) for n in layout.categorical}
        self.vocabulary_sizes = {n: len(u) + 1 for n, u in self.uniques.items()}

    def __call__(self, features):
        import numpy as np
        out = {}
        for n, u in self.uniques.items():
            x = features[n]
            pos = np.clip(np.searchsorted(u, x), 0, len(u) - 1)
            out[n] = np.where(u[pos] == x, pos + 1, 0).astype(np.int32)
        # DeepCTR has no notion of missing: NaN (our Transform's "missing") becomes 0, as in its examples.
        out.update({n: np.nan_to_num(features[n].astype(np.float32), nan=0.0) for n in self.layout.numerical})
        return out


def _lazy_model(inputs, steps: int, jit_compile: bool = False):
    """DeepFM whose embedding L2 and Adam touch only the rows a batch looks up.

    As shipped, the table-wide L2 makes the embedding gradient dense, and
    Keras' Adam decays every row's moments each step: both cost O(table)."""
    import tensorflow as tf

    from deepfm_tfx.trainer_modules.deepfm import DeepFM
    l2 = inputs.config.embedding_l2

    class LazyL2DeepFM(DeepFM):
        def _fields(self, features):
            fields = super()._fields(features)  # builds the tables
            ids = tf.stack([tf.reshape(tf.cast(features[n], tf.int64), [-1]) for n in self.layout.categorical], 1)
            rows = tf.unique(tf.reshape(ids, [-1])).y
            self.add_loss(l2 * (tf.reduce_sum(tf.square(tf.gather(self.field_embeddings.embeddings, rows))) +
                                tf.reduce_sum(tf.square(tf.gather(self.linear_weights.embeddings, rows)))))
            return fields

    class LazyAdam(tf.keras.optimizers.Adam):
        def update_step(self, gradient, variable):
            if not isinstance(gradient, tf.IndexedSlices):
                return super().update_step(gradient, variable)
            rows, slot = tf.unique(gradient.indices)
            g = tf.math.unsorted_segment_sum(gradient.values, slot, tf.shape(rows)[0])
            key = self._var_key(variable)
            m = self._momentums[self._index_dict[key]]
            v = self._velocities[self._index_dict[key]]
            step = tf.cast(self.iterations + 1, variable.dtype)
            lr = tf.cast(self.learning_rate, variable.dtype)
            alpha = lr * tf.sqrt(1 - tf.pow(tf.cast(self.beta_2, variable.dtype), step)) / (
                1 - tf.pow(tf.cast(self.beta_1, variable.dtype), step))
            m_rows = self.beta_1 * tf.gather(m, rows) + (1 - self.beta_1) * g
            v_rows = self.beta_2 * tf.gather(v, rows) + (1 - self.beta_2) * tf.square(g)
            m.scatter_update(tf.IndexedSlices(m_rows, rows))
            v.scatter_update(tf.IndexedSlices(v_rows, rows))
            variable.scatter_sub(tf.IndexedSlices(alpha * m_rows / (tf.sqrt(v_rows) + self.epsilon), rows))

    c = inputs.config
    model = LazyL2DeepFM(inputs.layout, c.model.__class__(c.embedding_dim, tuple(c.dnn_units), 0.0))
    from deepfm_tfx.trainer_modules import training_setup
    model.compile(optimizer=LazyAdam(training_setup.learning_rate(c, steps)),
                  loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")],
                  steps_per_execution=c.steps_per_execution, jit_compile=jit_compile)
    return model


def _cached_dataset(files, inputs, batch_size):
    """make_dataset's read once, then served from memory (shuffle within the first pass only)."""
    import tensorflow as tf
    from tfx_bsl.public import tfxio
    ds = _data_accessor().tf_dataset_factory(
        files, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=inputs.spec.label,
                                              shuffle_buffer_size=10_000, sloppy_ordering=True, num_epochs=1,
                                              drop_final_batch=True),
        inputs.transform_output.transformed_metadata.schema)
    return ds.cache().repeat().prefetch(tf.data.AUTOTUNE)


class IdModulo:
    """Hashed ids mod a smaller power of two are exactly the ids of a Transform
    with that many hash buckets (fingerprint mod 2^18 mod 2^k)."""

    def __init__(self, layout, buckets: int):
        self.layout, self.buckets = layout, buckets

    def __call__(self, features):
        return {k: (v % self.buckets if k in self.layout.categorical else v) for k, v in features.items()}


def build_contenders(paths: Dict[str, str], train_np, plan: Dict[str, Any], workdir: str, variants: bool,
                     only: Optional[Sequence[str]] = None):
    """Each contender sees the same examples count: plan["examples"]."""
    import dataclasses

    from deepfm_tfx.trainer_modules import training_setup
    base = _trainer_inputs(paths["graph"])
    c = base.config
    accessor = _data_accessor()
    big = dict(spe=plan["big_batch_spe"], batch=4 * c.batch_size, lr=2 * c.learning_rate)
    hashed = base.spec.categorical_encoding == "hash"
    small_buckets = 1 << 15

    def runner_loop(name, note, spe=c.steps_per_execution, batch=c.batch_size, lr=c.learning_rate,
                    jit=False, dataset="tfrecord", lazy=False, buckets=None):
        inputs = _trainer_inputs(paths["graph"], batch_size=batch, learning_rate=lr, steps_per_execution=spe)
        encode = None
        if dataset == "tfrecord":
            ds = training_setup.make_dataset(paths["train"], accessor, inputs, batch)
        elif dataset == "cache":
            ds = _cached_dataset(paths["train"], inputs, batch)
            if buckets:
                encode = IdModulo(inputs.layout, buckets)
                inputs.layout = dataclasses.replace(inputs.layout, num_ids=buckets)
                ds = ds.map(lambda x, y: (encode(x), y)).prefetch(2)
        else:
            features = train_np[0]
            if buckets:
                encode = IdModulo(inputs.layout, buckets)
                inputs.layout = dataclasses.replace(inputs.layout, num_ids=buckets)
                features = encode(features)
            ds = _array_dataset(features, train_np[1], batch)
        steps = plan["examples"] // batch
        model = _lazy_model(inputs, steps, jit) if lazy else _runner_model(inputs, steps, jit)
        loop = KerasLoop(name, model, ds, batch, spe, _keras_predict, note)
        loop.encode = encode
        return loop

    def deepctr_loop(spe, note):
        encoder = DeepCTREncoder(train_np[0], base.layout)
        model = _deepctr_model(base, encoder.vocabulary_sizes, spe, plan["examples"] // c.batch_size)
        loop = KerasLoop(f"deepctr-spe{spe}", model, _array_dataset(encoder(train_np[0]), train_np[1], c.batch_size),
                         c.batch_size, spe, _probability_predict, note)
        loop.encode = encoder
        return loop

    def estimator_loop():
        est_dir = os.path.join(workdir, "estimator-model")
        shutil.rmtree(est_dir, ignore_errors=True)
        return EstimatorLoop("estimator-runner", paths, plan["total_steps"], est_dir,
                             "as shipped: model_fn + tf.compat.v1 Adam, TFRecord input")

    factories = [
        ("keras-runner", lambda: runner_loop("keras-runner", "as shipped: spe 20, batch 1024, TFRecord input")),
        ("estimator-runner", estimator_loop),
        ("deepctr-spe1", lambda: deepctr_loop(1, "DeepCTR as documented: per-field label-encoded ids, "
                                                 "model.fit on numpy (spe 1)")),
        (f"deepctr-spe{c.steps_per_execution}", lambda: deepctr_loop(
            c.steps_per_execution, "the same, given the runner's steps_per_execution")),
    ]
    if variants:
        v = [
            ("runner spe=1", "steps_per_execution 1", dict(spe=1)),
            (f"runner spe={plan['long_spe']}", f"steps_per_execution {plan['long_spe']}", dict(spe=plan["long_spe"])),
            ("runner jit_compile", "XLA on the train step", dict(jit=True)),
            ("runner batch 4096", "batch 4096, lr x2 (sqrt scaling), 1/4 the steps", big),
            ("runner numpy input", "same model fed from memory as DeepCTR is", dict(dataset="numpy")),
            ("runner tf.data cache", "TFRecords parsed once, then .cache()", dict(dataset="cache")),
            ("runner cache + batch 4096", "both: .cache(), batch 4096, lr x2", dict(big, dataset="cache")),
            ("runner lazy L2 + Adam", "L2 and Adam moments on the batch's rows only", dict(lazy=True)),
            ("runner lazy + numpy", "lazy L2/Adam, fed from memory", dict(lazy=True, dataset="numpy")),
            ("runner lazy + cache + 4096", "lazy L2/Adam, .cache(), batch 4096, lr x2",
             dict(big, dataset="cache", lazy=True)),
        ]
        if hashed and base.layout.num_ids > small_buckets:
            v += [("runner 2^15 buckets + numpy", f"hash_buckets {small_buckets} instead of {base.layout.num_ids}, "
                                                  "fed from memory", dict(dataset="numpy", buckets=small_buckets)),
                  ("runner 2^15 + numpy + 4096", "hash_buckets 2^15, from memory, batch 4096, lr x2",
                   dict(big, dataset="numpy", buckets=small_buckets)),
                  ("runner 2^15 + cache + 4096", "hash_buckets 2^15, .cache(), batch 4096, lr x2",
                   dict(big, dataset="cache", buckets=small_buckets))]
        factories += [(name, (lambda name=name, note=note, kw=kw: runner_loop(name, note, **kw)))
                      for name, note, kw in v]
    if only:
        unknown = [n for n in only if n not in {f[0] for f in factories}]
        if unknown:
            raise ValueError(f"unknown contender(s) {unknown}; known: {[f[0] for f in factories]}")
        factories = [f for f in factories if f[0] in only or f[0] == "keras-runner" or f[0].startswith("deepctr")]
    return [make() for _, make in factories]


def trainer_plan(quick: bool, total_steps: int) -> Dict[str, Any]:
    # Windows of equal examples; batch-4096 contenders take a quarter of the steps.
    if quick:
        total_steps, warmup, windows = 200, 40, 4
    else:
        warmup, windows = 100, 7
    window = (total_steps - warmup) // windows
    window -= window % 20
    return {"total_steps": warmup + windows * window, "warmup_steps": warmup, "window_steps": window,
            "windows": windows, "big_batch_spe": 5, "long_spe": 40 if quick else 100,
            "examples": (warmup + windows * window) * 1024}


def section_trainer(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    import numpy as np

    from deepfm_tfx.synthetic.generator import auc
    run = shared["default_runs"]["keras"]
    paths = transform_output(run["pipeline_root"])
    plan = trainer_plan(args.quick, 1500)
    print(f"  loading the Transform output of {run['pipeline_root']}", flush=True)
    base = _trainer_inputs(paths["graph"])
    train_np = load_numpy(paths["train"], base)
    eval_np = load_numpy(paths["eval"], base)
    contenders = build_contenders(paths, train_np, plan, args.workdir, variants=not args.no_variants,
                                  only=parse_list(args.contenders) if args.contenders else None)
    print(f"  {len(contenders)} contenders x {plan['examples']:,} examples each; windows of "
          f"{plan['window_steps'] * 1024:,} examples, interleaved", flush=True)

    def steps(c, n):
        return n * 1024 // c.batch_size

    times: Dict[str, List[float]] = {c.name: [] for c in contenders}
    warm: Dict[str, float] = {}
    for c in contenders:
        t = time.perf_counter()
        c.step(steps(c, plan["warmup_steps"]))
        warm[c.name] = time.perf_counter() - t
    for r in range(plan["windows"]):
        # Rotated order so no contender always follows the same neighbour.
        for c in contenders[r % len(contenders):] + contenders[:r % len(contenders)]:
            t = time.perf_counter()
            c.step(steps(c, plan["window_steps"]))
            times[c.name].append(time.perf_counter() - t)
    rows = []
    for c in contenders:
        encode = getattr(c, "encode", None)
        probs = c.predict(encode(eval_np[0]) if encode else eval_np[0])
        c.close()
        window_examples = plan["window_steps"] * 1024
        rates = [window_examples / t for t in times[c.name]]
        rows.append({"name": c.name, "note": c.note, "batch_size": c.batch_size,
                     "examples_per_s": median(rates), "min_examples_per_s": min(rates),
                     "max_examples_per_s": max(rates), "warmup_seconds": round(warm[c.name], 2),
                     "train_examples": steps(c, plan["total_steps"]) * c.batch_size,
                     "eval_auc": auc(eval_np[1], probs), "eval_examples": int(len(eval_np[1]))})
    by = {r["name"]: r for r in rows}
    deepctr_best = max((r for r in rows if r["name"].startswith("deepctr")), key=lambda r: r["examples_per_s"])
    runner = by["keras-runner"]
    documented = by["deepctr-spe1"]
    for r in rows:
        r["vs_deepctr_documented"] = ratio(r["examples_per_s"], documented["examples_per_s"])
        r["vs_deepctr_best"] = ratio(r["examples_per_s"], deepctr_best["examples_per_s"])
        r["auc_minus_deepctr_best"] = r["eval_auc"] - deepctr_best["eval_auc"]
    speedup = runner["vs_deepctr_best"]
    met = speedup >= TARGETS["trainer_speedup_vs_deepctr"] and runner["eval_auc"] >= deepctr_best["eval_auc"] - 1e-3
    return {"plan": plan, "pipeline_root": run["pipeline_root"], "train_rows": int(len(train_np[1])),
            "contenders": rows, "deepctr_reference": deepctr_best["name"],
            "target": {"keras_runner_vs_deepctr": speedup, "auc_gap": runner["eval_auc"] - deepctr_best["eval_auc"],
                       "keras_runner_vs_deepctr_documented": runner["vs_deepctr_documented"],
                       "verdict": "met" if met else "NOT met",
                       "rule": ">= 2x the faster DeepCTR contender's examples/s, AUC not lower by more than 0.001"},
            "machine": _machine()}


def print_trainer(res: Dict[str, Any]) -> None:
    rows = [[r["name"], r["batch_size"], r["examples_per_s"], r["min_examples_per_s"], r["max_examples_per_s"],
             r["vs_deepctr_documented"], r["vs_deepctr_best"], r["eval_auc"], r["warmup_seconds"]]
            for r in res["contenders"]]
    print(table(["contender", "batch", "ex/s (median)", "min", "max", "x deepctr-spe1", f"x {res['deepctr_reference']}",
                 "eval AUC", "warm-up s"], rows,
                title=f"\nTrainer throughput ({res['plan']['windows']} interleaved windows of "
                      f"{res['plan']['window_steps'] * 1024:,} examples after "
                      f"{res['plan']['warmup_steps'] * 1024:,}; AUC after {res['plan']['examples']:,} examples)"))
    for r in res["contenders"]:
        print(f"  {r['name']}: {r['note']}")
    t = res["target"]
    print(f"  target Keras runner >= 2x DeepCTR at equal AUC: {t['keras_runner_vs_deepctr']:.2f}x the faster DeepCTR "
          f"({t['keras_runner_vs_deepctr_documented']:.2f}x DeepCTR as documented), "
          f"AUC gap {t['auc_gap']:+.4f} -> {t['verdict']}")


# ---------------------------------------------------------------- parity

def section_parity(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"pipeline": {}}
    batch, steps = 1024, shared["train_steps"]
    for trainer in ("keras", "estimator"):
        s = shared["default_runs"][trainer]["summary"]
        trainer_s = s["component_seconds"].get("Trainer")
        out["pipeline"][trainer] = {
            "auc": s["auc"], "bayes_auc": s.get("bayes_auc"), "logloss": s.get("logloss"),
            "trainer_seconds": trainer_s,
            # The whole component: TF start-up, training, validation and export.
            "trainer_examples_per_s": ratio(batch * steps, trainer_s),
            "pipeline_root": shared["default_runs"][trainer]["pipeline_root"]}
    k, e = out["pipeline"]["keras"], out["pipeline"]["estimator"]
    gap = abs(k["auc"] - e["auc"]) if k["auc"] is not None and e["auc"] is not None else None
    out["pipeline_auc_gap"] = gap
    out["pipeline_trainer_seconds_ratio"] = ratio(e["trainer_seconds"], k["trainer_seconds"])
    loops = shared.get("trainer")
    if loops:
        by = {r["name"]: r for r in loops["contenders"]}
        out["loops"] = {n: {"eval_auc": by[n]["eval_auc"], "examples_per_s": by[n]["examples_per_s"]}
                        for n in ("keras-runner", "estimator-runner")}
        out["loops_auc_gap"] = abs(by["keras-runner"]["eval_auc"] - by["estimator-runner"]["eval_auc"])
        out["loops_speed_ratio"] = ratio(by["keras-runner"]["examples_per_s"], by["estimator-runner"]["examples_per_s"])
    gaps = [g for g in (gap, out.get("loops_auc_gap")) if g is not None]
    out["verdict"] = verdict(max(gaps) if gaps else None, TARGETS["parity_max_auc_gap"], higher_is_better=False)
    return out


def print_parity(res: Dict[str, Any]) -> None:
    rows = [[f"pipeline {t}", v["auc"], v["bayes_auc"], v["trainer_seconds"], v["trainer_examples_per_s"]]
            for t, v in res["pipeline"].items()]
    for n, v in res.get("loops", {}).items():
        rows.append([f"loop {n}", v["eval_auc"], None, None, v["examples_per_s"]])
    print(table(["run", "AUC", "Bayes AUC", "Trainer s", "ex/s"], rows,
                title="\nParity: Keras vs Estimator runner, same data and config"))
    print(f"  pipeline AUC gap {fmt(res['pipeline_auc_gap'])}, loop AUC gap {fmt(res.get('loops_auc_gap'))} "
          f"(target <= 0.005) -> {res['verdict']}; Estimator/Keras Trainer seconds "
          f"{fmt(res['pipeline_trainer_seconds_ratio'])}")


# ---------------------------------------------------------------- serving

def raw_requests(data_root: str, n: int) -> List[bytes]:
    """Serialized raw tf.Examples of the CSV, label removed as in a request."""
    import tensorflow as tf

    from deepfm_tfx.components.csv_example_gen import parse_file
    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    out = []
    for path in sorted(glob.glob(os.path.join(data_root, "span-1", "*.csv"))):
        for s in parse_file(path, spec):
            ex = tf.train.Example.FromString(s)
            del ex.features.feature[spec.label]
            out.append(ex.SerializeToString())
            if len(out) == n:
                return out
    return out


def _timed_calls(fn, batches, repeats: int) -> List[float]:
    times = []
    for i in range(repeats):
        x = batches[i % len(batches)]
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return times


def _concurrent_throughput(fn, batches, callers: int, calls_each: int) -> float:
    """Examples/s with several threads calling at once (TF ops release the GIL)."""
    def work(k):
        for i in range(calls_each):
            fn(batches[(i + k) % len(batches)])
    rates = []
    for _ in range(3):
        threads = [threading.Thread(target=work, args=(k,)) for k in range(callers)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        rates.append(callers * calls_each * int(batches[0].shape[0]) / (time.perf_counter() - t))
    return median(rates)


def _serving_parts(transform_graph: str, model_fn):
    """The signature's stages as separate functions, to see where time goes."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.trainer_modules import serving
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    tft_out = tft.TFTransformOutput(transform_graph)
    layer = tft_out.transform_features_layer()
    raw_spec = serving.raw_feature_spec(tft_out, spec.label)

    # One small output each, as the signature has: converting dozens of
    # (sparse) outputs back to Python would cost more than the stage itself.
    def checksum(tensors):
        return tf.add_n([tf.reduce_sum(tf.cast(tf.size(t.values if isinstance(t, tf.SparseTensor) else t),
                                               tf.int64)) for t in tensors.values()])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def noop(examples):
        return tf.size(examples)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(examples):
        return checksum(tf.io.parse_example(examples, raw_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse_transform(examples):
        transformed = layer(tf.io.parse_example(examples, raw_spec))
        return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in transformed.values()])

    return {"python call floor (no-op tf.function)": noop, "parse_example": parse,
            "parse_example + Transform": parse_transform, "whole signature": model_fn}


def section_serving(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    import tensorflow as tf

    from deepfm_tfx.trainer_modules import serving
    quick = args.quick
    out: Dict[str, Any] = {"models": {}}
    data_root = shared["default_runs"]["keras"]["summary"]["data_root"]
    requests = raw_requests(data_root, 4096)
    for trainer in ("keras", "estimator"):
        run = shared["default_runs"].get(trainer)
        if not run:
            continue
        path = run["summary"]["pushed_path"]
        loaded = tf.saved_model.load(path)
        sig = loaded.signatures[serving.SIGNATURE]
        call = lambda x, sig=sig: sig(**{serving.INPUT_KEY: x})[serving.OUTPUT_KEY]  # noqa: E731
        singles = [tf.constant([r]) for r in requests[:256]]
        _timed_calls(call, singles, 50)  # warm-up
        lat = _timed_calls(call, singles, 300 if quick else 3000)
        res = {"model": path, "single_p50_ms": percentile(lat, 50) * 1e3, "single_p99_ms": percentile(lat, 99) * 1e3,
               "single_calls": len(lat), "batches": {}}
        for b, reps in ((1, 2000), (64, 500), (1024, 100)):
            reps = max(reps // 10, 10) if quick else reps
            batches = [tf.constant(requests[i:i + b]) for i in range(0, len(requests) - b + 1, b)][:32]
            _timed_calls(call, batches, 5)
            t = _timed_calls(call, batches, reps)
            res["batches"][b] = {"median_ms": median(t) * 1e3, "examples_per_s": b / median(t), "calls": reps}
        res["batch1024_two_callers_examples_per_s"] = _concurrent_throughput(
            call, [tf.constant(requests[i:i + 1024]) for i in range(0, 4096, 1024)], 2, 10 if quick else 60)
        if trainer == "keras":
            parts = {}
            graph = transform_output(run["pipeline_root"])["graph"]
            for name, fn in _serving_parts(graph, call).items():
                parts[name] = {}
                for b, reps in ((1, 1000), (1024, 60)):
                    reps = max(reps // 10, 10) if quick else reps
                    batches = [tf.constant(requests[i:i + b]) for i in range(0, len(requests) - b + 1, b)][:32]
                    _timed_calls(fn, batches, 5)
                    parts[name][b] = median(_timed_calls(fn, batches, reps)) * 1e3
            res["breakdown_median_ms"] = parts
        res["verdict_p50"] = verdict(res["single_p50_ms"], TARGETS["serving_p50_ms"], higher_is_better=False)
        res["verdict_batch1024"] = verdict(res["batches"][1024]["examples_per_s"],
                                           TARGETS["serving_batch1024_examples_per_s"])
        out["models"][trainer] = res
    return out


def print_serving(res: Dict[str, Any]) -> None:
    rows = []
    for trainer, r in res["models"].items():
        rows.append([trainer, r["single_p50_ms"], r["single_p99_ms"]] +
                    [r["batches"][b]["examples_per_s"] for b in (1, 64, 1024)] +
                    [r.get("batch1024_two_callers_examples_per_s")] +
                    [r["verdict_p50"], r["verdict_batch1024"]])
    print(table(["model", "p50 ms (1 ex)", "p99 ms", "ex/s b=1", "ex/s b=64", "ex/s b=1024",
                 "b=1024 2 callers", "p50<2ms", ">200k ex/s"], rows,
                title="\nServing: serving_default on raw serialized tf.Examples, in-process"))
    parts = res["models"].get("keras", {}).get("breakdown_median_ms")
    if parts:
        print(table(["stage (Keras model)", "ms b=1", "ms b=1024"],
                    [[n, v[1], v[1024]] for n, v in parts.items()], title="  where the time goes (medians)"))


# ---------------------------------------------------------------- pipeline section

def section_pipeline(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    sizes = [5000, 20_000] if args.quick and args.pipeline_rows is None else (args.pipeline_rows or
                                                                               [100_000, 1_000_000, 5_000_000])
    extra = ["--train-steps", "200"] if args.quick else []
    out: Dict[str, Any] = {"runs": {}, "beam_modes": {}}
    for rows in sizes:
        ensure_data(rows)
        root = os.path.join(args.workdir, "runs", f"pipeline-{rows}")
        shutil.rmtree(root, ignore_errors=True)  # a first run must not hit an old cache
        print(f"  pipeline at {rows:,} rows: first run", flush=True)
        first = run_pipeline(root, rows, "keras", extra, "first")
        print(f"    {first['process_seconds']} s, peak RSS {first['peak_rss_mb']} MB; cached re-run", flush=True)
        again = run_pipeline(root, rows, "keras", extra, "cached")
        out["runs"][rows] = _pipeline_figures(rows, first, again)
        _write_partial(args, {"pipeline": out})
    beam_rows = min(sizes)
    if not args.no_beam_modes:
        for mode, beam_args in (("in_memory", []),
                                ("multi_processing x2", ["--beam-arg=--direct_running_mode=multi_processing",
                                                         "--beam-arg=--direct_num_workers=2"])):
            root = os.path.join(args.workdir, "runs", f"beam-{beam_rows}-{mode.split()[0]}")
            shutil.rmtree(root, ignore_errors=True)
            print(f"  Beam {mode} at {beam_rows:,} rows", flush=True)
            r = run_pipeline(root, beam_rows, "keras", extra + beam_args + ["--no-cache"], "run")
            out["beam_modes"][mode] = {"rows": beam_rows, "exit_code": r["exit_code"],
                                       "process_seconds": r["process_seconds"], "peak_rss_mb": r["peak_rss_mb"],
                                       "component_seconds": r["summary"].get("component_seconds", {}),
                                       "log": r["log"]}
        modes = out["beam_modes"]
        out["beam_multi_vs_in_memory"] = ratio(modes["multi_processing x2"]["process_seconds"],
                                               modes["in_memory"]["process_seconds"])
    out["growth"] = growth({n: r["process_seconds"] for n, r in out["runs"].items() if r["exit_code"] == 0})
    out["reference"] = REFERENCE
    return out


def _pipeline_figures(rows: int, first: Dict[str, Any], again: Dict[str, Any]) -> Dict[str, Any]:
    s = first["summary"]
    comp = s.get("component_seconds", {})
    total = first["process_seconds"]
    ref_us_cell = per_row_per_column(REFERENCE["total_seconds"], REFERENCE["rows"], REFERENCE["columns"])
    same_rows = {REFERENCE["rows"]: REFERENCE["total_seconds"], 100_000: REFERENCE["total_seconds_100k"]}.get(rows)
    per_component = {}
    for ref_name, ref_s in REFERENCE["components"].items():
        ours = comp.get(REFERENCE_NODE.get(ref_name, ref_name))
        if ours is None:
            continue
        mine = per_row_per_column(ours, rows, SYNTHETIC_COLUMNS)
        theirs = per_row_per_column(ref_s, REFERENCE["rows"], REFERENCE["columns"])
        per_component[ref_name] = {"seconds": ours, "us_per_cell": mine, "reference_us_per_cell": theirs,
                                   "reference_over_ours_per_cell": ratio(theirs, mine),
                                   "reference_over_ours_per_row": ratio(ref_s / REFERENCE["rows"], ours / rows)}
    return {
        "rows": rows, "columns": SYNTHETIC_COLUMNS, "exit_code": first["exit_code"],
        "process_seconds": total, "runner_wall_seconds": s.get("wall_seconds"),
        "component_seconds": comp, "component_states": s.get("component_states", {}),
        "peak_rss_mb": first["peak_rss_mb"], "peak_rss_mb_by_component": first.get("peak_rss_mb_by_component", {}),
        "rows_per_s": rows / total,
        "us_per_row": total / rows * 1e6, "us_per_cell": per_row_per_column(total, rows, SYNTHETIC_COLUMNS),
        "reference_us_per_cell": ref_us_cell,
        "reference_over_ours_per_cell": ratio(ref_us_cell, per_row_per_column(total, rows, SYNTHETIC_COLUMNS)),
        # Fixed costs dominate small runs: compare with the reference at the same row count where it has one.
        "same_rows_reference_seconds": same_rows,
        "same_rows_reference_over_ours_per_cell": ratio(
            per_row_per_column(same_rows, rows, REFERENCE["columns"]) if same_rows else None,
            per_row_per_column(total, rows, SYNTHETIC_COLUMNS)),
        "per_component_vs_reference": per_component,
        "auc": s.get("auc"), "bayes_auc": s.get("bayes_auc"),
        "cached": {"exit_code": again["exit_code"], "process_seconds": again["process_seconds"],
                   "peak_rss_mb": again["peak_rss_mb"],
                   "component_states": again["summary"].get("component_states", {})},
        "cached_over_first": ratio(again["process_seconds"], total),
        # What the cache did not cover on the re-run (resolver nodes always run, in ~0 s).
        "cached_reexecuted": {n: sec for n, sec in again["summary"].get("component_seconds", {}).items()
                              if again["summary"].get("component_states", {}).get(n) != "CACHED" and sec >= 0.5},
        "cached_verdict": verdict(ratio(again["process_seconds"], total), TARGETS["cached_rerun_max_ratio"],
                                  higher_is_better=False),
        "logs": [first["log"], again["log"]],
    }


def print_pipeline(res: Dict[str, Any]) -> None:
    runs = res["runs"]
    nodes = []
    for r in runs.values():
        nodes += [n for n in r["component_seconds"] if n not in nodes]
    rows = [[n] + [runs[k]["component_seconds"].get(n) for k in runs] for n in nodes]
    rows += [["process wall s"] + [runs[k]["process_seconds"] for k in runs],
             ["peak RSS MB (tree)"] + [runs[k]["peak_rss_mb"] for k in runs],
             ["rows/s"] + [runs[k]["rows_per_s"] for k in runs],
             ["us per row"] + [runs[k]["us_per_row"] for k in runs],
             ["us per row x column"] + [runs[k]["us_per_cell"] for k in runs],
             ["reference(1M)/ours per cell"] + [runs[k]["reference_over_ours_per_cell"] for k in runs],
             ["reference(same rows)/ours per cell"] + [runs[k].get("same_rows_reference_over_ours_per_cell")
                                                       for k in runs],
             ["cached re-run s"] + [runs[k]["cached"]["process_seconds"] for k in runs],
             ["cached / first"] + [runs[k]["cached_over_first"] for k in runs],
             ["re-executed when cached"] + [", ".join(f"{n} {v:.0f}s" for n, v in runs[k]["cached_reexecuted"].items())
                                            or "none" for k in runs],
             ["cached <= 10%"] + [runs[k]["cached_verdict"] for k in runs],
             ["AUC (Bayes)"] + [f"{fmt(runs[k]['auc'])} ({fmt(runs[k]['bayes_auc'])})" for k in runs]]
    print(table(["component seconds (ml-metadata)"] + [f"{int(k):,} rows" for k in runs], rows,
                title="\nPipeline: LocalDagRunner, synthetic data (40 columns)"))
    for g in res.get("growth", []):
        print(f"  {g['rows']:>9,} rows: {g['us_per_row']:.1f} us/row, x{g['per_row_vs_smallest']:.2f} "
              f"the smallest size's per-row cost")
    for k, r in runs.items():
        by = sorted(r.get("peak_rss_mb_by_component", {}).items(), key=lambda kv: -kv[1])[:4]
        if by:
            print(f"  {int(k):,} rows, peak RSS of the tree while each component ran (MB): "
                  + ", ".join(f"{n} {v:,}" for n, v in by))
    for k, r in runs.items():
        for name, v in r["per_component_vs_reference"].items():
            print(f"  {int(k):,} rows {name}: {v['us_per_cell']:.3g} us/cell vs reference "
                  f"{v['reference_us_per_cell']:.3g} (reference/ours {v['reference_over_ours_per_cell']:.2f}x "
                  f"per cell, {v['reference_over_ours_per_row']:.2f}x per row)")
    if res.get("beam_modes"):
        modes = res["beam_modes"]
        nodes = sorted({n for m in modes.values() for n in m["component_seconds"]})
        rows = [[n] + [m["component_seconds"].get(n) for m in modes.values()] for n in nodes]
        rows += [["process wall s"] + [m["process_seconds"] for m in modes.values()],
                 ["peak RSS MB (tree)"] + [m["peak_rss_mb"] for m in modes.values()]]
        print(table(["Beam DirectRunner"] + list(modes), rows,
                    title=f"\nBeam modes at {next(iter(modes.values()))['rows']:,} rows (no cache)"))
        print(f"  multi_processing/in_memory wall: {fmt(res.get('beam_multi_vs_in_memory'))}")


# ---------------------------------------------------------------- driver

def _machine() -> Dict[str, Any]:
    import psutil
    return {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]}


def _write_partial(args, sections: Dict[str, Any]) -> None:
    merge_results(args.out, {"sections": sections, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")})


@contextlib.contextmanager
def native_stderr_to(path: str):
    """TF/XLA C++ logs bypass Python logging; send file descriptor 2 to a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "a") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _quiet() -> None:
    import logging
    import warnings
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("absl", "tensorflow", "apache_beam", "tfx", "ml_metadata", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import tensorflow as tf
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)


def main(args) -> int:
    _quiet()
    sections = [s for s in parse_list(args.sections) if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"error: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    os.makedirs(args.workdir, exist_ok=True)
    shared: Dict[str, Any] = {"default_runs": {}, "train_steps": 200 if args.quick else 1500}
    rows = 5000 if args.quick else 500_000
    extra = ["--train-steps", str(shared["train_steps"])]
    needs = {"trainer": ("keras",), "serving": ("keras", "estimator"), "parity": ("keras", "estimator")}
    for trainer in ("keras", "estimator"):
        if any(trainer in needs.get(s, ()) for s in sections):
            shared["default_runs"][trainer] = default_run(args.workdir, trainer, rows, extra, args.rerun)
    results: Dict[str, Any] = {}
    started = time.time()
    # Trainer before parity: parity also reports the trainer loops' AUCs.
    for name, fn, show in (("trainer", section_trainer, print_trainer), ("parity", section_parity, print_parity),
                           ("serving", section_serving, print_serving),
                           ("pipeline", section_pipeline, print_pipeline)):
        if name not in sections:
            continue
        load = os.getloadavg()
        print(f"\n== {name} (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs)",
              flush=True)
        t = time.time()
        with native_stderr_to(os.path.join(args.workdir, "native-stderr.log")):
            results[name] = fn(args, shared)
        results[name]["section_seconds"] = round(time.time() - t, 1)
        # Other work on the machine skews every figure; keep the evidence.
        results[name]["load_average_before_after"] = [list(load), list(os.getloadavg())]
        shared[name] = results[name]
        show(results[name])
        _write_partial(args, {name: results[name]})
    merge_results(args.out, {"machine": _machine(), "quick": args.quick,
                             "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "last_sections_seconds": round(time.time() - started, 1)})
    print(f"\nresults written to {args.out}")
    return 0


def configure(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags; `python -m bench --help` lists them."""
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated subset of %(default)s")
    p.add_argument("--pipeline-rows", type=lambda s: parse_list(s, int),
                   help="pipeline section sizes, comma-separated (default 100000,1000000,5000000; --quick: 5000,20000)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section")
    p.add_argument("--out", default=os.path.join("bench", "results.json"))
    p.add_argument("--workdir", default=os.path.join("workspace", "bench"))
    p.add_argument("--rerun", action="store_true", help="redo the default pipeline runs instead of reusing them")
    p.add_argument("--no-variants", action="store_true", help="trainer: only the runners and DeepCTR")
    p.add_argument("--contenders", help="trainer: comma-separated subset (the runner and DeepCTR always run)")
    p.add_argument("--no-beam-modes", action="store_true", help="pipeline: skip the Beam DirectRunner comparison")
    p.set_defaults(func=main)
