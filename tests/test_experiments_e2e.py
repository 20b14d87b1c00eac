"""An online A/B test end to end over loopback: `deepfm-tfx serve` splits a model's traffic
by user between stable and canary, logs every prediction, takes clicks back on its outcomes
listener (and refuses them on the public port), and `deepfm-tfx experiment report --promote`
decides and moves the labels. The models are tiny SavedModels whose click probabilities are
known, so each decision has a right answer."""
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from deepfm_tfx import model_repository as mr
from deepfm_tfx.experiments import config, prediction_log, split
from deepfm_tfx.experiments.router import ExperimentRouter
from deepfm_tfx.pipeline import cli
from deepfm_tfx.serving import model_status
from deepfm_tfx.serving.server import ModelServer

pytestmark = pytest.mark.e2e

MODEL = "ctr"
TRUE_W, TRUE_B = 2.5, -1.5  # the world: P(click | x) = sigmoid(2.5 x - 1.5), about 0.31 on average
BASE_CTR = 0.3116


class _Tiny(tf.Module):
    """P(click) = sigmoid(w x + b), with TF Serving's two signatures: raw features and tf.Examples."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = tf.Variable(w), tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.string)])
    def features(self, x, c):
        return {"click_probability": tf.sigmoid(self.w * x + self.b)[:, None]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def examples(self, examples):
        parsed = tf.io.parse_example(examples, {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
                                                "c": tf.io.FixedLenFeature([], tf.string, default_value="")})
        return self.features(parsed["x"], parsed["c"])


def _probability(w, b, x):
    return 1 / (1 + np.exp(-(w * np.asarray(x) + b)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiments")
    saved = {}
    for name, (w, b) in {"weak": (1.0, -1.0), "truth": (TRUE_W, TRUE_B),
                         "flat": (0.0, math.log(BASE_CTR / (1 - BASE_CTR)))}.items():
        module = _Tiny(w, b)
        path = str(tmp / name)
        tf.saved_model.save(module, path, signatures={"serving_default": module.examples,
                                                      "features": module.features})
        saved[name] = (path, w, b)
    repo, experiments = str(tmp / "repo"), str(tmp / "experiments")
    versions = {"weak": mr.push(repo, MODEL, saved["weak"][0], {})}
    versions["truth"] = mr.push(repo, MODEL, saved["truth"][0], {}, push_as="canary")
    server = ModelServer(repo, grpc_port=0, rest_port=0, poll_seconds=0.1, outcomes_port=0,
                         router=ExperimentRouter(experiments, poll_seconds=0.1)).start()
    url = f"http://127.0.0.1:{server.rest_port}"
    model_status.waiter(url, timeout=60, poll=0.1)(MODEL, versions["truth"])
    yield {"tmp": tmp, "repo": repo, "experiments": experiments, "server": server, "url": url, "saved": saved,
           "versions": versions, "outcomes_url": f"http://127.0.0.1:{server.outcomes_port}"}
    server.stop()


def _post(url, path, body, headers=None):
    """(status, JSON answer, response headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), dict(e.headers)


