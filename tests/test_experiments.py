"""The A/B test's parts, without TensorFlow: the split's stability, the interval arithmetic
against known cases, the outcomes join's late/duplicate/unknown handling, the decision rule,
and the prediction log's rotation, retention and crash durability."""
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats as scipy_stats

from deepfm_tfx.experiments import config, decision, outcomes, prediction_log, split, statistics
from deepfm_tfx.experiments.config import Experiment, ExperimentError, Rule
from deepfm_tfx.experiments.router import EXCLUDED_NO_KEY, ExperimentRouter
from deepfm_tfx.serving.errors import ServingError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ split

def test_the_same_key_gets_the_same_arm_in_every_process_whatever_pythons_hash_seed():
    keys = [f"user-{i}" for i in range(2000)]
    here = [split.arm_of(k, "week-7", 0.3) for k in keys]
    assert here == [split.arm_of(k, "week-7", 0.3) for k in keys]
    code = ("import json, sys; from deepfm_tfx.experiments import split; "
            "print(json.dumps([split.arm_of(f'user-{i}', 'week-7', 0.3) for i in range(2000)]))")
    for seed in ("1", "987"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env=dict(os.environ, PYTHONHASHSEED=seed)).stdout
        assert json.loads(out) == here
    # Pinned: SHA-256 of "week-7\0user-1" and "week-7\0user-2" (a changed hash would reshuffle live users).
    assert split.bucket("user-1", "week-7") == pytest.approx(0.38750998, abs=1e-8)
    assert split.bucket("user-2", "week-7") == pytest.approx(0.67623107, abs=1e-8)


def test_the_canary_gets_its_share_raising_it_only_moves_keys_to_canary_and_salts_are_independent():
    keys = [f"u{i}" for i in range(20_000)]
    at_10 = np.array([split.arm_of(k, "exp", 0.1) == "canary" for k in keys])
    at_30 = np.array([split.arm_of(k, "exp", 0.3) == "canary" for k in keys])
    assert abs(at_10.mean() - 0.1) < 4 * math.sqrt(0.1 * 0.9 / len(keys))
    assert abs(at_30.mean() - 0.3) < 4 * math.sqrt(0.3 * 0.7 / len(keys))
    assert not (at_10 & ~at_30).any()  # nobody in the canary at 10% leaves it at 30%
    other = np.array([split.arm_of(k, "another-exp", 0.3) == "canary" for k in keys])
    both = (at_30 & other).mean()
    assert abs(both - 0.09) < 4 * math.sqrt(0.09 * 0.91 / len(keys))  # independent: 0.3 x 0.3


# ------------------------------------------------------------------ intervals

def test_difference_in_proportions_matches_the_hand_computed_interval_and_scipys_welch_test():
    stable = np.r_[np.ones(60), np.zeros(440)]   # 60 clicks in 500
    canary = np.r_[np.ones(45), np.zeros(455)]   # 45 clicks in 500
    a, b = statistics.mean(canary), statistics.mean(stable)
    diff = statistics.difference(a, b)
    # By hand: p(1-p) n/(n-1) / n per arm, summed; 95% -> z = 1.959964.
    se = math.sqrt(0.09 * 0.91 / 499 + 0.12 * 0.88 / 499)
    assert diff.value == pytest.approx(-0.03, abs=1e-12)
    assert diff.se == pytest.approx(se, rel=1e-12)
    assert (diff.low, diff.high) == (pytest.approx(-0.03 - 1.959964 * se, abs=1e-6),
                                     pytest.approx(-0.03 + 1.959964 * se, abs=1e-6))
    assert (round(diff.low, 5), round(diff.high, 5)) == (-0.06799, 0.00799)
    welch = scipy_stats.ttest_ind(canary, stable, equal_var=False)
    assert diff.se == pytest.approx(-0.03 / welch.statistic, rel=1e-9)
    assert diff.p_value == pytest.approx(2 * scipy_stats.norm.sf(0.03 / se), rel=1e-9)
    assert a.value == 0.09 and a.n == 500


