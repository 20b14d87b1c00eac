"""`deepfm-tfx serve` on a model the real pipeline pushed: TF Serving's REST and gRPC
APIs, the same probabilities as the SavedModel in-process, warmup, canary and
promotion through the label moves, a push while clients call, and every bad
request answered with a 4xx in TF Serving's error shape."""
import base64
import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from deepfm_tfx import contracts, model_repository, models_config, saved_model_check
from deepfm_tfx.components.example_encoder import request_examples
from deepfm_tfx.pipeline import cli, configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.schemas import feature_spec
from deepfm_tfx.serving import model_status, warmup
from deepfm_tfx.serving.server import ModelServer
from deepfm_tfx.synthetic import generator

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = configs.MODEL_NAME
MAX_BODY = 1 << 20  # small, so the over-limit case is cheap


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """One real pipeline run (Keras, small data) that pushed a version with warmup requests."""
    tmp = tmp_path_factory.mktemp("serving")
    data = str(tmp / "data")
    generator.generate(data, rows=3000, spans=1, seed=5)
    config = configs.RunConfig(
        data=data, pipeline_root=str(tmp / "pipeline"), model_repository=str(tmp / "repo"), trainer="keras",
        train_steps=40, eval_steps=2, min_auc=0.5, training={"batch_size": 256, "dnn_units": [16]})
    summary = local.run(config)
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    rows = request_examples([os.path.join(data, "span-1", "part-000.csv")], spec, 100)
    return {"repo": config.model_repository, "version": summary["pushed_version"],
            "source": os.path.join(os.path.dirname(summary["pushed_path"]), str(summary["pushed_version"])),
            "rows": rows, "pipeline_root": config.pipeline_root, "data": data}


@pytest.fixture(scope="module")
def server(pushed):
    # loader_nice=0: on a busy shared machine a low-priority loader makes the label tests slow, not different.
    with ModelServer(pushed["repo"], grpc_port=0, rest_port=0, poll_seconds=0.2, max_body_bytes=MAX_BODY,
                     loader_nice=0) as s:
        yield s


@pytest.fixture(scope="module")
def in_process(pushed):
    loaded = tf.saved_model.load(pushed["source"])

    def probabilities(rows):
        out = loaded.signatures[contracts.SERVING_SIGNATURE](**{contracts.EXAMPLES_INPUT_KEY: tf.constant(rows)})
        return out[contracts.OUTPUT_KEY].numpy()
    return probabilities


