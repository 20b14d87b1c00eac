"""`python -m bench` (or `make bench`): runs benchmark sections, prints their
tables and merges their results into bench/results.json.

A section is a module bench/<name>.py with
  run(args, shared) -> dict   measures; `shared["default_runs"][trainer]` is the
                              default pipeline run (made on first use), and
                              `shared[<section>]` an earlier section's result
  show(result) -> None        prints its tables (without it, the JSON is printed)
  NEEDS = ("keras", ...)      optional: default runs to make before timing it
  add_arguments(parser)       optional: its own flags
Only the chosen sections' modules are imported; nothing heavy at import time.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from bench.common import machine, merge_results, native_stderr_to, parse_list, quiet, write_partial
from bench.runs import DefaultRuns

# Run order: parity also reports the trainer section's loops, so it follows it.
SECTIONS = ("ingest", "trainer", "parity", "serving", "serving_inprocess", "storage", "scale", "admission",
            "learning_curve", "cluster", "transform_placement", "pipeline", "fresh_clone")
TRAINERS = ("keras", "estimator")


class Section(NamedTuple):
    name: str
    run: Callable[[argparse.Namespace, Dict[str, Any]], Dict[str, Any]]
    show: Callable[[Dict[str, Any]], None]
    needs: Sequence[str]
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]]


def available() -> List[str]:
    """Sections whose module is present (bench/serving.py is added separately)."""
    return [n for n in SECTIONS if importlib.util.find_spec(f"bench.{n}") is not None]


def load(name: str) -> Section:
    module = importlib.import_module(f"bench.{name}")
    # section_<name>/print_<name> are the names bench.py used before the split.
    run = getattr(module, "run", None) or getattr(module, f"section_{name}", None)
    show = getattr(module, "show", None) or getattr(module, f"print_{name}", None)
    if run is None:
        raise ValueError(f"bench/{name}.py has no run(args, shared) function")
    return Section(name, run, show or (lambda result: print(json.dumps(result, indent=2, default=str))),
                   tuple(getattr(module, "NEEDS", ())), getattr(module, "add_arguments", None))


def _sections(text: str) -> List[str]:
    names = parse_list(text)
    present = available()
    for name in names:
        if name not in SECTIONS:
            raise argparse.ArgumentTypeError(f"unknown section {name!r}; choose from {','.join(present)}")
        if name not in present:
            raise argparse.ArgumentTypeError(
                f"section {name!r} needs bench/{name}.py, which is not there"
                + ("; serving_inprocess measures the SavedModel in-process" if name == "serving" else ""))
    return [n for n in SECTIONS if n in names]  # run order, not the order given


def _common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sections", type=_sections, default=None,
                   help=f"comma-separated subset of {','.join(available())} (default: all of them)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the sections")
    p.add_argument("--out", default=os.path.join("bench", "results.json"))
    p.add_argument("--workdir", default=os.path.join("workspace", "bench"))
    p.add_argument("--rerun", action="store_true", help="redo the default pipeline runs instead of reusing them")


def build_parser(argv: Optional[Sequence[str]] = None) -> argparse.ArgumentParser:
    """The chosen sections' flags join the common ones, so an unchosen module is never imported."""
    pre = argparse.ArgumentParser(add_help=False)
    _common_arguments(pre)
    known, _ = pre.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_arguments(parser)
    for name in known.sections or available():
        section = load(name)
        if section.add_arguments:
            section.add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    sections = [load(n) for n in (args.sections or available())]
    quiet()
    os.makedirs(args.workdir, exist_ok=True)
    default_runs = DefaultRuns(args.workdir, args.quick, args.rerun)
    shared: Dict[str, Any] = {"default_runs": default_runs, "train_steps": default_runs.train_steps}
    # The default runs take minutes; make them before any section's clock starts.
    for trainer in TRAINERS:
        if any(trainer in s.needs for s in sections):
            default_runs.make(trainer)
    results: Dict[str, Any] = {}
    started = time.time()
    for s in sections:
        load_avg = os.getloadavg()
        print(f"\n== {s.name} (load average {load_avg[0]:.1f} {load_avg[1]:.1f} {load_avg[2]:.1f} "
              f"on {os.cpu_count()} CPUs)", flush=True)
        t = time.time()
        with native_stderr_to(os.path.join(args.workdir, "native-stderr.log")):
            results[s.name] = s.run(args, shared)
        results[s.name]["section_seconds"] = round(time.time() - t, 1)
        # Other work on the machine skews every figure; keep the evidence.
        results[s.name]["load_average_before_after"] = [list(load_avg), list(os.getloadavg())]
        shared[s.name] = results[s.name]
        s.show(results[s.name])
        write_partial(args, {s.name: results[s.name]})
    merge_results(args.out, {"machine": machine(), "quick": args.quick,
                             "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
                             "last_sections_seconds": round(time.time() - started, 1)})
    print(f"\nresults written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
