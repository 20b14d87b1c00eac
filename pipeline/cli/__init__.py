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
    "models": ("models", "list, canary, promote, roll back, release, prune or report on the versions in the "
                         "model repository"),
    "serve": ("serve", "serve the model repository on TF Serving's gRPC and REST APIs"),
    "experiment": ("experiment", "A/B test stable vs canary on live traffic: start, outcomes, report, promote"),
    "schema": ("schema", "export the schema frozen by the first run, for review"),
    "tensorboard": ("tensorboard", "TensorBoard on the pipeline's runs: training curves and each week's metrics"),
    "compile": ("orchestrate", "compile for Kubeflow Pipelines (v1 YAML, v2 JSON) or install the Airflow DAG"),
    "schedule": ("orchestrate", "create a weekly recurring run on Kubeflow Pipelines"),
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each flag's default, unless it says nothing: no value, an on/off switch, a
    required flag or argument, or help that already names its default."""

    SILENT = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._StoreConstAction,
              argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is argparse.SUPPRESS or action.default == []
                or action.required or not action.option_strings or isinstance(action, self.SILENT)
                or "default:" in text):
            return text
        return text + " (default: %(default)s)"


class _SubParsers(argparse._SubParsersAction):
    def add_parser(self, name, **kwargs):
        # A subcommand's --help starts with the line that lists it in its parent's help.
        kwargs.setdefault("description", kwargs.get("help"))
        return super().add_parser(name, **kwargs)


class Parser(argparse.ArgumentParser):
    """Every parser, nested subcommands' included, formats with HelpFormatter."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self.register("action", "parsers", _SubParsers)


def _command_of(argv: List[str]) -> Optional[str]:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: Optional[List[str]] = None) -> int:
    own_process = argv is None  # a command may re-exec itself (serve: its allocator) only then
    argv = sys.argv[1:] if argv is None else argv
    from deepfm_tfx.pipeline import console
    console.silence_before_imports("--verbose" in argv)

    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.own_process = own_process
    from deepfm_tfx import object_store
    try:
        code = args.func(args)
    except BaseException as e:
        # Only a process of its own is ended here: a caller of main(argv) keeps its interpreter.
        if not (own_process and object_store.tf_filesystem_registered()):
            raise
        if isinstance(e, SystemExit):
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        else:
            import traceback
            traceback.print_exc()
            code = 1
    if own_process and object_store.tf_filesystem_registered():
        object_store.exit_process(code)  # tensorflow-io would abort at the interpreter's exit
    return code


def build_parser(argv: List[str], configure_all: bool = False) -> argparse.ArgumentParser:
    """The parser, with the flags of the command in `argv` (of every command, with configure_all)."""
    parser = Parser(prog="deepfm-tfx", description="deepfm-tfx: weekly TFX retraining of a DeepFM CTR model")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = _command_of(argv)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen or configure_all:
            configure = getattr(importlib.import_module(f"{__name__}.{module}"), "configure")
            configure(p, name) if module == "orchestrate" else configure(p)
    return parser


if __name__ == "__main__":
    sys.exit(main())
