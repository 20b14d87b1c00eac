"""Weeks of automatic retraining on synthetic data, one pipeline run per week.

Each week a new span arrives and its planted truth drifts, so last week's
model is measurably stale. One week can be deliberately broken, and a gate
must stop it. Every week is judged on the rows the Evaluator scored: the
Bayes AUC (the planted truth), the new model's AUC and the AUC of last week's
serving model (the baseline).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any, Dict, List, Optional

from deepfm_tfx.contracts import CANARY, ROLL_BACK
from deepfm_tfx.pipeline import configs
from deepfm_tfx.pipeline.orchestrators import local
from deepfm_tfx.pipeline.simulation import BAD_KINDS, WORSE_CANDIDATE, OnlineConfig, online_experiment, week_metadata
from deepfm_tfx.pipeline.simulation.server_process import ServerProcess
from deepfm_tfx.synthetic import generator

# Marks a folder as a simulation's, so a re-run may clear it and nothing else.
MARKER = ".deepfm-tfx-simulation"
OWNED = ("data", "pipeline", "model_repository", "experiments")


class WorkdirError(ValueError):
    pass


def prepare_workdir(workdir: str) -> None:
    """Empties a previous simulation's folder; refuses any other non-empty folder."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise WorkdirError(f"--workdir {workdir} is a file")
    if os.path.isdir(workdir) and os.listdir(workdir):
        if not os.path.exists(os.path.join(workdir, MARKER)):
            raise WorkdirError(f"--workdir {workdir} is not empty and is not a previous simulation's "
                               f"(no {MARKER}); refusing to delete anything in it")
        for name in OWNED:  # only what a simulation creates
            shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, MARKER), "w") as f:
        f.write("created by deepfm-tfx simulate; its data/, pipeline/ and model_repository/ are cleared on re-run\n")


