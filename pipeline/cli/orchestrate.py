"""`deepfm-tfx compile` and `deepfm-tfx schedule`: the pipeline on Kubeflow and Airflow.

The CLI calls `configure(parser, command)` only when one of these runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any, Dict

from deepfm_tfx.contracts import EXIT_BAD_INPUT, EXIT_ERROR
from deepfm_tfx.pipeline import configs

TARGETS = ("kubeflow", "kubeflow-v2", "airflow")
# The RunConfig fields compile takes, each handed on to every target that has it (a flag accepted and then
# dropped left a compiled pipeline without its latency gate). Kubeflow's ml-metadata is the cluster's own.
KNOBS = ("features", "trainer", "train_steps", "eval_steps", "min_auc", "max_auc_drop", "model_name",
         "window_spans", "beam_args", "notify_url", "metadata", "latency_budget_ms", "memory_budget_mb")
NOT_FOR_KUBEFLOW = ("metadata",)


def _pipeline_options(p: argparse.ArgumentParser) -> None:
    # Only flags given are passed on; the target's own defaults fill the rest.
    configs.add_arguments(p, names=list(KNOBS), only_given=True)
    # The orchestrators' own defaults, written out here without importing them (TFX, KFP).
    p.add_argument("--pipeline-root", help="pipeline outputs (default: Kubeflow /mnt/deepfm-tfx/pipeline, "
                                           "Airflow ~/deepfm-tfx/pipeline)")
    p.add_argument("--data-root", help="folder of span-<N>/ data folders (default: Kubeflow /mnt/deepfm-tfx/data, "
                                       "Airflow ~/deepfm-tfx/data)")
    p.add_argument("--model-repository", help="versioned model repository, a POSIX path (default: Kubeflow "
                                              "/mnt/deepfm-tfx/model_repository, Airflow ~/deepfm-tfx/model_repository)")
    p.add_argument("--image", help="container image with deepfm-tfx installed, Kubeflow only "
                                   "(default: ghcr.io/deepfm-tfx/pipeline:0.1.0)")
    p.add_argument("--pvc", help="KFP v1: PersistentVolumeClaim to mount at /mnt/deepfm-tfx on every step")
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


def _training(args) -> Dict[str, Any]:
    return {k.split(".", 1)[1]: v for k, v in vars(args).items() if k.startswith("training.")}


def _kubeflow_options(args) -> Dict[str, Any]:
    options = _given(args, "pipeline_root", "data_root", "model_repository", "image",
                     *[k for k in KNOBS if k not in NOT_FOR_KUBEFLOW and k != "beam_args"])
    options["beam_args"] = list(getattr(args, "beam_args", []))
    if _training(args):
        options["training"] = _training(args)
    return options


def _compile_kubeflow(args, output: str) -> str:
    from deepfm_tfx.pipeline.orchestrators import kubeflow
    options = _kubeflow_options(args)
    if args.target == "kubeflow":
        return kubeflow.compile_v1(output, pvc_name=args.pvc, **options)
    if args.pvc or args.dry_run:
        raise ValueError("--pvc and --dry-run apply to --target kubeflow (KFP v1) only")
    return kubeflow.compile_v2(output, **options)


def _install_airflow(args) -> str:
    from deepfm_tfx.pipeline.orchestrators import airflow
    from deepfm_tfx.schemas import feature_spec
    if args.image or args.pvc or args.dry_run:
        raise ValueError("--image, --pvc and --dry-run apply to Kubeflow targets only")
    if getattr(args, "features", None):
        feature_spec.load(args.features)  # fail here rather than in Airflow's DAG parser
    defaults = _given(args, *[k for k in KNOBS if k not in ("features", "beam_args")])
    if _training(args):
        defaults["training"] = _training(args)
    # Airflow parses the DAG from its own working directory.
    defaults.update({k: os.path.abspath(v) for k, v in
                     _given(args, "pipeline_root", "data_root", "model_repository", "features").items()})
    if getattr(args, "beam_args", None):
        defaults["beam_args"] = list(args.beam_args)
    path = airflow.install_dag(args.output, defaults)
    print(f"wrote Airflow DAG {path}")
    if args.setup_db:
        url = airflow.setup_postgres_metadata_db()
        home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
        print("Airflow environment (then `airflow db migrate`):")
        for key, value in airflow.airflow_environment(home, args.output, url).items():
            print(f"  export {key}='{value}'")
    return path


def _validate(args) -> None:
    """The flags' values; their paths name places where the pipeline will run, so are not checked here."""
    from deepfm_tfx.pipeline import validation
    validation.validate(configs.from_arguments(args), paths=False, connect=False)


