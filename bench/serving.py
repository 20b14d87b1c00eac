"""The serving section: `deepfm-tfx serve` called over loopback, on REST and gRPC.

The default run's pushed model is copied into a fresh repository and served by
`deepfm-tfx serve` in its own process. Closed-loop clients (asyncio, one
process: grpc.aio with TF Serving's PredictionServiceStub, aiohttp for REST)
send real raw rows of the default data, as one example or as 100 candidates,
with 1, 8 and 32 in flight, and record every call's latency. Then, at 8 gRPC
clients with 100 candidates, a new version is pushed (stable, waiting for the
server as `models` does) and the latency of the calls made while it loads,
warms up and takes the label is compared with the steady state.

    .venv/bin/python -m bench.serving [--quick] [--serving-seconds 5]

Targets: p99 under 10 ms for a 100-candidate gRPC request at 8 clients; during
a swap no failed request and a p99 at most 2x the steady state's.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, List, Optional, Sequence

from bench.common import percentile, table, verdict

NEEDS = ()  # the default Keras run, asked for in run(): its model may not be blessed
P99_TARGET_MS = 10.0
SWAP_P99_RATIO = 2.0
CLIENTS = (1, 8, 32)
COLUMNAR_CLIENTS = (1, 8)
SIZES = (1, 100)
MODEL = "deepfm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("serving")
    g.add_argument("--serving-seconds", type=float, default=None,
                   help="seconds of load per cell (default 5; 2 with --quick)")
    g.add_argument("--serving-saved-model", help="serve this SavedModel instead of the default run's")
    g.add_argument("--serving-compare", action="append", default=[], metavar="LABEL=SAVED_MODEL",
                   help="also run the 100-candidate cells on this SavedModel and on the served one, alternating "
                        "in fresh servers (e.g. a model exported before a change to the serving graph)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_rows(data_root: str, n: int) -> List[bytes]:
    """Serialized raw tf.Examples of the default data, label removed as in a request."""
    from deepfm_tfx.components.example_encoder import request_examples
    from deepfm_tfx.schemas import feature_spec
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    return request_examples(sorted(glob.glob(os.path.join(data_root, "span-*", spec.file_pattern))), spec, n)


def _repository(workdir: str, saved_model: str, rows: List[bytes], folder: str = "repo") -> str:
    """A fresh repository holding the model as its stable version, with warmup requests
    (built from real rows, as the pusher does, if the source has none)."""
    from deepfm_tfx import model_repository
    from deepfm_tfx.components.model_repository_pusher import warmup_file
    from deepfm_tfx.serving import warmup

    repo = os.path.join(workdir, "serving", folder)
    shutil.rmtree(repo, ignore_errors=True)
    os.makedirs(repo)
    extra = {} if os.path.exists(warmup.path_in(saved_model)) else warmup_file(saved_model, MODEL, rows[:256], "")
    # No source_model in the record: every push here must be a new version of the same SavedModel.
    model_repository.push(repo, MODEL, saved_model, {"bench": "first", "copied_from": saved_model},
                          extra_files=extra)
    return repo


class Server:
    """`deepfm-tfx serve` in its own process, so the clients do not share its CPU time slices or GIL."""

    def __init__(self, repo: str, log: str, extra: Sequence[str] = (), env: Optional[Dict[str, str]] = None):
        self.grpc_port, self.rest_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deepfm_tfx.serving.server", "--model-repository", repo, "--host", "127.0.0.1",
             "--port", str(self.grpc_port), "--rest-api-port", str(self.rest_port), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {})))

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"deepfm-tfx serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models/{MODEL}", timeout=2) as r:
                    if b"AVAILABLE" in r.read():
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"deepfm-tfx serve did not become ready in {timeout:.0f}s; see {self.log.name}")

    def cpu_seconds(self) -> float:
        import psutil
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------- the clients

def _grpc_request(rows: List[bytes]):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from deepfm_tfx import contracts
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = contracts.STABLE
    request.inputs[contracts.EXAMPLES_INPUT_KEY].CopyFrom(tf.make_tensor_proto(rows, tf.string))
    return request


def _rest_body(rows: List[bytes]) -> bytes:
    return json.dumps({"instances": [{"b64": base64.b64encode(r).decode()} for r in rows]}).encode()


def feature_columns(rows: List[bytes], inputs: Dict[str, int]) -> Dict[str, list]:
    """The rows as the features signature's columns ({input key: DataType enum}):
    strings ("" where missing) and floats (NaN where missing)."""
    import tensorflow as tf
    columns: Dict[str, list] = {key: [] for key in inputs}
    for row in rows:
        feature = tf.train.Example.FromString(row).features.feature
        for key, dtype in inputs.items():
            kind = feature[key].WhichOneof("kind") if key in feature else None
            value = list(getattr(feature[key], kind).value)[0] if kind else None
            if dtype == tf.string.as_datatype_enum:
                columns[key].append(value if value is not None else b"")
            else:
                columns[key].append(float(value) if value is not None else float("nan"))
    return columns


def _grpc_columnar_request(columns: Dict[str, list], inputs: Dict[str, int]):
    """One TensorProto per feature (TF Serving's PredictRequest to the features signature)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from deepfm_tfx import contracts
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.version_label = contracts.STABLE
    request.model_spec.signature_name = contracts.FEATURES_SIGNATURE
    for key, values in columns.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(values, tf.dtypes.as_dtype(inputs[key])))
    return request


