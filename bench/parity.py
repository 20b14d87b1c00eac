"""The parity section: the Keras and Estimator trainers on the same data and
config, compared by AUC and speed (in the pipeline, and as the trainer
section's interleaved loops when that section ran first)."""
from __future__ import annotations

from typing import Any, Dict

from bench.common import fmt, ratio, table, verdict

NEEDS = ("keras", "estimator")
MAX_AUC_GAP = 0.005


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"pipeline": {}}
    batch, steps = 1024, shared["train_steps"]
    for trainer in NEEDS:
        default = shared["default_runs"][trainer]
        s = default["summary"]
        trainer_s = s["component_seconds"].get("Trainer")
        out["pipeline"][trainer] = {
            "auc": s["auc"], "bayes_auc": s.get("bayes_auc"), "logloss": s.get("logloss"),
            "trainer_seconds": trainer_s,
            # The whole component: TF start-up, training, validation and export.
            "trainer_examples_per_s": ratio(batch * steps, trainer_s),
            "pipeline_root": default["pipeline_root"]}
    k, e = out["pipeline"]["keras"], out["pipeline"]["estimator"]
    gap = abs(k["auc"] - e["auc"]) if k["auc"] is not None and e["auc"] is not None else None
    out["pipeline_auc_gap"] = gap
    out["pipeline_trainer_seconds_ratio"] = ratio(e["trainer_seconds"], k["trainer_seconds"])
    loops = shared.get("trainer")
    if loops:
        by = {r["name"]: r for r in loops["contenders"]}
        out["loops"] = {n: {"eval_auc": by[n]["eval_auc"], "examples_per_s": by[n]["examples_per_s"]}
                        for n in ("keras-trainer", "estimator-trainer")}
        out["loops_auc_gap"] = abs(by["keras-trainer"]["eval_auc"] - by["estimator-trainer"]["eval_auc"])
        out["loops_speed_ratio"] = ratio(by["keras-trainer"]["examples_per_s"],
                                         by["estimator-trainer"]["examples_per_s"])
    gaps = [g for g in (gap, out.get("loops_auc_gap")) if g is not None]
    out["verdict"] = verdict(max(gaps) if gaps else None, MAX_AUC_GAP, higher_is_better=False)
    return out


def show(res: Dict[str, Any]) -> None:
    rows = [[f"pipeline {t}", v["auc"], v["bayes_auc"], v["trainer_seconds"], v["trainer_examples_per_s"]]
            for t, v in res["pipeline"].items()]
    for n, v in res.get("loops", {}).items():
        rows.append([f"loop {n}", v["eval_auc"], None, None, v["examples_per_s"]])
    print(table(["run", "AUC", "Bayes AUC", "Trainer s", "ex/s"], rows,
                title="\nParity: Keras vs Estimator trainer, same data and config"))
    print(f"  pipeline AUC gap {fmt(res['pipeline_auc_gap'])}, loop AUC gap {fmt(res.get('loops_auc_gap'))} "
          f"(target <= {MAX_AUC_GAP}) -> {res['verdict']}; Estimator/Keras Trainer seconds "
          f"{fmt(res['pipeline_trainer_seconds_ratio'])}")