def test_clustering_by_key_does_not_count_a_users_repeated_rows_as_independent():
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.2).astype(float)
    once = statistics.mean(y, clusters=np.arange(3000))
    twice = statistics.mean(np.repeat(y, 2), clusters=np.repeat(np.arange(3000), 2))
    naive = statistics.mean(np.repeat(y, 2))
    assert twice.value == once.value and twice.se == pytest.approx(once.se, rel=1e-12)
    assert naive.se == pytest.approx(once.se / math.sqrt(2), rel=1e-3)  # what ignoring the keys would claim


def test_delong_auc_and_its_variance_match_brute_force_placements():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.35, 0.6, 0.7, 0.2, 0.35, 0.1, 0.4, 0.55, 0.3, 0.05])
    pos, neg = scores[labels == 1], scores[labels == 0]
    beats = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = beats.mean(axis=1), beats.mean(axis=0)
    expected_var = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    estimate = statistics.auc(labels, scores)
    assert estimate.value == pytest.approx(beats.mean(), abs=1e-12)
    assert estimate.value == pytest.approx(30.5 / 35, abs=1e-12)  # 30 wins and one tie of 5 x 7 pairs
    assert estimate.se == pytest.approx(math.sqrt(expected_var), rel=1e-12)


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(11)
    covered_diff = covered_auc = covered_p99 = 0
    reps = 300
    for _ in range(reps):
        x = rng.normal(size=2000)
        p = 1 / (1 + np.exp(-(x - 1)))
        y = (rng.random(2000) < p).astype(float)
        half = len(y) // 2
        d = statistics.difference(statistics.mean(y[:half]), statistics.mean(y[half:]))
        covered_diff += d.low <= 0 <= d.high  # both halves have the same CTR
        a = statistics.auc(y, x)
        true_auc = 0.7416  # of score x for this model, from 4M rows
        covered_auc += a.low <= true_auc <= a.high
        q = statistics.quantile(rng.random(1000), 0.99)
        covered_p99 += q.low <= 0.99 <= q.high
    for covered in (covered_diff, covered_auc, covered_p99):
        assert 0.91 <= covered / reps <= 0.99, covered / reps


def test_calibration_is_mean_score_over_ctr_and_unknowns_stay_unknown():
    cal = statistics.ratio([0.2, 0.2, 0.2, 0.2], [1, 0, 0, 0])
    assert cal.value == pytest.approx(0.8)
    assert not statistics.ratio([0.1, 0.2], [0, 0]).known  # no clicks: no calibration
    assert not statistics.auc([1, 1, 1], [0.1, 0.2, 0.3]).known
    assert statistics.difference(statistics.auc([1, 1], [0.1, 0.2]), statistics.mean([1.0, 0.0])).to_dict()["se"] is None


# ------------------------------------------------------------------ outcomes and the join

def _experiment(**kwargs):
    fields = dict(name="exp", model="deepfm", model_repository="/repo", stable_version=1, canary_version=2,
                  outcome_window_seconds=100.0, traffic="items", rule=Rule(metric="logloss"))
    fields.update(kwargs)
    return Experiment(**fields).check()


T = 1_700_000_000.0  # prediction times, seconds since the epoch


def _prediction(request_id, row=0, arm="stable", version=None, score=0.3, at=T, key="k", **extra):
    version = version if version is not None else (1 if arm == "stable" else 2)
    return dict({"request_id": request_id, "row": row, "arm": arm, "version": version, "score": score,
                 "time": at, "key": key, "latency_ms": 2.0}, **extra)


def _outcome(request_id, clicked=1, row=0, at=T + 10):
    stored, why = outcomes.check({"request_id": request_id, "row": row, "clicked": clicked, "time": at}, T + 1000, "t")
    assert why is None
    return stored


