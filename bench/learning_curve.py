"""The learning_curve section: the default model's AUC against the Bayes AUC at
100k, 500k and 2M rows of the criteo profile.

Each size is one `deepfm-tfx run` with the defaults on a fresh pipeline root,
training for the same number of passes over its data as the default run
makes at 500k rows (1,500 steps of 1,024 over 450k training rows: 3.4
passes), so the curve shows what more data buys rather than more steps.
The gap is measured on the rows the Evaluator scored.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict

from bench.common import fmt, parse_list, table, verdict, write_partial
from bench.runs import DEFAULT_TRAIN_STEPS, ensure_data, run_pipeline

NEEDS = ()
SIZES, QUICK_SIZES = (100_000, 500_000, 2_000_000), (5000, 20_000)
PASSES = DEFAULT_TRAIN_STEPS * 1024 / 450_000
GAP_TARGET, GAP_TARGET_ROWS = 0.012, 500_000
BATCH = 1024


def add_arguments(p) -> None:
    p.add_argument("--curve-rows", type=lambda s: parse_list(s, int),
                   help="learning_curve: sizes (default 100000,500000,2000000; --quick: 5000,20000)")


def steps_for(rows: int) -> int:
    """The same passes over the 90% training split at every size."""
    return max(int(round(PASSES * 0.9 * rows / BATCH)), 20)


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    sizes = args.curve_rows or list(QUICK_SIZES if args.quick else SIZES)
    out: Dict[str, Any] = {"passes": PASSES, "runs": []}
    defaults = shared["default_runs"]
    for rows in sizes:
        steps = steps_for(rows)
        print(f"  learning curve at {rows:,} rows, {steps:,} steps", flush=True)
        if rows == defaults.rows and steps == defaults.train_steps:
            r = defaults["keras"]  # the default run is this point of the curve: made once per bench
        else:
            ensure_data(rows, profile="criteo")
            root = os.path.join(args.workdir, "runs", f"curve-{rows}")
            shutil.rmtree(root, ignore_errors=True)
            r = run_pipeline(root, rows, "keras", ["--train-steps", str(steps), "--profile", "criteo"], "run")
        s = r["summary"]
        out["runs"].append({"rows": rows, "train_steps": steps, "exit_code": r["exit_code"], "auc": s.get("auc"),
                            "bayes_auc": s.get("bayes_auc"), "gap": s.get("bayes_auc_gap"),
                            "logloss": s.get("logloss"), "bayes_logloss": s.get("bayes_logloss"),
                            "num_ids": s.get("num_ids"), "distinct_ids": s.get("distinct_ids"),
                            "admitted_ids": s.get("admitted_ids"), "rare_row_share": s.get("rare_row_share"),
                            "process_seconds": r["process_seconds"], "peak_rss_mb": r["peak_rss_mb"],
                            "component_seconds": s.get("component_seconds", {}), "log": r["log"]})
        write_partial(args, {"learning_curve": out})
    at = [r for r in out["runs"] if r["rows"] == GAP_TARGET_ROWS]
    out["gap_at_target_rows"] = at[0]["gap"] if at else None
    out["gap_verdict"] = verdict(out["gap_at_target_rows"], GAP_TARGET, higher_is_better=False)
    return out


def show(res: Dict[str, Any]) -> None:
    rows = [[f"{r['rows']:,}", r["train_steps"], r["distinct_ids"], r.get("admitted_ids"), r["num_ids"], r["auc"],
             r["bayes_auc"], r["gap"], r["logloss"], r["bayes_logloss"], r["process_seconds"]] for r in res["runs"]]
    print(table(["rows", "steps", "distinct ids", "admitted ids", "table rows", "AUC", "Bayes AUC", "gap", "logloss",
                 "Bayes logloss", "run s"], rows,
                title=f"\nLearning curve: default model on the criteo profile ({res['passes']:.1f} passes each)"))
    print(f"  gap to the Bayes AUC at {GAP_TARGET_ROWS:,} rows: {fmt(res['gap_at_target_rows'])} "
          f"(target <= {GAP_TARGET}) -> {res['gap_verdict']}")
