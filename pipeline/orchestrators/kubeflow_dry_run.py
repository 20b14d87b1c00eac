"""Runs a compiled KFP v1 workflow's steps here, in order: `deepfm-tfx compile --target kubeflow --dry-run DIR`.

Each step runs the container entrypoint and arguments the compiled workflow
gives it, as Argo would start them in the pipeline's image, with two
differences: ml-metadata is a local store instead of the cluster's gRPC
service, and the steps share this process (TensorFlow is imported once). A
failed step skips the steps downstream of it, and the exit handler (the week's
final step) runs last with the workflow's status, as on the cluster. This
proves that what we compile runs, not only that it parses.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
import uuid
from typing import Any, Dict, List, Optional
from unittest import mock

from deepfm_tfx.contracts import EXIT_ERROR

UI_METADATA_FLAG = "--metadata_ui_path"


def _order(workflow: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The DAG's tasks in an order that respects their dependencies."""
    dag = next(t for t in workflow["spec"]["templates"] if "dag" in t)
    tasks = {t["name"]: t for t in dag["dag"]["tasks"]}
    done: List[str] = []
    while len(done) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(t.get("dependencies", [])) <= set(done))
        if not ready:
            raise ValueError("the workflow's DAG has a cycle")
        done.extend(ready)
    return [tasks[n] for n in done]


def _substitute(arg: str, parameters: Dict[str, str], status: str) -> str:
    for name, value in parameters.items():
        arg = arg.replace("{{inputs.parameters.%s}}" % name, value)
    return arg.replace("{{workflow.status}}", status)


def _run_step(container: Dict[str, Any], parameters: Dict[str, str], status: str, ui_path: str) -> int:
    """Runs one container's `python -m MODULE ARGS` in this process; returns its exit code."""
    command, args = container["command"], [_substitute(a, parameters, status) for a in container["args"]]
    if command[:2] != ["python", "-m"] or len(command) != 3:
        raise ValueError(f"a step runs {command!r}; only `python -m MODULE` steps can run here")
    if UI_METADATA_FLAG in args:  # Argo collects it as an output artifact from the pod's root
        args[args.index(UI_METADATA_FLAG) + 1] = ui_path
    try:
        # Both entrypoints (TFX's and the week's final step) are `main(argv)` under `if __name__ == "__main__"`.
        code = importlib.import_module(command[2]).main(args)
        return code if isinstance(code, int) else 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_ERROR)
    except Exception:  # noqa: BLE001 - a failed pod: logged, and its dependents are skipped
        logging.getLogger(__name__).exception("step %s failed", command[2])
        return EXIT_ERROR


def dry_run(package: str, workdir: str, *, connection_config, run_id: Optional[str] = None) -> Dict[str, Any]:
    """Runs every step of the compiled workflow `package`, then its exit handler.

    Returns {"run_id", "steps": {task: exit code or "skipped"}, "exit_code": the exit handler's}.
    """
    import yaml
    from tfx.orchestration.kubeflow import container_entrypoint

    with open(package) as f:
        workflow = yaml.safe_load(f)
    run_id = run_id or f"dry-run-{uuid.uuid4().hex[:8]}"
    templates = {t["name"]: t for t in workflow["spec"]["templates"]}
    parameters = {p["name"]: p["value"] for p in workflow["spec"].get("arguments", {}).get("parameters", [])}
    os.makedirs(os.path.join(workdir, "ui"), exist_ok=True)
    results: Dict[str, Any] = {}
    failed: set = set()
    terminal = sys.stdout  # progress lines; the steps' own output goes to the run's log

    def log(line: str) -> None:
        print(line, file=terminal, flush=True)

    # What the cluster's steps read from their pod: the run's id, and ml-metadata.
    with mock.patch.dict(os.environ, {"WORKFLOW_ID": run_id}), \
            mock.patch.object(container_entrypoint, "_get_metadata_connection_config",
                              lambda _config: connection_config), \
            open(os.path.join(workdir, f"{run_id}.log"), "a") as step_log, \
            contextlib.redirect_stdout(step_log):
        handler = logging.StreamHandler(step_log)
        logging.getLogger().addHandler(handler)
        try:
            for task in _order(workflow):
                name = task["name"]
                if set(task.get("dependencies", [])) & failed:
                    results[name], _ = "skipped", failed.add(name)
                    continue
                started = time.monotonic()
                code = _run_step(templates[task["template"]]["container"], parameters, "Running",
                                 os.path.join(workdir, "ui", f"{run_id}-{name}.json"))
                results[name] = code
                if code:
                    failed.add(name)
                log(f"  {name:<32} {'ok' if code == 0 else 'failed'} ({time.monotonic() - started:.0f} s)")
            status = "Failed" if failed else "Succeeded"
            exit_template = workflow["spec"].get("onExit")
            code = _run_step(templates[exit_template]["container"], parameters, status,
                             os.path.join(workdir, "ui", f"{run_id}-exit.json")) if exit_template else None
            log(f"  {exit_template or '(no exit handler)':<32} exit {code}")
        finally:
            logging.getLogger().removeHandler(handler)
    return {"run_id": run_id, "steps": results, "exit_code": code, "status": status}
