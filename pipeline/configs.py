"""Run configuration: every knob of a run, with its default and meaning.

`RunConfig` is the one source. The command line's flags, the Airflow
settings, the Kubeflow compiler and `simulate` are all derived from its
fields (and from `TrainingConfig`'s for the training knobs), and every
orchestrator hands a RunConfig to `pipeline.create_pipeline_from_config`.
No TensorFlow is imported here.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Dict, Iterable, List, Optional

from deepfm_tfx import synthetic
from deepfm_tfx.contracts import LABELS, STABLE
from deepfm_tfx.schemas.feature_spec import DEFAULT_SPEC
from deepfm_tfx.trainer_modules.hparams import TrainingConfig

PIPELINE_NAME = "deepfm_tfx"
MODEL_NAME = "deepfm"
WORKSPACE = "workspace"
TRAINERS = ("keras", "estimator")
DATA_PROFILES = ("criteo", "small")  # synthetic.generator.PROFILES, without importing numpy
# None: Beam's own defaults are the DirectRunner in_memory with one worker. Spelled out, they cost
# a run 3-7 s per Beam component: given any Beam args, TFX copies its install and builds an sdist
# of it for remote workers (tfx.utils.dependency_utils.make_beam_dependency_flags), which the
# DirectRunner never uses. --beam-arg adds to these.
DEFAULT_BEAM_ARGS: List[str] = []


def _knob(default, help: str, **extra):
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass
class RunConfig:
    data: Optional[str] = _knob(None, "data folder (span-N/ subfolders or files); default: generated synthetic data")
    features: str = _knob(DEFAULT_SPEC, "feature spec YAML")
    pipeline_root: str = _knob(os.path.join(WORKSPACE, "pipeline"), "pipeline outputs and SQLite ml-metadata")
    model_repository: str = _knob("model_repository", "the versioned model repository: a folder, or "
                                  "s3://bucket/prefix (endpoint and keys from the AWS_* variables)")
    model_name: str = _knob(MODEL_NAME, "model name in the repository and in TF Serving")
    trainer: str = _knob("keras", "training loop", choices=TRAINERS)
    train_steps: int = _knob(1500, "training steps of each run")
    eval_steps: int = _knob(50, "validation steps during training")
    rows: int = _knob(500_000, "rows per span of the generated default data")
    # "criteo": the Kaggle log's id spaces (>500k distinct ids at 500k rows, most
    # seen once); "small": ~2,400 ids each seen often, for fast tests.
    profile: str = _knob("criteo", "profile of the generated default data", choices=DATA_PROFILES)
    spans: int = _knob(1, "spans of the generated default data")
    seed: int = _knob(42, "seed of the generated default data")
    metadata: Optional[str] = _knob(None, "ml-metadata: mysql://user:pass@host:port/db (default: SQLite "
                                          "under the pipeline root)")
    summary: Optional[str] = _knob(None, "where to write the summary JSON (default: <pipeline-root>/summary.json)")
    notify_url: Optional[str] = _knob(None, "webhook that receives one JSON POST per week with its outcome "
                                            "(pushed, blocked by which gate, failed); a failed POST never "
                                            "fails the week")
    beam_args: List[str] = _knob([], "extra Beam pipeline argument, as --beam-arg=--flag=value (repeatable)",
                                 flag="--beam-arg")
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig, metadata={"nested": True})
    window_spans: int = _knob(4, "train on the newest K spans")
    # Cold by default: on the simulation's weeks a cold start over the window beat
    # every warm variant measured (bench/warm_start.py; README "Warm or cold").
    warm_start: bool = _knob(False, "start from last week's blessed model instead of training from scratch",
                             both_ways=True)
    min_auc: float = _knob(0.6, "absolute AUC floor for blessing")
    max_auc_drop: float = _knob(0.01, "largest AUC drop vs the serving model that still blesses")
    # The pusher's serving check (components/model_repository_pusher.py), off at 0.
    latency_budget_ms: float = _knob(0.0, "refuse a push whose p99 latency for 100-candidate requests, measured "
                                          "in a serving process before the push, is over this; 0: no check")
    memory_budget_mb: float = _knob(0.0, "refuse a push whose model adds more than this to a serving process's "
                                         "memory once loaded; 0: no check")
    enable_cache: bool = _knob(True, "reuse TFX's cached executions", negate="--no-cache",
                               negate_help="re-execute every component")
    push_as: str = _knob(STABLE, "label a pushed model stable (all traffic) or canary (beside stable)",
                         choices=LABELS)
    serving_url: Optional[str] = _knob(None, "REST address of the TF Serving (or deepfm-tfx serve) reading the "
                                             "repository: a label moves once it has loaded the version")
    serving_base_path: Optional[str] = _knob(None, "base_path of the model in models.config: where the serving "
                                                   "host mounts the repository; unset keeps the current one "
                                                   "(/models/<name> for a new model)")

    def __post_init__(self):
        if isinstance(self.training, dict):
            self.training = TrainingConfig.from_dict(self.training)

    @property
    def data_root(self) -> str:
        return self.data or os.path.join(
            WORKSPACE, "data",
            f"synthetic-v{synthetic.VERSION}-{self.profile}-{self.rows}rows-{self.spans}spans-seed{self.seed}")

    @property
    def summary_path(self) -> str:
        return self.summary or os.path.join(self.pipeline_root, "summary.json")

    @property
    def training_dict(self) -> Dict[str, Any]:
        """The training knobs as the Trainer's custom_config carries them."""
        d = dataclasses.asdict(self.training)
        d["dnn_units"] = list(d["dnn_units"])
        return d


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def add_field(parser: argparse.ArgumentParser, field: dataclasses.Field, default: Any, dest: str,
              shown: Any = None) -> None:
    """A dataclass field's flag, from its metadata (help, choices, flag, ...).

    `shown`: the default to name in the help when `default` is SUPPRESS (only_given)."""
    meta = field.metadata
    if meta.get("both_ways"):
        action = parser.add_argument(_flag(field), dest=dest, action=argparse.BooleanOptionalAction,
                                     default=default, help=meta["help"])
        # Python 3.10's BooleanOptionalAction appends "(default: False)"; name the switch's state instead.
        if default is not argparse.SUPPRESS:
            action.help = f"{meta['help']} (default: {'on' if default else 'off'})"
        return
    if "negate" in meta:
        parser.add_argument(meta["negate"], dest=dest, action="store_false", default=default,
                            help=meta["negate_help"])
        return
    kind = field.type if isinstance(field.type, type) else None
    # The CLI's formatter appends each default.
    kwargs: Dict[str, Any] = {"dest": dest, "help": meta["help"],
                              "metavar": _flag(field)[2:].replace("-", "_").upper()}
    if default is argparse.SUPPRESS and shown not in (None, [], ()):
        shown = ",".join(map(str, shown)) if isinstance(shown, (list, tuple)) else shown
        kwargs["help"] += f" (default: {shown})"
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
        del kwargs["metavar"]
    if field.name == "beam_args":
        kwargs.update(action="append", default=default if default is argparse.SUPPRESS else [], metavar="ARG")
    elif meta.get("list"):
        kwargs.update(default=default if default is argparse.SUPPRESS else ",".join(map(str, default)),
                      type=lambda s: tuple(int(u) for u in s.split(",")))
    else:
        typ = {"int": int, "float": float, "str": str, "Optional[str]": str,
               "Optional[int]": int}.get(str(field.type), kind or str)
        kwargs.update(type=typ, default=default)
    parser.add_argument(_flag(field), **kwargs)


