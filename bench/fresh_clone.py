"""The fresh_clone section: `make run` and `make test` as a new user and CI meet them.

Each runs in a clone of this repository's HEAD made for it (no venv, no data,
no pipeline root; the venv comes from the lock through uv, whose download
cache may be warm), with `../shared` beside it as CI has it. Timed from
outside by bench/runs.py's run_command: wall clock, CPU of the whole process
tree (every process it waited for), and the tree's peak RSS. Issue 27's targets: `make
run` at most 4 minutes, `make test` at most 12, venv included. Uncommitted
changes are not in the clone: the section names the commit it measured.
`make test` takes about as long as the rest of the bench together; leave it
out with `--fresh-clone-steps run`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from typing import Any, Dict, List, Optional

from bench.common import fmt, parse_list, table, verdict
from bench.runs import run_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("run", "test")
TARGET_SECONDS = {"run": 240.0, "test": 720.0}
QUICK_RUN_ARGS = "--rows 5000"
SUMMARY = os.path.join("workspace", "pipeline", "summary.json")  # RunConfig's default pipeline root
_PYTEST_LINE = re.compile(r"=+ (?P<outcome>.*?) in (?P<seconds>[\d.]+)s")


def add_arguments(p) -> None:
    p.add_argument("--fresh-clone-steps", type=lambda s: parse_list(s), default=list(STEPS),
                   help="fresh_clone: which of run,test (default both; test takes ~15 min)")
    p.add_argument("--fresh-clone-source", default=REPO, help="fresh_clone: the repository to clone (its HEAD)")


def clone(source: str, parent: str) -> str:
    """A clone of `source`'s HEAD in parent/deepfm-tfx, with parent/shared pointing at source's ../shared."""
    dest = os.path.join(parent, "deepfm-tfx")
    subprocess.run(["git", "clone", "--quiet", source, dest], check=True)
    shared = os.path.join(os.path.dirname(os.path.abspath(source)), "shared")
    if os.path.isdir(shared):
        os.symlink(shared, os.path.join(parent, "shared"))
    return dest


def pytest_outcome(text: str) -> Optional[Dict[str, Any]]:
    """pytest's last summary line ("449 passed, 1 skipped in 977.20s"): its counts and seconds."""
    found = None
    for line in text.splitlines():
        match = _PYTEST_LINE.search(line)
        if match:
            found = match
    if not found:
        return None
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", found.group("outcome"))}
    return {"counts": counts, "pytest_seconds": float(found.group("seconds"))}


def _commit(source: str) -> Dict[str, Any]:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                           capture_output=True, text=True)
    return {"commit": head.stdout.strip(), "uncommitted_changes_left_out": bool(dirty.stdout.strip())}


def run_step(step: str, source: str, logs: str, quick: bool) -> Dict[str, Any]:
    parent = tempfile.mkdtemp(prefix=f"fresh-{step}-")
    try:
        repo = clone(source, parent)
        argv = ["make", step] + ([f"RUN_ARGS={QUICK_RUN_ARGS}"] if step == "run" and quick else [])
        log = os.path.join(logs, f"make-{step}.log")
        print(f"  make {step} in a fresh clone ({parent}); its output in {log}", flush=True)
        out = {"step": step, **run_command(argv, log, cwd=repo)}
        if step == "run":
            summary = os.path.join(repo, SUMMARY)
            if os.path.exists(summary):
                with open(summary) as f:
                    s = json.load(f)
                out.update(auc=s.get("auc"), bayes_auc_gap=s.get("bayes_auc_gap"), pushed=s.get("pushed"))
        else:
            with open(log, errors="replace") as f:
                out.update(pytest_outcome(f.read()) or {})
        out["target_seconds"] = TARGET_SECONDS[step]
        out["verdict"] = verdict(out["process_seconds"], TARGET_SECONDS[step], higher_is_better=False) \
            if out["exit_code"] == 0 and not quick else "n/a"
        return out
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def run(args, shared: Dict[str, Any]) -> Dict[str, Any]:
    steps: List[str] = [s for s in STEPS if s in args.fresh_clone_steps and not (args.quick and s == "test")]
    logs = os.path.abspath(os.path.join(args.workdir, "fresh_clone"))
    os.makedirs(logs, exist_ok=True)
    out: Dict[str, Any] = {**_commit(args.fresh_clone_source), "steps": []}
    if out["uncommitted_changes_left_out"]:
        print(f"  note: the clone is HEAD ({out['commit']}); this checkout's uncommitted changes are not in it")
    for step in steps:
        out["steps"].append(run_step(step, args.fresh_clone_source, logs, args.quick))
    return out


def show(res: Dict[str, Any]) -> None:
    rows = []
    for s in res["steps"]:
        counts = s.get("counts") or {}
        what = (f"AUC {fmt(s.get('auc'), 4)}, gap {fmt(s.get('bayes_auc_gap'), 4)}" if s["step"] == "run"
                else ", ".join(f"{n} {w}" for w, n in counts.items()) or "no pytest summary")
        rows.append([f"make {s['step']}", s["exit_code"], s["process_seconds"], s["cpu_seconds"],
                     s["peak_rss_mb"], what, s["target_seconds"], s["verdict"]])
    print(table(["command", "exit", "wall s", "CPU s", "peak RSS MB", "outcome", "target s", ""], rows,
                title=f"\nA fresh clone of {res['commit']}, venv included"))