def test_the_join_counts_late_duplicate_unknown_early_and_rejected_outcomes_and_joins_the_rest():
    predictions = [
        _prediction("a"), _prediction("b", arm="canary"), _prediction("b", row=1, arm="canary"),
        _prediction("c"), _prediction("d"), _prediction("e", at=T + 950),   # e: its window is still open
        _prediction("a"),                                                    # the client reused an id
        _prediction("f", version=7),                                         # served after a label moved
        _prediction("g", arm=None, key=None, excluded=EXCLUDED_NO_KEY),
    ]
    received = [
        _outcome("a", 1), _outcome("a", 0),               # duplicate: the first counts
        _outcome("b", 1), _outcome("b", 0, row=1),
        _outcome("zzz"),                                   # no such prediction
        _outcome("b", row=5),                              # no such row
        _outcome("c", at=T + 101),                    # late: after the 100 s window
        _outcome("d", at=T - 3600),                   # dated long before its prediction
        outcomes.rejected_record({"clicked": 1}, "request_id must be a non-empty string", T + 1000, "t"),
    ]
    result = outcomes.join(_experiment(), predictions, received, as_of=T + 1000)
    oc = result.counts["outcomes"]
    assert (oc["received"], oc["joined"], oc["duplicate"], oc["unknown_request"], oc["late"],
            oc["before_prediction"]) == (9, 3, 1, 2, 1, 1)
    assert oc["rejected"] == {"request_id must be a non-empty string": 1}
    # c (late) and d (early) count as non-clicks once their window closed; e is pending.
    assert (oc["implicit_negatives"], oc["pending"]) == (2, 1)
    assert result.counts["duplicate_predictions"] == 1 and result.counts["off_version"] == 1
    assert result.counts["excluded"] == {EXCLUDED_NO_KEY: 1}
    stable, canary = result.arms["stable"], result.arms["canary"]
    assert stable.labels.tolist() == [1, 0, 0] and canary.labels.tolist() == [1, 0]
    assert (stable.requests, canary.requests, stable.implicit_negatives) == (4, 1, 2)

    pending = outcomes.join(_experiment(unreported="pending"), predictions, received, as_of=T + 1000)
    assert pending.arms["stable"].labels.tolist() == [1]
    assert pending.counts["outcomes"]["pending"] == 3


@pytest.mark.parametrize("item, why", [
    ("just text", "not a JSON object"),
    ({"clicked": True}, "request_id"),
    ({"request_id": "", "clicked": True}, "request_id"),
    ({"request_id": "r", "clicked": "yes"}, "clicked"),
    ({"request_id": "r", "clicked": 2}, "clicked"),
    ({"request_id": "r", "clicked": 1, "row": -1}, "row"),
    ({"request_id": "r", "clicked": 1, "row": True}, "row"),
    ({"request_id": "r", "clicked": 1, "time": "yesterday"}, "time"),
    ({"request_id": "r" * 300, "clicked": 1}, "request_id"),
])
def test_a_malformed_outcome_is_rejected_with_its_reason(item, why):
    stored, reason = outcomes.check(item, 5.0, "t")
    assert stored is None and why in reason


def test_outcome_bodies_and_files_in_every_accepted_shape(tmp_path):
    one = {"request_id": "r1", "clicked": True, "time": "2026-01-01T00:00:00Z"}
    assert outcomes.items_of_body(json.dumps({"outcomes": [one]}).encode()) == [one]
    assert outcomes.items_of_body(json.dumps([one, one]).encode()) == [one, one]
    assert outcomes.items_of_body(json.dumps(one).encode()) == [one]
    assert outcomes.check(one, 0.0, "t")[0]["time"] == 1767225600.0
    for bad in (b"", b"{not json", b"[]", b"42"):
        with pytest.raises(outcomes.OutcomeError):
            outcomes.items_of_body(bad)
    (tmp_path / "o.csv").write_text("request_id,row,clicked,time\nr1,0,1,12.5\nr2,,false,\nr3,1,maybe,\n")
    items = list(outcomes.items_of_file(str(tmp_path / "o.csv")))
    checked = [outcomes.check(i, 0.0, "f") for i in items]
    assert [c[0]["clicked"] if c[0] else None for c in checked] == [1, 0, None]
    assert checked[0][0]["time"] == 12.5 and checked[1][0]["row"] == 0
    (tmp_path / "o.jsonl").write_text('{"request_id": "r1", "clicked": 0}\nnot json\n')
    items = list(outcomes.items_of_file(str(tmp_path / "o.jsonl")))
    assert items[1] == "not json" and outcomes.check(items[1], 0, "f")[1] == "not a JSON object"
    (tmp_path / "o.txt").write_text("a,b\n1,2\n")
    with pytest.raises(outcomes.OutcomeError, match="clicked, request_id"):
        list(outcomes.items_of_file(str(tmp_path / "o.txt")))