def week_row(week: int, bad: str, summary: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    auc, baseline = summary.get("auc"), summary.get("baseline_auc")
    return {
        "week": week, "bad": bad,
        "spans": summary.get("window_spans"),
        "bayes_auc": summary.get("bayes_auc"),
        # Last week's planted truth on this week's rows: the cost of drift itself.
        "stale_bayes_auc": summary.get("stale_bayes_auc"),
        "auc": auc, "baseline_auc": baseline,
        "auc_gain": auc - baseline if auc is not None and baseline is not None else None,
        "eval_rows": summary.get("example_count"),
        "blessed": bool(summary.get("blessed")), "pushed": bool(summary.get("pushed")),
        "pushed_version": summary.get("pushed_version") if summary.get("pushed") else None,
        "not_pushed_reason": summary.get("not_pushed_reason"),
        "blocked_by": summary.get("blocked_by"), "reason": summary.get("error"),
        "warm_started": summary.get("warm_started"),
        "learning_rate_first_step": summary.get("learning_rate_first_step"),
        "weight_change_max": summary.get("weight_change_max"),
        "seconds": round(seconds, 1),
    }


def run_weeks(workdir: str, weeks: int, config: configs.RunConfig, bad_week: int = 0,
              bad_kind: str = "broken_column", drift: float = generator.DEFAULT_DRIFT,
              online: Optional[OnlineConfig] = None) -> List[Dict[str, Any]]:
    """Runs `weeks` weekly pipeline runs; `config` gives every knob but the paths.

    With `online`, each week's model is pushed as canary and A/B tested against
    stable on simulated traffic (online_experiment.py), and the decision is applied.
    """
    if bad_kind not in BAD_KINDS:
        raise ValueError(f"bad kind must be one of {BAD_KINDS}")
    if bad_kind == WORSE_CANDIDATE and online is None:
        raise ValueError(f"a {WORSE_CANDIDATE} week needs the online phase: only an A/B test can stop it")
    prepare_workdir(workdir)
    data_root = os.path.join(workdir, "data")
    config = dataclasses.replace(
        config, data=data_root, pipeline_root=os.path.join(workdir, "pipeline"),
        model_repository=os.path.join(workdir, "model_repository"), summary=None)
    if online is not None:
        config = dataclasses.replace(config, push_as=CANARY)
    server = None
    table = []
    try:
        for week in range(1, weeks + 1):
            bad = bad_kind if week == bad_week else None
            table.append(_week(week, bad, config, data_root, drift, online, server))
            if online is not None and server is None and table[-1]["pushed"]:
                # The first push made a stable version: from now on a server serves the repository.
                server = ServerProcess(config.model_repository, os.path.join(workdir, "experiments"),
                                       workdir).start()
                config = dataclasses.replace(config, serving_url=server.url)
                table[-1]["serving_version"] = table[-1]["pushed_version"]
    finally:
        if server is not None:
            server.stop()
    with open(os.path.join(config.pipeline_root, "simulation.json"), "w") as f:
        json.dump(table, f, indent=2)
    return table


def _week(week: int, bad: Optional[str], config: configs.RunConfig, data_root: str, drift: float,
          online: Optional[OnlineConfig], server) -> Dict[str, Any]:
    print(f"\n== week {week}{' (deliberately bad: ' + bad + ')' if bad else ''}", flush=True)
    data_kind = "shuffled_labels" if bad == WORSE_CANDIDATE else bad
    if bad == WORSE_CANDIDATE:
        # Trained on the shuffled week alone, from scratch, with the offline gates lowered:
        # a worse model reaches the canary, and only the online test can stop it.
        config = dataclasses.replace(config, window_spans=1, warm_start=False, min_auc=0.0, max_auc_drop=1.0)
    generator.generate(
        data_root, rows=config.rows, spans=1, first_span=week, seed=config.seed, drift=drift,
        profile=config.profile,
        shuffle_labels_span=week if data_kind == "shuffled_labels" else None,
        broken_column_span=week if data_kind == "broken_column" else None)
    started = time.monotonic()
    try:
        summary = local.run(config)
    except local.RunFailed as failed:
        summary = failed.summary
    row = week_row(week, bad, summary, time.monotonic() - started)
    if online is None or server is None:
        return dict(row, experiment=None, decision=None, decision_correct=None, true_logloss=None,
                    serving_version=None)
    result = online_experiment.run_week(week, config, summary, server, online, drift,
                                        week_metadata.statistics_uri(config, summary))
    if result["decision"] == ROLL_BACK:
        week_metadata.revoke(config, summary, result["experiment"]["canary_version"],
                             f"rolled back online by experiment {result['experiment']['name']}")
    return dict(row, **result)


def retrained_weeks_beat_baseline(table: List[Dict[str, Any]]) -> bool:
    """Every good week that was trained against a baseline beats it on its own rows."""
    judged = [r for r in table if not r["bad"] and r["baseline_auc"] is not None and r["auc"] is not None]
    return all(r["auc"] > r["baseline_auc"] for r in judged)


def format_table(table: List[Dict[str, Any]]) -> str:
    def f(v, spec=".4f"):
        return "-" if v is None else format(v, spec) if isinstance(v, float) else str(v)
    lines = [f"{'week':>4}  {'spans':<9} {'bayes':>7} {'stale':>7} {'auc':>7} {'baseline':>8} {'gain':>7}  "
             f"{'pushed':<6} {'version':<10} {'warm':<5} {'lr@1':>7} {'moved':>6}  {'blocked by / why':<20} "
             f"{'seconds':>7}"]
    for r in table:
        spans = ",".join(map(str, r["spans"])) if r["spans"] else "-"
        why = r["blocked_by"] or (r["not_pushed_reason"] if not r["pushed"] else None)
        lines.append(
            f"{r['week']:>4}  {spans:<9} {f(r['bayes_auc']):>7} {f(r['stale_bayes_auc']):>7} {f(r['auc']):>7} "
            f"{f(r['baseline_auc']):>8} {f(r['auc_gain'], '+.4f'):>7}  {str(r['pushed']):<6} "
            f"{f(r['pushed_version']):<10} {f(r['warm_started']):<5} {f(r['learning_rate_first_step'], '.1e'):>7} "
            f"{f(r['weight_change_max'], '.3f'):>6}  {f(why):<20} {r['seconds']:>7.1f}")
    return "\n".join(lines)
