"""The simulation's online phase: each week's new model is A/B tested against stable on
simulated live traffic, over loopback, and the experiment's decision is applied.

A `deepfm-tfx serve` process serves the simulation's model repository. Each
week the pipeline pushes its model as canary; this module then starts an
experiment, sends requests of rows drawn from that week's planted truth,
each carrying a user key, draws every row's click from its true click
probability, posts the clicks back, and reads the report until the rule
decides (or the planned rounds run out). Because the truth is known, it also
scores every row with both versions (pinned calls, which bypass the split)
and computes each arm's true expected logloss,
E[-p log q - (1 - p) log(1 - q)] with p the true click probability: the
decision was right when a promoted canary is truly better and a rolled-back
one is not. Some traffic is bad on purpose (no key; malformed, unknown,
duplicate and late outcomes), and the report must count it.

A rolled-back candidate's data is quarantined and its blessing revoked in
ml-metadata, so next week's run neither trains on that week nor warm-starts
from (or compares with) the rejected model.
"""
from __future__ import annotations

import dataclasses
import http.client
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from deepfm_tfx import model_repository
from deepfm_tfx.experiments import config as experiments_config
from deepfm_tfx.experiments import decision, report, statistics
from deepfm_tfx.synthetic import generator

SERVE_LOG = "serve.log"
BAD_OUTCOME_KINDS = ("malformed", "unknown_request", "duplicate", "late")


@dataclasses.dataclass
class OnlineConfig:
    requests_per_round: int = 500
    rows_per_request: int = 100       # a page of candidates per request, each an impression
    rounds: int = 3                   # looks at the data; the rule tests each at alpha / rounds
    users: int = 20_000
    canary_share: float = 0.5
    clients: int = 4
    min_outcomes_per_arm: int = 5000
    feature_log_share: float = 0.2
    seed: int = 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`deepfm-tfx serve` in its own process, as production runs it; stopped with SIGTERM,
    which flushes the prediction logs."""

    def __init__(self, repository: str, experiments_dir: str, log_dir: str):
        self.repository, self.experiments_dir, self.log_dir = repository, experiments_dir, log_dir
        self.rest_port, self.grpc_port = _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.process: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        log = open(os.path.join(self.log_dir, SERVE_LOG), "ab")
        command = [sys.executable, "-c", "import sys; from deepfm_tfx.pipeline.cli import main; sys.exit(main())",
                   "serve", "--model-repository", self.repository, "--experiments-dir", self.experiments_dir,
                   "--host", "127.0.0.1", "--port", str(self.grpc_port), "--rest-api-port", str(self.rest_port),
                   "--model-config-file-poll-wait-seconds", "0.5"]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"deepfm-tfx serve exited with {self.process.returncode}; see "
                                   f"{os.path.join(self.log_dir, SERVE_LOG)}")
            try:
                urllib.request.urlopen(f"{self.url}/v1/models/none", timeout=2)
            except urllib.error.HTTPError:
                return self  # it answers (404: no such model)
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"deepfm-tfx serve did not answer on {self.url} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ------------------------------------------------------------------ traffic

class _Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int):
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
        for attempt in range(2):
            try:
                self.connection.request("POST", path, body, {"Content-Type": "application/json"})
                response = self.connection.getresponse()
                return response.status, json.loads(response.read()), dict(response.getheaders())
            except (http.client.HTTPException, ConnectionError):
                self.connection.close()
                self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def _predict(c: "_Client", path: str, body: bytes, failures: List[str],
             what: str) -> Optional[Tuple[np.ndarray, Dict[str, str]]]:
    """One predict call: its scores and headers, or None with the failure noted."""
    try:
        status, answer, headers = c.post(path, body)
    except (OSError, http.client.HTTPException, ValueError) as e:
        failures.append(f"{what}: {type(e).__name__}: {e}")
        return None
    if status != 200:
        failures.append(f"{what}: HTTP {status} {answer}")
        return None
    return np.ravel(answer["outputs"]).astype(np.float64), headers


def _features_body(columns: Dict[str, np.ndarray], fields: Dict[str, Any]) -> bytes:
    """TF Serving's columnar JSON for the features signature: numbers (NaN missing) and ids."""
    inputs = {}
    for name, values in columns.items():
        if name in generator.NUMERICAL:
            inputs[name] = [float(v) if v != "" else math.nan for v in values]
        else:
            inputs[name] = [str(v) for v in values]
    return json.dumps(dict(fields, signature_name="features", inputs=inputs)).encode()


