"""`deepfm-tfx serve`: the model repository on TF Serving's gRPC and REST APIs.

TensorFlow is imported only when the server starts, not for `--help`.
"""
from __future__ import annotations


def configure(p) -> None:
    from deepfm_tfx.pipeline.configs import RunConfig
    from deepfm_tfx.serving import server

    server.add_arguments(p, default_repository=RunConfig().model_repository)
    p.set_defaults(func=_run)


def _run(args) -> int:
    from deepfm_tfx.serving import server
    return server.run(args)
