"""Where a run's report goes, and TensorBoard's log folder.

After each local run (pipeline/orchestrators/local.py):

    <pipeline_root>/report.html                  the newest run's report
    <pipeline_root>/reports/<run>.html|.json     every run's report and its data
    <repo>/<model>/<version>.report.html         beside each pushed version
    <repo>/<model>/runs/<run>.json|.html         every run, pushed or not, for `models report`
    <pipeline_root>/tensorboard/                 what `deepfm-tfx tensorboard` serves:
        span002-keras-v1795313945 -> Trainer/model_run/<id>   (a link; train/, validation/ inside)
        weekly/new-model, weekly/baseline, weekly/bayes, ...  evaluation scalars, step = span

`<run>` is `<finish time>-span<N>-<trainer>`. TF Serving loads only
all-digit folders, so it ignores the repository's `runs/` and report files.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Any, Dict, List, Optional

from deepfm_tfx import artifact_files, model_repository, object_store
from deepfm_tfx.contracts import TRAINER_KEY
from deepfm_tfx.pipeline.report import html

REPORTS = "reports"
LATEST = "report.html"
TENSORBOARD = "tensorboard"
WEEKLY = "weekly"
RUNS = "runs"


def run_name(summary: Dict[str, Any], finished: datetime.datetime) -> str:
    span = summary.get("span")
    return (f"{finished.strftime('%Y%m%d-%H%M%S')}-span{span if span is not None else 'none'}-"
            f"{summary.get(TRAINER_KEY)}")


def tensorboard_run(summary: Dict[str, Any], model_run_dir: Optional[str]) -> Optional[str]:
    """span002-keras-v1795313945, or ...-not-pushed-<trainer run id> for a model that was not pushed."""
    if not model_run_dir:
        return None
    span = summary.get("span")
    head = f"span{int(span):03d}" if span is not None else "span-none"
    tail = (f"v{summary['pushed_version']}" if summary.get("pushed") and summary.get("pushed_version")
            else f"not-pushed-{os.path.basename(model_run_dir.rstrip('/'))}")
    return f"{head}-{summary.get(TRAINER_KEY)}-{tail}"


def run_entry(report: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The compact record of a run the repository page lists."""
    s = report["summary"]
    paired = (report.get("gate") or {}).get("paired") or {}
    reason = ([line for line in report["decision"]["why"] if not line.startswith("AUC floor")] or [""])[0]
    return {
        "run": name, "finished_at": report.get("generated_at"), "span": s.get("span"),
        TRAINER_KEY: s.get(TRAINER_KEY), "auc": s.get("auc"), "baseline_auc": s.get("baseline_auc"),
        "bayes_auc": s.get("bayes_auc"), "logloss": s.get("logloss"), "calibration": s.get("calibration"),
        "auc_diff": paired.get("diff"), "auc_diff_ci_low": paired.get("ci_low"),
        "auc_diff_ci_high": paired.get("ci_high"),
        "outcome": report["decision"]["outcome"], "blocked_by": s.get("blocked_by"), "reason": reason[:400],
        "pushed": bool(s.get("pushed")), "pushed_version": s.get("pushed_version"),
        "serving_before": report.get("serving_before"), "serving_after": report.get("serving_after"),
        "report": f"{RUNS}/{name}.html",
    }


def publish(report: Dict[str, Any], *, pipeline_root: str, model_repository_dir: str,
            model_name: str) -> Dict[str, Optional[str]]:
    """Writes the run's report everywhere it belongs; returns the paths written."""
    finished = datetime.datetime.now(datetime.timezone.utc)
    summary = report["summary"]
    name = run_name(summary, finished)
    report["generated_at"] = finished.strftime("%Y-%m-%d %H:%M:%S UTC")
    report["run_name"] = name
    report["tensorboard_run"] = tensorboard_run(summary, report.get("model_run_dir"))
    if os.path.isdir(model_repository_dir) or model_repository.is_store(model_repository_dir):
        try:
            report["serving_after"] = model_repository.serving_version(model_repository_dir, model_name)
        except (model_repository.RepositoryError, OSError):
            report["serving_after"] = None
    page = html.run_page(report)
    data = json.dumps(report, indent=1, default=str)
    paths: Dict[str, Optional[str]] = {"report": os.path.join(pipeline_root, LATEST), "version_report": None}
    artifact_files.write_text(os.path.join(pipeline_root, REPORTS, f"{name}.json"), data)
    artifact_files.write_text(os.path.join(pipeline_root, REPORTS, f"{name}.html"), page)
    artifact_files.write_text(paths["report"], page)
    model_dir = os.path.join(model_repository_dir, model_name)
    if os.path.isdir(model_dir):  # a repository in an object store gets no run pages (docs/object-storage.md)
        artifact_files.write_text(os.path.join(model_dir, RUNS, f"{name}.json"),
                      json.dumps(run_entry(report, name), indent=1, default=str))
        artifact_files.write_text(os.path.join(model_dir, RUNS, f"{name}.html"), page)
        if summary.get("pushed") and summary.get("pushed_version"):
            paths["version_report"] = version_report_path(model_repository_dir, model_name,
                                                          int(summary["pushed_version"]))
            artifact_files.write_text(paths["version_report"], page)
    refresh_tensorboard(pipeline_root)
    return paths