# ------------------------------------------------------------------ the decision rule

def _arm(rng, n, p_true, score, latency=2.0):
    y = (rng.random(n) < p_true).astype(float)
    from deepfm_tfx.experiments import report
    rows = outcomes.ArmRows(version=1, labels=y, scores=np.broadcast_to(score, n).astype(float),
                            keys=np.array([str(i) for i in range(n)], dtype=object), requests=n, predictions=n,
                            latencies_ms=np.full(n, latency) + rng.random(n), implicit_negatives=0)
    return report.arm_metrics(rows)


def test_the_rule_keeps_running_then_promotes_a_better_canary_and_rolls_back_a_worse_one():
    rng = np.random.default_rng(5)
    x = rng.normal(size=6000)
    p = 1 / (1 + np.exp(-(x - 1.2)))
    good, flat = p, np.full_like(p, p.mean())
    rule = Rule(metric="logloss", min_outcomes_per_arm=1000, min_clicks_per_arm=30)
    small = decision.decide(_arm(rng, 500, p[:500], good[:500]), _arm(rng, 500, p[:500], flat[:500]), rule)
    assert small["action"] == decision.KEEP_RUNNING and "500 of 1000 outcomes" in small["why"]
    stable, canary = _arm(rng, 6000, p, flat), _arm(rng, 6000, p, good)
    assert decision.decide(stable, canary, rule)["action"] == decision.PROMOTE
    assert decision.decide(canary, stable, rule)["action"] == decision.ROLL_BACK
    # The same comparison on the AUC.
    assert decision.decide(stable, canary, Rule(metric="auc", max_outcomes_per_arm=None))["action"] == decision.PROMOTE


def test_guardrails_roll_back_a_miscalibrated_or_slow_canary_and_looks_widen_the_interval():
    rng = np.random.default_rng(8)
    x = rng.normal(size=5000)
    p = 1 / (1 + np.exp(-(x - 1.2)))
    stable = _arm(rng, 5000, p, p)
    doubled = _arm(rng, 5000, p, np.clip(2 * p, 0, 0.99))  # ranks as well, scores twice the CTR
    logloss = Rule(metric="logloss", max_outcomes_per_arm=None)
    verdict = decision.decide(stable, doubled, logloss)
    assert verdict["action"] == decision.ROLL_BACK and "miscalibrated" in verdict["why"]
    slow = _arm(rng, 5000, p, p, latency=40.0)
    verdict = decision.decide(stable, slow, logloss)
    assert verdict["action"] == decision.ROLL_BACK and "slow" in verdict["why"]
    same = _arm(rng, 5000, p, p)
    assert decision.decide(stable, same, logloss)["action"] == decision.KEEP_RUNNING
    assert decision.decide(stable, same, Rule(metric="logloss", max_outcomes_per_arm=5000))["action"] == \
        decision.ROLL_BACK
    assert decision.decide(stable, same, Rule(metric="logloss", looks=5))["confidence"] == pytest.approx(0.99)


def test_a_bad_config_names_the_field(tmp_path):
    with pytest.raises(ExperimentError, match="canary_share must be a number in"):
        _experiment(canary_share=1.5)
    with pytest.raises(ExperimentError, match="nothing to compare"):
        _experiment(canary_version=1)
    with pytest.raises(ExperimentError, match="rule.alpha"):
        _experiment(rule=Rule(alpha=0))
    with pytest.raises(ExperimentError, match="not allowed"):
        config.check_name("../etc")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "experiment.json").write_text('{"name": "x", "colour": 1}')
    with pytest.raises(ExperimentError, match="unknown field.*colour"):
        config.load(str(tmp_path), "x")
    with pytest.raises(ExperimentError, match="no experiment 'nope'.*experiments: x"):
        config.load(str(tmp_path), "nope")


