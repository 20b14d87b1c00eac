"""`python -m bench`: the benchmark, a tool outside the installed package."""
import argparse
import sys

from bench import bench


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.configure(parser)
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    sys.exit(_main())
