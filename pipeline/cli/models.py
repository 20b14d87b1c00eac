"""`deepfm-tfx models list|canary|promote|rollback|release|prune|report`: the versioned model repository.

canary, promote and rollback move TF Serving's `stable` and `canary` labels
in two steps: with `--server URL` (a TF Serving or `deepfm-tfx serve` REST
address reading this repository) they wait until it has loaded the new
version before moving the label, as TF Serving requires. Without it the
label moves at once, which is right only when no TF Serving reads the
repository yet.

Needs no TensorFlow: it answers in well under a second, as an incident demands.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

from deepfm_tfx import model_repository, object_store
from deepfm_tfx.contracts import EXIT_BAD_INPUT, EXIT_ERROR, TRAINER_KEY

COLUMNS = ("version", "labels", "created_at", TRAINER_KEY, "auc", "logloss", "spans",
           "warm_started", "pipeline_run_id", "data_fingerprint")
HEADERS = ("VERSION", "LABELS", "CREATED", "TRAINER", "AUC", "LOGLOSS", "SPANS", "WARM", "RUN ID", "DATA")


def _row(entry: Dict[str, Any]) -> Dict[str, Any]:
    record = entry["record"] or {}
    metrics = record.get("metrics") or {}
    return {"version": entry["version"], "serving": entry["serving"], "labels": entry["labels"],
            "created_at": record.get("created_at"), TRAINER_KEY: record.get(TRAINER_KEY),
            "auc": metrics.get("auc"), "logloss": metrics.get("logloss"),
            # A Hive table's spans read as its partitions (dt=2026-11-30), not as day numbers.
            "spans": record.get("partitions") or record.get("spans"),
            "warm_started": record.get("warm_started"), "pipeline_run_id": record.get("pipeline_run_id"),
            "data_fingerprint": record.get("data_fingerprint"), "record": entry["record"]}


def _cell(key: str, value: Any) -> str:
    if key == "labels":
        return ",".join(value)
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
                          "labels": model_repository.labels(repo, model),
                          "hold": model_repository.held(repo, model),
                          "versions": rows}, indent=2, sort_keys=True))
        return 0
    if not rows:
        print(f"{repo}: no versions of {model!r}")
        return 0
    hold = model_repository.held(repo, model)
    canary = model_repository.canary_version(repo, model)
    print(f"{repo}/{model}: {len(rows)} version(s), serving {serving if serving is not None else 'none'}"
          + (f", canary {canary}" if canary is not None else "")
          + (f" (held by a rollback since {hold['since']}; `models release` ends it)" if hold else ""))
    print(_table(rows))
    if serving is not None and not any(r["serving"] for r in rows):
        print(f"warning: {model_repository.CONFIG_FILE} serves version {serving}, which is not a complete "
              f"version here", file=sys.stderr)
    return 0


def _wait(args):
    """wait(model, version) against --server, or None without one."""
    if not args.server:
        return None
    from deepfm_tfx.serving import model_status
    print(f"waiting (up to {args.timeout:.0f}s) for {args.server} to load the new version before moving a label",
          flush=True)
    return model_status.waiter(args.server, args.timeout)


def _moving(action):
    """Runs a label move; the errors a user can act on become exit code 2."""
    from deepfm_tfx.serving import model_status
    try:
        action()
    except model_repository.RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except model_status.NotAvailable as e:
        print(f"error: {e}\nThe new version is loading beside the labelled ones and no label moved; run the "
              f"same command again to finish.", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _labels_line(repo: str, model: str) -> str:
    found = model_repository.labels(repo, model)
    return ", ".join(f"{k} {v}" for k, v in sorted(found.items(), reverse=True)) or "no labels"


def cmd_canary(args) -> int:
    repo, model = args.model_repository, args.model_name
    code = _moving(lambda: model_repository.canary(repo, model, args.version, _wait(args), args.base_path))
    if code == 0:
        print(f"{model}: {_labels_line(repo, model)}; stable keeps its traffic, clients asking for the canary "
              f"label get version {args.version}")
    return code


def cmd_promote(args) -> int:
    repo, model = args.model_repository, args.model_name
    before = model_repository.serving_version(repo, model)
    code = _moving(lambda: model_repository.promote(repo, model, args.version, _wait(args), args.base_path))
    if code == 0:
        print(f"{model}: {_labels_line(repo, model)} (stable was {before}); version {before} is unloaded, "
              f"nothing was deleted")
    return code


def cmd_rollback(args) -> int:
    repo, model = args.model_repository, args.model_name
    before = model_repository.serving_version(repo, model)
    code = _moving(lambda: model_repository.rollback(repo, model, args.version, _wait(args), args.base_path))
    if code:
        return code
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
    except object_store.StoreError:
        raise
    except (model_repository.RepositoryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
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
        return EXIT_BAD_INPUT
    verb = "would remove" if args.dry_run else "removed"
    for v in removed:
        print(f"{verb} {model} version {v}")
    kept = [v for v in model_repository.versions(repo, model) if v not in removed]
    serving = model_repository.serving_version(repo, model)
    kept_text = f"{', '.join(map(str, kept)) or 'none'} (serving {serving if serving is not None else 'none'})"
    # One line of outcome even when nothing changes, so a dry run never answers with silence.
    if not removed:
        print(f"{model}: nothing to remove with --keep {args.keep}; {'would keep' if args.dry_run else 'kept'} "
              f"{kept_text}")
    else:
        print(f"{model}: {len(removed)} version(s) {verb}; {'would keep' if args.dry_run else 'kept'} {kept_text}")
    return 0


def cmd_report(args) -> int:
    from deepfm_tfx.pipeline.report import repository
    path = repository.write(args.model_repository, args.model_name, args.output)
    print(f"{args.model_name}: repository report written to {path}")
    return 0


def _checked(command):
    """`command`, run only once the repository path and the model name are usable: nothing is read,
    written or deleted outside the repository."""
    def checked(args) -> int:
        repo = args.model_repository
        problem = (None if model_repository.is_store(repo) else
                   "no such folder" if not os.path.exists(repo) else
                   "is a file, not a model repository folder" if not os.path.isdir(repo) else None)
        if problem:
            print(f"error: --model-repository {repo}: {problem}", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            model_repository.check_model_name(args.model_name)
            return command(args)
        except model_repository.RepositoryError as e:
            print(f"error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except object_store.StoreError as e:  # unreachable or refusing: not the user's input
            print(f"error: --model-repository {repo}: {e}", file=sys.stderr)
            return EXIT_ERROR
    return checked


def configure(m) -> None:
    """Adds `list`, `canary`, `promote`, `rollback`, `release`, `prune` and `report` to the `models` parser."""
    from deepfm_tfx.pipeline.configs import RunConfig
    d = RunConfig()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-repository", default=d.model_repository,
                        help="the versioned model repository: a folder, or s3://bucket/prefix")
    common.add_argument("--model-name", default=d.model_name, help="model name in the repository")

    sub = m.add_subparsers(dest="models_command", required=True)

    ls = sub.add_parser("list", parents=[common], help="versions, their labels, metrics and data")
    ls.add_argument("--json", action="store_true", help="print the repository as JSON, records whole")
    ls.set_defaults(func=cmd_list)

    moving = argparse.ArgumentParser(add_help=False)
    moving.add_argument("--server", metavar="URL",
                        help="REST address of the TF Serving (or deepfm-tfx serve) reading this repository, e.g. "
                             "http://localhost:8501: the label moves once it has loaded the version")
    moving.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for --server")
    moving.add_argument("--base-path", help="base_path written into models.config for this model: where the "
                                            "serving host mounts it (default: kept, or /models/<name>)")

    cn = sub.add_parser("canary", parents=[common, moving],
                        help="load a version beside stable under the canary label")
    cn.add_argument("version", type=int, help="the version to load as canary")
    cn.set_defaults(func=cmd_canary)

    pm = sub.add_parser("promote", parents=[common, moving],
                        help="make the canary (or VERSION) stable; the old stable is unloaded")
    pm.add_argument("version", type=int, nargs="?", help="the version to make stable (default: the canary)")
    pm.set_defaults(func=cmd_promote)

    rb = sub.add_parser("rollback", parents=[common, moving],
                        help="move stable to an existing version (held until `models release`); deletes nothing")
    rb.add_argument("version", type=int, help="the existing version to serve as stable")
    rb.set_defaults(func=cmd_rollback)

    rl = sub.add_parser("release", parents=[common],
                        help="end a rollback's hold: the next push is served again; serving stays as is")
    rl.set_defaults(func=cmd_release)

    pr = sub.add_parser("prune", parents=[common], help="remove old versions, never the served one")
    pr.add_argument("--keep", type=int, required=True, help="newest versions to keep, besides the served one")
    pr.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    pr.set_defaults(func=cmd_prune)

    rp = sub.add_parser("report", parents=[common],
                        help="one HTML page: metrics per version over time, pushed/blocked/rolled-back weeks, serving")
    rp.add_argument("--output", help="where to write it (default: <repository>/<model>/report.html)")
    rp.set_defaults(func=cmd_report)

    for parser in sub.choices.values():
        parser.set_defaults(func=_checked(parser.get_default("func")))