def _dry_run(args, package: str) -> int:
    """Runs the compiled workflow's steps here, with ml-metadata in DIR (or --metadata)."""
    from deepfm_tfx.pipeline import metadata
    from deepfm_tfx.pipeline.orchestrators import kubeflow_dry_run

    workdir = os.path.abspath(args.dry_run)
    os.makedirs(workdir, exist_ok=True)
    print(f"running its steps here; their logs go to {workdir}", flush=True)
    result = kubeflow_dry_run.dry_run(package, workdir,
                                      connection_config=metadata.connection_config(getattr(args, "metadata", None), workdir))
    print(f"workflow {result['status']}; the week's final step exited {result['exit_code']}")
    return result["exit_code"] if result["exit_code"] is not None else EXIT_ERROR


def cmd_compile(args) -> int:
    from deepfm_tfx.schemas.feature_spec import FeatureSpecError
    _quiet(args.verbose)
    try:
        _validate(args)
        if args.target == "airflow":
            _install_airflow(args)
        else:
            path = _compile_kubeflow(args, args.output)
            print(f"wrote {args.target} pipeline {path}")
            if args.dry_run:
                return _dry_run(args, path)
            if args.target == "kubeflow-v2":
                from deepfm_tfx.pipeline.orchestrators import kubeflow
                print(kubeflow.describe_v2_differences(), file=sys.stderr)
    except (ValueError, FeatureSpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def cmd_schedule(args) -> int:
    import kfp
    import kfp_server_api
    import urllib3

    from deepfm_tfx.pipeline.orchestrators import kubeflow

    from deepfm_tfx.pipeline.orchestrators import schedule
    from deepfm_tfx.schemas.feature_spec import FeatureSpecError
    _quiet(args.verbose)
    try:
        _validate(args)
        schedule.check_cron(args.cron)
        with tempfile.TemporaryDirectory() as tmp:
            package = args.package
            if package is None:
                package = kubeflow.compile_v1(os.path.join(tmp, "deepfm_tfx.yaml"), pvc_name=args.pvc,
                                                     **_kubeflow_options(args))
            client = kfp.Client(host=args.host, namespace=args.namespace)
            created = schedule.create_weekly_recurring_run(
                client, package, experiment_name=args.experiment, cron=args.cron, job_name=args.job_name,
                namespace=args.namespace)
    except (ValueError, FeatureSpecError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (urllib3.exceptions.HTTPError, kfp_server_api.ApiException) as e:
        reason = getattr(e, "reason", None) or e
        print(f"error: Kubeflow Pipelines at {args.host}: {reason}", file=sys.stderr)
        return EXIT_ERROR
    print(f"created {created}")
    return 0


def configure(p, command: str) -> None:
    """Adds `compile`'s or `schedule`'s flags to its parser."""
    if command == "compile":
        p.add_argument("--target", choices=TARGETS, required=True,
                       help="Kubeflow Pipelines v1 (Argo YAML), v2 (IR JSON), or an Airflow DAG file")
        p.add_argument("--output", required=True,
                       help="kubeflow: .yaml/.tar.gz/.zip; kubeflow-v2: .json; airflow: the dags_folder")
        p.add_argument("--setup-db", action="store_true",
                       help="airflow: create the Postgres role and database for Airflow's metadata")
        p.add_argument("--dry-run", metavar="DIR",
                       help="kubeflow: then run the compiled steps here, in order, as their containers would, "
                            "with ml-metadata in DIR (or --metadata) instead of the cluster's")
        _pipeline_options(p)
        p.set_defaults(func=cmd_compile)
        return
    from deepfm_tfx.pipeline.orchestrators import schedule
    p.add_argument("--target", choices=["kubeflow"], default="kubeflow", help="where to schedule (KFP v1 only)")
    p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
    p.add_argument("--cron", default=schedule.WEEKLY_CRON, help="6 fields, seconds first (Mondays 03:00 UTC)")
    p.add_argument("--experiment", default=schedule.DEFAULT_EXPERIMENT, help="KFP experiment")
    p.add_argument("--job-name", default=schedule.DEFAULT_JOB_NAME, help="recurring run name")
    p.add_argument("--namespace", help="multi-user Kubeflow: the profile namespace")
    p.add_argument("--package", help="compiled v1 package; default: compile one now from the flags below")
    _pipeline_options(p)
    p.set_defaults(func=cmd_schedule)