def _rest_columnar_body(columns: Dict[str, list]) -> bytes:
    """TF Serving's columnar JSON (`inputs`), NaN as its token."""
    from deepfm_tfx import contracts
    return json.dumps({"signature_name": contracts.FEATURES_SIGNATURE, "inputs": {
        k: [v.decode() if isinstance(v, bytes) else v for v in values] for k, values in columns.items()}}).encode()


async def _closed_loop(call, clients: int, seconds: float, warm: float = 0.5) -> Dict[str, Any]:
    """`clients` coroutines calling back to back; latencies of calls started after `warm` s."""
    latencies: List[float] = []
    starts: List[float] = []
    errors: List[str] = []
    done = [0]  # every call, the warm-up's included: what the CPU time was spent on
    begin = time.perf_counter()
    end = begin + warm + seconds

    async def client():
        while time.perf_counter() < end:
            t = time.perf_counter()
            try:
                await call()
            except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                continue
            done[0] += 1
            if t - begin >= warm:
                latencies.append(time.perf_counter() - t)
                starts.append(t)
    await asyncio.gather(*(client() for _ in range(clients)))
    return {"latencies": latencies, "starts": starts, "errors": errors, "calls": done[0]}


def _summary(result: Dict[str, Any], seconds: float, rows: int) -> Dict[str, Any]:
    lat = result["latencies"]
    return {"calls": len(lat), "errors": len(result["errors"]), "error_examples": result["errors"][:3],
            "p50_ms": percentile(lat, 50) * 1e3 if lat else None,
            "p99_ms": percentile(lat, 99) * 1e3 if lat else None,
            "requests_per_s": len(lat) / seconds, "rows_per_s": len(lat) * rows / seconds}


async def _cell(server: Server, call, clients: int, seconds: float, rows: int) -> Dict[str, Any]:
    cpu = server.cpu_seconds(), time.process_time()
    result = await _closed_loop(call, clients, seconds)
    cell = _summary(result, seconds, rows)
    # CPU per call, which other work on a shared machine does not inflate the way it does latency.
    calls = max(result["calls"] + len(result["errors"]), 1)
    cell["server_cpu_ms_per_call"] = (server.cpu_seconds() - cpu[0]) / calls * 1e3
    cell["client_cpu_ms_per_call"] = (time.process_time() - cpu[1]) / calls * 1e3
    return cell


def _calls(server: Server, stub, session, rows: List[bytes], size: int, inputs: Optional[Dict[str, int]]):
    """{protocol: call}: tf.Examples to serving_default over gRPC and REST and, with the features
    signature's `inputs`, the same rows as columns (one tensor per feature) to `features`."""
    url = f"{server.url}/v1/models/{MODEL}/labels/stable:predict"

    def grpc_call(request):
        async def call():
            await stub.Predict(request, timeout=30)
        return call

    def rest_call(body):
        async def call():
            async with session.post(url, data=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
        return call

    calls = {"grpc": grpc_call(_grpc_request(rows[:size])), "rest": rest_call(_rest_body(rows[:size]))}
    if inputs:
        columns = feature_columns(rows[:size], inputs)
        calls["grpc-columnar"] = grpc_call(_grpc_columnar_request(columns, inputs))
        calls["rest-columnar"] = rest_call(_rest_columnar_body(columns))
    return calls


async def _measure(server: Server, rows: List[bytes], seconds: float,
                   inputs: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    import aiohttp
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    cells: Dict[str, Any] = {}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max(CLIENTS))) as session:
        for size in SIZES:
            # The columnar form for the target's 100 candidates only.
            calls = _calls(server, stub, session, rows, size, inputs if size == 100 else None)
            for protocol, call in calls.items():
                for clients in CLIENTS if "columnar" not in protocol else COLUMNAR_CLIENTS:
                    key = f"{protocol}/{size}/{clients}"
                    cells[key] = cell = await _cell(server, call, clients, seconds, size)
                    print(f"  {protocol:13s} {size:3d} rows {clients:2d} clients: p50 {cell['p50_ms']:.2f} ms "
                          f"p99 {cell['p99_ms']:.2f} ms {cell['requests_per_s']:.0f} req/s "
                          f"{cell['server_cpu_ms_per_call']:.2f} ms server CPU/call", flush=True)
    await channel.close()
    return cells


