"""The simulation's online phase for one week: its new model is A/B tested against stable on
simulated live ranking traffic, over loopback, and the experiment's decision is applied.

A `deepfm-tfx serve` process serves the simulation's model repository. Each
week the pipeline pushes its model as canary; this module then starts an
experiment, sends ranking requests (a user and its candidates drawn from that
week's planted truth), shows each request's top rows by the served arm's
scores, draws their clicks from the true click probability times the
position's examination, posts one outcome per shown row to the outcomes
listener, and reads the report after every round until the rule decides (or
the planned rounds run out); the CTR rule is always valid, so reading it after
every round costs nothing. Because the truth is known, it also scores every
request with both versions (pinned calls, which bypass the split) and
computes each version's true expected CTR of shown items: the decision was
right when a promoted canary truly earns more clicks and a rolled-back one
does not. Some traffic is bad on purpose (the report must count it), and
forged clicks on the public port must all be refused.
"""
from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any, Dict, Optional

import numpy as np

from deepfm_tfx import model_repository
from deepfm_tfx.contracts import CANARY, LABELS, SAMPLE_RATIO_MISMATCH, STABLE
from deepfm_tfx.experiments import config as experiments_config
from deepfm_tfx.experiments import decision, report, statistics
from deepfm_tfx.pipeline.simulation import OnlineConfig
from deepfm_tfx.pipeline.simulation.server_process import ServerProcess
from deepfm_tfx.pipeline.simulation.traffic import (Traffic, bad_traffic, clicks, expected_clicks, pinned_scores,
                                                     post_outcomes, send_round)
from deepfm_tfx.synthetic import generator


def _truth_of_week(run_config, week: int, drift: float):
    profile = getattr(run_config, "profile", None)
    if profile and profile != "small":
        return generator.truth_of_span(run_config.seed, week, drift, profile)
    return generator.truth_of_span(run_config.seed, week, drift)


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
    stable, canary = labels.get(STABLE), labels.get(CANARY)
    if stable is None or canary in (None, stable):
        return {"experiment": None, "decision": None, "decision_correct": None, "true_logloss": None,
                "true_ctr_lift": None,
                "serving_version": stable, "online_note": "no canary on trial: nothing to test"}
    name = f"week-{week}"
    # The planned sample: every round's impressions, split by the share.
    planned = int(cfg.rounds * cfg.requests_per_round * cfg.shown * min(cfg.canary_share, 1 - cfg.canary_share))
    rule = experiments_config.Rule(min_outcomes_per_arm=cfg.min_outcomes_per_arm, min_clicks_per_arm=100,
                                   max_outcomes_per_arm=max(planned, cfg.min_outcomes_per_arm))
    experiment = experiments_config.Experiment(
        name=name, model=model, model_repository=os.path.abspath(repo), stable_version=stable, canary_version=canary,
        canary_share=cfg.canary_share, feature_log_share=cfg.feature_log_share, rule=rule)
    experiments_config.save(experiments_dir, experiment)
    deadline = time.monotonic() + 60
    while True:  # the server reads experiments every half second
        try:
            with urllib.request.urlopen(f"{server.outcomes_url}/v1/experiments/{name}", timeout=5) as response:
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
    built, rounds, forged_refused = None, 0, 0
    started = time.monotonic()
    for rounds in range(1, cfg.rounds + 1):
        first = len(traffic.request_ids)
        send_round(server.rest_port, model, truth, rng, cfg, traffic, prefix=f"{name}-r{rounds}")
        if rounds == 1:
            forged_refused = bad_traffic(server.rest_port, server.outcomes_port, model, name, traffic,
                                         experiment.outcome_window_seconds)
        post_outcomes(server.outcomes_port, name, clicks(traffic, first, rng, cfg.shown))
        time.sleep(experiment.log_flush_seconds + 0.5)  # the prediction log is on disk a second after serving
        built = report.build(experiments_dir, name)
        print(f"   {name} round {rounds}: {len(traffic.request_ids):,} requests; {built['decision']['action']}: "
              f"{built['decision']['why']}", flush=True)
        if built["decision"]["action"] != decision.KEEP_RUNNING:
            break
    online_seconds = time.monotonic() - started

    # The truth, before the losing version is unloaded: both versions on every request.
    served_arm = np.concatenate(traffic.arm)
    pinned = pinned_scores(server.rest_port, model, [stable, canary], traffic, cfg.clients)
    q = {STABLE: pinned[stable], CANARY: pinned[canary]}
    served = np.concatenate(traffic.score)
    for arm in LABELS:  # the split sent each row to the version that scores it so
        mine = served_arm == arm
        np.testing.assert_allclose(served[mine], q[arm][mine], rtol=1e-4, atol=1e-6)
    p = np.concatenate(traffic.p)
    truth_ll = {arm: true_logloss(p, q[arm]) for arm in LABELS}
    bounds = np.cumsum([0] + [len(x) for x in traffic.p])
    true_clicks = {arm: float(np.mean([expected_clicks(p[a:b], q[arm][a:b], cfg.shown)
                                       for a, b in zip(bounds[:-1], bounds[1:])])) for arm in LABELS}
    true_lift = true_clicks[CANARY] / true_clicks[STABLE] - 1
    truly_better = true_lift > 0

    action = built["decision"]["action"]
    applied = None
    if action in (decision.KEEP_RUNNING, SAMPLE_RATIO_MISMATCH):
        experiment = experiments_config.load(experiments_dir, name)
        experiment.status = experiments_config.STOPPED  # next week's canary replaces this one
        experiments_config.save(experiments_dir, experiment)
    else:
        applied = report.apply(experiments_dir, built, model_status.waiter(server.url, timeout=300))
    correct = (truly_better if action == decision.PROMOTE else not truly_better if action == decision.ROLL_BACK
               else None)
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
            "users": {arm: arms[arm]["users"] for arm in arms},
            "outcomes": {arm: arms[arm]["outcomes"] for arm in arms},
            "ctr": {arm: _estimate(arms[arm]["ctr"]) for arm in arms},
            "clicks_per_request": {arm: _estimate(arms[arm]["clicks_per_request"]) for arm in arms},
            "ctr_lift": _estimate(built["difference"]["ctr_lift_always_valid"]),
            "online_logloss": {arm: _estimate(arms[arm]["logloss"]) for arm in arms},
            "online_auc": {arm: _estimate(arms[arm]["auc"]) for arm in arms},
            "calibration": {arm: _estimate(arms[arm]["calibration"]) for arm in arms},
            "logloss_difference": _estimate(built["difference"]["logloss"]),
            "counted": {"requests_without_key": built["traffic"]["excluded_requests"].get("no_key", 0),
                        **{k: built["outcomes"][k] for k in ("duplicate", "unknown_request", "late")},
                        "rejected_outcomes": sum(built["outcomes"]["rejected"].values()),
                        "forged_posts_refused": forged_refused},
            "why": built["decision"]["why"],
        },
        "decision": action,
        "decision_correct": correct,
        "true_logloss": truth_ll,
        "true_clicks_per_request": true_clicks,
        "true_ctr_lift": true_lift,
        "serving_version": model_repository.serving_version(repo, model),
        "applied": applied,
        "skew": skew,
    }
