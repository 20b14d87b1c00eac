"""How a candidate serves, measured before it is pushed (the pusher's latency gate).

The candidate is loaded in a process of its own, as `deepfm-tfx serve` loads a
version (the same Session options, its warmup requests replayed once), so
neither the timings nor the memory figure carry the pusher's own state. Then
the warmup requests' rows are sent again as 100-candidate requests, one after
another, each decoded from its TensorProtos, run and encoded as a gRPC
request is: the p99 of those calls is what the budget is checked against.

`python -m deepfm_tfx.serving.latency_probe SAVED_MODEL WARMUP_DIR` prints the
figures as JSON; `measure_in_child` runs it and reads them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

CANDIDATES = 100  # rows per timed request: a page of ranking
CALLS = 400  # timed requests; the p99 is then the 4th slowest


def _status_mb(field: str) -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024
    except (OSError, StopIteration):  # not Linux
        return None


def _requests_of(warmup_dir: str, servable, rows: int) -> List[Any]:
    """The warmup requests' rows regrouped per signature into `rows`-row PredictRequests."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from deepfm_tfx.serving import requests, warmup

    columns: Dict[str, Dict[str, List[np.ndarray]]] = {}
    for request in warmup.read_requests(warmup_dir):
        signature = servable.signature(request.model_spec.signature_name)
        feeds = requests.feeds_from_tensor_protos(request.inputs, signature)
        for key, array in feeds.items():
            columns.setdefault(signature.name, {}).setdefault(key, []).append(array)
    batches = []
    for name, by_key in columns.items():
        merged = {k: np.concatenate(v) for k, v in by_key.items()}
        total = len(next(iter(merged.values())))
        for start in range(0, max(total, rows), rows):
            take = np.arange(start, start + rows) % total  # wraps round when there are fewer rows
            request = predict_pb2.PredictRequest()
            request.model_spec.signature_name = name
            for key, array in merged.items():
                requests.array_to_proto(array[take], request.inputs[key])
            batches.append(request)
    return batches


def measure(saved_model_dir: str, warmup_dir: str, rows: int = CANDIDATES, calls: int = CALLS) -> Dict[str, Any]:
    """Loads the SavedModel here and times `calls` requests of `rows` rows each."""
    import numpy as np
    from tensorflow_serving.apis import predict_pb2

    from deepfm_tfx.serving import requests, servable as servable_lib

    before_mb = _status_mb("VmRSS")  # TensorFlow imported, no model yet
    started = time.monotonic()
    servable = servable_lib.Servable("candidate", 0, saved_model_dir).load()
    servable.warm_up(warmup_dir)
    load_seconds = time.monotonic() - started
    batches = _requests_of(warmup_dir, servable, rows)
    if not batches:
        raise ValueError("the candidate has no warmup requests to time")

    def call(request) -> None:
        signature = servable.signature(request.model_spec.signature_name)
        outputs = signature.run(requests.feeds_from_tensor_protos(request.inputs, signature), batch=False)
        response = predict_pb2.PredictResponse()
        for key, value in outputs.items():
            requests.array_to_proto(value, response.outputs[key])
        response.SerializeToString()

    for request in batches:  # each signature's first calls at this size are not the steady state
        call(request)
    seconds = []
    cpu_started = time.process_time()
    for i in range(calls):
        request = batches[i % len(batches)]
        t = time.perf_counter()
        call(request)
        seconds.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu_started
    ms = np.array(seconds) * 1000
    peak_mb = _status_mb("VmHWM")
    return {
        "rows_per_request": rows, "requests": calls, "signatures": sorted({b.model_spec.signature_name
                                                                          for b in batches}),
        "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "cpu_ms_per_request": round(cpu * 1000 / calls, 3),
        "load_seconds": round(load_seconds, 2),
        "loaded_mb": round(peak_mb - before_mb, 1) if peak_mb is not None and before_mb is not None else None,
        "peak_rss_mb": round(peak_mb, 1) if peak_mb is not None else None,
    }


def measure_in_child(saved_model_dir: str, warmup_dir: str, timeout: float = 600) -> Dict[str, Any]:
    """`measure` in a fresh Python process; raises RuntimeError with its last line when it fails."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", __name__, saved_model_dir, warmup_dir], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the latency probe failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepfm_tfx.serving.latency_probe", description=__doc__)
    parser.add_argument("saved_model")
    parser.add_argument("warmup_dir", help="a folder holding assets.extra/tf_serving_warmup_requests")
    parser.add_argument("--rows", type=int, default=CANDIDATES)
    parser.add_argument("--calls", type=int, default=CALLS)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.saved_model, args.warmup_dir, args.rows, args.calls)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
