"""Warm vs cold, measured: how many steps a warm-started week needs to reach a cold start's AUC.

Runs the real pipeline week after week on the simulation's drifting data.
For each week from the second on, every variant re-runs that week (ExampleGen
and Transform come from the cache) and is scored by the Evaluator on the
same held-out rows. The production setting runs last, so the next week
warm-starts from it, as it would in production.

    .venv/bin/python -m bench.warm_start [--weeks 4] [--rows 20000]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict, List

COLD_STEPS = 300
WARM_STEPS = (25, 50, 100, 150, 300)
CARRY_STEPS = (100, 300)


def variants() -> List[Dict[str, Any]]:
    out = [{"name": f"cold {COLD_STEPS}", "warm_start": False, "steps": COLD_STEPS, "slots": "reset"}]
    out += [{"name": f"warm reset {s}", "warm_start": True, "steps": s, "slots": "reset"} for s in WARM_STEPS]
    out += [{"name": f"warm carry {s}", "warm_start": True, "steps": s, "slots": "carry"} for s in CARRY_STEPS]
    return out


def run(workdir: str, weeks: int, rows: int, seed: int) -> List[Dict[str, Any]]:
    from deepfm_tfx.pipeline import configs, console
    from deepfm_tfx.pipeline.orchestrators import local
    from deepfm_tfx.pipeline.simulation.weeks import prepare_workdir
    from deepfm_tfx.synthetic import generator

    console.configure_logging(False)
    prepare_workdir(workdir)
    base = configs.RunConfig(
        data=os.path.join(workdir, "data"), pipeline_root=os.path.join(workdir, "pipeline"),
        model_repository=os.path.join(workdir, "model_repository"), rows=rows, seed=seed,
        train_steps=COLD_STEPS)
    production = dataclasses.replace(base)  # the shipped defaults: warm, slots reset
    results = []

    def attempt(config) -> Dict[str, Any]:
        try:
            return local.run(config)
        except local.RunFailed as failed:
            return failed.summary

    for week in range(1, weeks + 1):
        generator.generate(base.data, rows=rows, spans=1, first_span=week, seed=seed)
        print(f"== week {week}", flush=True)
        if week > 1:
            for v in variants():
                config = dataclasses.replace(
                    base, warm_start=v["warm_start"], train_steps=v["steps"],
                    training=dataclasses.replace(base.training, warm_start_slots=v["slots"]))
                s = attempt(config)
                results.append({"week": week, **v, "auc": s.get("auc"), "baseline_auc": s.get("baseline_auc"),
                                "bayes_auc": s.get("bayes_auc"), "warm_started": s.get("warm_started"),
                                "trainer_seconds": s.get("component_seconds", {}).get("Trainer")})
                print(f"  {v['name']:<16} auc {s.get('auc')}", flush=True)
        attempt(production)
    return results


def steps_to_reach_cold(results: List[Dict[str, Any]]) -> Dict[int, Any]:
    """Per week: the fewest warm (reset) steps whose AUC reaches the cold start's."""
    out = {}
    for week in sorted({r["week"] for r in results}):
        rows = [r for r in results if r["week"] == week]
        cold = next(r["auc"] for r in rows if not r["warm_start"])
        reached = [r["steps"] for r in rows if r["warm_start"] and r["slots"] == "reset"
                   and r["auc"] is not None and r["auc"] >= cold]
        out[week] = min(reached) if reached else None
    return out


def format_table(results: List[Dict[str, Any]]) -> str:
    weeks = sorted({r["week"] for r in results})
    names = [v["name"] for v in variants()]
    lines = ["| variant | " + " | ".join(f"week {w} AUC" for w in weeks) + " | mean |",
             "| --- | " + " | ".join("---:" for _ in weeks) + " | ---: |"]
    for name in names:
        aucs = [next((r["auc"] for r in results if r["week"] == w and r["name"] == name), None) for w in weeks]
        known = [a for a in aucs if a is not None]
        mean = sum(known) / len(known) if known else None
        lines.append(f"| {name} | " + " | ".join("-" if a is None else f"{a:.4f}" for a in aucs)
                     + f" | {'-' if mean is None else f'{mean:.4f}'} |")
    baseline = [next((r["baseline_auc"] for r in results if r["week"] == w), None) for w in weeks]
    lines.append("| last week's model (baseline) | " + " | ".join("-" if a is None else f"{a:.4f}" for a in baseline)
                 + " | |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.warm_start", description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--weeks", type=int, default=4)
    p.add_argument("--rows", type=int, default=20_000, help="rows per weekly span")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", default=os.path.join("workspace", "bench", "warm_start"))
    p.add_argument("--out", default=os.path.join("bench", "warm_start.json"))
    args = p.parse_args()
    from deepfm_tfx.pipeline import console
    console.silence_before_imports(False)
    results = run(args.workdir, args.weeks, args.rows, args.seed)
    reach = steps_to_reach_cold(results)
    print("\n" + format_table(results))
    print("\nwarm (slots reset) steps to reach the cold start's AUC at "
          f"{COLD_STEPS} steps: " + ", ".join(f"week {w}: {s if s is not None else 'not reached'}"
                                              for w, s in reach.items()))
    with open(args.out, "w") as f:
        json.dump({"results": results, "steps_to_reach_cold": reach}, f, indent=2)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