# ------------------------------------------------------------------ the prediction log

def test_the_log_rotates_gzips_and_bounds_itself_and_reads_back_in_order(tmp_path):
    folder = str(tmp_path / "log")
    log = prediction_log.JsonLinesLog(folder, "predictions", max_file_bytes=4096, max_files=4, background=False)
    for i in range(300):
        log.append([{"i": i, "pad": "x" * 40}], flush=(i % 10 == 9))
    log.close()
    names = sorted(os.listdir(folder))
    logs = [n for n in names if n.startswith("predictions-")]
    assert len(logs) <= 4 and sum(n.endswith(".jsonl.gz") for n in logs) >= 3  # closed files are gzipped
    records, stats = prediction_log.read_all(folder, "predictions")
    seen = [r["i"] for r in records]
    assert seen == sorted(seen) and seen[-1] == 299  # the newest kept, the oldest dropped...
    assert stats.deleted_files > 0 and len(seen) < 300  # ...and the drop noted
    with open(os.path.join(folder, prediction_log.RETENTION_FILE)) as f:
        assert all(json.loads(line)["deleted"].startswith("predictions-") for line in f)


def test_a_torn_last_line_and_a_crash_mid_compression_lose_nothing_else(tmp_path):
    folder = str(tmp_path / "log")
    log = prediction_log.JsonLinesLog(folder, "outcomes", background=False)
    log.append([{"i": i} for i in range(5)], flush=True)
    log.close()
    [plain] = prediction_log.files(folder, "outcomes")
    with open(plain, "ab") as f:
        f.write(b'{"i": 5, "half')  # a crash in the middle of a write
    # A crash after the gzipped copy was renamed into place but before the plain one went.
    with open(plain, "rb") as src, gzip.open(plain + ".gz", "wb") as dst:
        dst.write(src.read())
    records, stats = prediction_log.read_all(folder, "outcomes")
    assert [r["i"] for r in records] == [0, 1, 2, 3, 4] and stats.torn_lines == 1 and stats.files == 1


WRITER = """
import sys, time
from deepfm_tfx.experiments import prediction_log
log = prediction_log.JsonLinesLog(sys.argv[1], "predictions", max_file_bytes=2000, flush_seconds=0.05)
i = 0
while True:
    log.append([{"i": i}])
    i += 1
    if i % 50 == 0:
        log.flush()
        print(i, flush=True)  # all of 0..i-1 is on disk now
    time.sleep(0.0005)
"""


def test_a_killed_writer_loses_nothing_it_had_flushed(tmp_path):
    folder = str(tmp_path / "log")
    child = subprocess.Popen([sys.executable, "-c", WRITER, folder], stdout=subprocess.PIPE, text=True)
    flushed = 0
    try:
        for line in child.stdout:
            flushed = int(line)
            if flushed >= 1500:  # several rotations in
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    records, stats = prediction_log.read_all(folder, "predictions")
    got = [r["i"] for r in records]
    assert got[:flushed] == list(range(flushed))
    assert got == list(range(len(got)))  # nothing missing in between, whatever was in flight
    assert stats.files > 2


# ------------------------------------------------------------------ the router (server side, without a model)

