"""`deepfm-tfx generate-data`: synthetic Criteo-format spans with a planted truth."""
from __future__ import annotations

import json

from deepfm_tfx.pipeline import configs


def configure(p) -> None:
    p.add_argument("--rows", type=int, default=100_000, help="rows per span")
    p.add_argument("--spans", type=int, default=1, help="how many weekly spans")
    p.add_argument("--first-span", type=int, default=1, help="number of the first span written")
    p.add_argument("--seed", type=int, default=42, help="same seed, same bytes")
    p.add_argument("--profile", choices=configs.DATA_PROFILES, default=configs.RunConfig().profile,
                   help="criteo: the Kaggle log's per-field id spaces and long tails; "
                        "small: a few thousand ids, each seen often (fast tests)")
    p.add_argument("--drift", type=float, default=None,
                   help="weekly random-walk step of the true weights (default: the generator's)")
    p.add_argument("--out", default="workspace/data/synthetic", help="output folder")
    p.set_defaults(func=cmd_generate_data)


def cmd_generate_data(args) -> int:
    from deepfm_tfx.synthetic import generator
    extra = {} if args.drift is None else {"drift": args.drift}
    reports = generator.generate(args.out, rows=args.rows, spans=args.spans, seed=args.seed,
                                 first_span=args.first_span, profile=args.profile, **extra)
    for r in reports:
        print(json.dumps(r))
    return 0
