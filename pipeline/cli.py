"""`deepfm-tfx`: the command line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def _run_parser(sub) -> None:
    from pipeline.configs import RunConfig
    d = RunConfig()
    p = sub.add_parser("run", help="run the whole pipeline locally (LocalDagRunner)")
    p.add_argument("--data", help="data folder (span-N/ subfolders or files); default: generated synthetic data")
    p.add_argument("--features", default=d.features, help="feature spec YAML (default: %(default)s)")
    p.add_argument("--pipeline-root", default=d.pipeline_root)
    p.add_argument("--model-repository", default=d.model_repository)
    p.add_argument("--model-name", default=d.model_name)
    p.add_argument("--trainer", choices=["keras", "estimator"], default=d.trainer)
    p.add_argument("--train-steps", type=int, default=d.train_steps)
    p.add_argument("--eval-steps", type=int, default=d.eval_steps)
    p.add_argument("--rows", type=int, default=d.rows, help="rows per span of the generated default data")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--metadata", help="ml-metadata: mysql://user:pass@host:port/db (default: SQLite under the pipeline root)")
    p.add_argument("--summary", help="where to write the summary JSON (default: <pipeline-root>/summary.json)")
    p.add_argument("--beam-arg", action="append", default=[], help="extra Beam pipeline argument (repeatable)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--dnn-units", help="comma-separated, e.g. 128,64")
    p.add_argument("--distribution", choices=["auto", "default", "mirrored", "multi_worker"])
    p.add_argument("--min-auc", type=float, default=d.min_auc, help="absolute AUC floor for blessing")
    p.add_argument("--max-auc-drop", type=float, default=d.max_auc_drop,
                   help="largest AUC drop vs the blessed model that still blesses")
    p.add_argument("--window-spans", type=int, default=d.window_spans, help="train on the newest K spans")
    p.add_argument("--no-warm-start", action="store_true", help="always train from scratch")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show TF, Beam and absl logs")


def _config_from(args):
    from pipeline.configs import RunConfig
    training = {k: v for k, v in {
        "batch_size": args.batch_size, "learning_rate": args.learning_rate,
        "embedding_dim": args.embedding_dim, "distribution": args.distribution,
        "dnn_units": [int(u) for u in args.dnn_units.split(",")] if args.dnn_units else None,
    }.items() if v is not None}
    return RunConfig(
        data=args.data, features=args.features, pipeline_root=args.pipeline_root,
        model_repository=args.model_repository, model_name=args.model_name, trainer=args.trainer,
        train_steps=args.train_steps, eval_steps=args.eval_steps, rows=args.rows, seed=args.seed,
        metadata=args.metadata, summary=args.summary, beam_args=args.beam_arg, training=training,
        min_auc=args.min_auc, max_auc_drop=args.max_auc_drop, enable_cache=not args.no_cache,
        window_spans=args.window_spans, warm_start=not args.no_warm_start)


def _print_summary(summary) -> None:
    def fmt(v):
        return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
    print("\nSummary")
    for key in ("auc", "bayes_auc", "bayes_auc_span", "logloss", "bayes_logloss", "calibration", "example_count",
                "baseline_auc", "blessed", "pushed", "pushed_path", "trainer_runner", "span", "window_spans",
                "warm_started", "blocked_by"):
        print(f"  {key:<15} {fmt(summary.get(key))}")
    seconds = summary.get("component_seconds", {})
    if seconds:
        print("  component seconds (ml-metadata): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    for line in summary.get("evaluator_failures", []) or []:
        print(f"  evaluator: {line}")
    print(f"  written to {summary.get('summary_path')}")


def cmd_run(args) -> int:
    from components.csv_example_gen import DataError
    from pipeline import console, local_runner
    from schemas.feature_spec import FeatureSpecError

    console.configure_logging(args.verbose)
    config = _config_from(args)
    print(f"deepfm-tfx: {config.trainer} runner, data {config.data or 'synthetic (generated)'}, "
          f"pipeline root {config.pipeline_root}", flush=True)
    try:
        summary = local_runner.run(config)
    except (DataError, FeatureSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except local_runner.RunFailed as failed:
        _print_summary(failed.summary)
        print(f"\nerror: {failed.summary.get('error') or 'the model was not blessed; nothing was pushed'}",
              file=sys.stderr)
        return failed.exit_code
    _print_summary(summary)
    return 0


def cmd_generate_data(args) -> int:
    from pipeline import synthetic_data
    reports = synthetic_data.generate(args.out, rows=args.rows, spans=args.spans, seed=args.seed,
                                      drift=args.drift, first_span=args.first_span)
    for r in reports:
        print(json.dumps(r))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from pipeline import console
    console.silence_before_imports("--verbose" in argv)
    from pipeline import bench, models_cli, orchestrators_cli, simulate

    parser = argparse.ArgumentParser(prog="deepfm-tfx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    g = sub.add_parser("generate-data", help="write synthetic Criteo-format spans with known Bayes metrics")
    g.add_argument("--rows", type=int, default=100_000, help="rows per span")
    g.add_argument("--spans", type=int, default=1)
    g.add_argument("--first-span", type=int, default=1)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--drift", type=float, default=0.02, help="weekly random-walk step of the true weights")
    g.add_argument("--out", default="workspace/data/synthetic")
    orchestrators_cli.register(sub)
    models_cli.register(sub)
    simulate.register(sub)
    bench.register(sub)
    args = parser.parse_args(argv)
    if hasattr(args, "func"):
        return args.func(args)
    handler = {"run": cmd_run, "generate-data": cmd_generate_data}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