def test_the_router_routes_by_key_excludes_keyless_traffic_and_counts_outcomes(tmp_path):
    experiments = str(tmp_path / "experiments")
    config.save(experiments, _experiment())
    router = ExperimentRouter(experiments, poll_seconds=0.05).start()
    try:
        assert router.assign("other-model", lambda f: None) is None
        fields = {"user_id": "u1", "request_id": "r1"}
        first = router.assign("deepfm", fields.get)
        assert first.arm == split.arm_of("u1", "exp", 0.5) and first.request_id == "r1"
        assert router.assign("deepfm", {"user_id": "u1"}.get).arm == first.arm
        keyless = router.assign("deepfm", {}.get)
        assert keyless.arm is None and keyless.label == "stable" and keyless.excluded == EXCLUDED_NO_KEY
        with pytest.raises(ServingError, match="must be a string"):
            router.assign("deepfm", {"user_id": [1]}.get)
        router.record(first, first.label == "stable" and 1 or 2, "features", {"x": np.array([1.0, np.nan])},
                      {"click_probability": np.array([[0.25], [0.5]])})
        router.record(keyless, 1, "features", {"x": np.array([3.0])}, {"click_probability": np.array([[0.1]])})

        status, answer = router.record_outcomes("exp", json.dumps(
            {"outcomes": [{"request_id": "r1", "clicked": True}, {"request_id": "r1", "row": 1, "clicked": 0},
                          {"clicked": 1}]}).encode())
        assert status == 200 and (answer["accepted"], answer["rejected"]) == (2, 1)
        status, answer = router.record_outcomes("exp", b'[{"request_id": 5}]')
        assert status == 400 and "no usable outcome" in answer["error"]
        with pytest.raises(ServingError) as unknown:
            router.record_outcomes("no-such-experiment", b"[]")
        assert unknown.value.http_status == 404
        with pytest.raises(ServingError) as bad_json:
            router.record_outcomes("exp", b"{oops")
        assert bad_json.value.http_status == 400

        experiment = config.load(experiments, "exp")
        experiment.status = config.STOPPED
        config.save(experiments, experiment)
        deadline = time.monotonic() + 10
        while router.experiment_for("deepfm") is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert router.assign("deepfm", fields.get) is None  # stopped: no split, log flushed
    finally:
        router.stop()
    records, _ = prediction_log.read_all(config.predictions_dir(experiments, "exp"), "predictions")
    assert [(r["request_id"], r["row"], r["arm"], r["score"]) for r in records] == [
        ("r1", 0, first.arm, 0.25), ("r1", 1, first.arm, 0.5), (keyless.request_id, 0, None, 0.1)]
    assert records[0]["features"] == {"x": 1.0} and records[1]["features"] == {"x": None}
    assert records[2]["excluded"] == EXCLUDED_NO_KEY
    stored, _ = prediction_log.read_all(config.outcomes_dir(experiments, "exp"), "outcomes")
    assert sum("rejected" in o for o in stored) == 2 and sum("clicked" in o for o in stored) == 2


def test_the_simulations_true_logloss_is_the_expected_logloss_under_the_planted_truth():
    from deepfm_tfx.pipeline.simulation import online_experiment
    p = np.array([0.1, 0.5, 0.9])
    q = np.array([0.2, 0.5, 0.6])
    by_hand = np.mean([-(0.1 * np.log(0.2) + 0.9 * np.log(0.8)), np.log(2), -(0.9 * np.log(0.6) + 0.1 * np.log(0.4))])
    assert online_experiment.true_logloss(p, q) == pytest.approx(by_hand, rel=1e-12)
    # The truth itself is the best possible model: Gibbs' inequality.
    assert online_experiment.true_logloss(p, p) < online_experiment.true_logloss(p, q)


def test_a_worse_candidate_week_needs_the_online_phase(tmp_path):
    from deepfm_tfx.pipeline import configs
    from deepfm_tfx.pipeline.simulation import WORSE_CANDIDATE, weeks
    with pytest.raises(ValueError, match="needs the online phase"):
        weeks.run_weeks(str(tmp_path / "sim"), 1, configs.RunConfig(), bad_week=1, bad_kind=WORSE_CANDIDATE)
    assert not (tmp_path / "sim").exists()  # refused before anything was written


# ------------------------------------------------------------------ the ranking rule: SRM, always valid, check-rule

