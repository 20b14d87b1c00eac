"""`deepfm-tfx simulate`: weeks of automatic retraining on synthetic data."""
from __future__ import annotations

import os
import sys

from deepfm_tfx import machine
from deepfm_tfx.contracts import EXIT_BAD_INPUT, EXIT_ERROR, ROLL_BACK
from deepfm_tfx.pipeline import configs, console
from deepfm_tfx.pipeline.simulation import BAD_KINDS, WORSE_CANDIDATE, OnlineConfig

# Small weeks, so four of them run in a few minutes.
DEFAULTS = configs.RunConfig(rows=20_000, train_steps=300, profile="small")


def configure(p) -> None:
    p.add_argument("--weeks", type=int, default=4, help="weekly runs")
    p.add_argument("--bad-week", type=int, default=3, help="the deliberately bad week; 0 for none")
    p.add_argument("--bad-kind", choices=BAD_KINDS,
                   help=f"how that week is bad (default: {WORSE_CANDIDATE} with the online phase, a model trained on "
                        f"a shuffled-label week with its offline gate lowered; broken_column without it)")
    p.add_argument("--drift", type=float, default=None,
                   help="weekly random-walk step of the planted truth (default: the generator's)")
    p.add_argument("--workdir", default=os.path.join(configs.WORKSPACE, "simulation"),
                   help="the simulation's own folder; a non-empty folder of anything else is refused")
    configs.add_arguments(p, names=["rows", "profile", "seed", "trainer", "train_steps", "eval_steps", "window_spans",
                                    "warm_start", "min_auc", "max_auc_drop", "beam_args"], defaults=DEFAULTS)
    online = p.add_argument_group("online phase (an A/B test of each week's model against stable)")
    online.add_argument("--no-online", dest="online", action="store_false",
                        help="no online phase: each week's model goes straight to stable")
    online.add_argument("--online-requests", type=int, default=OnlineConfig.requests_per_round,
                        help="ranking requests per round of simulated traffic")
    online.add_argument("--online-rows", type=int, default=OnlineConfig.rows_per_request,
                        help="candidates each request's arm scores")
    online.add_argument("--online-shown", type=int, default=OnlineConfig.shown,
                        help="the top this many candidates are shown and may be clicked")
    online.add_argument("--online-rounds", type=int, default=OnlineConfig.rounds,
                        help="rounds of traffic, the report read after each (the CTR rule is always valid); "
                             "still undecided after the last, the canary is rolled back")
    console.add_arguments(p)
    machine.add_allocator_argument(p)
    p.set_defaults(func=_main)


def _main(args) -> int:
    machine.reexec_with_allocator(args)  # before TensorFlow allocates anything
    from deepfm_tfx.pipeline.simulation import weeks
    from deepfm_tfx.synthetic import generator
    display = console.configure_logging(args.verbose, quiet=args.quiet, every=args.progress_every)
    config = configs.from_arguments(args, base=DEFAULTS)
    bad_kind = args.bad_kind or (WORSE_CANDIDATE if args.online else "broken_column")
    if bad_kind == WORSE_CANDIDATE and not args.online:
        print(f"error: --bad-kind {WORSE_CANDIDATE} needs the online phase (drop --no-online)", file=sys.stderr)
        return EXIT_BAD_INPUT
    online = None
    if args.online:
        if not 0 < args.online_shown <= args.online_rows:
            print(f"error: --online-shown must be in 1..--online-rows ({args.online_rows}), got {args.online_shown}",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        online = OnlineConfig(requests_per_round=args.online_requests, rows_per_request=args.online_rows,
                              shown=args.online_shown, rounds=args.online_rounds)
    try:
        with display:
            table = weeks.run_weeks(args.workdir, args.weeks, config, bad_week=args.bad_week,
                                    bad_kind=bad_kind,
                                    drift=generator.DEFAULT_DRIFT if args.drift is None else args.drift,
                                    online=online)
    except weeks.WorkdirError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print("\n" + weeks.format_table(table))
    print("\nbayes: the planted truth's AUC; stale: last week's truth on this week's rows; auc and baseline: "
          "the new model and last week's serving model, on the same eval rows; lr@1: learning rate at this "
          "run's first step; moved: largest relative L2 change of a weight vs the warm-start model")
    if online is not None:
        from deepfm_tfx.pipeline.simulation.online_table import format_table
        print("\nonline phase: each week's model (canary) against stable on simulated ranking traffic, split by user")
        print(format_table(table))
        print(f"\noffline auc gain: the new model's AUC minus last week's on the same eval rows; online CTR lift: "
              f"canary / stable - 1 of the CTR of shown items (top {online.shown} of {online.rows_per_request} "
              f"candidates), with its always-valid interval; true lift: the same in expected clicks under the "
              f"planted truth, both versions ranking every request; right: the decision agrees with the truth")
    print(f"written to {os.path.join(args.workdir, 'pipeline', 'simulation.json')}")
    bad = [r for r in table if r["bad"]]
    # The demonstration fails if the bad week got through, or retraining did not pay.
    if any(r["pushed"] for r in bad if r["bad"] != WORSE_CANDIDATE):
        print("error: the deliberately bad week was pushed", file=sys.stderr)
        return EXIT_ERROR
    if any(r["bad"] == WORSE_CANDIDATE and r.get("decision") != ROLL_BACK for r in bad):
        print("error: the worse candidate was not rolled back online", file=sys.stderr)
        return EXIT_ERROR
    if any(r.get("decision_correct") is False for r in table):
        print("error: an online decision disagrees with the planted truth", file=sys.stderr)
        return EXIT_ERROR
    if not weeks.retrained_weeks_beat_baseline(table):
        print("error: a retrained week did not beat last week's model on its own rows", file=sys.stderr)
        return EXIT_ERROR
    return 0