def add_arguments(parser: argparse.ArgumentParser, names: Optional[Iterable[str]] = None,
                  defaults: Optional[RunConfig] = None, training: bool = True,
                  only_given: bool = False) -> None:
    """Adds RunConfig's (and TrainingConfig's) knobs as flags; `names` picks a subset.

    With only_given, a flag not on the command line leaves no attribute, so
    the caller's own defaults (e.g. an orchestrator's paths) apply.
    """
    defaults = defaults or RunConfig()
    wanted = set(names) if names is not None else None
    for field in dataclasses.fields(RunConfig):
        if field.metadata.get("nested") or (wanted is not None and field.name not in wanted):
            continue
        value = getattr(defaults, field.name)
        add_field(parser, field, argparse.SUPPRESS if only_given else value, field.name, shown=value)
    if training:
        group = parser.add_argument_group("training")
        for field in dataclasses.fields(TrainingConfig):
            value = getattr(defaults.training, field.name)
            add_field(group, field, argparse.SUPPRESS if only_given else value, "training." + field.name,
                      shown=value)


def from_arguments(args: argparse.Namespace, base: Optional[RunConfig] = None) -> RunConfig:
    """A RunConfig from parsed flags; knobs without a flag keep `base`'s values."""
    base = base or RunConfig()
    given = vars(args)
    run = {f.name: given[f.name] for f in dataclasses.fields(RunConfig) if f.name in given}
    training = {k.split(".", 1)[1]: v for k, v in given.items() if k.startswith("training.")}
    return dataclasses.replace(base, **run, training=dataclasses.replace(base.training, **training))
