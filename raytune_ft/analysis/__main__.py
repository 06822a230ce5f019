"""`python -m raytune_ft.analysis compare|analyze|report ...` (also `raytune-ft analyze ...`).

Exit codes as `raytune-ft` (raytune_ft.errors): 0 success, 2 a user error (bad directory or
argument), reported as one line, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from raytune_ft.errors import RaytuneFtError, error_line, exit_code
from raytune_ft.experiment import ANALYSIS_DIR
from raytune_ft.storage import local_experiment


def add_commands(sub) -> None:
    """Add analyze, compare and report to an argparse subparsers object."""
    from raytune_ft.analysis._compare import FORMATS

    c = sub.add_parser("compare", help="best trials of one experiment, or compare several")
    c.add_argument("dirs", nargs="+", help="experiment directories (paths or URIs)")
    c.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    c.add_argument("--sort", default=None, help="column to sort by; prefix '-' for descending")
    c.add_argument("--format", dest="fmt", choices=FORMATS, default="table")
    c.add_argument("--pareto", action="store_true", help="the Pareto-optimal trials of one "
                   "experiment over its objectives")
    c.set_defaults(handler=compare)
    a = sub.add_parser("analyze", help="export Parquet tables and rank hyperparameters")
    a.add_argument("dir", help="experiment directory (a path or a URI)")
    a.add_argument("--out", default=None, help="output folder (default <dir>/analysis)")
    a.set_defaults(handler=analyze)
    r = sub.add_parser("report", help="write a self-contained report.html")
    r.add_argument("dir", help="experiment directory (a path or a URI)")
    r.add_argument("--out", default=None, help="output file (default <dir>/analysis/report.html)")
    r.set_defaults(handler=report)


def compare(args) -> int:
    from raytune_ft.analysis import compare_experiments

    with contextlib.ExitStack() as stack:
        dirs = [stack.enter_context(local_experiment(d, ANALYSIS_DIR)) for d in args.dirs]
        print(compare_experiments(dirs, top=args.top, sort=args.sort, fmt=args.fmt,
                                  pareto=args.pareto))
    return 0


def analyze(args) -> int:
    import pandas as pd

    from raytune_ft.analysis import export_experiment, hyperparameter_importance

    with local_experiment(args.dir, ANALYSIS_DIR) as local:
        paths = export_experiment(local, args.out)
        trials = pd.read_parquet(paths["trials"])
    for name, path in paths.items():
        print(f"{name}: {path}")
    importance = hyperparameter_importance(trials)
    if importance.empty:
        print(f"importance: not ranked ({importance.attrs['reason']})")
    else:
        print(importance.to_string(index=False))
    return 0


def report(args) -> int:
    from raytune_ft.analysis import write_report

    with local_experiment(args.dir, ANALYSIS_DIR) as local:
        print(write_report(local, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raytune_ft.analysis", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (RaytuneFtError, KeyboardInterrupt) as error:
        print(error_line(error), file=sys.stderr)
        return exit_code(error)


if __name__ == "__main__":
    sys.exit(main())
