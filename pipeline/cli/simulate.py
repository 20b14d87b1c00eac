"""`deepfm-tfx simulate`: weeks of automatic retraining on synthetic data."""
from __future__ import annotations

import os
import sys

from deepfm_tfx.pipeline import configs, console
from deepfm_tfx.synthetic import BAD_KINDS

# Small weeks, so four of them run in a few minutes.
DEFAULTS = configs.RunConfig(rows=20_000, train_steps=300, profile="small")


def configure(p) -> None:
    p.add_argument("--weeks", type=int, default=4, help="weekly runs")
    p.add_argument("--bad-week", type=int, default=3, help="the deliberately bad week; 0 for none")
    p.add_argument("--bad-kind", choices=BAD_KINDS, default="broken_column", help="how that week is bad")
    p.add_argument("--drift", type=float, default=None,
                   help="weekly random-walk step of the planted truth (default: the generator's)")
    p.add_argument("--workdir", default=os.path.join(configs.WORKSPACE, "simulation"),
                   help="the simulation's own folder; a non-empty folder of anything else is refused")
    configs.add_arguments(p, names=["rows", "profile", "seed", "trainer", "train_steps", "eval_steps", "window_spans",
                                    "warm_start", "min_auc", "max_auc_drop", "beam_args"], defaults=DEFAULTS)
    console.add_arguments(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    from deepfm_tfx.synthetic import generator, simulation
    display = console.configure_logging(args.verbose, quiet=args.quiet, every=args.progress_every)
    config = configs.from_arguments(args, base=DEFAULTS)
    try:
        with display:
            table = simulation.run_weeks(args.workdir, args.weeks, config, bad_week=args.bad_week,
                                         bad_kind=args.bad_kind,
                                         drift=generator.DEFAULT_DRIFT if args.drift is None else args.drift)
    except simulation.WorkdirError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n" + simulation.format_table(table))
    print("\nbayes: the planted truth's AUC; stale: last week's truth on this week's rows; auc and baseline: "
          "the new model and last week's serving model, on the same eval rows; lr@1: learning rate at this "
          "run's first step; moved: largest relative L2 change of a weight vs the warm-start model")
    print(f"written to {os.path.join(args.workdir, 'pipeline', 'simulation.json')}")
    bad = [r for r in table if r["bad"]]
    # The demonstration fails if the bad week got through, or retraining did not pay.
    if any(r["pushed"] for r in bad):
        print("error: the deliberately bad week was pushed", file=sys.stderr)
        return 1
    if not simulation.retrained_weeks_beat_baseline(table):
        print("error: a retrained week did not beat last week's model on its own rows", file=sys.stderr)
        return 1
    return 0
