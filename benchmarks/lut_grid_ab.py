"""A/B of the LUT grid's powers of two below the step (1, 2, 4 with step 8) on one machine, same hour.

For each run seed, builds and checks a LUT with the grid before the change (1, every multiple of
the step, n) and then with today's grid (:func:`autoprune.latency.tables.grid_counts`), through
``benchmarks.lut_accuracy.run_one`` (same calibration and check plans for both); prints one line
per build+check. Paired runs separate the grid from the machine's noise, which a full
``lut_accuracy`` run on a noisy machine cannot.

    python -m benchmarks.lut_grid_ab torch resnet20 [--runs 10 11 12]
"""

from __future__ import annotations

import argparse

import autoprune.latency.tables as tables
from benchmarks import lut_accuracy


def without_powers_of_two(n: int, step: int) -> list[int]:
    """The grid before the powers of two joined it: 1, every multiple of ``step`` and ``n``."""
    return sorted({1, n, *range(step, n + 1, step)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runtime")
    parser.add_argument("model")
    parser.add_argument("--runs", type=int, nargs="+", default=[10, 11, 12], help="seeds (0 would overwrite benchmarks/luts)")
    args = parser.parse_args()
    if 0 in args.runs:
        parser.error("seed 0 would overwrite the committed LUT in benchmarks/luts; pick other seeds")
    opts = argparse.Namespace(mobilenet_step=16, step=8, clock="cpu", calibration_plans=12, plans=50, fine="auto")
    today = tables.grid_counts
    try:
        for run in args.runs:
            for label, grid in (("without 1-2-4", without_powers_of_two), ("with 1-2-4", today)):
                tables.grid_counts = grid
                row = lut_accuracy.run_one(args.model, args.runtime, run, opts)
                print(f"{label}: {args.runtime} {args.model} seed {run}: within +-10% {row['within_10pct']:.2f}, "
                      f"MAPE {row['mape']:.2f}%, MACs baseline {row.get('macs_within_10pct', float('nan')):.2f}",
                      flush=True)
    finally:
        tables.grid_counts = today


if __name__ == "__main__":
    main()
