"""The pipeline section: `deepfm-tfx run` end to end at several sizes, then
re-run unchanged (the cached re-run), against a plain-TFX reference.

Component seconds come from ml-metadata (the run's summary); peak RSS is
summed over the process tree. Beam's DirectRunner modes are compared too.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict

from bench.common import fmt, growth, parse_list, per_row_per_column, ratio, table, verdict, write_partial
from bench.runs import QUICK_TRAIN_STEPS, ensure_data, run_pipeline

NEEDS = ()  # its own runs, on fresh pipeline roots

SYNTHETIC_COLUMNS = 40  # label + 13 numerical + 26 categorical

# The reference: a plain TFX pipeline on a 12-column CSV (seconds).
REFERENCE = {
    "columns": 12,
    "rows": 1_000_000,
    "total_seconds": 644.0,
    "total_seconds_100k": 160.0,
    "components": {"CsvExampleGen": 234.0, "Transform": 192.0, "Evaluator": 136.0,
                   "StatisticsGen": 58.0, "Trainer": 22.0},
}
# Our component that does the reference component's job.
REFERENCE_NODE = {"CsvExampleGen": "SpecCsvExampleGen"}
# The cached re-run may take at most this share of the first run.
CACHED_RERUN_MAX_RATIO = 0.10


def add_arguments(p) -> None:
    p.add_argument("--pipeline-rows", type=lambda s: parse_list(s, int),
                   help="pipeline: sizes, comma-separated (default 100000,1000000,5000000; --quick: 5000,20000)")
    p.add_argument("--no-beam-modes", action="store_true", help="pipeline: skip the Beam DirectRunner comparison")


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    sizes = [5000, 20_000] if args.quick and args.pipeline_rows is None else (args.pipeline_rows or
                                                                               [100_000, 1_000_000, 5_000_000])
    extra = ["--train-steps", str(QUICK_TRAIN_STEPS)] if args.quick else []
    out: Dict[str, Any] = {"runs": {}, "beam_modes": {}}
    for rows in sizes:
        ensure_data(rows)
        root = os.path.join(args.workdir, "runs", f"pipeline-{rows}")
        shutil.rmtree(root, ignore_errors=True)  # a first run must not hit an old cache
        print(f"  pipeline at {rows:,} rows: first run", flush=True)
        first = run_pipeline(root, rows, "keras", extra, "first")
        print(f"    {first['process_seconds']} s, peak RSS {first['peak_rss_mb']} MB; cached re-run", flush=True)
        again = run_pipeline(root, rows, "keras", extra, "cached")
        out["runs"][rows] = figures(rows, first, again)
        write_partial(args, {"pipeline": out})  # an hour-long section keeps what it has so far
    beam_rows = min(sizes)
    if not args.no_beam_modes:
        for mode, beam_args in (("in_memory", []),
                                ("multi_processing x2", ["--beam-arg=--direct_running_mode=multi_processing",
                                                         "--beam-arg=--direct_num_workers=2"])):
            root = os.path.join(args.workdir, "runs", f"beam-{beam_rows}-{mode.split()[0]}")
            shutil.rmtree(root, ignore_errors=True)
            print(f"  Beam {mode} at {beam_rows:,} rows", flush=True)
            r = run_pipeline(root, beam_rows, "keras", extra + beam_args + ["--no-cache"], "run")
            out["beam_modes"][mode] = {"rows": beam_rows, "exit_code": r["exit_code"],
                                       "process_seconds": r["process_seconds"], "peak_rss_mb": r["peak_rss_mb"],
                                       "component_seconds": r["summary"].get("component_seconds", {}),
                                       "log": r["log"]}
        modes = out["beam_modes"]
        out["beam_multi_vs_in_memory"] = ratio(modes["multi_processing x2"]["process_seconds"],
                                               modes["in_memory"]["process_seconds"])
    out["growth"] = growth({n: r["process_seconds"] for n, r in out["runs"].items() if r["exit_code"] == 0})
    out["reference"] = REFERENCE
    return out


def figures(rows: int, first: Dict[str, Any], again: Dict[str, Any]) -> Dict[str, Any]:
    s = first["summary"]
    comp = s.get("component_seconds", {})
    total = first["process_seconds"]
    ref_us_cell = per_row_per_column(REFERENCE["total_seconds"], REFERENCE["rows"], REFERENCE["columns"])
    same_rows = {REFERENCE["rows"]: REFERENCE["total_seconds"], 100_000: REFERENCE["total_seconds_100k"]}.get(rows)
    per_component = {}
    for ref_name, ref_s in REFERENCE["components"].items():
        ours = comp.get(REFERENCE_NODE.get(ref_name, ref_name))
        if ours is None:
            continue
        mine = per_row_per_column(ours, rows, SYNTHETIC_COLUMNS)
        theirs = per_row_per_column(ref_s, REFERENCE["rows"], REFERENCE["columns"])
        per_component[ref_name] = {"seconds": ours, "us_per_cell": mine, "reference_us_per_cell": theirs,
                                   "reference_over_ours_per_cell": ratio(theirs, mine),
                                   "reference_over_ours_per_row": ratio(ref_s / REFERENCE["rows"], ours / rows)}
    return {
        "rows": rows, "columns": SYNTHETIC_COLUMNS, "exit_code": first["exit_code"],
        "process_seconds": total, "runner_wall_seconds": s.get("wall_seconds"),
        "component_seconds": comp, "component_states": s.get("component_states", {}),
        "peak_rss_mb": first["peak_rss_mb"], "peak_rss_mb_by_component": first.get("peak_rss_mb_by_component", {}),
        "rows_per_s": rows / total,
        "us_per_row": total / rows * 1e6, "us_per_cell": per_row_per_column(total, rows, SYNTHETIC_COLUMNS),
        "reference_us_per_cell": ref_us_cell,
        "reference_over_ours_per_cell": ratio(ref_us_cell, per_row_per_column(total, rows, SYNTHETIC_COLUMNS)),
        # Fixed costs dominate small runs: compare with the reference at the same row count where it has one.
        "same_rows_reference_seconds": same_rows,
        "same_rows_reference_over_ours_per_cell": ratio(
            per_row_per_column(same_rows, rows, REFERENCE["columns"]) if same_rows else None,
            per_row_per_column(total, rows, SYNTHETIC_COLUMNS)),
        "per_component_vs_reference": per_component,
        "auc": s.get("auc"), "bayes_auc": s.get("bayes_auc"),
        "cached": {"exit_code": again["exit_code"], "process_seconds": again["process_seconds"],
                   "peak_rss_mb": again["peak_rss_mb"],
                   "component_states": again["summary"].get("component_states", {})},
        "cached_over_first": ratio(again["process_seconds"], total),
        # What the cache did not cover on the re-run (resolver nodes always run, in ~0 s).
        "cached_reexecuted": {n: sec for n, sec in again["summary"].get("component_seconds", {}).items()
                              if again["summary"].get("component_states", {}).get(n) != "CACHED" and sec >= 0.5},
        "cached_verdict": verdict(ratio(again["process_seconds"], total), CACHED_RERUN_MAX_RATIO,
                                  higher_is_better=False),
        "logs": [first["log"], again["log"]],
    }


def show(res: Dict[str, Any]) -> None:
    runs = res["runs"]
    nodes = []
    for r in runs.values():
        nodes += [n for n in r["component_seconds"] if n not in nodes]
    rows = [[n] + [runs[k]["component_seconds"].get(n) for k in runs] for n in nodes]
    rows += [["process wall s"] + [runs[k]["process_seconds"] for k in runs],
             ["peak RSS MB (tree)"] + [runs[k]["peak_rss_mb"] for k in runs],
             ["rows/s"] + [runs[k]["rows_per_s"] for k in runs],
             ["us per row"] + [runs[k]["us_per_row"] for k in runs],
             ["us per row x column"] + [runs[k]["us_per_cell"] for k in runs],
             ["reference(1M)/ours per cell"] + [runs[k]["reference_over_ours_per_cell"] for k in runs],
             ["reference(same rows)/ours per cell"] + [runs[k].get("same_rows_reference_over_ours_per_cell")
                                                       for k in runs],
             ["cached re-run s"] + [runs[k]["cached"]["process_seconds"] for k in runs],
             ["cached / first"] + [runs[k]["cached_over_first"] for k in runs],
             ["re-executed when cached"] + [", ".join(f"{n} {v:.0f}s" for n, v in runs[k]["cached_reexecuted"].items())
                                            or "none" for k in runs],
             ["cached <= 10%"] + [runs[k]["cached_verdict"] for k in runs],
             ["AUC (Bayes)"] + [f"{fmt(runs[k]['auc'])} ({fmt(runs[k]['bayes_auc'])})" for k in runs]]
    print(table(["component seconds (ml-metadata)"] + [f"{int(k):,} rows" for k in runs], rows,
                title="\nPipeline: LocalDagRunner, synthetic data (40 columns)"))
    for g in res.get("growth", []):
        print(f"  {g['rows']:>9,} rows: {g['us_per_row']:.1f} us/row, x{g['per_row_vs_smallest']:.2f} "
              f"the smallest size's per-row cost")
    for k, r in runs.items():
        by = sorted(r.get("peak_rss_mb_by_component", {}).items(), key=lambda kv: -kv[1])[:4]
        if by:
            print(f"  {int(k):,} rows, peak RSS of the tree while each component ran (MB): "
                  + ", ".join(f"{n} {v:,}" for n, v in by))
    for k, r in runs.items():
        for name, v in r["per_component_vs_reference"].items():
            print(f"  {int(k):,} rows {name}: {v['us_per_cell']:.3g} us/cell vs reference "
                  f"{v['reference_us_per_cell']:.3g} (reference/ours {v['reference_over_ours_per_cell']:.2f}x "
                  f"per cell, {v['reference_over_ours_per_row']:.2f}x per row)")
    if res.get("beam_modes"):
        modes = res["beam_modes"]
        nodes = sorted({n for m in modes.values() for n in m["component_seconds"]})
        rows = [[n] + [m["component_seconds"].get(n) for m in modes.values()] for n in nodes]
        rows += [["process wall s"] + [m["process_seconds"] for m in modes.values()],
                 ["peak RSS MB (tree)"] + [m["peak_rss_mb"] for m in modes.values()]]
        print(table(["Beam DirectRunner"] + list(modes), rows,
                    title=f"\nBeam modes at {next(iter(modes.values()))['rows']:,} rows (no cache)"))
        print(f"  multi_processing/in_memory wall: {fmt(res.get('beam_multi_vs_in_memory'))}")
