"""`deepfm-tfx serve`: the model repository on TF Serving's gRPC and REST APIs.

It gives the server its experiments: the server itself knows none.
TensorFlow is imported only when the server starts, not for `--help`.
"""
from __future__ import annotations

import os
import sys

DEFAULT_OUTCOMES_PORT = 8502


def configure(p) -> None:
    from deepfm_tfx.contracts import OUTCOMES_TOKEN_ENV
    from deepfm_tfx.pipeline.cli.experiment import DEFAULT_EXPERIMENTS_DIR
    from deepfm_tfx.pipeline.configs import RunConfig
    from deepfm_tfx.serving import server

    server.add_arguments(p, default_repository=RunConfig().model_repository)
    p.add_argument("--experiments-dir", default=DEFAULT_EXPERIMENTS_DIR,
                   help="A/B tests between stable and canary (deepfm-tfx experiment start): their configs, "
                        "prediction logs and outcomes")
    p.add_argument("--outcomes-port", type=int, default=DEFAULT_OUTCOMES_PORT,
                   help="the experiments' own listener (outcomes and status, for the event pipeline); 0 turns it "
                        "off. The REST port refuses those routes unless a token is set")
    p.add_argument("--outcomes-host", default="127.0.0.1", help="address of the outcomes listener")
    p.add_argument("--outcomes-token-file", metavar="FILE",
                   help=f"a file holding the bearer token every experiment route then requires, on both listeners "
                        f"(or set {OUTCOMES_TOKEN_ENV}; never on the command line)")
    p.set_defaults(func=_run)


def outcome_token(token_file, environ=os.environ):
    """The token from --outcomes-token-file or the environment; None when neither is set."""
    from deepfm_tfx.contracts import OUTCOMES_TOKEN_ENV

    if token_file:
        with open(token_file) as f:
            token = f.read().strip()
        if not token:
            raise ValueError(f"{token_file} is empty: it must hold the outcomes token")
        return token
    return environ.get(OUTCOMES_TOKEN_ENV, "").strip() or None


def _run(args) -> int:
    from deepfm_tfx import machine
    from deepfm_tfx.contracts import EXIT_BAD_INPUT
    from deepfm_tfx.experiments.router import ExperimentRouter
    from deepfm_tfx.serving import server

    machine.reexec_with_allocator(args)  # before the router or TensorFlow set anything up
    try:
        token = outcome_token(args.outcomes_token_file)
    except (OSError, ValueError) as e:
        print(f"error: --outcomes-token-file {args.outcomes_token_file}: {getattr(e, 'strerror', None) or e}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    router = ExperimentRouter(args.experiments_dir, args.model_config_file_poll_wait_seconds, token)
    return server.run(args, router)
