"""`deepfm-tfx run`: one pipeline run on this machine."""
from __future__ import annotations

import sys

from deepfm_tfx import machine
from deepfm_tfx.contracts import TRAINER_KEY
from deepfm_tfx.pipeline import configs, console


def configure(p) -> None:
    configs.add_arguments(p, names=[
        "data", "features", "pipeline_root", "model_repository", "model_name", "trainer", "train_steps",
        "eval_steps", "rows", "profile", "seed", "metadata", "summary", "beam_args", "min_auc", "max_auc_drop",
        "window_spans", "warm_start", "enable_cache", "push_as", "serving_url", "serving_base_path", "notify_url",
        "latency_budget_ms", "memory_budget_mb"])
    console.add_arguments(p)
    machine.add_allocator_argument(p)
    p.set_defaults(func=cmd_run)


SUMMARY_KEYS = ("auc", "bayes_auc", "bayes_auc_gap", "bayes_auc_span", "logloss", "bayes_logloss", "calibration", "example_count",
                "baseline_auc", "blessed", "pushed", "pushed_path", "not_pushed_reason", TRAINER_KEY, "span", "partition",
                "window_spans", "window_partitions", "warm_started", "learning_rate_first_step", "learning_rate_last_step",
                "weight_change_max", "num_ids", "distinct_ids", "admitted_ids", "rare_row_share", "train_examples_per_second", "blocked_by")


def print_summary(summary) -> None:
    def fmt(v):
        return "-" if v is None else (f"{v:.4g}" if isinstance(v, float) and abs(v) < 1e-3 and v
                                      else f"{v:.4f}" if isinstance(v, float) else str(v))
    print("\nSummary")
    for key in SUMMARY_KEYS:
        if key in summary:
            print(f"  {key:<25} {fmt(summary.get(key))}")
    seconds = summary.get("component_seconds", {})
    if seconds:
        print("  component seconds (ml-metadata): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    if summary.get("auc_diff") is not None:
        low, high = summary["auc_diff_ci95"]
        print(f"  {'auc - baseline (95% CI)':<25} {summary['auc_diff']:+.4f} [{low:+.4f}, {high:+.4f}], paired on "
              f"the same {summary.get('auc_diff_rows') or 0:,} rows")
    check = summary.get("serving_check")
    if check:
        print(f"  {'serving check':<25} p99 {check['p99_ms']:.2f} ms (p50 {check['p50_ms']:.2f}) for "
              f"{check['rows_per_request']}-candidate requests, {check['cpu_ms_per_request']:.2f} ms CPU each, "
              f"loading added {check.get('loaded_mb')} MB")
    for line in summary.get("evaluator_failures", []) or []:
        print(f"  evaluator: {line}")
    print(f"  written to {summary.get('summary_path')}")
    if summary.get("report_path"):
        print(f"  report: {summary['report_path']} (open it in a browser; deepfm-tfx tensorboard for the curves)")
    elif summary.get("report_error"):
        print(f"  no report: {summary['report_error']}")


def cmd_run(args) -> int:
    machine.reexec_with_allocator(args)  # before TensorFlow allocates anything
    from deepfm_tfx.contracts import EXIT_BAD_INPUT
    from deepfm_tfx.errors import ConfigError, DataError
    from deepfm_tfx.pipeline import validation
    from deepfm_tfx.pipeline.orchestrators import local
    from deepfm_tfx.schemas.feature_spec import FeatureSpecError

    display = console.configure_logging(args.verbose, quiet=args.quiet, every=args.progress_every)
    config = configs.from_arguments(args)
    try:
        validation.validate(config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"deepfm-tfx: {config.trainer} runner, data {config.data or 'synthetic (generated)'}, "
          f"pipeline root {config.pipeline_root}", flush=True)
    try:
        with display:  # closed before any error or summary is printed
            summary = local.run(config)
    except (ConfigError, DataError, FeatureSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except local.RunFailed as failed:
        print_summary(failed.summary)
        print(f"\nerror: {failed.summary.get('error') or 'the model was not blessed; nothing was pushed'}",
              file=sys.stderr)
        return failed.exit_code
    print_summary(summary)
    return 0