@dataclasses.dataclass
class Traffic:
    """Every row sent in an experiment: its true click probability, the arm and score it got."""
    p: List[np.ndarray] = dataclasses.field(default_factory=list)
    arm: List[np.ndarray] = dataclasses.field(default_factory=list)
    score: List[np.ndarray] = dataclasses.field(default_factory=list)
    columns: List[Dict[str, np.ndarray]] = dataclasses.field(default_factory=list)
    request_ids: List[str] = dataclasses.field(default_factory=list)
    sent_at: List[float] = dataclasses.field(default_factory=list)


def send_round(url_port: int, model: str, truth, rng: np.random.Generator, cfg: OnlineConfig, traffic: Traffic,
               prefix: str) -> None:
    """One round of requests from `cfg.clients` client threads; each response's arm and scores are kept."""
    n, rows = cfg.requests_per_round, cfg.rows_per_request
    plan = []
    for i in range(n):
        data = truth.sample(rng, rows)
        p = data.pop("_prob")
        plan.append((f"{prefix}-{i:05d}", f"user-{rng.integers(cfg.users)}", data, p))
    answers: List[Optional[Tuple]] = [None] * n
    failures: List[str] = []

    def client(start: int) -> None:
        c = _Client(url_port)
        for i in range(start, n, cfg.clients):
            request_id, user, data, _ = plan[i]
            sent = time.time()
            answer = _predict(c, f"/v1/models/{model}:predict",
                              _features_body(data, {"user_id": user, "request_id": request_id}), failures, request_id)
            if answer is not None:
                scores, headers = answer
                answers[i] = (headers.get("X-Experiment-Arm"), scores, sent)

    _run_clients(client, cfg.clients)
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} requests failed, e.g. {failures[0]}")
    for (request_id, _, data, p), (arm, scores, sent) in zip(plan, answers):
        traffic.p.append(p)
        traffic.arm.append(np.full(len(p), arm, dtype=object))
        traffic.score.append(scores)
        traffic.columns.append(data)
        traffic.request_ids.append(request_id)
        traffic.sent_at.append(sent)


def post_outcomes(port: int, name: str, outcomes: List[Dict[str, Any]], batch: int = 5000) -> Dict[str, int]:
    c = _Client(port)
    totals = {"accepted": 0, "rejected": 0}
    for start in range(0, len(outcomes), batch):
        status, body, _ = c.post(f"/v1/experiments/{name}/outcomes", json.dumps(outcomes[start:start + batch]).encode())
        if status not in (200, 400):
            raise RuntimeError(f"outcomes for {name}: HTTP {status} {body}")
        totals["accepted"] += body.get("accepted", 0)
        totals["rejected"] += body.get("rejected", 0)
    return totals


def _clicks(traffic: Traffic, first_request: int, rng: np.random.Generator) -> List[Dict[str, Any]]:
    """Clicks drawn from the true probabilities of requests from `first_request` on, each
    arriving a little after its impression."""
    out = []
    for i in range(first_request, len(traffic.request_ids)):
        clicked = rng.random(len(traffic.p[i])) < traffic.p[i]
        delays = rng.exponential(30.0, len(clicked))
        for row, (c, d) in enumerate(zip(clicked, delays)):
            out.append({"request_id": traffic.request_ids[i], "row": row, "clicked": bool(c),
                        "time": traffic.sent_at[i] + float(d)})
    return out


