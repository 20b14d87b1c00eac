"""`deepfm-tfx models list|rollback|release|prune`: the versioned model repository.

Needs no TensorFlow: it answers in well under a second, as an incident demands.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List

from deepfm_tfx import model_repository

COLUMNS = ("version", "serving", "created_at", "trainer_runner", "auc", "logloss", "spans",
           "warm_started", "pipeline_run_id", "data_fingerprint")
HEADERS = ("VERSION", "SERVING", "CREATED", "RUNNER", "AUC", "LOGLOSS", "SPANS", "WARM", "RUN ID", "DATA")


def _row(entry: Dict[str, Any]) -> Dict[str, Any]:
    record = entry["record"] or {}
    metrics = record.get("metrics") or {}
    return {"version": entry["version"], "serving": entry["serving"],
            "created_at": record.get("created_at"), "trainer_runner": record.get("trainer_runner"),
            "auc": metrics.get("auc"), "logloss": metrics.get("logloss"), "spans": record.get("spans"),
            "warm_started": record.get("warm_started"), "pipeline_run_id": record.get("pipeline_run_id"),
            "data_fingerprint": record.get("data_fingerprint"), "record": entry["record"]}


def _cell(key: str, value: Any) -> str:
    if key == "serving":
        return "*" if value else ""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if key == "data_fingerprint":
        # A digest's first characters tell versions apart; --json has it whole.
        return str(value).rpartition(":")[2][:12]
    return str(value)


def _table(rows: List[Dict[str, Any]]) -> str:
    cells = [HEADERS] + [tuple(_cell(k, r[k]) for k in COLUMNS) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


def cmd_list(args) -> int:
    repo, model = args.model_repository, args.model_name
    rows = [_row(e) for e in model_repository.list_models(repo, model)]
    serving = model_repository.serving_version(repo, model)
    if args.json:
        print(json.dumps({"model_repository": repo, "model_name": model, "serving_version": serving,
                          "hold": model_repository.held(repo, model),
                          "versions": rows}, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"{repo}: no versions of {model!r}")
        return 0
    hold = model_repository.held(repo, model)
    print(f"{repo}/{model}: {len(rows)} version(s), serving {serving if serving is not None else 'none'}"
          + (f" (held by a rollback since {hold['since']}; `models release` ends it)" if hold else ""))
    print(_table(rows))
    if serving is not None and not any(r["serving"] for r in rows):
        print(f"warning: {model_repository.CONFIG_FILE} serves version {serving}, which is not a complete "
              f"version here", file=sys.stderr)
    return 0


def cmd_rollback(args) -> int:
    repo, model = args.model_repository, args.model_name
    before = model_repository.serving_version(repo, model)
    try:
        model_repository.rollback(repo, model, args.version)
    except model_repository.RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if before == args.version:
        print(f"{model} already serves version {args.version}; held there until `deepfm-tfx models release`")
    else:
        print(f"{model}: serving version {args.version} (was {before if before is not None else 'none'}); "
              f"nothing was deleted; held there until `deepfm-tfx models release` (pushes land unserved)")
    return 0


def cmd_release(args) -> int:
    repo, model = args.model_repository, args.model_name
    try:
        hold = model_repository.release(repo, model)
    except (model_repository.RepositoryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serving = model_repository.serving_version(repo, model)
    if hold is None:
        print(f"{model}: no rollback hold; nothing changed (serving {serving})")
    else:
        print(f"{model}: released the hold on version {hold['version']} (since {hold['since']}); still serving "
              f"{serving}; the next push is served")
    return 0


def cmd_prune(args) -> int:
    repo, model = args.model_repository, args.model_name
    try:
        removed = model_repository.prune(repo, model, args.keep, dry_run=args.dry_run)
    except model_repository.RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "would remove" if args.dry_run else "removed"
    for v in removed:
        print(f"{verb} {model} version {v}")
    kept = model_repository.versions(repo, model)
    if not args.dry_run:
        print(f"{len(removed)} version(s) {verb}; kept {', '.join(map(str, kept)) or 'none'} "
              f"(serving {model_repository.serving_version(repo, model)})")
    return 0


def configure(m) -> None:
    """Adds `list`, `rollback` and `prune` to the `models` parser."""
    from deepfm_tfx.pipeline.configs import RunConfig
    d = RunConfig()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-repository", default=d.model_repository,
                        help="the versioned model repository")
    common.add_argument("--model-name", default=d.model_name, help="model name in the repository")

    sub = m.add_subparsers(dest="models_command", required=True)

    ls = sub.add_parser("list", parents=[common], help="versions, their metrics and data; * marks the served one")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    rb = sub.add_parser("rollback", parents=[common],
                        help="serve an existing version by rewriting models.config; deletes nothing")
    rb.add_argument("version", type=int)
    rb.set_defaults(func=cmd_rollback)

    rl = sub.add_parser("release", parents=[common],
                        help="end a rollback's hold: the next push is served again; serving stays as is")
    rl.set_defaults(func=cmd_release)

    pr = sub.add_parser("prune", parents=[common], help="remove old versions, never the served one")
    pr.add_argument("--keep", type=int, required=True, help="newest versions to keep, besides the served one")
    pr.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    pr.set_defaults(func=cmd_prune)