def _get(url, path):
    try:
        with urllib.request.urlopen(url + path, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _cli(capsys, *argv):
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _start(world, capsys, name, *flags):
    code, out, err = _cli(capsys, "experiment", "start", name, "--experiments-dir", world["experiments"],
                          "--model-repository", world["repo"], "--model-name", MODEL, "--min-outcomes", "500",
                          "--min-clicks", "30", *flags)
    assert code == 0, err
    deadline = time.monotonic() + 30
    while not _get(world["outcomes_url"], f"/v1/experiments/{name}")[1].get("routing"):
        assert time.monotonic() < deadline, "the server never picked the experiment up"
        time.sleep(0.05)


def _traffic(world, name, requests=500, rows=8, users=150, seed=0, user_prefix="user"):
    """Requests of `rows` rows (a ranking request's candidates) from `users` users over REST, in 4
    client threads; returns what each answer said: request id, user, arm, version-free scores and
    the rows' x."""
    rng = np.random.default_rng(seed)
    plan = [(f"{user_prefix}-{rng.integers(users)}", rng.normal(size=rows), rng.choice(["a", "b"], size=rows))
            for _ in range(requests)]
    answers = [None] * requests

    def client(start):
        for i in range(start, requests, 4):
            user, x, c = plan[i]
            status, body, headers = _post(world["url"], f"/v1/models/{MODEL}:predict", {
                "signature_name": "features", "user_id": user,
                "inputs": {"x": x.tolist(), "c": c.tolist()}})
            assert status == 200, body
            answers[i] = {"request_id": headers["X-Request-Id"], "user": user, "arm": headers["X-Experiment-Arm"],
                          "scores": np.ravel(body["outputs"]), "x": x}

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _clicks(answers, seed=1):
    rng = np.random.default_rng(seed)
    return [{"request_id": a["request_id"], "row": r, "clicked": bool(rng.random() < p)}
            for a in answers for r, p in enumerate(_probability(TRUE_W, TRUE_B, a["x"]))]


def _report(world, capsys, name, *flags):
    code, out, err = _cli(capsys, "experiment", "report", name, "--experiments-dir", world["experiments"], "--json",
                          *flags)
    assert code == 0, err
    return json.loads(out)


def test_an_experiment_over_loopback_splits_by_user_logs_everything_and_promotes_the_better_canary(world, capsys):
    url, versions, saved, events = world["url"], world["versions"], world["saved"], world["outcomes_url"]
    _start(world, capsys, "exp1", "--feature-log-share", "0.5", "--traffic", "items", "--metric", "logloss")
    answers = _traffic(world, "exp1")

    # The split: a user always gets the arm its hash says, and that arm's model answered.
    for a in answers:
        assert a["arm"] == split.arm_of(a["user"], "exp1", 0.5)
        _, w, b = saved["truth" if a["arm"] == "canary" else "weak"]
        np.testing.assert_allclose(a["scores"], _probability(w, b, a["x"]), rtol=1e-5)
    assert {a["arm"] for a in answers} == {"stable", "canary"}

    # Traffic with no key is served by stable and counted; a pinned call bypasses the split; gRPC is routed too.
    for _ in range(3):
        status, body, headers = _post(url, f"/v1/models/{MODEL}:predict",
                                      {"signature_name": "features", "instances": [{"x": 0.5, "c": "a"}]})
        assert status == 200 and headers["X-Experiment-Arm"] == "excluded (no_key)"
        np.testing.assert_allclose(np.ravel(body["predictions"]), _probability(1.0, -1.0, [0.5]), rtol=1e-5)
    status, body, headers = _post(url, f"/v1/models/{MODEL}/versions/{versions['truth']}:predict",
                                  {"signature_name": "features", "user_id": "user-1",
                                   "instances": [{"x": 0.5, "c": "a"}]})
    assert status == 200 and "X-Request-Id" not in headers
    stub = prediction_service_pb2_grpc.PredictionServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{world['server'].grpc_port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    example = tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[0.25])),
        "c": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"b"]))}))
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto([example.SerializeToString()]))
    response, call = stub.Predict.with_call(request, metadata=(("user_id", "grpc-user"), ("request_id", "g-1")),
                                            timeout=30)
    trailing = dict(call.trailing_metadata())
    assert trailing["x-request-id"] == "g-1"
    assert trailing["x-experiment-arm"] == split.arm_of("grpc-user", "exp1", 0.5)
    assert response.model_spec.version.value == versions["truth" if trailing["x-experiment-arm"] == "canary"
                                                         else "weak"]

    # Clicks come back over REST in batches, and the last 100 requests' in a file; plus bad ones.
    clicks = _clicks(answers)
    by_rest, by_file = clicks[:-800], clicks[-800:]
    for start in range(0, len(by_rest), 1000):
        status, answer, _ = _post(events, "/v1/experiments/exp1/outcomes", {"outcomes": by_rest[start:start + 1000]})
        assert status == 200 and answer["rejected"] == 0
    first = answers[0]["request_id"]
    status, answer, _ = _post(events, "/v1/experiments/exp1/outcomes", [
        {"request_id": first, "row": 0, "clicked": False},                            # duplicate
        {"request_id": "never-served", "clicked": True},                              # unknown request id
        {"request_id": answers[1]["request_id"], "row": 7, "clicked": "sometimes"},   # malformed
        {"request_id": "g-1", "clicked": True, "time": time.time() + 7200},  # late
    ])
    assert status == 200 and (answer["accepted"], answer["rejected"]) == (3, 1)
    assert "clicked must be" in answer["errors"][0]
    assert _post(events, "/v1/experiments/exp1/outcomes", b"{not json")[0] == 400
    assert _post(events, "/v1/experiments/exp1/outcomes", [{"clicked": 1}])[0] == 400
    # As a client would try it: 100,000 nested arrays are a malformed request, not a server error.
    deep = b"[" * 100_000 + b"]" * 100_000
    for where, path in ((events, "/v1/experiments/exp1/outcomes"), (url, f"/v1/models/{MODEL}:predict")):
        status, answer, _ = _post(where, path, deep)
        assert status == 400 and "nested too deeply" in answer["error"], (path, status, answer)
    # A 404 names what the client sent, never the server's folders.
    status, answer, _ = _post(events, "/v1/experiments/no-such-experiment/outcomes", [{"request_id": "r", "clicked": 1}])
    assert status == 404 and answer["error"] == "no experiment 'no-such-experiment'"
    assert _get(events, "/v1/experiments/no-such-experiment") == (404, answer)
    outcome_file = world["tmp"] / "clicks.csv"
    outcome_file.write_text("request_id,row,clicked\n" + "".join(
        f"{c['request_id']},{c['row']},{int(c['clicked'])}\n" for c in by_file))
    code, out, _ = _cli(capsys, "experiment", "outcomes", "exp1", str(outcome_file),
                        "--experiments-dir", world["experiments"])
    assert code == 0 and "800 outcomes added, 0 rejected" in out

    world["server"].router.flush()
    report = _report(world, capsys, "exp1")
    arms, oc = report["arms"], report["outcomes"]
    assert (oc["duplicate"], oc["unknown_request"], oc["late"]) == (1, 1, 1)
    assert oc["rejected"] == {"clicked must be true/false or 1/0": 1,  # stored and counted, not joined
                              "request_id must be a non-empty string of at most 256 characters": 1}
    assert report["traffic"]["excluded_requests"] == {"no_key": 3}
    # No logged prediction lost: every row answered inside the experiment is in the log.
    assert arms["stable"]["requests"] + arms["canary"]["requests"] == len(answers) + 1
    assert report["traffic"]["predictions_logged"] == 8 * len(answers) + 1 + 3
    assert arms["stable"]["outcomes"] + arms["canary"]["outcomes"] == 8 * len(answers)  # g-1's click was late
    assert (arms["stable"]["version"], arms["canary"]["version"]) == (versions["weak"], versions["truth"])
    for metric in ("ctr", "logloss", "auc", "calibration"):
        for arm in ("stable", "canary"):
            e = arms[arm][metric]
            assert e["low"] < e["value"] < e["high"], (arm, metric, e)
    assert report["difference"]["logloss"]["high"] < 0
    # Both models rank by x, so their AUCs differ by noise alone.
    assert report["difference"]["auc"]["low"] < 0 < report["difference"]["auc"]["high"]
    assert report["decision"]["action"] == "promote", report["decision"]

    code, out, _ = _cli(capsys, "experiment", "report", "exp1", "--experiments-dir", world["experiments"],
                        "--promote", "--server", url)
    assert code == 0 and "decision: PROMOTE" in out and "online logloss" in out
    assert mr.labels(world["repo"], MODEL) == {"stable": versions["truth"], "canary": versions["truth"]}
    assert config.load(world["experiments"], "exp1").status == config.DECIDED
    deadline = time.monotonic() + 30
    while _get(events, "/v1/experiments/exp1")[1]["routing"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status, _, headers = _post(url, f"/v1/models/{MODEL}:predict",
                               {"signature_name": "features", "user_id": "u", "instances": [{"x": 0.0, "c": ""}]})
    assert status == 200 and "X-Experiment" not in headers  # decided: no more splitting
    code, _, err = _cli(capsys, "experiment", "report", "exp1", "--experiments-dir", world["experiments"], "--promote")
    assert code == 2 and "decided already" in err


def test_a_worse_canary_is_rolled_back_and_a_keyless_request_can_be_refused(world, capsys):
    url, versions = world["url"], world["versions"]
    versions["flat"] = mr.push(world["repo"], MODEL, world["saved"]["flat"][0], {}, push_as="canary",
                               wait=model_status.waiter(url, timeout=60, poll=0.1))
    code, _, err = _cli(capsys, "experiment", "start", "exp1", "--experiments-dir", world["experiments"],
                        "--model-repository", world["repo"], "--model-name", MODEL)
    assert code == 2 and "exists" in err
    _start(world, capsys, "exp2", "--on-missing-key", "reject", "--feature-log-share", "0", "--traffic", "items",
           "--metric", "logloss")
    code, _, err = _cli(capsys, "experiment", "start", "exp3", "--experiments-dir", world["experiments"],
                        "--model-repository", world["repo"], "--model-name", MODEL)
    assert code == 2 and "already runs" in err
    status, body, _ = _post(url, f"/v1/models/{MODEL}:predict",
                            {"signature_name": "features", "instances": [{"x": 0.5, "c": "a"}]})
    assert status == 400 and "splits ctr's traffic by 'user_id'" in body["error"]

    answers = _traffic(world, "exp2", requests=300, seed=2)
    clicks = _clicks(answers, seed=3)
    status, answer, _ = _post(world["outcomes_url"], "/v1/experiments/exp2/outcomes", {"outcomes": clicks})
    assert status == 200 and answer["accepted"] == len(clicks)
    world["server"].router.flush()
    report = _report(world, capsys, "exp2", "--promote", "--server", url)
    assert report["decision"]["action"] == "roll back", report["decision"]
    assert report["difference"]["logloss"]["low"] > 0
    assert report["applied"]["labels"] == {"stable": versions["truth"], "canary": versions["truth"]}
    assert mr.labels(world["repo"], MODEL) == {"stable": versions["truth"], "canary": versions["truth"]}
    assert versions["flat"] in mr.versions(world["repo"], MODEL)  # nothing deleted, only unloaded
    assert mr.held(world["repo"], MODEL) is None  # an experiment's rollback does not hold the next push


def test_the_skew_check_compares_what_was_served_with_the_training_statistics(world, capsys, tmp_path):
    import pandas as pd
    import tensorflow_data_validation as tfdv

    rng = np.random.default_rng(4)
    # Training saw x from the same N(0, 1) as the traffic, but c mostly "a": the traffic's c is 50/50.
    training = pd.DataFrame({"x": rng.normal(size=5000), "c": rng.choice(["a", "b"], 5000, p=[0.9, 0.1])})
    stats = tmp_path / "FeatureStats.pb"
    stats.write_bytes(tfdv.generate_statistics_from_dataframe(training).SerializeToString())
    code, out, err = _cli(capsys, "experiment", "skew", "exp1", "--experiments-dir", world["experiments"],
                          "--training-statistics", str(stats), "--json")
    assert code == 0, err
    result = json.loads(out)
    logged = sum("features" in r for r in prediction_log.read(
        config.predictions_dir(world["experiments"], "exp1"), "predictions"))
    assert result["served_rows"] == logged > 1000  # half the requests, by --feature-log-share 0.5
    assert result["skewed_features"] == ["c"]
    assert result["measurements"]["c"]["value"] == pytest.approx(0.4, abs=0.05)
    assert not result["measurements"]["x"]["skewed"]


def test_a_ranking_experiment_promotes_the_better_ranker_whatever_forged_clicks_say(world, capsys):
    """Each arm ranks 100 candidates and shows its top 10; clicks follow the truth times the position's
    examination. Stable ranks at random (a flat model), the canary by the truth: a flood of forged clicks
    for stable on the public port is refused, counted, and does not change the decision."""
    url, events, versions, repo = world["url"], world["outcomes_url"], world["versions"], world["repo"]
    wait = model_status.waiter(url, timeout=60, poll=0.1)
    if "flat" not in versions:
        versions["flat"] = mr.push(repo, MODEL, world["saved"]["flat"][0], {}, push_as="canary", wait=wait)
    mr.promote(repo, MODEL, versions["flat"], wait)
    mr.canary(repo, MODEL, versions["truth"], wait)
    deadline = time.monotonic() + 30
    for label, version in (("stable", versions["flat"]), ("canary", versions["truth"])):
        # Each label is on its version in the server too, so no request is served off the experiment's versions.
        while _get(url, f"/v1/models/{MODEL}/labels/{label}")[1].get("model_version_status", [{}])[0].get(
                "version") != str(version):
            assert time.monotonic() < deadline, f"the server never moved {label} to {version}"
            time.sleep(0.05)
    _start(world, capsys, "rank1", "--max-outcomes", "20000")  # the defaults: ranking traffic, the ctr rule

    answers = _traffic(world, "ranking", requests=300, rows=100, users=200, seed=5, user_prefix="ranker")
    refused_before = _get(events, "/v1/experiments/rank1")[1]["refused_callers"]
    genuine, forged = [], []
    rng = np.random.default_rng(6)
    for a in answers:
        shown = np.argsort(-a["scores"], kind="stable")[:10]
        p = _probability(TRUE_W, TRUE_B, a["x"][shown]) / np.log2(np.arange(1, 11) + 1)
        clicked = rng.random(10) < p
        genuine += [{"request_id": a["request_id"], "row": int(r), "position": k + 1, "clicked": bool(c)}
                    for k, (r, c) in enumerate(zip(shown, clicked))]
        # The forger claims stable's shown rows were all clicked and the canary's none.
        forged += [{"request_id": a["request_id"], "row": int(r), "position": k + 1,
                    "clicked": a["arm"] == "stable"} for k, r in enumerate(shown)]
    posts = 0
    for start in range(0, len(forged), 500):
        for headers in ({}, {"Authorization": "Bearer guessed"}):
            status, answer, _ = _post(url, "/v1/experiments/rank1/outcomes", {"outcomes": forged[start:start + 500]},
                                      headers)
            assert status == 403 and set(answer) == {"error"}, (status, answer)  # TF Serving's error shape
            posts += 1
    assert _get(url, "/v1/experiments/rank1")[0] == 403  # status too: it holds the experiment's config
    status, answer, _ = _post(events, "/v1/experiments/rank1/outcomes", genuine)
    assert status == 200 and answer["accepted"] == len(genuine) == 10 * len(answers)
    refused = _get(events, "/v1/experiments/rank1")[1]["refused_callers"]
    assert refused["untrusted_listener"] - refused_before.get("untrusted_listener", 0) == posts + 1

    world["server"].router.flush()
    report = _report(world, capsys, "rank1")
    stable, canary = report["arms"]["stable"], report["arms"]["canary"]
    assert report["traffic_kind"] == "ranking" and report["outcomes"]["received"] == len(genuine)
    assert stable["outcomes"] + canary["outcomes"] == len(genuine)  # shown rows only; the rest were not shown
    for arm in ("stable", "canary"):  # assignment by user, stable across requests: the SRM test counts users
        assert report["arms"][arm]["users"] == len({a["user"] for a in answers if a["arm"] == arm})
        assert all(split.arm_of(a["user"], "rank1", 0.5) == a["arm"] for a in answers)
    assert report["decision"]["checks"][0]["check"] == "sample ratio" and report["decision"]["checks"][0]["passed"]
    lift = report["difference"]["ctr_lift_always_valid"]
    assert lift["low"] > 0.5, lift  # the truth's top 10 are clicked far more often than 10 random candidates
    assert canary["clicks_per_request"]["low"] > stable["clicks_per_request"]["high"]
    assert report["decision"]["action"] == "promote", report["decision"]
    code, out, _ = _cli(capsys, "experiment", "report", "rank1", "--experiments-dir", world["experiments"],
                        "--promote", "--server", url)
    assert code == 0 and "decision: PROMOTE" in out and "CTR of shown items" in out
    assert mr.labels(repo, MODEL) == {"stable": versions["truth"], "canary": versions["truth"]}