def _rest(server, path, body=None, method=None):
    """(HTTP status, parsed JSON body) of a REST call."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _stubs(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                    options=[("grpc.max_send_message_length", 4 * MAX_BODY)])
    return (prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def _examples_request(rows, label=None, version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if label:
        request.model_spec.version_label = label
    if version:
        request.model_spec.version.value = version
    request.inputs[contracts.EXAMPLES_INPUT_KEY].CopyFrom(tf.make_tensor_proto(rows, tf.string))
    return request


def _feature_rows(rows):
    """The rows as the features signature takes them in JSON (NaN / "" where missing)."""
    out = []
    for row in rows:
        example = tf.train.Example.FromString(row)
        values = {}
        for name, feature in example.features.feature.items():
            kind = feature.WhichOneof("kind")
            values[name] = list(getattr(feature, kind).value)[0] if kind else None
        out.append(values)
    return out


def _json_features(rows, spec_inputs):
    instances = []
    for values in _feature_rows(rows):
        instance = {}
        for key, dtype in spec_inputs.items():
            v = values.get(key)
            if dtype == tf.string.as_datatype_enum:
                instance[key] = v.decode() if v is not None else ""
            else:
                instance[key] = v if v is not None else math.nan
        instances.append(instance)
    return instances


def _wait_until(predicate, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


# ------------------------------------------------------------------ the happy paths

def test_pushed_version_carries_warmup_requests_from_real_rows_and_the_server_replays_them(pushed, server):
    path = model_repository.version_dir(pushed["repo"], MODEL, pushed["version"])
    requests = list(warmup.read_requests(path))
    assert 0 < len(requests) <= warmup.MAX_RECORDS
    assert {r.model_spec.signature_name for r in requests} == {contracts.SERVING_SIGNATURE, contracts.FEATURES_SIGNATURE}
    sizes = {r.inputs[contracts.EXAMPLES_INPUT_KEY].tensor_shape.dim[0].size for r in requests
             if r.model_spec.signature_name == contracts.SERVING_SIGNATURE}
    assert {1, 100} <= sizes  # one ad, and a page of candidates
    first = tf.train.Example.FromString(requests[0].inputs[contracts.EXAMPLES_INPUT_KEY].string_val[0])
    assert "label" not in first.features.feature and "C1" in first.features.feature
    servable = server.manager.resolve(MODEL)
    try:
        assert servable.warmup_requests == len(requests)
    finally:
        servable.release()


def test_warmup_makes_the_first_request_fast(pushed, tmp_path):
    """Without the warmup file a version's first call pays TF's lazy set-up; with it, loading did."""
    from deepfm_tfx.serving.servable import Servable
    bare = str(tmp_path / "bare")
    shutil.copytree(pushed["source"], bare, ignore=shutil.ignore_patterns(contracts.ASSETS_EXTRA))
    feeds = {contracts.EXAMPLES_INPUT_KEY: np.array(pushed["rows"], dtype=object)}

    def first_call_seconds(path, warm):
        servable = Servable(MODEL, 1, path).load()
        if warm:
            assert servable.warm_up() > 0
        started = time.perf_counter()
        servable.signature(contracts.SERVING_SIGNATURE).run(feeds, batch=False)
        return time.perf_counter() - started

    cold, warm = first_call_seconds(bare, False), first_call_seconds(pushed["source"], True)
    assert warm * 5 < cold, (warm, cold)


def test_rest_and_grpc_give_the_in_process_probabilities(pushed, server, in_process):
    rows = pushed["rows"]
    expected = in_process(rows)
    assert expected.shape == (100, 1) and expected.std() > 0

    status, body = _rest(server, f"/v1/models/{MODEL}:predict",
                         {"instances": [{"b64": base64.b64encode(r).decode()} for r in rows]})
    assert status == 200
    np.testing.assert_allclose(np.array(body["predictions"]), expected, rtol=1e-5, atol=1e-7)

    status, body = _rest(server, f"/v1/models/{MODEL}/labels/stable:predict",
                         {"inputs": {"examples": [{"b64": base64.b64encode(r).decode()} for r in rows[:5]]}})
    assert status == 200
    np.testing.assert_allclose(np.array(body["outputs"]), expected[:5], rtol=1e-5, atol=1e-7)

    # Raw features by name, with NaN and "" where a row has no value.
    inputs = saved_model_check.signature_inputs(pushed["source"])[contracts.FEATURES_SIGNATURE]
    text = json.dumps({"signature_name": "features", "instances": _json_features(rows, inputs)})
    assert "NaN" in text
    status, body = _rest(server, f"/v1/models/{MODEL}:predict", text.encode())
    assert status == 200
    np.testing.assert_allclose(np.array(body["predictions"]), expected, rtol=1e-5, atol=1e-7)

    prediction, models = _stubs(server)
    response = prediction.Predict(_examples_request(rows), timeout=30)
    assert response.model_spec.version.value == pushed["version"]
    assert response.model_spec.signature_name == contracts.SERVING_SIGNATURE
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[contracts.OUTPUT_KEY]), expected, rtol=1e-5, atol=1e-7)

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    [status_entry] = models.GetModelStatus(request, timeout=10).model_version_status
    assert status_entry.version == pushed["version"] and status_entry.state == status_entry.AVAILABLE


def test_an_id_below_min_count_and_an_unseen_id_share_the_rare_row_served_as_in_training(pushed, server):
    """The default spec admits ids seen at least min_count times in the training window."""
    import glob

    import pandas as pd
    import tensorflow_transform as tft

    from deepfm_tfx.pipeline import id_space
    from deepfm_tfx.trainer_modules import preprocessing
    spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
    graph = tft.TFTransformOutput(glob.glob(os.path.join(pushed["pipeline_root"], "Transform", "transform_graph", "*"))[0])
    counted = {}  # admitted key -> its count in the window
    with open(graph.vocabulary_file_by_name(f"{contracts.ADMITTED_IDS_ASSET_PREFIX}{spec.min_count}")) as f:
        for line in f:
            count, key = line.split()
            counted[int(key)] = int(count)
    span = pd.read_csv(os.path.join(pushed["data"], "span-1", "part-000.csv"), dtype=str, keep_default_na=False)

    def ids_by_count(field):
        values = span[field].unique()
        keys = preprocessing.admission_keys(spec.id_fields.index(field),
                                            tf.constant([f"{field}={v}" for v in values])).numpy()
        at_min = [v for v, k in zip(values, keys) if counted.get(k) == spec.min_count]
        below = [v for v, k in zip(values, keys) if k not in counted]  # in the span, under min_count in training
        return at_min, below
    # A field with an id seen exactly min_count times in the training split and one seen fewer.
    field, (at_min, below) = next((f, found) for f in spec.categorical if all(found := ids_by_count(f)))
    at_min, below, values = at_min[0], below[0], span[field].unique()
    unseen = "0badc0de"
    assert unseen not in values

    def transformed(value):
        raw = {name: tf.SparseTensor([[0, 0]], [b"x"], [1, 1]) for name in spec.categorical}
        raw.update({name: tf.SparseTensor([[0, 0]], [1.0], [1, 1]) for name in spec.numerical})
        raw[field] = tf.SparseTensor([[0, 0]], [value.encode()], [1, 1])
        raw[spec.label] = tf.SparseTensor([[0, 0]], tf.constant([0], tf.int64), [1, 1])
        return int(layer(raw)[field].numpy()[0])
    layer = graph.transform_features_layer()  # transform_raw_features is graph-mode only for a TF1 graph
    buckets = id_space.chosen(pushed["pipeline_root"])["hash_buckets"]
    rare = transformed(unseen)
    assert rare == buckets + spec.admitted_fields.index(field)  # the field's rare row, after the table
    assert transformed(below) == rare and transformed(at_min) < buckets

    status, body = _rest(server, f"/v1/models/{MODEL}:predict", {"signature_name": "features", "instances": [
        {"I1": 3, "C1": "05db9164", field: v} for v in (below, unseen, at_min)]})
    assert status == 200
    scores = [p[0] for p in body["predictions"]]
    assert scores[0] == scores[1] != scores[2]


def test_the_features_signature_takes_integers_and_missing_features(pushed, server, in_process):
    # The first guess: integers for float features, most features left out.
    status, body = _rest(server, f"/v1/models/{MODEL}:predict",
                         {"signature_name": "features", "instances": [{"I1": 3, "C1": "05db9164"}]})
    assert status == 200
    example = tf.train.Example()
    example.features.feature["I1"].float_list.value.append(3.0)
    example.features.feature["C1"].bytes_list.value.append(b"05db9164")
    expected = in_process([example.SerializeToString()])
    np.testing.assert_allclose(np.array(body["predictions"]), expected, rtol=1e-5)

    prediction, _ = _stubs(server)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = contracts.FEATURES_SIGNATURE
    request.inputs["I1"].CopyFrom(tf.make_tensor_proto([3], tf.int64))  # cast to float32 by the server
    request.inputs["C1"].CopyFrom(tf.make_tensor_proto(["05db9164"]))
    response = prediction.Predict(request, timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[contracts.OUTPUT_KEY]), expected, rtol=1e-5)


def test_status_and_metadata_in_tf_servings_shapes(pushed, server):
    version = pushed["version"]
    status, body = _rest(server, f"/v1/models/{MODEL}")
    assert status == 200
    assert body == {"model_version_status": [{"version": str(version), "state": "AVAILABLE",
                                              "status": {"error_code": "OK", "error_message": ""}}]}
    assert _rest(server, f"/v1/models/{MODEL}/versions/{version}")[1] == body

    status, body = _rest(server, f"/v1/models/{MODEL}/metadata")
    assert status == 200 and body["model_spec"]["version"] == str(version)
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert signatures["serving_default"]["inputs"]["examples"]["dtype"] == "DT_STRING"
    assert signatures["features"]["inputs"]["I1"]["dtype"] == "DT_FLOAT"
    assert signatures["features"]["inputs"]["C1"]["dtype"] == "DT_STRING"
    assert set(signatures["features"]["defaults"]) == set(signatures["features"]["inputs"])

    prediction, _ = _stubs(server)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction.GetModelMetadata(request, timeout=10)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    assert {"serving_default", "features"} <= set(signature_map.signature_def)


def test_concurrent_requests_batched_together_get_their_own_answers(pushed, server, in_process):
    """Concurrent calls may share one Session.run; each gets its rows back, and a bad one only its error."""
    prediction, _ = _stubs(server)
    rows = pushed["rows"]
    expected = in_process(rows)
    slices = [(i * 7 % 90, i * 7 % 90 + 1 + i) for i in range(16)]
    results, bad = {}, []

    def call(i):
        begin, end = slices[i]
        try:
            response = prediction.Predict(_examples_request(rows[begin:end] if i != 5 else [b"\xff junk"]), timeout=30)
            results[i] = tf.make_ndarray(response.outputs[contracts.OUTPUT_KEY])
        except grpc.RpcError as e:
            bad.append((i, e.code()))

    for _ in range(3):
        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert set(bad) == {(5, grpc.StatusCode.INVALID_ARGUMENT)}
    for i, got in results.items():
        np.testing.assert_allclose(got, expected[slices[i][0]:slices[i][1]], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ labels and hot reload

def test_canary_then_promote_through_the_cli(pushed, server):
    repo, stable = pushed["repo"], pushed["version"]
    url = f"http://127.0.0.1:{server.rest_port}"
    candidate = model_repository.push(repo, MODEL, pushed["source"], {"note": "candidate"}, push_as="canary",
                                      wait=model_status.waiter(url, timeout=120))
    assert model_repository.labels(repo, MODEL) == {"stable": stable, "canary": candidate}
    # The label moved in models.config once the server had the version; its next poll applies it.
    _wait_until(lambda: server.manager.labels(MODEL) == {"stable": stable, "canary": candidate}, timeout=10)
    prediction, _ = _stubs(server)
    by_label = {label: prediction.Predict(_examples_request(pushed["rows"][:3], label=label), timeout=10)
                for label in ("stable", "canary")}
    assert {k: r.model_spec.version.value for k, r in by_label.items()} == {"stable": stable, "canary": candidate}

    # promote moves stable to the canary; the old stable is unloaded.
    argv = ["models", "promote", "--model-repository", repo, "--server", url, "--timeout", "120"]
    assert cli.main(argv) == 0
    assert model_repository.labels(repo, MODEL) == {"stable": candidate, "canary": candidate}
    _wait_until(lambda: server.manager.labels(MODEL) == {"stable": candidate, "canary": candidate})
    _wait_until(lambda: dict(server.manager.status(MODEL))[stable].state == "END")
    assert prediction.Predict(_examples_request(pushed["rows"][:1], label="stable"),
                              timeout=10).model_spec.version.value == candidate
    status, body = _rest(server, f"/v1/models/{MODEL}/versions/{stable}:predict",
                         {"instances": [{"b64": base64.b64encode(pushed["rows"][0]).decode()}]})
    assert status == 404 and "Servable not found" in body["error"]

    # A canary of an older version goes through the CLI the same way.
    assert cli.main(["models", "canary", str(stable), "--model-repository", repo, "--server", url]) == 0
    _wait_until(lambda: server.manager.labels(MODEL) == {"stable": candidate, "canary": stable})


def test_a_push_while_clients_call_fails_no_request(pushed, server):
    repo = pushed["repo"]
    url = f"http://127.0.0.1:{server.rest_port}"
    before = model_repository.serving_version(repo, MODEL)
    prediction, _ = _stubs(server)
    rows = pushed["rows"]
    body = json.dumps({"instances": [{"b64": base64.b64encode(r).decode()} for r in rows[:20]]}).encode()
    stop, failures, versions, calls = threading.Event(), [], set(), [0]

    def grpc_client():
        while not stop.is_set():
            try:
                r = prediction.Predict(_examples_request(rows[:20], label="stable"), timeout=10)
                versions.add(r.model_spec.version.value)
                calls[0] += 1
            except grpc.RpcError as e:
                failures.append(f"gRPC {e.code()}: {e.details()}")

    def rest_client():
        while not stop.is_set():
            status, answer = _rest(server, f"/v1/models/{MODEL}:predict", body)
            calls[0] += 1
            if status != 200:
                failures.append(f"REST {status}: {answer}")

    clients = [threading.Thread(target=grpc_client), threading.Thread(target=rest_client)]
    for c in clients:
        c.start()
    try:
        time.sleep(0.5)
        new = model_repository.push(repo, MODEL, pushed["source"], {"note": "weekly"}, push_as="stable",
                                    wait=model_status.waiter(url, timeout=120))
        _wait_until(lambda: server.manager.labels(MODEL).get("stable") == new)
        time.sleep(0.5)
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert failures == []
    assert calls[0] > 20 and {before, new} <= versions
    assert model_repository.labels(repo, MODEL) == {"stable": new, "canary": new}


def test_a_config_change_in_one_step_keeps_the_label_on_the_old_version_until_the_new_loads(pushed, server):
    """Written without waiting (as with no --server): the label must not fail while the target loads."""
    repo = pushed["repo"]
    stable = model_repository.serving_version(repo, MODEL)
    prediction, _ = _stubs(server)
    new = model_repository.push(repo, MODEL, pushed["source"], {"note": "no wait"})  # labels move at once
    answers = set()
    deadline = time.monotonic() + 120
    while server.manager.labels(MODEL).get("stable") != new and time.monotonic() < deadline:
        answers.add(prediction.Predict(_examples_request(pushed["rows"][:1], label="stable"),
                                       timeout=10).model_spec.version.value)
    assert server.manager.labels(MODEL)["stable"] == new and answers <= {stable, new}


# ------------------------------------------------------------------ bad requests

BAD_REST = [
    ("unknown model", "POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404, "Servable not found"),
    ("unknown version", "POST", f"/v1/models/{MODEL}/versions/7:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(deepfm, 7)"),
    ("unknown label", "POST", f"/v1/models/{MODEL}/labels/blue:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: blue"),
    ("unknown model status", "GET", "/v1/models/nope", None, 404, "Could not find any versions"),
    ("malformed JSON", "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [', 400, "JSON Parse error"),
    ("not an object", "POST", f"/v1/models/{MODEL}:predict", b"[1, 2]", 400, "Is not object"),
    ("malformed base64", "POST", f"/v1/models/{MODEL}:predict", {"instances": [{"b64": "%%%"}]}, 400,
     "Unable to base64 decode"),
    ("bytes that are no tf.Example", "POST", f"/v1/models/{MODEL}:predict",
     {"instances": [{"b64": base64.b64encode(b"\xff\xfe junk").decode()}]}, 400, "parse"),
    ("wrong type", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "features", "instances": [{"I1": "three"}]}, 400, "is not of expected type: float"),
    ("boolean for a number", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "features", "instances": [{"I1": True}]}, 400, "is not of expected type: float"),
    ("unknown feature", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "features", "instances": [{"I1": 1, "colour": "red"}]}, 400, "does not have named input: colour"),
    ("rows with different keys", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "features", "instances": [{"I1": 1}, {"C1": "a"}]}, 400, "keys must be equal"),
    ("empty batch", "POST", f"/v1/models/{MODEL}:predict", {"instances": []}, 400, "No values in 'instances'"),
    ("empty columns", "POST", f"/v1/models/{MODEL}:predict", {"inputs": {"examples": []}}, 400, "empty batch"),
    ("no inputs", "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "features"}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("both forms", "POST", f"/v1/models/{MODEL}:predict", {"instances": [1], "inputs": [1]}, 400, "only one of"),
    ("unknown signature", "POST", f"/v1/models/{MODEL}:predict", {"signature_name": "x", "instances": [1]}, 400,
     'Serving signature name: "x" not found'),
    ("ragged rows", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "features", "inputs": {"I1": [1.0, 2.0], "C1": ["a"]}}, 400, "same number of rows"),
    ("a list where a value goes", "POST", f"/v1/models/{MODEL}:predict",
     {"signature_name": "features", "instances": [{"I1": [1, 2]}]}, 400, "shape"),
    ("bad path", "GET", f"/v1/models/{MODEL}/versions/x", None, 400, "Malformed request"),
    ("classify", "POST", f"/v1/models/{MODEL}:classify", {"examples": [{}]}, 501, "predict signatures only"),
]


@pytest.mark.parametrize("case", BAD_REST, ids=[c[0] for c in BAD_REST])
def test_a_bad_rest_request_gets_tf_servings_error(server, case):
    _, method, path, body, want_status, want_text = case
    status, answer = _rest(server, path, body, method)
    assert status == want_status, answer
    assert set(answer) == {"error"} and want_text in answer["error"], answer


def test_a_body_over_the_limit_is_refused_as_such(server):
    status, answer = _rest(server, f"/v1/models/{MODEL}:predict", b'{"instances": ["' + b"a" * MAX_BODY + b'"]}')
    assert status == 413 and f"exceeds the limit of {MAX_BODY} bytes" in answer["error"]
    # Sent in chunks, without a Content-Length, it is refused the same way.
    chunks = (b"x" * 65536 for _ in range(MAX_BODY // 65536 + 2))
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}:predict",
                                     data=chunks, headers={"Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 413 and "exceeds the limit" in json.loads(refused.value.read())["error"]


def test_bad_grpc_requests_get_tf_servings_codes(pushed, server):
    prediction, models = _stubs(server)

    def code_of(call, request):
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        return error.value.code(), error.value.details()

    unknown = _examples_request(pushed["rows"][:1])
    unknown.model_spec.name = "nope"
    assert code_of(prediction.Predict, unknown)[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(prediction.Predict, _examples_request(pushed["rows"][:1], version=7))[0] == \
        grpc.StatusCode.NOT_FOUND
    assert code_of(prediction.Predict, _examples_request(pushed["rows"][:1], label="blue"))[0] == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(prediction.Predict, _examples_request([b"\xff junk"]))[0] == grpc.StatusCode.INVALID_ARGUMENT
    extra = _examples_request(pushed["rows"][:1])
    extra.inputs["colour"].CopyFrom(tf.make_tensor_proto(["red"]))
    code, details = code_of(prediction.Predict, extra)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {colour}" in details
    wrong = predict_pb2.PredictRequest()
    wrong.model_spec.name = MODEL
    wrong.model_spec.signature_name = contracts.FEATURES_SIGNATURE
    wrong.inputs["I1"].CopyFrom(tf.make_tensor_proto(["three"]))
    assert code_of(prediction.Predict, wrong)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(prediction.Predict, _examples_request([]))[0] == grpc.StatusCode.INVALID_ARGUMENT
    big = _examples_request([b"x" * (MAX_BODY + 10)])
    assert code_of(prediction.Predict, big)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "nope"
    assert code_of(models.GetModelStatus, status)[0] == grpc.StatusCode.NOT_FOUND


# ------------------------------------------------------------------ the README's examples

def _readme_block(language, marker):
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, re.S)
    [block] = [b for b in blocks if marker in b]
    return block


def test_the_readme_curl_and_grpc_examples_work_as_written(server):
    curl = _readme_block("sh", "curl -s").replace("localhost:8501", f"127.0.0.1:{server.rest_port}")
    out = subprocess.run(["bash", "-c", curl], capture_output=True, text=True, timeout=60, check=True).stdout
    predictions = json.loads(out)["predictions"]
    assert len(predictions) == 2 and all(0 < p[0] < 1 for p in predictions)

    client = _readme_block("python", "PredictionServiceStub").replace("localhost:8500",
                                                                      f"127.0.0.1:{server.grpc_port}")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # in this process: TF is imported already
        exec(compile(client, "README.md", "exec"), {})
    probabilities = [float(x) for x in re.findall(r"[0-9.]+(?:e-?\d+)?", printed.getvalue().strip())]
    assert len(probabilities) == 2 and all(0 < p < 1 for p in probabilities)


def test_models_config_is_tf_servings_proto_with_labels(pushed):
    config = models_config.read(os.path.join(pushed["repo"], models_config.CONFIG_FILE))
    [entry] = config.model_config_list.config
    assert entry.name == MODEL and entry.base_path == f"/models/{MODEL}" and entry.model_platform == "tensorflow"
    assert set(entry.version_labels) == {"stable", "canary"}
    assert set(entry.version_labels.values()) <= set(entry.model_version_policy.specific.versions)


def test_the_features_signatures_columns_become_what_parse_example_gives_the_same_rows():
    from deepfm_tfx.trainer_modules import serving
    spec = feature_spec.FeatureSpec(name="t", label="label", categorical=["C1", "C2", "C3"], numerical=["I1", "I2"],
                                    multivalent=[])
    raw_spec = {"C1": tf.io.VarLenFeature(tf.string), "C2": tf.io.VarLenFeature(tf.string),
                "C3": tf.io.VarLenFeature(tf.string), "I1": tf.io.VarLenFeature(tf.float32),
                "I2": tf.io.VarLenFeature(tf.int64)}
    rows = [{"C1": b"a", "C2": b"x", "I1": 1.5, "I2": 7}, {"C2": b"y"}, {"C1": b"c", "I1": 0.0}]
    examples = []
    for row in rows:
        example = tf.train.Example()
        for name, value in row.items():
            feature = example.features.feature[name]
            getattr(feature, {bytes: "bytes_list", float: "float_list", int: "int64_list"}[type(value)]).value.append(value)
        examples.append(example.SerializeToString())
    parsed = tf.io.parse_example(examples, raw_spec)
    # C3 left out entirely (zero rows), missing values as "" and NaN, the int64 feature sent as float32.
    columns = {"C1": tf.constant([r.get("C1", b"") for r in rows]), "C2": tf.constant([r.get("C2", b"") for r in rows]),
               "C3": tf.constant([], tf.string), "I1": tf.constant([r.get("I1", math.nan) for r in rows], tf.float32),
               "I2": tf.constant([r.get("I2", math.nan) for r in rows], tf.float32)}
    given = serving.raw_features_from_columns(columns, raw_spec, spec)
    for name in raw_spec:
        want, got = parsed[name], given[name]
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy(), err_msg=name)
        np.testing.assert_array_equal(got.values.numpy(), want.values.numpy(), err_msg=name)
        assert got.dense_shape.numpy()[0] == want.dense_shape.numpy()[0] == len(rows), name

