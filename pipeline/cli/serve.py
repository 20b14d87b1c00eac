"""`deepfm-tfx serve`: the model repository on TF Serving's gRPC and REST APIs.

It gives the server its experiments: the server itself knows none.
TensorFlow is imported only when the server starts, not for `--help`.
"""
from __future__ import annotations


def configure(p) -> None:
    from deepfm_tfx.pipeline.cli.experiment import DEFAULT_EXPERIMENTS_DIR
    from deepfm_tfx.pipeline.configs import RunConfig
    from deepfm_tfx.serving import server

    server.add_arguments(p, default_repository=RunConfig().model_repository)
    p.add_argument("--experiments-dir", default=DEFAULT_EXPERIMENTS_DIR,
                   help="A/B tests between stable and canary (deepfm-tfx experiment start): their configs, "
                        "prediction logs and outcomes")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from deepfm_tfx.experiments.router import ExperimentRouter
    from deepfm_tfx.serving import server

    router = ExperimentRouter(args.experiments_dir, args.model_config_file_poll_wait_seconds)
    return server.run(args, router)
