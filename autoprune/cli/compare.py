"""``autoprune compare``: a table, ``report.md``, ``results.csv`` and plots from finished runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare finished runs: table, report.md, results.csv, plots")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a run dir or a parent of run dirs (repeatable)")
    p.add_argument("--out", help="report directory (default: <first DIR>/report)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from autoprune.atomic import check_writable
    from autoprune.pipeline.report import efficiency_table, find_run_dirs, text_table, write_report

    find_run_dirs(args.dirs)  # a clear error for a path that holds no runs, before the output is checked
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    check_writable(out)
    report = write_report(args.dirs, out)
    print(text_table(report["summary"]))
    if not report["efficiency"].empty:
        print("\nevaluations to reach random search's best (same budget and seed):")
        print(text_table(efficiency_table(report["efficiency"])))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"{len(report['runs'])} runs; report written to {out / 'report.md'}")
    return 0
