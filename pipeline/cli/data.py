"""`deepfm-tfx generate-data`: synthetic Criteo-format spans with a planted truth, as CSV, as
a Hive table of Parquet or as TFRecord."""
from __future__ import annotations

import datetime
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
    p.add_argument("--format", choices=("csv", "parquet", "tfrecord"), default="csv",
                   help="file format (read with schemas/criteo_synthetic_<format>.yaml)")
    p.add_argument("--partitions", metavar="COLUMN",
                   help="write span N as the Hive partition COLUMN=<date>/, a day after span N-1's")
    p.add_argument("--first-date", type=datetime.date.fromisoformat, default=datetime.date(2026, 11, 1),
                   help="span 1's date with --partitions (YYYY-MM-DD)")
    p.set_defaults(func=cmd_generate_data)


def cmd_generate_data(args) -> int:
    from deepfm_tfx.synthetic import generator
    extra = {} if args.drift is None else {"drift": args.drift}
    if args.format == "csv" and not args.partitions:
        reports = generator.generate(args.out, rows=args.rows, spans=args.spans, seed=args.seed,
                                     first_span=args.first_span, profile=args.profile, **extra)
    else:
        reports = _as_table(args, extra)
    for r in reports:
        print(json.dumps(r))
    return 0


def _as_table(args, extra):
    """The CSV spans generated beside the output, then written in place as the format and folders asked for."""
    import os
    import shutil
    import tempfile

    from deepfm_tfx import spans
    from deepfm_tfx.components import span_export
    from deepfm_tfx.schemas import feature_spec
    from deepfm_tfx.synthetic import generator

    os.makedirs(args.out, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".generating-", dir=args.out)
    try:
        reports = generator.generate(staging, rows=args.rows, spans=args.spans, seed=args.seed,
                                     first_span=args.first_span, profile=args.profile, **extra)
        spec = feature_spec.load(feature_spec.DEFAULT_SPEC)
        for report in reports:
            span = report["span"]
            if args.partitions:
                day = args.first_date + datetime.timedelta(days=span - 1)
                report[args.partitions] = day.isoformat()
                folder = os.path.join(args.out, f"{args.partitions}={day.isoformat()}")
            else:
                folder = os.path.join(args.out, f"span-{span}")
            os.makedirs(folder, exist_ok=True)
            source = spans.folder(staging, span)
            for name in sorted(os.listdir(source)):
                if name.endswith(".csv") and args.format != "csv":
                    span_export.export(os.path.join(source, name), spec, args.format, folder)
                else:
                    shutil.copy(os.path.join(source, name), folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return reports
