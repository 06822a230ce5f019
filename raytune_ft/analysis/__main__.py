"""`python -m raytune_ft.analysis compare|analyze|report ...`: the analysis CLI.

Exit codes: 0 success, 2 a user error (bad directory or argument), reported as one line.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd

from raytune_ft.analysis import (
    compare_experiments,
    export_experiment,
    hyperparameter_importance,
    write_report,
)
from raytune_ft.analysis._compare import FORMATS
from raytune_ft.errors import RaytuneFtError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m raytune_ft.analysis", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="best trials of one experiment, or compare several")
    c.add_argument("dirs", nargs="+", help="experiment directories")
    c.add_argument("--top", type=int, default=10, help="rows to show (default 10)")
    c.add_argument("--sort", default=None, help="column to sort by; prefix '-' for descending")
    c.add_argument("--format", dest="fmt", choices=FORMATS, default="table")
    a = sub.add_parser("analyze", help="export Parquet tables and rank hyperparameters")
    a.add_argument("dir", help="experiment directory")
    a.add_argument("--out", default=None, help="output folder (default <dir>/analysis)")
    r = sub.add_parser("report", help="write a self-contained report.html")
    r.add_argument("dir", help="experiment directory")
    r.add_argument("--out", default=None, help="output file (default <dir>/analysis/report.html)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "compare":
            print(compare_experiments(args.dirs, top=args.top, sort=args.sort, fmt=args.fmt))
        elif args.command == "analyze":
            paths = export_experiment(args.dir, args.out)
            for name, path in paths.items():
                print(f"{name}: {path}")
            imp = hyperparameter_importance(pd.read_parquet(paths["trials"]))
            if imp.empty:
                print(f"importance: not ranked ({imp.attrs['reason']})")
            else:
                print(imp.to_string(index=False))
        else:
            print(write_report(args.dir, args.out))
    except RaytuneFtError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
