"""`deepfm-tfx compile` and `deepfm-tfx schedule`: the pipeline on Kubeflow and Airflow.

cli.py adds these with `orchestrators_cli.register(sub)`; each subcommand sets
`func`, a handler taking the parsed args and returning an exit code.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, Dict

TARGETS = ("kubeflow", "kubeflow-v2", "airflow")


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    # None means "the target's default", so only flags given are passed on.
    p.add_argument("--pipeline-root", help="pipeline outputs (Kubeflow default: /mnt/deepfm-tfx/pipeline)")
    p.add_argument("--data-root", help="folder of span-<N>/ data folders")
    p.add_argument("--model-repository", help="versioned model repository (a POSIX path)")
    p.add_argument("--image", help="container image with deepfm-tfx installed (Kubeflow only)")
    p.add_argument("--beam-arg", action="append", default=[],
                   help="extra Beam pipeline argument, as --beam-arg=--flag=value (repeatable)")
    p.add_argument("--pvc", help="KFP v1: PersistentVolumeClaim to mount at /mnt/deepfm-tfx on every step")
    p.add_argument("--features", help="feature spec YAML, read now; on Kubeflow, a schema it names "
                                      "outside schemas/ must be readable by the pods")
    p.add_argument("--trainer", choices=["keras", "estimator"])
    p.add_argument("--train-steps", type=int)
    p.add_argument("--eval-steps", type=int)
    p.add_argument("--min-auc", type=float)
    p.add_argument("--max-auc-drop", type=float)
    p.add_argument("--verbose", action="store_true", help="show TF, Beam and absl logs")


def _quiet(verbose: bool) -> None:
    # Compiling runs no component, so there is no progress worth showing.
    if verbose:
        return
    import logging

    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    for name in ("absl", "tensorflow", "apache_beam", "tfx", "kfp", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _given(args, *names: str) -> Dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _kubeflow_options(args) -> Dict[str, Any]:
    options = _given(args, "pipeline_root", "data_root", "model_repository", "image", "features",
                     "trainer", "train_steps", "eval_steps", "min_auc", "max_auc_drop")
    options["beam_args"] = list(args.beam_arg)
    return options


def _compile_kubeflow(args, output: str) -> str:
    from pipeline import kubeflow_runner
    options = _kubeflow_options(args)
    if args.target == "kubeflow":
        return kubeflow_runner.compile_v1(output, pvc_name=args.pvc, **options)
    if args.pvc:
        raise ValueError("--pvc applies to --target kubeflow (KFP v1) only")
    return kubeflow_runner.compile_v2(output, **options)


def _install_airflow(args) -> str:
    from pipeline import airflow_runner
    from schemas import feature_spec
    if args.image or args.pvc:
        raise ValueError("--image and --pvc apply to Kubeflow targets only")
    if args.features:
        feature_spec.load(args.features)  # fail here rather than in Airflow's DAG parser
    defaults = _given(args, "trainer", "train_steps", "eval_steps", "min_auc", "max_auc_drop")
    # Airflow parses the DAG from its own working directory.
    defaults.update({k: os.path.abspath(v) for k, v in
                     _given(args, "pipeline_root", "data_root", "model_repository", "features").items()})
    if args.beam_arg:
        defaults["beam_args"] = list(args.beam_arg)
    path = airflow_runner.install_dag(args.output, defaults)
    print(f"wrote Airflow DAG {path}")
    if args.setup_db:
        url = airflow_runner.setup_postgres_metadata_db()
        home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
        print("Airflow environment (then `airflow db migrate`):")
        for key, value in airflow_runner.airflow_environment(home, args.output, url).items():
            print(f"  export {key}='{value}'")
    return path


def cmd_compile(args) -> int:
    from schemas.feature_spec import FeatureSpecError
    _quiet(args.verbose)
    try:
        if args.target == "airflow":
            _install_airflow(args)
        else:
            path = _compile_kubeflow(args, args.output)
            print(f"wrote {args.target} pipeline {path}")
    except (ValueError, FeatureSpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_schedule(args) -> int:
    import kfp
    import kfp_server_api
    import urllib3

    from pipeline import kubeflow_runner, schedule
    from schemas.feature_spec import FeatureSpecError
    _quiet(args.verbose)
    try:
        schedule.check_cron(args.cron)
        with tempfile.TemporaryDirectory() as tmp:
            package = args.package
            if package is None:
                package = kubeflow_runner.compile_v1(os.path.join(tmp, "deepfm_tfx.yaml"), pvc_name=args.pvc,
                                                     **_kubeflow_options(args))
            client = kfp.Client(host=args.host, namespace=args.namespace)
            created = schedule.create_weekly_recurring_run(
                client, package, experiment_name=args.experiment, cron=args.cron, job_name=args.job_name,
                namespace=args.namespace)
    except (ValueError, FeatureSpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (urllib3.exceptions.HTTPError, kfp_server_api.ApiException) as e:
        reason = getattr(e, "reason", None) or e
        print(f"error: Kubeflow Pipelines at {args.host}: {reason}", file=sys.stderr)
        return 1
    print(f"created {created}")
    return 0


def register(subparsers) -> None:
    """Adds `compile` and `schedule` to the CLI's subparsers."""
    from pipeline import schedule

    c = subparsers.add_parser(
        "compile", help="compile for Kubeflow Pipelines (v1 YAML, v2 JSON) or install the Airflow DAG")
    c.add_argument("--target", choices=TARGETS, required=True)
    c.add_argument("--output", required=True,
                   help="kubeflow: .yaml/.tar.gz/.zip; kubeflow-v2: .json; airflow: the dags_folder")
    c.add_argument("--setup-db", action="store_true",
                   help="airflow: create the Postgres role and database for Airflow's metadata")
    _pipeline_options(c)
    c.set_defaults(func=cmd_compile)

    s = subparsers.add_parser("schedule", help="create a weekly recurring run on Kubeflow Pipelines")
    s.add_argument("--target", choices=["kubeflow"], default="kubeflow")
    s.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    s.add_argument("--cron", default=schedule.WEEKLY_CRON,
                   help="6 fields, seconds first (default: %(default)s, Mondays 03:00 UTC)")
    s.add_argument("--experiment", default=schedule.DEFAULT_EXPERIMENT)
    s.add_argument("--job-name", default=schedule.DEFAULT_JOB_NAME)
    s.add_argument("--namespace", help="multi-user Kubeflow: the profile namespace")
    s.add_argument("--package", help="compiled v1 package; default: compile one now from the flags below")
    _pipeline_options(s)
    s.set_defaults(func=cmd_schedule)