def _bad_traffic(port: int, model: str, name: str, traffic: Traffic, window: float) -> None:
    """What the report must count and nothing may crash on: requests without a key, and a
    malformed, an unknown, a duplicate and a late outcome."""
    c = _Client(port)
    columns = traffic.columns[0]
    one = {k: v[:1] for k, v in columns.items()}
    for _ in range(3):
        status, body, _ = c.post(f"/v1/models/{model}:predict", _features_body(one, {}))
        if status != 200:
            raise RuntimeError(f"a request without a key failed: HTTP {status} {body}")
    first, sent = traffic.request_ids[0], traffic.sent_at[0]
    post_outcomes(port, name, [
        {"request_id": first, "row": 1, "clicked": "maybe"},
        {"request_id": "no-such-request", "row": 0, "clicked": True},
        {"request_id": first, "row": 0, "clicked": True, "time": sent + 1},
        {"request_id": first, "row": 2, "clicked": True, "time": sent + window + 600},
    ])


# ------------------------------------------------------------------ the week

def _truth_of_week(run_config, week: int, drift: float):
    profile = getattr(run_config, "profile", None)
    if profile and profile != "small":
        return generator.truth_of_span(run_config.seed, week, drift, profile)
    return generator.truth_of_span(run_config.seed, week, drift)


def _run_clients(client, clients: int) -> None:
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _pinned_scores(port: int, model: str, versions: List[int], traffic: Traffic,
                   clients: int) -> Dict[int, np.ndarray]:
    """Every row scored by each version (pinned calls: no split, not logged)."""
    out: Dict[int, List[Optional[np.ndarray]]] = {v: [None] * len(traffic.columns) for v in versions}
    failures: List[str] = []

    def client(start: int) -> None:
        c = _Client(port)
        for i in range(start, len(traffic.columns), clients):
            body = _features_body(traffic.columns[i], {})
            for version in versions:
                answer = _predict(c, f"/v1/models/{model}/versions/{version}:predict", body, failures,
                                  f"version {version}")
                if answer is not None:
                    out[version][i] = answer[0]

    _run_clients(client, clients)
    if failures:
        raise RuntimeError(f"{len(failures)} pinned calls failed, e.g. {failures[0]}")
    return {v: np.concatenate(scores) for v, scores in out.items()}


def true_logloss(p: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, statistics.EPSILON, 1 - statistics.EPSILON)
    return float(np.mean(-(p * np.log(q) + (1 - p) * np.log1p(-q))))


def _estimate(e: Dict[str, Any]) -> Dict[str, Any]:
    return {k: e.get(k) for k in ("value", "low", "high")}


