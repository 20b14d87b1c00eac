"""`deepfm-tfx experiment start|list|stop|outcomes|report|skew`: online A/B tests of stable vs canary.

    deepfm-tfx models canary 1795400000                  # the candidate, beside stable
    deepfm-tfx experiment start week-12 --canary-share 0.2
    deepfm-tfx serve                                     # splits deepfm's un-pinned requests by user_id
    curl -d @clicks.json localhost:8501/v1/experiments/week-12/outcomes
    deepfm-tfx experiment report week-12                 # per arm, the difference, the decision
    deepfm-tfx experiment report week-12 --promote       # ... and apply it through the label moves

TensorFlow is imported only by `skew` (TFDV), inside its handler.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

DEFAULT_EXPERIMENTS_DIR = "experiments"


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--experiments-dir", default=DEFAULT_EXPERIMENTS_DIR,
                        help="where experiments live (the same as `deepfm-tfx serve --experiments-dir`)")
    return common


def configure(p) -> None:
    from deepfm_tfx.experiments.config import ON_MISSING_KEY, UNREPORTED, Experiment, Rule
    from deepfm_tfx.pipeline.configs import MODEL_NAME, RunConfig

    e, r = Experiment("x", "m", "", 0, 1), Rule()
    common = _common()
    sub = p.add_subparsers(dest="experiment_command", required=True)

    st = sub.add_parser("start", parents=[common],
                        help="start splitting a model's un-pinned traffic between its stable and canary versions")
    st.add_argument("name", help="the experiment's name (letters, digits, '_', '-', '.')")
    st.add_argument("--model-repository", default=RunConfig().model_repository,
                    help="the versioned model repository serving the model")
    st.add_argument("--model-name", default=MODEL_NAME, help="the model whose traffic is split")
    st.add_argument("--canary-share", type=float, default=e.canary_share, help="share of keys the canary gets")
    st.add_argument("--key-field", default=e.key_field,
                    help="what the split hashes: a top-level field of the REST body or a header (gRPC: metadata)")
    st.add_argument("--request-id-field", default=e.request_id_field,
                    help="the request's id, which outcomes name (the server makes one up when a request has none)")
    st.add_argument("--salt", default="", help="hash salt (default: the name, so each experiment splits afresh)")
    st.add_argument("--on-missing-key", choices=ON_MISSING_KEY, default=e.on_missing_key,
                    help="a request without the key: served by stable and counted, or refused with 400")
    st.add_argument("--score-output", default=e.score_output, help="the output logged as the score")
    st.add_argument("--feature-log-share", type=float, default=e.feature_log_share,
                    help="share of requests whose features are logged (the skew check's sample)")
    st.add_argument("--outcome-window-seconds", type=float, default=e.outcome_window_seconds,
                    help="attribution window: an outcome later than this after its prediction is late")
    st.add_argument("--unreported", choices=UNREPORTED, default=e.unreported,
                    help="a prediction without an outcome once its window closed: a non-click, or left out")
    st.add_argument("--log-max-file-bytes", type=int, default=e.log_max_file_bytes, help="rotate log files past this")
    st.add_argument("--log-max-files", type=int, default=e.log_max_files, help="keep at most this many log files")
    st.add_argument("--log-flush-seconds", type=float, default=e.log_flush_seconds,
                    help="the prediction log is on disk at most this long after a prediction")
    rule = st.add_argument_group("decision rule")
    rule.add_argument("--metric", choices=("logloss", "auc"), default=r.metric, help="the primary metric")
    rule.add_argument("--min-outcomes", type=int, default=r.min_outcomes_per_arm,
                      help="joined outcomes each arm needs before any verdict")
    rule.add_argument("--min-clicks", type=int, default=r.min_clicks_per_arm, help="clicks each arm needs")
    rule.add_argument("--alpha", type=float, default=r.alpha, help="two-sided significance level")
    rule.add_argument("--looks", type=int, default=r.looks,
                      help="planned analyses; each tests at alpha/looks so repeated looks stay honest")
    rule.add_argument("--min-effect", type=float, default=r.min_effect,
                      help="the canary must beat stable by more than this on the metric")
    rule.add_argument("--max-calibration-error", type=float, default=r.max_calibration_error,
                      help="guardrail: the canary's mean score / CTR must be able to lie within 1 +- this")
    rule.add_argument("--max-latency-ratio", type=float, default=r.max_latency_ratio,
                      help="guardrail: canary p99 latency at most this x stable's p99 ...")
    rule.add_argument("--latency-slack-ms", type=float, default=r.latency_slack_ms, help="... plus this")
    rule.add_argument("--max-outcomes", type=int, default=None,
                      help="planned sample per arm: still undecided there means roll back (default: none)")
    st.set_defaults(func=cmd_start)

    ls = sub.add_parser("list", parents=[common], help="experiments, their models, versions and status")
    ls.add_argument("--json", action="store_true", help="print them as JSON")
    ls.set_defaults(func=cmd_list)

    sp = sub.add_parser("stop", parents=[common], help="stop splitting (the logs stay; report still works)")
    sp.add_argument("name", help="the experiment's name")
    sp.set_defaults(func=cmd_stop)

    oc = sub.add_parser("outcomes", parents=[common],
                        help="add a file of outcomes: JSON lines or CSV with request_id, clicked[, row, time]")
    oc.add_argument("name", help="the experiment's name")
    oc.add_argument("file", help="the outcomes file (JSON lines or CSV)")
    oc.set_defaults(func=cmd_outcomes)

    rp = sub.add_parser("report", parents=[common],
                        help="per arm: requests, outcomes, CTR, logloss, AUC, calibration with intervals; the decision")
    rp.add_argument("name", help="the experiment's name")
    rp.add_argument("--json", action="store_true", help="print the report as JSON")
    rp.add_argument("--promote", action="store_true",
                    help="apply the decision through the label moves: promote the canary, or point the canary "
                         "label back at stable (keep running changes nothing)")
    rp.add_argument("--as-of", type=float, default=None,
                    help="the report's time, seconds since the epoch (default: now): which windows have closed")
    rp.add_argument("--model-repository", help="where to move the labels (default: the repository the "
                                               "experiment was started on)")
    rp.add_argument("--server", metavar="URL",
                    help="REST address of the server reading the repository: a label moves once it has loaded")
    rp.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for --server")
    rp.set_defaults(func=cmd_report)

    sk = sub.add_parser("skew", parents=[common],
                        help="training/serving skew: TFDV statistics of the served features vs the training data")
    sk.add_argument("name", help="the experiment's name")
    sk.add_argument("--training-statistics", required=True,
                    help="TFDV statistics of the training data: a FeatureStats.pb, or a StatisticsGen output folder "
                         "(its Split-train is used)")
    sk.add_argument("--schema", help="schema with skew_comparator thresholds (default: the feature spec's)")
    sk.add_argument("--features", help="feature spec YAML (default: the synthetic data's)")
    sk.add_argument("--json", action="store_true", help="print the result as JSON")
    sk.set_defaults(func=cmd_skew)


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_start(args) -> int:
    from deepfm_tfx import model_repository
    from deepfm_tfx.experiments import config

    try:
        config.check_name(args.name)
        if config.exists(args.experiments_dir, args.name):
            return _error(f"experiment {args.name!r} exists in {args.experiments_dir}; pick another name")
        labels = model_repository.labels(args.model_repository, args.model_name)
    except (config.ExperimentError, model_repository.RepositoryError) as e:
        return _error(str(e))
    stable, canary = labels.get("stable"), labels.get("canary")
    if stable is None or canary in (None, stable):
        return _error(f"{args.model_name} has no canary on trial in {args.model_repository} (labels: {labels or 'none'}); "
                      f"load one first: deepfm-tfx models canary VERSION")
    running = config.running_on(args.experiments_dir, args.model_name)
    if running:
        return _error(f"experiment {running[0].name} already runs on {args.model_name}; stop it first "
                      f"(deepfm-tfx experiment stop {running[0].name})")
    try:
        experiment = config.Experiment(
            name=args.name, model=args.model_name, model_repository=os.path.abspath(args.model_repository),
            stable_version=stable, canary_version=canary, canary_share=args.canary_share, key_field=args.key_field,
            request_id_field=args.request_id_field, salt=args.salt, on_missing_key=args.on_missing_key,
            score_output=args.score_output, feature_log_share=args.feature_log_share,
            outcome_window_seconds=args.outcome_window_seconds, unreported=args.unreported,
            log_max_file_bytes=args.log_max_file_bytes, log_max_files=args.log_max_files,
            log_flush_seconds=args.log_flush_seconds,
            rule=config.Rule(metric=args.metric, min_outcomes_per_arm=args.min_outcomes,
                             min_clicks_per_arm=args.min_clicks, alpha=args.alpha, looks=args.looks,
                             min_effect=args.min_effect, max_calibration_error=args.max_calibration_error,
                             max_latency_ratio=args.max_latency_ratio, latency_slack_ms=args.latency_slack_ms,
                             max_outcomes_per_arm=args.max_outcomes))
        path = config.save(args.experiments_dir, experiment)
    except config.ExperimentError as e:
        return _error(str(e))
    print(f"experiment {args.name}: {args.model_name} stable {stable} vs canary {canary}, canary share "
          f"{args.canary_share:g}, split by '{args.key_field}'; written to {path}. A server reading "
          f"{args.experiments_dir} starts splitting within a second.")
    return 0


def cmd_list(args) -> int:
    from deepfm_tfx.experiments import config

    rows = []
    for name in config.names(args.experiments_dir):
        try:
            e = config.load(args.experiments_dir, name)
        except config.ExperimentError as err:
            rows.append({"name": name, "error": str(err)})
            continue
        rows.append({"name": name, "model": e.model, "status": e.status, "stable": e.stable_version,
                     "canary": e.canary_version, "canary_share": e.canary_share,
                     "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.created_at)),
                     "decision": (e.decision or {}).get("action")})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"{args.experiments_dir}: no experiments")
        return 0
    for row in rows:
        if "error" in row:
            print(f"{row['name']}: unreadable: {row['error']}")
        else:
            print(f"{row['name']:<20} {row['model']:<12} {row['status']:<8} stable {row['stable']} canary "
                  f"{row['canary']} share {row['canary_share']:g}  {row['created_at']}"
                  + (f"  decided: {row['decision']}" if row["decision"] else ""))
    return 0


def cmd_stop(args) -> int:
    from deepfm_tfx.experiments import config

    try:
        experiment = config.load(args.experiments_dir, args.name)
    except config.ExperimentError as e:
        return _error(str(e))
    if experiment.status == config.RUNNING:
        experiment.status = config.STOPPED
        config.save(args.experiments_dir, experiment)
    print(f"experiment {args.name}: {experiment.status}; un-pinned requests to {experiment.model} go to its latest "
          f"version again, as without an experiment")
    return 0


def cmd_outcomes(args) -> int:
    from deepfm_tfx.experiments import config, outcomes, prediction_log
    from deepfm_tfx.experiments.router import OUTCOMES_PREFIX

    try:
        experiment = config.load(args.experiments_dir, args.name)
        if not os.path.isfile(args.file):
            return _error(f"{args.file}: no such file")
        received, source = time.time(), f"file:{os.path.basename(args.file)}"
        records, problems = [], []
        for i, item in enumerate(outcomes.items_of_file(args.file), start=1):
            good, why = outcomes.check(item, received, source)
            if good is None:
                problems.append(f"{args.file}, record {i}: {why}")
                records.append(outcomes.rejected_record(item, why, received, source))
            else:
                records.append(good)
    except (config.ExperimentError, outcomes.OutcomeError, UnicodeDecodeError) as e:
        return _error(str(e))
    if not records:
        return _error(f"{args.file} holds no outcomes")
    log = prediction_log.JsonLinesLog(config.outcomes_dir(args.experiments_dir, args.name), OUTCOMES_PREFIX,
                                      experiment.log_max_file_bytes, experiment.log_max_files, background=False)
    log.append(records, flush=True)
    log.close()
    accepted = len(records) - len(problems)
    print(f"experiment {args.name}: {accepted:,} outcomes added, {len(problems):,} rejected (counted in the report)")
    for problem in problems[:10]:
        print(f"  {problem}", file=sys.stderr)
    return 0 if accepted else 2


def cmd_report(args) -> int:
    from deepfm_tfx import model_repository
    from deepfm_tfx.experiments import config, report

    try:
        built = report.build(args.experiments_dir, args.name, args.as_of)
    except config.ExperimentError as e:
        return _error(str(e))
    if args.promote:
        wait = None
        if args.server:
            from deepfm_tfx.serving import model_status
            wait = model_status.waiter(args.server, args.timeout)
        try:
            built["applied"] = report.apply(args.experiments_dir, built, wait, args.model_repository)
        except (report.ApplyError, model_repository.RepositoryError) as e:
            return _error(str(e))
        except Exception as e:  # noqa: BLE001 - model_status.NotAvailable: the server did not load in time
            if type(e).__name__ != "NotAvailable":
                raise
            return _error(f"{e}\nNo label moved; run the same command again to finish.")
    if args.json:
        print(json.dumps(report.numpy_free(built), indent=2, sort_keys=True, allow_nan=False, default=str))
    else:
        print(report.format_text(built))
        if args.promote and built.get("applied") is None:
            print("nothing applied: the experiment keeps running")
    return 0


def cmd_skew(args) -> int:
    from deepfm_tfx.experiments import config, skew

    try:
        config.load(args.experiments_dir, args.name)
    except config.ExperimentError as e:
        return _error(str(e))
    try:
        result = skew.check(args.experiments_dir, args.name, args.training_statistics, args.schema, args.features)
    except skew.SkewError as e:
        return _error(str(e))
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(skew.format_text(result))
    return 0
