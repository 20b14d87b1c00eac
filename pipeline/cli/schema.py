"""`deepfm-tfx schema export`: the frozen schema, written out for review.

The flow: the first run infers a schema and freezes it (with drift and skew
thresholds); export it, review it, then name it in the feature spec
(`schema: FILE`) so it is curated and versioned with the spec.
"""
from __future__ import annotations

import os
import shutil
import sys

from deepfm_tfx.contracts import EXIT_BAD_INPUT
from deepfm_tfx.pipeline import configs


def configure(p) -> None:
    sub = p.add_subparsers(dest="schema_command", required=True, metavar="ACTION")
    e = sub.add_parser("export", help="write the frozen schema to a file for review",
                       formatter_class=p.formatter_class)
    configs.add_arguments(e, names=["pipeline_root"], training=False)
    e.add_argument("--out", required=True, help="where to write the schema (.pbtxt)")
    e.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from deepfm_tfx.schemas import frozen_schema
    source = frozen_schema.path(args.pipeline_root)
    if not os.path.exists(source):
        print(f"error: {source} does not exist: no schema is frozen under {args.pipeline_root} yet "
              f"(the first run without a curated `schema:` freezes one)", file=sys.stderr)
        return EXIT_BAD_INPUT
    if os.path.isdir(args.out):
        print(f"error: --out {args.out} is a directory; give a file name", file=sys.stderr)
        return EXIT_BAD_INPUT
    shutil.copyfile(source, args.out)
    print(f"wrote {args.out} (frozen from {source}); after review, set `schema: {os.path.basename(args.out)}` "
          f"in the feature spec, beside it")
    return 0
