"""A real pipeline run with its data, its pipeline root and its model repository in an S3 bucket
(moto's server on loopback), then `deepfm-tfx serve` answering from the bucket: the in-process
probabilities, through 10 s of the store being away, a canary pushed afterwards, and true exit codes."""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import s3_server
from conftest import mapped_libraries, without_preload
from deepfm_tfx import contracts, machine, model_repository, object_store
from deepfm_tfx.components.example_encoder import request_examples
from deepfm_tfx.pipeline import configs
from deepfm_tfx.schemas import feature_spec
from deepfm_tfx.serving import model_status
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

MODEL = configs.MODEL_NAME


@pytest.fixture(scope="module")
def s3():
    with s3_server.running() as server:
        yield server


@pytest.fixture(scope="module")
def pushed(s3, tmp_path_factory):
    """`deepfm-tfx run` (Keras, small data) with its data in s3://<bucket>/data, its pipeline root in
    s3://<bucket>/pipeline and its repository in s3://<bucket>/repository."""
    tmp = tmp_path_factory.mktemp("store")
    data = str(tmp / "data")
    generator.generate(data, rows=3000, spans=1, seed=5)
    s3.upload_folder(data, "data")
    repo, summary_path = s3.url("repository"), str(tmp / "summary.json")
    # The CLI in its own process, as TensorFlow's S3 filesystem is registered in it: its exit code must be
    # the run's, not tensorflow-io's abort at exit. ml-metadata is SQLite, beside the store on this machine.
    run = subprocess.run(
        [DEEPFM_TFX, "run", "--data", s3.url("data"), "--pipeline-root", s3.url("pipeline"),
         "--model-repository", repo, "--trainer", "keras", "--train-steps", "40",
         "--eval-steps", "2", "--min-auc", "0.5", "--batch-size", "256", "--dnn-units", "16",
         "--summary", summary_path], capture_output=True, text=True, timeout=900,
        env=dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache")))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert not re.search(r"pure virtual|Traceback", run.stderr), run.stderr[-3000:]
    with open(summary_path) as f:
        summary = json.load(f)
    record = model_repository.read_record(repo, MODEL, summary["pushed_version"])
    # The Trainer's output is in the bucket: fetched with boto3, as this test process must not register
    # tensorflow-io (pytest would then end with its abort).
    trainer_output = str(tmp / "trainer-output")
    object_store.mirror(f"{record['source_model']}/{contracts.SERVING_MODEL_DIR}", trainer_output)
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    return {"repo": repo, "version": summary["pushed_version"], "summary": summary, "tmp": tmp,
            "source_model": record["source_model"], "trainer_output": trainer_output,
            "rows": request_examples([os.path.join(data, "span-1", "part-000.csv")], spec, 50)}


DEEPFM_TFX = os.path.join(os.path.dirname(sys.executable), "deepfm-tfx")



@pytest.fixture(scope="module")
def server(pushed, tmp_path_factory):
    """`deepfm-tfx serve` on the bucket, in its own process, as a serving host would run it."""
    port = s3_server.free_port()
    log = open(tmp_path_factory.mktemp("serve") / "serve.log", "w+")
    process = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "deepfm-tfx"), "serve", "--model-repository", pushed["repo"],
         "--port", "0", "--rest-api-port", str(port), "--host", "127.0.0.1",
         "--model-config-file-poll-wait-seconds", "0.5", "--experiments-dir", str(tmp_path_factory.mktemp("exp")),
         "--outcomes-port", "0"],  # no experiments here; 8502 may be taken by a test beside it
        stdout=log, stderr=subprocess.STDOUT, text=True, env=without_preload())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        try:
            if model_status.version_state(url, MODEL, pushed["version"]) == "AVAILABLE":
                break
        except (urllib.error.URLError, OSError):
            pass
        assert process.poll() is None and time.monotonic() < deadline, _tail(log)
        time.sleep(0.5)
    yield {"process": process, "url": url, "log": log}
    if process.poll() is None:
        process.kill()
        process.wait()


def _tail(log):
    log.flush()
    log.seek(0)
    return log.read()[-3000:]


def _predict(url, rows, label=None):
    path = f"/v1/models/{MODEL}" + (f"/labels/{label}" if label else "") + ":predict"
    body = json.dumps({"instances": [{"b64": base64.b64encode(r).decode()} for r in rows]}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + path, data=body), timeout=30) as response:
        return np.array(json.loads(response.read())["predictions"])


@pytest.fixture(scope="module")
def in_process(pushed):
    import tensorflow as tf
    loaded = tf.saved_model.load(pushed["trainer_output"])
    out = loaded.signatures[contracts.SERVING_SIGNATURE](**{contracts.EXAMPLES_INPUT_KEY: tf.constant(pushed["rows"])})
    return out[contracts.OUTPUT_KEY].numpy()