def test_the_sample_ratio_test_matches_scipy_and_a_broken_split_stops_deciding():
    # 5,200 vs 4,800 users against 50/50: chi-square = 2 x 200^2 / 5000 = 16, p = erfc(4 / sqrt(2)).
    assert statistics.srm_p_value([5200, 4800], [0.5, 0.5]) == pytest.approx(math.erfc(4 / math.sqrt(2)), rel=1e-12)
    assert statistics.srm_p_value([5200, 4800], [0.5, 0.5]) == pytest.approx(
        scipy_stats.chisquare([5200, 4800], [5000, 5000]).pvalue, rel=1e-12)
    assert statistics.srm_p_value([2080, 7920], [0.2, 0.8]) == pytest.approx(
        scipy_stats.chisquare([2080, 7920], [2000, 8000]).pvalue, rel=1e-12)
    rng = np.random.default_rng(3)
    x = rng.normal(size=6000)
    p = 1 / (1 + np.exp(-(x - 1.2)))
    stable, canary = _arm(rng, 6000, p, np.full_like(p, p.mean())), _arm(rng, 6000, p, p)
    rule = Rule(metric="logloss", max_outcomes_per_arm=None)
    assert decision.decide(stable, canary, rule)["action"] == decision.PROMOTE  # the split is fine
    stable.users, canary.users = 4800, 5200
    verdict = decision.decide(stable, canary, rule)
    assert verdict["action"] == decision.SAMPLE_RATIO_MISMATCH and "the split is broken" in verdict["why"]
    assert verdict["checks"][0]["p_value"] == pytest.approx(6.334e-5, rel=1e-3)
    # Nothing is applied: the labels stay where they are.
    from deepfm_tfx.experiments import report
    assert report.apply("/nonexistent", {"decision": verdict, "experiment": "x"}) is None


def test_the_always_valid_interval_matches_a_hand_computed_case_and_holds_under_continuous_looks():
    # V = 1e-4, tau = 0.03: (V + tau^2) / V = 10, V (V + tau^2) / tau^2 = 1.1111e-4,
    # half-width = sqrt(1.1111e-4 x (ln 10 + 2 ln 20)) = sqrt(1.1111e-4 x 8.294050) = 0.0303572.
    assert float(statistics.msprt_half_width(1e-4, 0.03, 0.05)) == pytest.approx(0.0303572, abs=1e-7)
    e = statistics.Estimate(0.0303572, 0.01, 0.0, 0.0, 0.95, 1000)
    valid = statistics.always_valid(e, 0.05, 0.03)
    assert (valid.low, valid.high) == pytest.approx((0.0, 0.0607144), abs=1e-6)
    # On the boundary the mixture likelihood ratio is 1 / alpha, so the p-value is alpha.
    assert valid.p_value == pytest.approx(0.05, rel=1e-4)
    # Wider than the fixed-sample 95% interval (+-1.96 se), the price of reading it at any time.
    assert valid.high - valid.value > 1.96 * e.se
    # A/A: reading a z-statistic after each of 200 batches, the fixed interval errs in most runs,
    # the always-valid one in at most alpha of them.
    rng = np.random.default_rng(11)
    steps = rng.normal(size=(2000, 200))
    n = np.arange(1, 201)
    mean, variance = np.cumsum(steps, axis=1) / n, 1.0 / n
    fixed = (np.abs(mean) > 1.96 * np.sqrt(variance)).any(axis=1).mean()
    always = (np.abs(mean) > statistics.msprt_half_width(variance, 0.3, 0.05)).any(axis=1).mean()
    assert fixed > 0.3 and always <= 0.05, (fixed, always)


def test_a_short_check_rule_run_keeps_every_rate_inside_its_bound(tmp_path, capsys):
    from deepfm_tfx.pipeline import cli
    out = tmp_path / "rule.json"
    # Short: a planned sample of 3,000 requests per arm, so a rule sized for a 6% lift and a 54/46 split.
    code = cli.main(["experiment", "check-rule", "--runs", "100", "--out", str(out), "--max-outcomes", "30000",
                     "--sized-lift", "0.06", "--broken-share", "0.54", "--lifts", "0.02"])
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert code == 0, printed
    assert result["false_decision_rate"]["rate"] <= 0.05
    assert result["power"]["rate"] >= 0.8 and result["power"]["true_lift"] == pytest.approx(0.06, abs=1e-3)
    assert result["srm_alarm_rate"]["rate"] >= 0.95
    curve = [point["promoted"] for point in result["power_curve"]]
    assert curve[0] <= 0.05 and curve[-1] >= 0.95  # no lift: hardly ever promoted; a large one: nearly always
    assert "false decisions (A/A)" in printed and "power curve" in printed