def version_report_path(repo: str, model: str, version: int) -> str:
    return os.path.join(repo, model, f"{version}.report.html")


# --- TensorBoard ----------------------------------------------------------------------------------

def _reports(pipeline_root: str) -> List[Dict[str, Any]]:
    found = []
    for path in artifact_files.glob(os.path.join(pipeline_root, REPORTS, "*.json")):
        try:
            found.append(json.loads(artifact_files.read_text(path)))
        except (OSError, ValueError):
            continue
    return found


# weekly/<run> -> [(tag, report key path)]: one TensorBoard run per series, so the new model,
# the baseline and the best possible share a chart per metric.
_WEEKLY = {
    "new-model": [("evaluation/auc", ("summary", "auc")), ("evaluation/logloss", ("summary", "logloss")),
                  ("evaluation/calibration", ("summary", "calibration")),
                  ("evaluation/auc_diff_vs_baseline", ("gate", "paired", "diff")),
                  ("evaluation/pushed", ("summary", "pushed"))],
    "baseline": [("evaluation/auc", ("metrics", "baseline", "auc")),
                 ("evaluation/logloss", ("metrics", "baseline", "logloss")),
                 ("evaluation/calibration", ("metrics", "baseline", "calibration"))],
    "bayes": [("evaluation/auc", ("summary", "bayes_auc")), ("evaluation/logloss", ("summary", "bayes_logloss"))],
    "ci95-low": [("evaluation/auc_diff_vs_baseline", ("gate", "paired", "ci_low"))],
    "ci95-high": [("evaluation/auc_diff_vs_baseline", ("gate", "paired", "ci_high"))],
}


def _get(report: Dict[str, Any], path) -> Optional[float]:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, (int, float)) else None


def refresh_tensorboard(pipeline_root: str) -> str:
    """Rebuilds <pipeline_root>/tensorboard from the stored reports; returns its path."""
    folder = os.path.join(pipeline_root, TENSORBOARD)
    reports = _reports(pipeline_root)
    if not object_store.is_url(pipeline_root):  # a bucket has no links: the weekly series only
        _link_model_runs(folder, reports)
    _weekly_series(os.path.join(folder, WEEKLY), reports)
    return folder


def _link_model_runs(folder: str, reports: List[Dict[str, Any]]) -> None:
    os.makedirs(folder, exist_ok=True)
    wanted = {}
    for report in reports:
        name, target = report.get("tensorboard_run"), report.get("model_run_dir")
        if name and target and os.path.isdir(target):
            wanted[name] = os.path.abspath(target)
    for entry in os.listdir(folder):  # only our links; anything else someone put here stays
        path = os.path.join(folder, entry)
        if os.path.islink(path) and (entry not in wanted or os.readlink(path) != wanted[entry]):
            os.remove(path)
    for name, target in wanted.items():
        if not os.path.lexists(os.path.join(folder, name)):
            os.symlink(target, os.path.join(folder, name), target_is_directory=True)


def _weekly_series(weekly: str, reports: List[Dict[str, Any]]) -> None:
    import tensorflow as tf

    newest_per_span: Dict[int, Dict[str, Any]] = {}
    for report in reports:  # oldest first: a re-run of a week replaces its point
        span = report.get("summary", {}).get("span")
        if span is not None:
            newest_per_span[int(span)] = report
    if object_store.is_url(weekly):
        if tf.io.gfile.exists(weekly):
            tf.io.gfile.rmtree(weekly)
    else:
        shutil.rmtree(weekly, ignore_errors=True)
    for run, tags in _WEEKLY.items():
        writer = tf.summary.create_file_writer(os.path.join(weekly, run))
        with writer.as_default():
            for span, report in sorted(newest_per_span.items()):
                for tag, path in tags:
                    value = _get(report, path)
                    if value is not None:
                        tf.summary.scalar(tag, value, step=span)
        writer.close()

