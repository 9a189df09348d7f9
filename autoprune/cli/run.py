"""``autoprune run``: every (searcher, budget, seed) combination of an experiment as one Ray Tune trial
(see :mod:`autoprune.pipeline.experiments`), then the comparison report."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoprune.cli.search import add_config_args, config_from_args
from autoprune.errors import AutopruneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run every searcher x budget x seed combination as Ray Tune trials")
    add_config_args(p)
    p.add_argument("--out", default="experiments_out", help="experiment directory (default experiments_out)")
    p.add_argument("--resume", action="store_true", help="finish the unfinished or failed trials in --out")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from autoprune.pipeline.experiments import run_experiment
    from autoprune.pipeline.report import text_table, write_report

    cfg = config_from_args(args)
    failed = run_experiment(cfg, args.out, args.resume)
    runs = Path(args.out) / "runs"
    if any(runs.rglob("summary.json")):
        report = write_report([runs], Path(args.out) / "report")
        print(text_table(report["summary"]))
        print(f"report written to {Path(args.out) / 'report' / 'report.md'}")
    if failed:
        raise AutopruneError(f"{len(failed)} trial(s) failed ({', '.join(failed)}); see {args.out}/tune; "
                             f"fix the cause and rerun with --resume --out {args.out}")
    return 0
