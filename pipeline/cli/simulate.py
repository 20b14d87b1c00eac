"""`deepfm-tfx simulate`: weeks of automatic retraining on synthetic data."""
from __future__ import annotations

import os

from deepfm_tfx.pipeline import configs
from deepfm_tfx.synthetic import BAD_KINDS


def configure(p) -> None:
    p.add_argument("--weeks", type=int, default=4)
    p.add_argument("--rows", type=int, default=20_000, help="rows per weekly span")
    p.add_argument("--bad-week", type=int, default=3, help="0 for none")
    p.add_argument("--bad-kind", choices=BAD_KINDS, default="broken_column")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--window-spans", type=int, default=4)
    p.add_argument("--min-auc", type=float, default=0.6)
    p.add_argument("--trainer", choices=configs.TRAINERS, default="keras")
    p.add_argument("--no-warm-start", action="store_true", help="train every week from scratch")
    p.add_argument("--workdir", default=os.path.join(configs.WORKSPACE, "simulation"))
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from deepfm_tfx.pipeline import console
    from deepfm_tfx.synthetic import simulation
    console.configure_logging(args.verbose)
    table = simulation.run_weeks(args.workdir, args.weeks, args.rows, args.bad_week, args.bad_kind, args.seed,
                      args.train_steps, args.window_spans, args.min_auc, args.trainer,
                      warm_start=not args.no_warm_start)
    print("\n" + simulation.format_table(table))
    print(f"\nwritten to {os.path.join(args.workdir, 'pipeline', 'simulation.json')}")
    bad = [r for r in table if r["bad"]]
    # The demonstration fails if the bad week got through.
    return 1 if any(r["pushed"] and not r["blocked_by"] for r in bad) else 0