def test_outcomes_need_the_token_or_the_trusted_listener_and_refusals_are_counted(tmp_path, monkeypatch):
    from deepfm_tfx.contracts import OUTCOMES_TOKEN_ENV
    from deepfm_tfx.pipeline.cli import serve
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    assert serve.outcome_token(str(token_file), {}) == "s3cret-token"
    assert serve.outcome_token(None, {OUTCOMES_TOKEN_ENV: "from-env"}) == "from-env"
    assert serve.outcome_token(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        serve.outcome_token(str(tmp_path / "empty"), {})

    with_token = ExperimentRouter(str(tmp_path), outcome_token="s3cret-token")
    with_token.authorize("Bearer s3cret-token", trusted_listener=False)
    for header in (None, "Bearer guess", "Basic s3cret-token"):
        for trusted in (False, True):  # with a token, even the outcomes listener wants it
            with pytest.raises(ServingError) as refused:
                with_token.authorize(header, trusted)
            assert refused.value.http_status == 401 and "s3cret" not in refused.value.message
    assert with_token.refused.snapshot() == {"no_token": 2, "wrong_token": 4}
    without = ExperimentRouter(str(tmp_path))
    without.authorize(None, trusted_listener=True)
    with pytest.raises(ServingError) as refused:
        without.authorize("Bearer anything", trusted_listener=False)
    assert refused.value.http_status == 403 and without.refused.snapshot() == {"untrusted_listener": 1}


def test_a_ranking_report_counts_only_shown_rows_weighs_calibration_by_position_and_guards_the_error_rate(tmp_path):
    from deepfm_tfx.experiments import report
    from deepfm_tfx.serving import errors
    experiments = str(tmp_path / "experiments")
    config.save(experiments, _experiment(traffic="ranking", rule=Rule(min_outcomes_per_arm=300, min_clicks_per_arm=5,
                                                                      max_outcomes_per_arm=None)))
    router = ExperimentRouter(experiments, poll_seconds=0.05).start()
    rng = np.random.default_rng(21)
    served, failed, shown = {"stable": 0, "canary": 0}, 0, []
    try:
        for i in range(800):
            assignment = router.assign("deepfm", {"user_id": f"u{i}", "request_id": f"r{i}"}.get)
            if assignment.arm == "canary" and i % 5 == 0:  # the canary fails a fifth of its requests
                with pytest.raises(ServingError):
                    with router.counting_errors(assignment):
                        raise ServingError(errors.INTERNAL, "the canary broke")
                failed += 1
                continue
            scores = rng.uniform(0.05, 0.6, 20)
            router.record(assignment, 1 if assignment.arm == "stable" else 2, "features", {},
                          {"click_probability": scores[:, None]})
            served[assignment.arm] += 1
            top = np.argsort(-scores)[:3]
            # Calibrated scores: a shown row is clicked with its score times its position's examination.
            clicked = rng.random(3) < scores[top] / np.log2(np.arange(1, 4) + 1)
            shown += [{"request_id": f"r{i}", "row": int(r), "position": k + 1, "clicked": bool(c)}
                      for k, (r, c) in enumerate(zip(top, clicked))]
        status, _ = router.record_outcomes("exp", json.dumps(shown).encode())
        assert status == 200
    finally:
        router.stop()
    built = report.build(experiments, "exp")
    stable, canary = built["arms"]["stable"], built["arms"]["canary"]
    assert stable["outcomes"] == 3 * served["stable"] and canary["outcomes"] == 3 * served["canary"]
    assert built["outcomes"]["pending"] == 0  # the 17 unshown rows of each request are neither pending nor negative
    assert canary["failed_requests"] == failed and stable["failed_requests"] == 0
    assert canary["error_rate"]["low"] < failed / (failed + served["canary"]) < canary["error_rate"]["high"]
    assert stable["calibration"]["low"] < 1 < stable["calibration"]["high"]
    assert built["decision"]["action"] == decision.ROLL_BACK and "fails more requests" in built["decision"]["why"]