def run_week(week: int, run_config, summary: Dict[str, Any], server: ServerProcess, cfg: OnlineConfig,
             drift: float, statistics_uri: Optional[str]) -> Dict[str, Any]:
    """The online phase of one week: the experiment, its decision applied, and the truth about it."""
    from deepfm_tfx.serving import model_status

    repo, model = run_config.model_repository, run_config.model_name
    experiments_dir = server.experiments_dir
    labels = model_repository.labels(repo, model)
    stable, canary = labels.get("stable"), labels.get("canary")
    if stable is None or canary in (None, stable):
        return {"experiment": None, "decision": None, "decision_correct": None, "true_logloss": None,
                "serving_version": stable, "online_note": "no canary on trial: nothing to test"}
    name = f"week-{week}"
    rule = experiments_config.Rule(min_outcomes_per_arm=cfg.min_outcomes_per_arm, min_clicks_per_arm=100,
                                   looks=cfg.rounds)
    experiment = experiments_config.Experiment(
        name=name, model=model, model_repository=os.path.abspath(repo), stable_version=stable, canary_version=canary,
        canary_share=cfg.canary_share, feature_log_share=cfg.feature_log_share, rule=rule)
    experiments_config.save(experiments_dir, experiment)
    deadline = time.monotonic() + 60
    while True:  # the server reads experiments every half second
        try:
            with urllib.request.urlopen(f"{server.url}/v1/experiments/{name}", timeout=5) as response:
                if json.load(response).get("routing"):
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start routing experiment {name}")
        time.sleep(0.2)

    truth = _truth_of_week(run_config, week, drift)
    rng = np.random.default_rng([cfg.seed, week])
    traffic = Traffic()
    built, rounds = None, 0
    started = time.monotonic()
    for rounds in range(1, cfg.rounds + 1):
        first = len(traffic.request_ids)
        send_round(server.rest_port, model, truth, rng, cfg, traffic, prefix=f"{name}-r{rounds}")
        if rounds == 1:
            _bad_traffic(server.rest_port, model, name, traffic, experiment.outcome_window_seconds)
        post_outcomes(server.rest_port, name, _clicks(traffic, first, rng))
        time.sleep(experiment.log_flush_seconds + 0.5)  # the prediction log is on disk a second after serving
        built = report.build(experiments_dir, name)
        print(f"   {name} round {rounds}: {len(traffic.request_ids):,} requests; {built['decision']['action']}: "
              f"{built['decision']['why']}", flush=True)
        if built["decision"]["action"] != decision.KEEP_RUNNING:
            break
    online_seconds = time.monotonic() - started

    # The truth, before the losing version is unloaded: both versions on every row.
    p = np.concatenate(traffic.p)
    served_arm = np.concatenate(traffic.arm)
    pinned = _pinned_scores(server.rest_port, model, [stable, canary], traffic, cfg.clients)
    q = {"stable": pinned[stable], "canary": pinned[canary]}
    served = np.concatenate(traffic.score)
    for arm in ("stable", "canary"):  # the split sent each row to the version that scores it so
        mine = served_arm == arm
        np.testing.assert_allclose(served[mine], q[arm][mine], rtol=1e-4, atol=1e-6)
    truth_ll = {arm: true_logloss(p, q[arm]) for arm in ("stable", "canary")}
    truth_ll["bayes"] = true_logloss(p, p)
    truly_better = truth_ll["canary"] < truth_ll["stable"]

    action = built["decision"]["action"]
    applied = None
    if action == decision.KEEP_RUNNING:
        experiment = experiments_config.load(experiments_dir, name)
        experiment.status = experiments_config.STOPPED  # next week's canary replaces this one
        experiments_config.save(experiments_dir, experiment)
    else:
        applied = report.apply(experiments_dir, built, model_status.waiter(server.url, timeout=300))
    correct = None if action == decision.KEEP_RUNNING else (truly_better if action == decision.PROMOTE
                                                             else not truly_better)
    skew = None
    if statistics_uri:
        from deepfm_tfx.experiments import skew as skew_check
        result = skew_check.check(experiments_dir, name, statistics_uri, features_spec=run_config.features)
        skew = {"served_rows": result["served_rows"], "features_compared": result["features_compared"],
                "skewed_features": result["skewed_features"]}
    arms = built["arms"]
    return {
        "experiment": {
            "name": name, "rounds": rounds, "seconds": round(online_seconds, 1),
            "stable_version": stable, "canary_version": canary,
            "requests": {arm: arms[arm]["requests"] for arm in arms},
            "outcomes": {arm: arms[arm]["outcomes"] for arm in arms},
            "online_logloss": {arm: _estimate(arms[arm]["logloss"]) for arm in arms},
            "online_auc": {arm: _estimate(arms[arm]["auc"]) for arm in arms},
            "calibration": {arm: _estimate(arms[arm]["calibration"]) for arm in arms},
            "logloss_difference": _estimate(built["difference"]["logloss"]),
            "counted": {"requests_without_key": built["traffic"]["excluded_requests"].get("no_key", 0),
                        **{k: built["outcomes"][k] for k in ("duplicate", "unknown_request", "late")},
                        "rejected_outcomes": sum(built["outcomes"]["rejected"].values())},
            "why": built["decision"]["why"],
        },
        "decision": action,
        "decision_correct": correct,
        "true_logloss": truth_ll,
        "serving_version": model_repository.serving_version(repo, model),
        "applied": applied,
        "skew": skew,
    }


