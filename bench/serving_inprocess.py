"""The serving_inprocess section: each default run's pushed SavedModel loaded
in this process, its serving_default called directly (no server, no network).

p50/p99 latency of one raw example, throughput at batch 1, 64 and 1024 (and
with two callers), and where the time goes: parsing, Transform, the model.
bench/serving.py, when present, measures a server over its APIs instead.
"""
from __future__ import annotations

import glob
import os
import threading
import time
from typing import Any, Dict, List

from bench.common import median, percentile, table, verdict
from bench.runs import transform_output

NEEDS = ("keras", "estimator")
P50_MS = 2.0
BATCH1024_EXAMPLES_PER_S = 200_000.0


def raw_requests(data_root: str, n: int) -> List[bytes]:
    """Serialized raw tf.Examples of the CSV, label removed as in a request."""
    from deepfm_tfx.components.example_encoder import request_examples
    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    return request_examples(sorted(glob.glob(os.path.join(data_root, "span-1", "*.csv"))), spec, n)


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


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    import tensorflow as tf

    from deepfm_tfx import contracts
    quick = args.quick
    out: Dict[str, Any] = {"models": {}}
    data_root = shared["default_runs"]["keras"]["summary"]["data_root"]
    requests = raw_requests(data_root, 4096)
    for trainer in NEEDS:
        default = shared["default_runs"][trainer]
        path = default["summary"]["pushed_path"]
        loaded = tf.saved_model.load(path)
        sig = loaded.signatures[contracts.SERVING_SIGNATURE]
        call = lambda x, sig=sig: sig(**{contracts.EXAMPLES_INPUT_KEY: x})[contracts.OUTPUT_KEY]  # noqa: E731
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
            graph = transform_output(default["pipeline_root"])["graph"]
            for name, fn in _serving_parts(graph, call).items():
                parts[name] = {}
                for b, reps in ((1, 1000), (1024, 60)):
                    reps = max(reps // 10, 10) if quick else reps
                    batches = [tf.constant(requests[i:i + b]) for i in range(0, len(requests) - b + 1, b)][:32]
                    _timed_calls(fn, batches, 5)
                    parts[name][b] = median(_timed_calls(fn, batches, reps)) * 1e3
            res["breakdown_median_ms"] = parts
        res["verdict_p50"] = verdict(res["single_p50_ms"], P50_MS, higher_is_better=False)
        res["verdict_batch1024"] = verdict(res["batches"][1024]["examples_per_s"],
                                           BATCH1024_EXAMPLES_PER_S)
        out["models"][trainer] = res
    return out


def show(res: Dict[str, Any]) -> None:
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
