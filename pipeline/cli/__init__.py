"""`deepfm-tfx`: the command line.

Each subcommand lives in its own module, imported only when that subcommand
runs, so `--help` and `models ...` answer without importing TensorFlow. A
module provides `configure(parser)` (adds its flags and sets `func`, a
handler taking the parsed args and returning an exit code).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module under deepfm_tfx.pipeline.cli, one line of help)
COMMANDS = {
    "run": ("run", "run the whole pipeline locally (LocalDagRunner)"),
    "generate-data": ("data", "write synthetic Criteo-format spans with known Bayes metrics"),
    "simulate": ("simulate", "simulate N weeks of automatic retraining, one bad week included"),
    "models": ("models", "list, canary, promote, roll back, release or prune the versions in the model repository"),
    "serve": ("serve", "serve the model repository on TF Serving's gRPC and REST APIs"),
    "schema": ("schema", "export the schema frozen by the first run, for review"),
    "compile": ("orchestrate", "compile for Kubeflow Pipelines (v1 YAML, v2 JSON) or install the Airflow DAG"),
    "schedule": ("orchestrate", "create a weekly recurring run on Kubeflow Pipelines"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every flag's default without repeating it in the help text."""


def _command_of(argv: List[str]) -> Optional[str]:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from deepfm_tfx.pipeline import console
    console.silence_before_imports("--verbose" in argv)

    parser = argparse.ArgumentParser(prog="deepfm-tfx", description="deepfm-tfx: weekly TFX retraining of a DeepFM CTR model",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _command_of(argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        if name == chosen:
            configure = getattr(importlib.import_module(f"{__name__}.{module}"), "configure")
            configure(p, name) if module == "orchestrate" else configure(p)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
