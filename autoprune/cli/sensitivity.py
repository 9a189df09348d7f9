"""``autoprune sensitivity CONFIG``: per-unit accuracy-vs-ratio curves (CSV + plot)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

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
    import pandas as pd

    from autoprune.agents.sensitivity import analyse
    from autoprune.atomic import atomic_write_text, atomic_write_with, check_writable
    from autoprune.pipeline.runner import prepare

    ratios = parse_ratios(args.ratios)
    cfg = config_from_args(args)
    out = Path(args.out)
    check_writable(out)
    session = prepare(cfg, progress=not args.no_progress)
    evaluator = session.evaluator()
    from autoprune.search.records import TrialRecorder

    ctx = session.context(evaluator, TrialRecorder(None), None, False, progress=not args.no_progress)
    table = pd.DataFrame(analyse(ctx, ratios, record=False))
    table["base_accuracy"] = evaluator.base_accuracy()
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sensitivity.csv", table.to_csv(index=False))
    atomic_write_with(out / "sensitivity.png", lambda buf: plot(table, buf))
    print(f"wrote {out / 'sensitivity.csv'} and {out / 'sensitivity.png'} ({len(table)} evaluations)")
    return 0


def plot(table, buf: io.BufferedIOBase) -> None:
    """Accuracy vs preserve ratio, one curve per unit, base accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for unit, rows in table.groupby("unit", sort=False):
        ax.plot(rows["ratio"], rows["val_accuracy"], marker="o", label=unit)
    ax.axhline(float(table["base_accuracy"].iloc[0]), color="grey", linestyle="--", label="unpruned")
    ax.set_xlabel("preserve ratio (fraction of channels kept)")
    ax.set_ylabel("validation accuracy (adaptive BN)")
    ax.set_title("sensitivity: one unit pruned at a time")
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