async def _compared_cells(server: Server, rows: List[bytes], seconds: float,
                          inputs: Optional[Dict[str, int]]) -> Dict[str, Any]:
    """The target's 100 candidates, each protocol and form, at 1 and 8 clients."""
    import aiohttp
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    cells: Dict[str, Any] = {}
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        for protocol, call in _calls(server, stub, session, rows, 100, inputs).items():
            for clients in COLUMNAR_CLIENTS:
                cells[f"{protocol}/100/{clients}"] = await _cell(server, call, clients, seconds, 100)
    await channel.close()
    return cells


def compare_models(workdir: str, models: Dict[str, str], rows: List[bytes], seconds: float,
                   rounds: int = 2) -> Dict[str, Any]:
    """The same cells on each model (e.g. before and after a change to the graph), each in a fresh
    server of the same settings, alternating for `rounds` so drifting outside load hits both alike."""
    from deepfm_tfx import contracts, saved_model_check
    out: Dict[str, Any] = {name: [] for name in models}
    repos = {name: _repository(workdir, path, rows, folder=f"repo-{i}") for i, (name, path) in enumerate(models.items())}
    for r in range(rounds):
        for name, path in models.items():
            inputs = saved_model_check.signature_inputs(path).get(contracts.FEATURES_SIGNATURE)
            server = Server(repos[name], os.path.join(workdir, "serving", "server-compare.log"))
            try:
                server.wait_ready()
                load = os.getloadavg()[0]
                cells = asyncio.run(_compared_cells(server, rows, seconds, inputs))
            finally:
                server.stop()
            out[name].append({"load_average_1min": [load, os.getloadavg()[0]], "cells": cells})
            print(f"  {name} (round {r + 1}, load {load:.1f}): " + ", ".join(
                f"{k} p99 {c['p99_ms']:.1f} ms {c['server_cpu_ms_per_call']:.2f} ms CPU"
                for k, c in cells.items() if k.endswith("/8")), flush=True)
    return out


# Server settings tried on the target cell (gRPC, 100 candidates, 8 clients), each in a fresh server.
VARIANTS = {
    "as shipped (2 batch threads, batches up to 400 rows, timeout 3 ms, jemalloc)": (),
    "batches up to 1,024 rows (the default until 2026-12-07)": ("--max-batch-rows", "1024"),
    "glibc's malloc": ("--allocator", "system"),
    "no batch timeout": ("--batch-timeout-ms", "0"),
    "batch timeout 1 ms": ("--batch-timeout-ms", "1"),
    "1 batch thread": ("--batch-threads", "1"),
    "no batching": ("--batch-threads", "0"),
}


async def _target_cell(server: Server, rows: List[bytes], seconds: float) -> Dict[str, Any]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _grpc_request(rows[:100])

    async def call():
        await stub.Predict(request, timeout=30)

    cpu = server.cpu_seconds()
    result = await _closed_loop(call, 8, seconds)
    cell = _summary(result, seconds, 100)
    cell["server_cpu_ms_per_call"] = (server.cpu_seconds() - cpu) / max(result["calls"], 1) * 1e3
    await channel.close()
    return cell


def variants(workdir: str, repo: str, rows: List[bytes], seconds: float) -> Dict[str, Any]:
    """The target cell under each of VARIANTS' server settings, in this one run."""
    out = {}
    for name, extra in VARIANTS.items():
        server = Server(repo, os.path.join(workdir, "serving", "server-variant.log"), extra)
        try:
            server.wait_ready()
            out[name] = dict(asyncio.run(_target_cell(server, rows, seconds)), flags=" ".join(extra))
        finally:
            server.stop()
        print(f"  {name}: p99 {out[name]['p99_ms']:.2f} ms, {out[name]['server_cpu_ms_per_call']:.2f} ms server "
              f"CPU/call", flush=True)
    return out


