"""Sensitivity analysis (``autoprune sensitivity``): prune one unit at a time at each ratio, score it,
and write ``sensitivity.csv`` and ``sensitivity.png`` (accuracy vs preserve ratio, one curve per unit)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from autoprune.agents.sensitivity import analyse
from autoprune.atomic import atomic_write_text, atomic_write_with, check_writable
from autoprune.config import ExperimentConfig
from autoprune.pipeline.session import prepare


def sensitivity_table(cfg: ExperimentConfig, ratios: Sequence[float], progress: bool = True) -> pd.DataFrame:
    """One row per (unit, ratio): ``unit``, ``ratio``, ``channels``, ``val_accuracy``, costs, ``base_accuracy``."""
    session = prepare(cfg, progress=progress)
    evaluator = session.evaluator()
    ctx = session.context(evaluator, progress=progress)
    table = pd.DataFrame(analyse(ctx, ratios, record=False))
    table["base_accuracy"] = evaluator.base_accuracy()
    return table


def run_sensitivity(cfg: ExperimentConfig, ratios: Sequence[float], out: str | Path,
                    progress: bool = True) -> tuple[Path, Path, int]:
    """Write ``OUT/sensitivity.csv`` and ``OUT/sensitivity.png``; return their paths and the row count."""
    out = Path(out)
    check_writable(out)
    table = sensitivity_table(cfg, ratios, progress)
    out.mkdir(parents=True, exist_ok=True)
    csv, png = out / "sensitivity.csv", out / "sensitivity.png"
    atomic_write_text(csv, table.to_csv(index=False))
    atomic_write_with(png, lambda buf: plot(table, buf))
    return csv, png, len(table)


def plot(table: pd.DataFrame, buf: io.BufferedIOBase) -> None:
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
