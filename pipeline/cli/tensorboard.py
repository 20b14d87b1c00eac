"""`deepfm-tfx tensorboard`: TensorBoard on a pipeline root's runs, from the project's environment.

Serves <pipeline_root>/tensorboard (pipeline/report/publish.py), rebuilt
first from the stored run reports: one run per trained model, named
span<N>-<trainer>-v<version> (training loss and AUC every N steps, and
validation), and weekly/* (each week's evaluation metrics, step = span).
"""
from __future__ import annotations

import os
import sys

from deepfm_tfx.contracts import EXIT_BAD_INPUT
from deepfm_tfx.pipeline import configs


def configure(p) -> None:
    configs.add_arguments(p, names=["pipeline_root"], training=False)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=6006, help="port to listen on (0: any free port)")
    p.add_argument("--verbose", action="store_true", help="show TensorBoard's and TF's logs")
    p.set_defaults(func=cmd_tensorboard)


def cmd_tensorboard(args) -> int:
    from deepfm_tfx.pipeline.report import publish

    root = args.pipeline_root
    if not os.path.isdir(os.path.join(root, publish.REPORTS)):
        print(f"error: {root} holds no run reports yet; run the pipeline first "
              f"(deepfm-tfx run --pipeline-root {root})", file=sys.stderr)
        return EXIT_BAD_INPUT
    folder = publish.refresh_tensorboard(root)
    runs = sorted(name for name in os.listdir(folder) if name != publish.WEEKLY)
    print(f"TensorBoard on {folder}: {len(runs)} training run(s){': ' + ', '.join(runs) if runs else ''}, "
          f"and {publish.WEEKLY}/ (evaluation per week)", flush=True)

    from tensorboard import program
    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", folder, "--host", args.host, "--port", str(args.port),
                          "--reload_interval", "15"])
    if not args.verbose:
        import logging
        logging.getLogger("tensorboard").setLevel(logging.WARNING)
    return board.main()
