"""`deepfm-tfx simulate`: weeks of automatic retraining, one pipeline run per week.

Each week a new span of synthetic data arrives (its ground truth drifting
slowly); one week is deliberately broken and must be stopped by a gate.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, List

from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.synthetic import generator

from deepfm_tfx.synthetic import BAD_KINDS


def run_weeks(workdir: str, weeks: int, rows: int, bad_week: int, bad_kind: str, seed: int,
              train_steps: int, window_spans: int, min_auc: float, trainer: str = "keras",
              beam_args: List[str] = (), warm_start: bool = True) -> List[Dict[str, Any]]:
    if bad_kind not in BAD_KINDS:
        raise ValueError(f"bad kind must be one of {BAD_KINDS}")
    shutil.rmtree(workdir, ignore_errors=True)  # a simulation always starts from an empty world
    data_root = os.path.join(workdir, "data")
    config = configs.RunConfig(
        data=data_root, pipeline_root=os.path.join(workdir, "pipeline"),
        model_repository=os.path.join(workdir, "model_repository"), trainer=trainer,
        train_steps=train_steps, window_spans=window_spans, min_auc=min_auc, seed=seed, warm_start=warm_start,
        beam_args=list(beam_args))
    table = []
    for week in range(1, weeks + 1):
        bad = week == bad_week
        print(f"\n== week {week}{' (deliberately bad: ' + bad_kind + ')' if bad else ''}", flush=True)
        generator.generate(
            data_root, rows=rows, spans=1, first_span=week, seed=seed,
            shuffle_labels_span=week if bad and bad_kind == "shuffled_labels" else None,
            broken_column_span=week if bad and bad_kind == "broken_column" else None)
        started = time.monotonic()
        try:
            summary = local.run(config)
        except local.RunFailed as failed:
            summary = failed.summary
        table.append({
            "week": week, "bad": bad_kind if bad else None,
            "spans": summary.get("window_spans"), "auc": summary.get("auc"),
            "baseline_auc": summary.get("baseline_auc"), "bayes_auc": summary.get("bayes_auc"),
            "blessed": bool(summary.get("blessed")), "pushed": bool(summary.get("pushed")),
            "pushed_version": summary.get("pushed_version") if summary.get("pushed") else None,
            "blocked_by": summary.get("blocked_by"), "reason": summary.get("error"),
            "warm_started": summary.get("warm_started"), "seconds": round(time.monotonic() - started, 1),
        })
    with open(os.path.join(config.pipeline_root, "simulation.json"), "w") as f:
        json.dump(table, f, indent=2)
    return table


def format_table(table: List[Dict[str, Any]]) -> str:
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)
    lines = [f"{'week':>4}  {'spans':<12} {'auc':>7} {'baseline':>8} {'bayes':>7}  {'blessed':<7} "
             f"{'pushed version':<14} {'warm':<5} {'blocked by':<16} {'seconds':>7}"]
    for r in table:
        spans = ",".join(map(str, r["spans"])) if r["spans"] else "-"
        lines.append(f"{r['week']:>4}  {spans:<12} {f(r['auc']):>7} {f(r['baseline_auc']):>8} "
                     f"{f(r['bayes_auc']):>7}  {str(r['blessed']):<7} {f(r['pushed_version']):<14} "
                     f"{f(r['warm_started']):<5} {f(r['blocked_by']):<16} {r['seconds']:>7.1f}")
    return "\n".join(lines)