def test_the_run_read_its_data_in_place_wrote_its_pipeline_root_and_pushed_into_the_bucket(s3, pushed):
    summary = pushed["summary"]
    assert summary["data_root"] == s3.url("data") and summary["span"] == 1  # read in place, no mirror
    pipeline = s3.keys("pipeline")
    assert not any(k.startswith("staged-data/") for k in pipeline)
    assert pushed["source_model"].startswith(s3.url("pipeline") + "/Trainer/model/")
    for produced in ("SpecCsvExampleGen/examples/", "Transform/transform_graph/", "Evaluator/evaluation/",
                     "PairedAucGate/", "report.html"):
        assert any(k.startswith(produced) for k in pipeline), produced
    assert summary["change_gate"] and summary["auc"] > 0.5  # the gate's verdict, read back from the bucket
    assert os.path.isfile(os.path.join(pushed["tmp"], "cache", "deepfm-tfx", "s3", s3_server.BUCKET, "pipeline",
                                       "metadata.sqlite"))
    assert not os.path.exists("s3:")  # nothing written to a local folder named after the URL
    assert summary["pushed"] and summary["pushed_path"] == f"{pushed['repo']}/{MODEL}/{pushed['version']}"
    assert model_repository.serving_version(pushed["repo"], MODEL) == pushed["version"]
    keys = s3.keys("repository")
    assert f"{MODEL}/{pushed['version']}/saved_model.pb" in keys
    assert f"{MODEL}/{pushed['version']}/{contracts.WARMUP_FILE}" in keys


def test_serve_from_the_bucket_answers_the_in_process_probabilities(server, pushed, in_process):
    assert in_process.std() > 0
    np.testing.assert_allclose(_predict(server["url"], pushed["rows"]), in_process, rtol=1e-5, atol=1e-7)


def test_serve_runs_on_jemalloc_in_its_own_process(server):
    # The answers above came from it; started without the allocator (make test preloads it), it
    # re-executed itself (same pid) with the allocator preloaded.
    library = machine.jemalloc_path()
    if library is None:
        pytest.skip("libjemalloc2 is not installed here")
    assert os.path.realpath(library) in mapped_libraries(server["process"].pid)


def test_serve_answers_through_ten_seconds_of_the_store_away_then_loads_a_canary(s3, server, pushed, in_process,
                                                                                 tmp_path):
    answers, failures = [], []
    with s3.away():
        started = time.monotonic()
        while time.monotonic() - started < 10:
            try:
                answers.append(_predict(server["url"], pushed["rows"][:5]))
            except (urllib.error.URLError, OSError) as e:
                failures.append(e)
            time.sleep(0.2)
    assert not failures and len(answers) >= 20
    for answer in answers:
        np.testing.assert_allclose(answer, in_process[:5], rtol=1e-5, atol=1e-7)
    # The store is back: a canary pushed now is downloaded, loaded, and only then labelled.
    pushing = {}
    thread = threading.Thread(target=lambda: pushing.update(version=model_repository.push(
        pushed["repo"], MODEL, pushed["trainer_output"], {"source_model": "the same model again"}, push_as="canary",
        wait=model_status.waiter(server["url"], timeout=240))))
    thread.start()
    thread.join(300)
    canary = pushing["version"]
    assert model_repository.labels(pushed["repo"], MODEL) == {"stable": pushed["version"], "canary": canary}
    assert model_status.version_state(server["url"], MODEL, canary) == "AVAILABLE"
    np.testing.assert_allclose(_predict(server["url"], pushed["rows"], label="canary"), in_process,
                               rtol=1e-5, atol=1e-7)


def test_serve_stops_with_a_true_exit_code(server):
    process = server["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0, _tail(server["log"])
    log = _tail(server["log"])
    assert "stopping" in log and not re.search(r"pure virtual|Traceback", log)


def test_a_run_failing_on_a_bad_row_in_the_bucket_exits_with_its_code_not_an_abort(s3, tmp_path):
    """The run reads the data in place through tensorflow-io and refuses a bad file in one line: the
    CLI's exit code is the refusal's (2), not tensorflow-io's abort at exit (134)."""
    s3.client().put_object(Bucket=s3_server.BUCKET, Key="bad-data/span-1/part-000.csv", Body=b"1\t2\n" * 5)
    run = subprocess.run(
        [DEEPFM_TFX, "run", "--data", s3.url("bad-data"), "--pipeline-root", s3.url("bad-pipeline"),
         "--model-repository", s3.url("bad-repository"), "--quiet"], capture_output=True, text=True, timeout=600,
        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert run.returncode == contracts.EXIT_BAD_INPUT, (run.returncode, run.stderr[-3000:])
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "bad-data/span-1/part-000.csv" in last, run.stderr[-3000:]
    assert not re.search(r"pure virtual|Traceback", run.stderr)
    assert s3.keys("bad-repository") == []
