"""Simulated live traffic over loopback: ranking requests of candidates drawn from a planted
truth, the top ones by the served arm's scores shown, their clicks drawn from each shown row's
true click probability times its position's examination 1/log2(position + 1), and bad traffic
on purpose (no key; malformed, unknown, duplicate and late outcomes; forged clicks on the public
port) that the report must count and the server must refuse."""
from __future__ import annotations

import dataclasses
import http.client
import json
import math
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from deepfm_tfx.contracts import FEATURES_SIGNATURE
from deepfm_tfx.experiments.report import examination
from deepfm_tfx.pipeline.simulation import OnlineConfig
from deepfm_tfx.synthetic import generator


class _Client:
    """One keep-alive HTTP connection."""

    def __init__(self, port: int, headers: Optional[Dict[str, str]] = None):
        self.port = port
        self.headers = dict(headers or {}, **{"Content-Type": "application/json"})
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes) -> Tuple[int, Dict[str, Any], Dict[str, str]]:
        for attempt in range(2):
            try:
                self.connection.request("POST", path, body, self.headers)
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
    return json.dumps(dict(fields, signature_name=FEATURES_SIGNATURE, inputs=inputs)).encode()


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


def shown_rows(scores: np.ndarray, shown: int) -> np.ndarray:
    """The rows a ranker shows, best score first."""
    return np.argsort(-np.asarray(scores), kind="stable")[:shown]


def expected_clicks(p: np.ndarray, scores: np.ndarray, shown: int) -> float:
    """A ranker's expected clicks on one request: sum over its shown rows of p x examination."""
    rows = shown_rows(scores, shown)
    return float(np.sum(p[rows] * examination(np.arange(1, len(rows) + 1))))


def clicks(traffic: Traffic, first_request: int, rng: np.random.Generator, shown: int) -> List[Dict[str, Any]]:
    """One outcome per shown row of the requests from `first_request` on (the event pipeline's
    impressions), clicked with the row's true probability times its position's examination,
    each arriving a little after its impression."""
    out = []
    for i in range(first_request, len(traffic.request_ids)):
        rows = shown_rows(traffic.score[i], shown)
        positions = np.arange(1, len(rows) + 1)
        clicked = rng.random(len(rows)) < traffic.p[i][rows] * examination(positions)
        delays = rng.exponential(30.0, len(rows))
        for row, position, c, d in zip(rows, positions, clicked, delays):
            out.append({"request_id": traffic.request_ids[i], "row": int(row), "position": int(position),
                        "clicked": bool(c), "time": traffic.sent_at[i] + float(d)})
    return out


def bad_traffic(port: int, outcomes_port: int, model: str, name: str, traffic: Traffic, window: float) -> int:
    """What the report must count and nothing may crash on: requests without a key, and a
    malformed, an unknown, a duplicate and a late outcome; and forged clicks posted to the
    public port, which must all be refused. Returns how many forged posts were refused."""
    c = _Client(port)
    columns = traffic.columns[0]
    one = {k: v[:1] for k, v in columns.items()}
    for _ in range(3):
        status, body, _ = c.post(f"/v1/models/{model}:predict", _features_body(one, {}))
        if status != 200:
            raise RuntimeError(f"a request without a key failed: HTTP {status} {body}")
    first, sent = traffic.request_ids[0], traffic.sent_at[0]
    top = shown_rows(traffic.score[0], 3)
    post_outcomes(outcomes_port, name, [
        {"request_id": first, "row": int(top[1]), "clicked": "maybe"},
        {"request_id": "no-such-request", "row": 0, "clicked": True},
        {"request_id": first, "row": int(top[0]), "position": 1, "clicked": True, "time": sent + 1},
        {"request_id": first, "row": int(top[2]), "position": 3, "clicked": True, "time": sent + window + 600},
    ])
    # Forged clicks for every request of the first round, from a client of the model.
    forged = [{"request_id": r, "row": 0, "position": 1, "clicked": True} for r in traffic.request_ids]
    refused = 0
    for start in range(0, len(forged), 100):
        status, _, _ = c.post(f"/v1/experiments/{name}/outcomes", json.dumps(forged[start:start + 100]).encode())
        if status not in (401, 403):
            raise RuntimeError(f"forged outcomes on the public port answered HTTP {status}, not 401/403")
        refused += 1
    return refused


def _run_clients(client, clients: int) -> None:
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pinned_scores(port: int, model: str, versions: List[int], traffic: Traffic,
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
