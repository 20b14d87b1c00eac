"""Pipeline runs as subprocesses: the pipeline section's subject, and the
default run whose Transform output and pushed models the other sections use."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

from deepfm_tfx.contracts import TRAINING_INFO_FILE

# The default run every other section reads: 500k rows, or 5k with --quick.
DEFAULT_ROWS, QUICK_ROWS = 500_000, 5000
DEFAULT_TRAIN_STEPS, QUICK_TRAIN_STEPS = 1500, 200


class TreeSampler:
    """Polls the resident set size of a process and all its descendants;
    with `log`, also the peak per component the run's progress lines name."""

    def __init__(self, pid: int, interval: float = 0.5, log: Optional[str] = None):
        import psutil
        self._psutil = psutil
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak_bytes = 0
        self.log = log
        self.peak_by_component: Dict[str, int] = {}
        # The tree's RSS when each component started: its peak minus this is what it added.
        self.start_by_component: Dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except self._psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except self._psutil.Error:
                pass  # exited between listing and reading
        self.peak_bytes = max(self.peak_bytes, total)
        current = self._current_component()
        if current:
            self.peak_by_component[current] = max(self.peak_by_component.get(current, 0), total)
            self.start_by_component.setdefault(current, total)
        return total

    def _current_component(self) -> Optional[str]:
        if not self.log:
            return None
        try:
            with open(self.log, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(f.tell() - 4096, 0))
                tail = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        started = [line.split("▶", 1)[1].split()[0] for line in tail.splitlines() if "▶" in line]
        return started[-1] if started else None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cli() -> List[str]:
    """The installed `deepfm-tfx` next to this Python, or its entry point called directly."""
    exe = os.path.join(os.path.dirname(sys.executable), "deepfm-tfx")
    if os.path.exists(exe):
        return [exe]
    return [sys.executable, "-c", "import sys; from deepfm_tfx.pipeline.cli import main; sys.exit(main())"]


def ensure_data(rows: int, seed: int = 42, profile: Optional[str] = None) -> str:
    """The run command's default data folder (default profile: RunConfig's), generated outside the timed run."""
    from deepfm_tfx.pipeline.configs import RunConfig
    config = RunConfig(rows=rows, seed=seed, **({"profile": profile} if profile else {}))
    root = config.data_root
    if not os.path.exists(os.path.join(root, "span-1", "bayes.json")):
        print(f"  generating {rows:,} synthetic rows ({config.profile} profile) into {root}", flush=True)
        subprocess.run(cli() + ["generate-data", "--rows", str(rows), "--seed", str(seed), "--profile",
                                config.profile, "--out", root], check=True, stdout=subprocess.DEVNULL)
    return root


def run_pipeline(root: str, rows: int, trainer: str = "keras", extra: Sequence[str] = (),
                 log_name: str = "run") -> Dict[str, Any]:
    """`deepfm-tfx run` as a subprocess: its summary, wall time and peak tree RSS."""
    os.makedirs(root, exist_ok=True)
    summary_path = os.path.join(root, f"summary-{log_name}.json")
    log_path = os.path.join(root, f"{log_name}.log")
    cmd = cli() + ["run", "--pipeline-root", os.path.join(root, "pipeline"),
                   "--model-repository", os.path.join(root, "repo"), "--rows", str(rows),
                   "--trainer", trainer, "--summary", summary_path] + list(extra)
    result = run_command(cmd, log_path)
    summary: Dict[str, Any] = {}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    return dict(result, summary=summary)


def run_command(cmd: Sequence[str], log_path: str, cwd: Optional[str] = None) -> Dict[str, Any]:
    """A command as a subprocess, its output to `log_path`: exit code, wall time, the CPU of it and
    every process it waited for, peak tree RSS."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
        with TreeSampler(proc.pid, log=log_path) as sampler:
            _, status, usage = os.wait4(proc.pid, 0)  # proc.wait() gives no rusage
            proc.returncode = code = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    return {"command": " ".join(cmd), "exit_code": code, "process_seconds": round(wall, 1),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(sampler.peak_bytes / 2**20),
            "peak_rss_mb_by_component": {k: round(v / 2**20) for k, v in sampler.peak_by_component.items()},
            "start_rss_mb_by_component": {k: round(v / 2**20) for k, v in sampler.start_by_component.items()},
            "log": log_path}


def default_run(workdir: str, trainer: str, rows: int, extra: Sequence[str], rerun: bool) -> Dict[str, Any]:
    """One pipeline run whose Transform output and pushed model other sections use; reused if present."""
    root = os.path.join(workdir, "runs", f"default-{rows}-{trainer}")
    record = os.path.join(root, "bench-run.json")
    if not rerun and os.path.exists(record):
        with open(record) as f:
            previous = json.load(f)
        if previous["exit_code"] == 0 and os.path.isdir(previous["summary"].get("pushed_path") or ""):
            print(f"  reusing pipeline run {root} (--rerun to redo)", flush=True)
            return previous
    ensure_data(rows)
    print(f"  running the pipeline ({trainer} trainer, {rows:,} rows) in {root}", flush=True)
    result = run_pipeline(root, rows, trainer, extra)
    result["pipeline_root"] = os.path.join(root, "pipeline")
    if result["exit_code"] != 0:
        raise RuntimeError(f"pipeline run failed (exit {result['exit_code']}); see {result['log']}")
    with open(record, "w") as f:
        json.dump(result, f, indent=2)
    return result


class DefaultRuns(dict):
    """trainer -> its default run, made on first use (`runs["keras"]`).

    The dispatcher asks for the runs a section lists in NEEDS before timing
    it; a section without NEEDS still gets its run, inside its own timing.
    """

    def __init__(self, workdir: str, quick: bool, rerun: bool):
        super().__init__()
        self.workdir, self.rerun = workdir, rerun
        self.rows = QUICK_ROWS if quick else DEFAULT_ROWS
        self.train_steps = QUICK_TRAIN_STEPS if quick else DEFAULT_TRAIN_STEPS

    def make(self, trainer: str) -> Dict[str, Any]:
        return self[trainer]

    def __missing__(self, trainer: str) -> Dict[str, Any]:
        run = default_run(self.workdir, trainer, self.rows, ["--train-steps", str(self.train_steps)], self.rerun)
        self[trainer] = run
        return run


def transform_output(pipeline_root: str) -> Dict[str, str]:
    """The newest run's examples, as the Trainer reads them (ExampleGen's, through the
    transform graph), and the newest Transform's graph."""
    def newest(component, kind):
        dirs = [d for d in glob.glob(os.path.join(pipeline_root, component, kind, "*")) if os.path.isdir(d)]
        if not dirs:
            raise FileNotFoundError(f"no {component} {kind} under {pipeline_root}")
        return max(dirs, key=lambda d: int(os.path.basename(d)) if os.path.basename(d).isdigit() else -1)
    examples = newest("SpecCsvExampleGen", "examples")
    return {"train": os.path.join(examples, "Split-train", "*"), "eval": os.path.join(examples, "Split-eval", "*"),
            "graph": newest("Transform", "transform_graph"), "num_ids": trained_num_ids(pipeline_root)}


def trained_num_ids(pipeline_root: str) -> Optional[int]:
    """The id-space size the newest Trainer run used (the spec may leave it to the data)."""
    infos = sorted(glob.glob(os.path.join(pipeline_root, "Trainer", "model", "*", TRAINING_INFO_FILE)),
                   key=lambda p: int(p.split(os.sep)[-2]) if p.split(os.sep)[-2].isdigit() else -1)
    if not infos:
        return None
    with open(infos[-1]) as f:
        return json.load(f).get("num_ids")
