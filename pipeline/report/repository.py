"""`deepfm-tfx models report`: one page for the whole model repository.

Per version (from its record): AUC, logloss and calibration over time and
its state: serving, canary, superseded, rolled back (a rollback moved
serving to an older version), or pushed while a rollback held (never
served). Per run (from `<model>/runs/*.json`, written after every local
run, pushed or not): the week, the new model vs the baseline with the
paired AUC difference, and the outcome: pushed, or blocked and by which
gate. Serving moves between runs (a rollback or a promotion) show as
events. No TensorFlow.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List, Optional

from deepfm_tfx import model_repository
from deepfm_tfx.contracts import CANARY, STABLE, TRAINER_KEY
from deepfm_tfx.pipeline.report import html, publish


def _runs(model_dir: str) -> List[Dict[str, Any]]:
    runs = []
    for path in sorted(glob.glob(os.path.join(model_dir, publish.RUNS, "*.json"))):
        try:
            with open(path) as f:
                runs.append(json.load(f))
        except (OSError, ValueError):
            continue
    return runs


def _state(entry: Dict[str, Any], hold: Optional[Dict[str, Any]], serving: Optional[int],
           ever_served: set) -> str:
    record, version = entry.get("record") or {}, entry["version"]
    if STABLE in entry["labels"]:
        return "serving" + (" (rollback hold)" if hold else "")
    if CANARY in entry["labels"]:
        return CANARY
    if record.get("served_on_push") is False:
        return "pushed during a rollback hold, never served"
    if record.get("pushed_as") == CANARY and version not in ever_served:
        return "canary, never promoted"
    if serving is not None and version > serving:
        return "rolled back"
    return "superseded"


def collect(repo: str, model: str, output: str) -> Dict[str, Any]:
    """The repository page's data; links are relative to `output`'s folder."""
    model_dir = os.path.join(repo, model)
    base = os.path.dirname(os.path.abspath(output))
    serving = model_repository.serving_version(repo, model)
    hold = model_repository.held(repo, model)
    runs = _runs(model_dir)
    ever_served = {v for r in runs for v in (r.get("serving_before"), r.get("serving_after")) if v is not None}
    versions = []
    for entry in model_repository.list_models(repo, model):
        record = entry.get("record") or {}
        report = publish.version_report_path(repo, model, entry["version"])
        versions.append({
            "version": entry["version"], "labels": entry["labels"], "state": _state(entry, hold, serving, ever_served),
            "created_at": record.get("created_at"), TRAINER_KEY: record.get(TRAINER_KEY),
            "spans": record.get("spans"), "metrics": record.get("metrics"),
            "baseline_metrics": record.get("baseline_metrics"),
            "report": os.path.relpath(report, base) if os.path.exists(report) else None,
        })
    events = []
    for before, after in zip(runs, runs[1:]):
        moved_from, moved_to = before.get("serving_after"), after.get("serving_before")
        if moved_from is not None and moved_to is not None and moved_from != moved_to:
            kind = "rolled back" if moved_to < moved_from else "promoted"
            events.append(f"between runs {before['run']} and {after['run']}: serving {kind} from version "
                          f"{moved_from} to {moved_to}")
    if hold:
        events.append(f"a rollback holds serving at version {hold.get('version')} since {hold.get('since')}: "
                      f"later pushes are stored, not served, until `deepfm-tfx models release`")
    for run in runs:
        path = os.path.join(model_dir, run.get("report") or "")
        run["report"] = os.path.relpath(path, base) if run.get("report") and os.path.exists(path) else None
        version = run.get("pushed_version")
        state = next((v["state"] for v in versions if v["version"] == version), None)
        if run.get("pushed") and state == "rolled back":
            run["outcome"] += " (later rolled back)"
    return {"repository": repo if model_repository.is_store(repo) else os.path.abspath(repo), "model_name": model, "serving_version": serving, "hold": hold,
            "versions": versions, "runs": runs, "events": events}


def write(repo: str, model: str, output: Optional[str] = None) -> str:
    """Writes the page (default <repo>/<model>/report.html, or ./<model>-report.html for a
    repository in an object store); returns its path."""
    default = f"{model}-report.html" if model_repository.is_store(repo) else os.path.join(repo, model, "report.html")
    output = output or default
    page = html.repository_page(collect(repo, model, output))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp = f"{output}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(page)
    os.replace(tmp, output)
    return output
