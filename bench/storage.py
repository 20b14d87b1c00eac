"""The storage section: the model repository in an S3 bucket against the same in a folder, and
a whole run with its pipeline root in the bucket against the same run on local disk.

The default Keras run's pushed SavedModel is pushed into a folder repository
and into `s3://` on moto's S3 server (started here on 127.0.0.1, so the
figures are of loopback and moto, not of a network or of AWS), then loaded
the way `deepfm-tfx serve` loads it: from the bucket, downloaded into an
empty cache first; then the TF Session and the warmup requests.

Then `deepfm-tfx run` twice on the same generated rows with the same flags:
data, pipeline root and repository in folders, then all three in the bucket
(TensorFlow through tensorflow-io, Beam through boto3).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List

from bench.common import median, table

NEEDS = ()  # the default Keras run, asked for in run() unless --storage-saved-model
REPEATS = 3
MODEL = "deepfm"


def _moto() -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    import boto3
    boto3.session.Session().client("s3").create_bucket(Bucket="bench")
    return proc


def _megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files) / 2**20


def _measure(repo: str, saved_model: str, workdir: str) -> Dict[str, List[float]]:
    from deepfm_tfx import model_repository
    from deepfm_tfx.serving.servable import Servable

    out: Dict[str, List[float]] = {"push_s": [], "download_s": [], "load_and_warm_s": []}
    for i in range(REPEATS):
        started = time.perf_counter()
        version = model_repository.push(repo, MODEL, saved_model, {"bench": i})
        out["push_s"].append(time.perf_counter() - started)
        cache = tempfile.mkdtemp(dir=workdir)
        started = time.perf_counter()
        path = model_repository.local_copy(repo, MODEL, version, cache)
        out["download_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        servable = Servable(MODEL, version, path).load()
        servable.warm_up()
        out["load_and_warm_s"].append(time.perf_counter() - started)
        servable.retire()
        shutil.rmtree(cache, ignore_errors=True)
    return out


RUN_FLAGS = ["--trainer", "keras", "--train-steps", "100", "--eval-steps", "5", "--min-auc", "0.5"]


def _run_seconds(data: str, root: str, repo: str, env: Dict[str, str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "deepfm-tfx"), "run", "--data", data,
                           "--pipeline-root", root, "--model-repository", repo, "--quiet", *RUN_FLAGS],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"deepfm-tfx run --pipeline-root {root} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def _runs(rows: int, workdir: str) -> Dict[str, float]:
    import boto3

    from deepfm_tfx.synthetic import generator

    data = os.path.join(workdir, "data")
    generator.generate(data, rows=rows, spans=1, seed=7)
    client = boto3.session.Session().client("s3")
    for folder, _, files in os.walk(data):
        for name in files:
            path = os.path.join(folder, name)
            client.upload_file(path, "bench", "data/" + os.path.relpath(path, data))
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(workdir, "cache"), TF_CPP_MIN_LOG_LEVEL="3")
    return {"local disk": _run_seconds(data, os.path.join(workdir, "pipeline"), os.path.join(workdir, "run-repo"), env),
            "s3 (moto, loopback)": _run_seconds("s3://bench/data", "s3://bench/pipeline", "s3://bench/run-repo", env)}


def add_arguments(p) -> None:
    p.add_argument("--storage-saved-model", help="measure this SavedModel instead of the default Keras run's")
    p.add_argument("--storage-run-rows", type=int, default=20_000,
                   help="rows of the run timed with its pipeline root on local disk and in the bucket (0: skip)")


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    saved_model = args.storage_saved_model or shared["default_runs"]["keras"]["summary"]["pushed_path"]
    workdir = os.path.join(args.workdir, "storage")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    moto = _moto()
    try:
        result = {"saved_model_mb": round(_megabytes(saved_model), 1), "repeats": REPEATS, "targets": {}}
        for name, repo in (("folder", os.path.join(workdir, "repo")), ("s3 (moto, loopback)", "s3://bench/repo")):
            times = _measure(repo, saved_model, workdir)
            result["targets"][name] = {k: round(median(v), 3) for k, v in times.items()}
        if args.storage_run_rows:
            result["run_rows"] = args.storage_run_rows
            result["run_seconds"] = {k: round(v, 1) for k, v in _runs(args.storage_run_rows, workdir).items()}
    finally:
        moto.send_signal(signal.SIGTERM)
        moto.wait()
    return result


def show(res: Dict[str, Any]) -> None:
    rows = [[name, r["push_s"], r["download_s"], r["load_and_warm_s"]] for name, r in res["targets"].items()]
    print(table(["repository", "push s", "download s", "TF load + warmup s"], rows,
                title=f"\nStorage: a {res['saved_model_mb']} MB SavedModel, medians of {res['repeats']}"))
    if res.get("run_seconds"):
        local = res["run_seconds"]["local disk"]
        print(table(["data, pipeline root, repository", "deepfm-tfx run s", "vs local disk"],
                    [[name, s, f"{s / local:.2f}x"] for name, s in res["run_seconds"].items()],
                    title=f"\nA whole run, {res['run_rows']:,} rows, {' '.join(RUN_FLAGS)}, once each"))
