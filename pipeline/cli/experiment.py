"""`deepfm-tfx experiment start|list|stop|outcomes|report|skew|check-rule`: online A/B tests of stable vs canary.

    deepfm-tfx models canary 1795400000                  # the candidate, beside stable
    deepfm-tfx experiment start week-12 --canary-share 0.2
    deepfm-tfx serve                                     # splits deepfm's un-pinned requests by user_id
    curl -d @clicks.json localhost:8502/v1/experiments/week-12/outcomes   # the outcomes listener
    deepfm-tfx experiment report week-12                 # per arm, the difference, the decision
    deepfm-tfx experiment report week-12 --promote       # ... and apply it through the label moves
    deepfm-tfx experiment check-rule --runs 200          # the rule's error rates against a planted truth

TensorFlow is imported only by `skew` (TFDV), inside its handler.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from deepfm_tfx.contracts import CANARY, EXIT_BAD_INPUT, SAMPLE_RATIO_MISMATCH, STABLE

DEFAULT_EXPERIMENTS_DIR = "experiments"
# What check-rule simulates; the guardrails need a server (latency, errors) and are not simulated.
CHECKED_RULE_KNOBS = ("alpha", "sized_lift", "min_outcomes_per_arm", "min_clicks_per_arm", "min_effect",
                      "max_outcomes_per_arm", "srm_p_value")


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--experiments-dir", default=DEFAULT_EXPERIMENTS_DIR,
                        help="where experiments live (the same as `deepfm-tfx serve --experiments-dir`)")
    return common


def _knobs(cls):
    """The fields of an experiment (or its rule) `start` takes as flags."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def configure(p) -> None:
    from deepfm_tfx.experiments.config import Experiment, Rule
    from deepfm_tfx.pipeline.configs import MODEL_NAME, RunConfig, add_field

    common = _common()
    sub = p.add_subparsers(dest="experiment_command", required=True)

    st = sub.add_parser("start", parents=[common],
                        help="start splitting a model's un-pinned traffic between its stable and canary versions")
    st.add_argument("name", help="the experiment's name (letters, digits, '_', '-', '.')")
    st.add_argument("--model-repository", default=RunConfig().model_repository,
                    help="the versioned model repository serving the model (a folder or s3://bucket/prefix)")
    st.add_argument("--model-name", default=MODEL_NAME, help="the model whose traffic is split")
    for field in _knobs(Experiment):
        add_field(st, field, field.default, field.name)
    rule = st.add_argument_group("decision rule")
    for field in _knobs(Rule):
        add_field(rule, field, field.default, field.name)
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

    cr = sub.add_parser("check-rule", help="simulate the ctr rule from the planted truth, without the server: "
                                           "A/A false decisions, power at the sized lift, sample-ratio alarms")
    cr.add_argument("--runs", type=int, default=200, help="simulated experiments per scenario")
    cr.add_argument("--out", metavar="FILE", help="also write the rates and the power curve here as JSON")
    cr.add_argument("--canary-share", type=float, default=0.5, help="the configured split")
    cr.add_argument("--broken-share", type=float, default=0.52,
                    help="the canary's real share in the broken-split runs")
    cr.add_argument("--lifts", default="0.01,0.02,0.03,0.04,0.06",
                    help="true CTR lifts of the power curve, comma-separated (0 and the sized lift are added)")
    cr.add_argument("--stable-noise", type=float, default=1.0,
                    help="stable's quality: its score is the true logit plus noise of this spread")
    checked = cr.add_argument_group("decision rule (the ctr metric's knobs, as in `experiment start`)")
    for field in _knobs(Rule):
        if field.name in CHECKED_RULE_KNOBS:
            add_field(checked, field, field.default, field.name)
    cr.set_defaults(func=cmd_check_rule)


def _error(message: str, code: int = EXIT_BAD_INPUT) -> int:
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
    stable, canary = labels.get(STABLE), labels.get(CANARY)
    if stable is None or canary in (None, stable):
        return _error(f"{args.model_name} has no canary on trial in {args.model_repository} (labels: {labels or 'none'}); "
                      f"load one first: deepfm-tfx models canary VERSION")
    running = config.running_on(args.experiments_dir, args.model_name)
    if running:
        return _error(f"experiment {running[0].name} already runs on {args.model_name}; stop it first "
                      f"(deepfm-tfx experiment stop {running[0].name})")
    try:
        experiment = config.Experiment(
            name=args.name, model=args.model_name, model_repository=(args.model_repository if model_repository.is_store(args.model_repository)
                              else os.path.abspath(args.model_repository)),
            stable_version=stable, canary_version=canary,
            **{f.name: getattr(args, f.name) for f in _knobs(config.Experiment)},
            rule=config.Rule(**{f.name: getattr(args, f.name) for f in _knobs(config.Rule)}))
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
        rows.append({"name": name, "model": e.model, "status": e.status, STABLE: e.stable_version,
                     CANARY: e.canary_version, "canary_share": e.canary_share,
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
            print(f"{row['name']:<20} {row['model']:<12} {row['status']:<8} stable {row[STABLE]} canary "
                  f"{row[CANARY]} share {row['canary_share']:g}  {row['created_at']}"
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
        records, problems = outcomes.check_all(outcomes.items_of_file(args.file), time.time(),
                                               f"file:{os.path.basename(args.file)}",
                                               lambda i: f"{args.file}, record {i + 1}")
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
    return 0 if accepted else EXIT_BAD_INPUT


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
            print("nothing applied: " + ("the split is broken; find the cause before trusting any metric"
                                         if built["decision"]["action"] == SAMPLE_RATIO_MISMATCH
                                         else "the experiment keeps running"))
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


def cmd_check_rule(args) -> int:
    from deepfm_tfx.contracts import EXIT_ERROR
    from deepfm_tfx.experiments import config
    from deepfm_tfx.pipeline.simulation import rule_check

    try:
        rule = config.Rule(**{name: getattr(args, name) for name in CHECKED_RULE_KNOBS})
        rule.check()
        if rule.max_outcomes_per_arm is None:
            raise config.ExperimentError("--max-outcomes (the planned sample) is needed")
    except config.ExperimentError as e:
        return _error(str(e))
    if args.runs < 10:
        return _error(f"--runs must be at least 10, got {args.runs}")
    for name in ("canary_share", "broken_share"):
        if not 0 < getattr(args, name) < 1:
            return _error(f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(args, name)}")
    try:
        lifts = tuple(float(v) for v in args.lifts.split(",") if v.strip())
    except ValueError:
        return _error(f"--lifts must be numbers separated by commas, got {args.lifts!r}")
    world = rule_check.World(canary_share=args.canary_share, broken_share=args.broken_share,
                             stable_noise=args.stable_noise, lifts=lifts)
    try:
        result = rule_check.check(rule, args.runs, world, progress=lambda line: print(line, flush=True))
    except ValueError as e:
        return _error(str(e))
    print("\n" + rule_check.format_text(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"written to {args.out}")
    if not result["inside_bounds"]:
        print("error: a rate is outside its bound (above)", file=sys.stderr)
        return EXIT_ERROR
    return 0
