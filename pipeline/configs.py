"""Run configuration: every knob of a run, with the local defaults.

The topology (pipeline.py) takes these as arguments; each orchestrator's
runner fills them from its own flags or environment.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

from pipeline import synthetic_data
from schemas.feature_spec import DEFAULT_SPEC

PIPELINE_NAME = "deepfm_tfx"
MODEL_NAME = "deepfm"
WORKSPACE = "workspace"


@dataclasses.dataclass
class RunConfig:
    data: Optional[str] = None                 # None: generate the synthetic default
    features: str = DEFAULT_SPEC
    pipeline_root: str = os.path.join(WORKSPACE, "pipeline")
    model_repository: str = "model_repository"
    model_name: str = MODEL_NAME
    trainer: str = "keras"
    train_steps: int = 1500
    eval_steps: int = 50
    rows: int = 500_000                       # rows per span of the generated default
    spans: int = 1
    seed: int = 42
    metadata: Optional[str] = None            # None: SQLite under the pipeline root
    summary: Optional[str] = None
    beam_args: List[str] = dataclasses.field(default_factory=list)
    training: Dict[str, Any] = dataclasses.field(default_factory=dict)
    window_spans: int = 4                     # train on the newest K spans
    warm_start: bool = True
    min_auc: float = 0.6
    max_auc_drop: float = 0.01
    enable_cache: bool = True

    @property
    def data_root(self) -> str:
        return self.data or os.path.join(
            WORKSPACE, "data", f"synthetic-v{synthetic_data.VERSION}-{self.rows}rows-{self.spans}spans-seed{self.seed}")

    @property
    def summary_path(self) -> str:
        return self.summary or os.path.join(self.pipeline_root, "summary.json")


# Beam's DirectRunner defaults for one machine; --beam-arg adds to these.
DEFAULT_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