def revoke(run_config, summary: Dict[str, Any], canary_version: int, reason: str) -> None:
    """After an online rollback: quarantine the week's data and un-bless its model in ml-metadata,
    as the pipeline does for a week a gate refused."""
    from ml_metadata import metadata_store

    from deepfm_tfx.components import span_window
    from deepfm_tfx.pipeline import metadata

    store = metadata_store.MetadataStore(metadata.connection_config(run_config.metadata, run_config.pipeline_root))
    week = [i for i in (summary.get("examples_artifact_id"), summary.get("statistics_artifact_id")) if i]
    span_window.quarantine(store, week, reason)
    record = model_repository.read_record(run_config.model_repository, run_config.model_name, canary_version) or {}
    models = store.get_artifacts_by_uri(record["source_model"]) if record.get("source_model") else []
    model_ids = {m.id for m in models}
    revoked = []
    for blessing in store.get_artifacts_by_type("ModelBlessing"):
        if blessing.custom_properties["current_model_id"].int_value in model_ids:
            blessing.custom_properties["blessed"].int_value = 0
            blessing.custom_properties["revoked"].string_value = reason[:1000]
            revoked.append(blessing)
    if revoked:
        store.put_artifacts(revoked)


def statistics_uri(run_config, summary: Dict[str, Any]) -> Optional[str]:
    """The week's StatisticsGen output (TFDV statistics of its data), for the skew check."""
    if not summary.get("statistics_artifact_id"):
        return None
    from ml_metadata import metadata_store

    from deepfm_tfx.pipeline import metadata

    store = metadata_store.MetadataStore(metadata.connection_config(run_config.metadata, run_config.pipeline_root))
    [artifact] = store.get_artifacts_by_id([summary["statistics_artifact_id"]])
    return artifact.uri


def format_table(table: List[Dict[str, Any]]) -> str:
    """The online phase, one line per week."""
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec)

    lines = [f"{'week':>4}  {'bad':<16} {'stable':<10} {'canary':<10} {'requests s/c':>13} {'online ll s/c (95% CI)':<40} "
             f"{'true ll s/c':>15}  {'decision':<12} {'right':<5} {'serving':<10}"]
    for r in table:
        e = r.get("experiment")
        if not e:
            lines.append(f"{r['week']:>4}  {r['bad'] or '-':<16} {f(r.get('serving_version'), 'd'):<10} "
                         f"{'-':<10} {'-':>13} {'-':<40} {'-':>15}  {'-':<12} {'-':<5} {f(r.get('serving_version'), 'd'):<10}")
            continue
        ll = e["online_logloss"]
        online = (f"{ll['stable']['value']:.4f} [{ll['stable']['low']:.4f},{ll['stable']['high']:.4f}] "
                  f"{ll['canary']['value']:.4f} [{ll['canary']['low']:.4f},{ll['canary']['high']:.4f}]")
        true = f"{r['true_logloss']['stable']:.4f} {r['true_logloss']['canary']:.4f}"
        requests = f"{e['requests']['stable']}/{e['requests']['canary']}"
        right = "-" if r["decision_correct"] is None else ("yes" if r["decision_correct"] else "NO")
        lines.append(f"{r['week']:>4}  {r['bad'] or '-':<16} {e['stable_version']:<10} {e['canary_version']:<10} "
                     f"{requests:>13} {online:<40} {true:>15}  {r['decision']:<12} {right:<5} "
                     f"{f(r.get('serving_version'), 'd'):<10}")
    return "\n".join(lines)