async def _swap(server: Server, repo: str, saved_model: str, rows: List[bytes], seconds: float) -> Dict[str, Any]:
    """Steady state, then the same load while a new version is pushed, loaded, warmed and labelled."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from deepfm_tfx import model_repository
    from deepfm_tfx.serving import model_status

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _grpc_request(rows[:100])
    seen: List[int] = []

    async def call():
        response = await stub.Predict(request, timeout=30)
        seen.append(response.model_spec.version.value)

    steady = _summary(await _closed_loop(call, 8, seconds), seconds, 100)
    before = model_repository.serving_version(repo, MODEL)
    latencies, starts, errors = [], [], []
    stop = asyncio.Event()

    async def client():
        while not stop.is_set():
            t = time.perf_counter()
            try:
                await call()
            except Exception as e:  # noqa: BLE001
                errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                continue
            latencies.append(time.perf_counter() - t)
            starts.append(t)

    window: Dict[str, float] = {}

    def push() -> int:
        window["push"] = time.perf_counter()
        version = model_repository.push(repo, MODEL, saved_model, {"bench": "swap", "copied_from": saved_model},
                                        wait=model_status.waiter(server.url, timeout=600))
        window["loaded"] = time.perf_counter()
        while not seen or seen[-1] != version:  # the label moves on the server's next poll
            time.sleep(0.02)
        window["labelled"] = time.perf_counter()
        return version

    clients = [asyncio.ensure_future(client()) for _ in range(8)]
    await asyncio.sleep(1.0)
    after = await asyncio.get_running_loop().run_in_executor(None, push)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*clients)
    await channel.close()
    # The swap window: from the push until the new version answers for the label.
    inside = [lat for lat, t in zip(latencies, starts) if window["push"] <= t <= window["labelled"]]
    return {"steady": steady,
            "during": {"calls": len(inside), "errors": len(errors), "error_examples": errors[:3],
                       "p50_ms": percentile(inside, 50) * 1e3 if inside else None,
                       "p99_ms": percentile(inside, 99) * 1e3 if inside else None,
                       "max_ms": max(inside) * 1e3 if inside else None},
            "all_calls_around_swap": len(latencies),
            "swap_seconds": window["labelled"] - window["push"],
            "load_seconds": window["loaded"] - window["push"],
            "versions": [before, after], "versions_seen": sorted(set(seen))}


def _model(args, shared: Dict[str, Any]):
    """(SavedModel, data folder): the default run's pushed model, or, when that run's model was not
    blessed (the quick run's few rows), one trained without the AUC floor: latency does not depend on it."""
    from bench.runs import ensure_data, run_pipeline
    if args.serving_saved_model:
        return args.serving_saved_model, ensure_data(shared["default_runs"].rows)
    try:
        default = shared["default_runs"]["keras"]
        return default["summary"]["pushed_path"], default["summary"]["data_root"]
    except RuntimeError as e:
        print(f"  {e}; training a model for serving without the AUC floor", flush=True)
    rows = shared["default_runs"].rows
    root = os.path.join(args.workdir, "runs", f"serving-{rows}-keras")
    ensure_data(rows)
    run = run_pipeline(root, rows, "keras", ["--min-auc", "0", "--train-steps", str(shared["default_runs"].train_steps)])
    if run["exit_code"] != 0:
        raise RuntimeError(f"the pipeline run for the serving section failed; see {run['log']}")
    return run["summary"]["pushed_path"], run["summary"]["data_root"]


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    from deepfm_tfx import contracts, saved_model_check
    seconds = args.serving_seconds or (2.0 if args.quick else 5.0)
    saved_model, data_root = _model(args, shared)
    rows = raw_rows(data_root, 256)
    repo = _repository(args.workdir, saved_model, rows)
    server = Server(repo, os.path.join(args.workdir, "serving", "server.log"))
    try:
        server.wait_ready()
        inputs = saved_model_check.signature_inputs(saved_model).get(contracts.FEATURES_SIGNATURE)
        cells = asyncio.run(_measure(server, rows, seconds, inputs))
        swaps = [asyncio.run(_swap(server, repo, saved_model, rows, seconds)) for _ in range(2)]
    finally:
        server.stop()
    tried = variants(args.workdir, repo, rows, seconds)
    compared = compare_models(args.workdir, {**dict(c.split("=", 1) for c in args.serving_compare),
                                             "served": saved_model}, rows, seconds) if args.serving_compare else {}
    target = cells["grpc/100/8"]["p99_ms"]
    worst = max(swaps, key=lambda s: (s["during"]["p99_ms"] or 0) / (s["steady"]["p99_ms"] or 1))
    ratio = (worst["during"]["p99_ms"] or float("nan")) / worst["steady"]["p99_ms"]
    return {"model": saved_model, "seconds_per_cell": seconds, "cells": cells, "swaps": swaps, "variants": tried,
            "compared": compared,
            "target_p99_grpc_100_at_8_ms": target,
            "verdict_p99_grpc_100_at_8": verdict(target, P99_TARGET_MS, higher_is_better=False),
            "swap_failed_requests": sum(s["during"]["errors"] for s in swaps),
            "swap_p99_ratio": ratio,
            "verdict_swap": "met" if (sum(s["during"]["errors"] for s in swaps) == 0
                                      and ratio <= SWAP_P99_RATIO) else "NOT met"}


def show(result: Dict[str, Any]) -> None:
    rows = []
    for key, c in result["cells"].items():
        protocol, size, clients = key.split("/")
        rows.append([protocol, int(size), int(clients), c["p50_ms"], c["p99_ms"], c["requests_per_s"],
                     c["rows_per_s"], c["errors"], c.get("server_cpu_ms_per_call"), c.get("client_cpu_ms_per_call")])
    print(table(["protocol", "rows/request", "clients", "p50 ms", "p99 ms", "req/s", "rows/s", "errors",
                 "server CPU ms/call", "client CPU ms/call"], rows,
                title="\nServing: deepfm-tfx serve over loopback, serving_default on raw tf.Examples "
                      f"({result['seconds_per_cell']:.0f} s per cell)"))
    swap_rows = [[i + 1, s["steady"]["p99_ms"], s["during"]["p50_ms"], s["during"]["p99_ms"], s["during"]["max_ms"],
                  s["during"]["calls"], s["during"]["errors"], s["swap_seconds"]]
                 for i, s in enumerate(result["swaps"])]
    print(table(["swap", "steady p99 ms", "swap p50 ms", "swap p99 ms", "swap max ms", "calls", "failed",
                 "seconds"], swap_rows, title="  a new version pushed, loaded, warmed and labelled stable "
                                               "under 8 gRPC clients x 100 candidates"))
    if result.get("variants"):
        print(table(["server setting", "flags", "p50 ms", "p99 ms", "req/s", "server CPU ms/call"],
                    [[name, v["flags"] or "-", v["p50_ms"], v["p99_ms"], v["requests_per_s"],
                      v["server_cpu_ms_per_call"]] for name, v in result["variants"].items()],
                    title="  the target cell (gRPC, 100 candidates, 8 clients) under other server settings"))
    if result.get("compared"):
        show_compared(result["compared"])
    print(f"  p99 < {P99_TARGET_MS:.0f} ms, gRPC, 100 candidates, 8 clients: "
          f"{result['target_p99_grpc_100_at_8_ms']:.2f} ms -> {result['verdict_p99_grpc_100_at_8']}")
    print(f"  swap: {result['swap_failed_requests']} failed, p99 {result['swap_p99_ratio']:.2f}x steady "
          f"(target <= {SWAP_P99_RATIO:.0f}x) -> {result['verdict_swap']}")


def show_compared(compared: Dict[str, Any]) -> None:
    rows = []
    for name, rounds in compared.items():
        for r, entry in enumerate(rounds):
            for key, c in entry["cells"].items():
                protocol, _, clients = key.split("/")
                rows.append([name, r + 1, f"{entry['load_average_1min'][0]:.1f}", protocol, int(clients),
                             c["p50_ms"], c["p99_ms"], c["requests_per_s"], c["server_cpu_ms_per_call"],
                             c["client_cpu_ms_per_call"]])
    print(table(["model", "round", "load", "protocol", "clients", "p50 ms", "p99 ms", "req/s", "server CPU ms/call",
                 "client CPU ms/call"], rows, title="  100 candidates per request, each model in a fresh server "
                                                     "(alternating rounds; load: 1-min load average at start)"))


def main(argv=None) -> int:
    from bench.common import merge_results, quiet
    from bench.runs import DefaultRuns

    parser = argparse.ArgumentParser(prog="python -m bench.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick default run (5k rows) and 2 s cells")
    parser.add_argument("--workdir", default=os.path.join("workspace", "bench"))
    parser.add_argument("--out", default=os.path.join("bench", "results.json"))
    parser.add_argument("--rerun", action="store_true")
    add_arguments(parser)
    args = parser.parse_args(argv)
    quiet()
    shared = {"default_runs": DefaultRuns(args.workdir, args.quick, args.rerun)}
    load = os.getloadavg()
    result = run(args, shared)
    result["load_average_before_after"] = [list(load), list(os.getloadavg())]
    show(result)
    merge_results(args.out, {"sections": {"serving": result}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
