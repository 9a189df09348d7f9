"""``autoprune sensitivity CONFIG``: per-unit accuracy-vs-ratio curves (CSV + plot; see
:mod:`autoprune.pipeline.sensitivity`)."""

from __future__ import annotations

import argparse

from autoprune.cli.search import add_config_args, config_from_args
from autoprune.errors import AutopruneError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="prune one unit at a time at each ratio; CSV and plot of accuracy")
    add_config_args(p)
    p.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9",
                   help="preserve ratios (fraction of channels kept), comma-separated")
    p.add_argument("--out", default="sensitivity", help="output directory (default ./sensitivity)")
    p.set_defaults(func=cmd_sensitivity)


def parse_ratios(text: str) -> list[float]:
    from autoprune.agents.sensitivity import check_ratios

    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise AutopruneError(f"--ratios {text!r}: expected numbers like 0.1,0.5,0.9") from exc
    return check_ratios(values, "--ratios")


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from autoprune.pipeline.sensitivity import run_sensitivity

    ratios = parse_ratios(args.ratios)
    cfg = config_from_args(args)
    csv, png, rows = run_sensitivity(cfg, ratios, args.out, progress=not args.no_progress)
    print(f"wrote {csv} and {png} ({rows} evaluations)")
    return 0
