"""How many samples and plans a LUT's calibration needs: the same LUT recalibrated, the same check.

A LUT's layer tables are timed once per build; its calibration (12 random plans and 3 near-full ones
timed against the unpruned model, :func:`autoprune.latency.build.calibrate`) then picks the form by
leave-one-out and fits every coefficient. If the calibration's own fractions are noisy, the form fits
that noise, and a build is good or bad by chance. To see how much of a build's accuracy is the
calibration's: per run, build the tables (no calibration), time 50 check plans once (``repeats`` 45,
three times ``lut check``'s 15), then recalibrate the same tables ``--refits`` times per
setting, each on fresh timings (a new seed for the calibration plans each time, the settings taken in
alternating order), and score every refit on the same check timings. A setting is
``plans/repeats[/retries]``: calibration plans (plus one near-full one per four), timed samples per plan
(5 passes) and how often a calibration whose leave-one-out error is above 5% is timed again (default
``CALIBRATION_RETRIES``; ``/0``: never, as before 2026-12-06).

    python -m benchmarks.calibration_repeats [--runtime torch] [--model resnet20] [--runs 6]
        [--settings 12/30,12/60,24/30]
    python -m benchmarks.calibration_repeats --settings 12/30/0,12/30/2 --runs 8 --refits 4 \
        --out calibration_retries_torch_resnet20
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from autoprune.core.graph import build_unit_graph
from autoprune.latency.build import CALIBRATION_REPEATS, CALIBRATION_RETRIES, build_lut, calibrate
from autoprune.latency.check import check_lut
from autoprune.latency.costs import LutCost
from autoprune.latency.timing import tune_allocator
from autoprune.models.zoo import build_model
from benchmarks.common import target, write_results

SHAPE = (3, 32, 32)
CHECK_REPEATS = 45


def score(lut, graph, counts: list[list[int]], measured: list[float]) -> tuple[float, float]:
    """(share of plans within +-10%, median predicted / measured) of ``lut`` on a stored check."""
    cost = LutCost(lut, graph)
    predicted = np.array([cost.fraction(c) for c in counts])
    measured_ = np.array(measured)
    err = np.abs(predicted - measured_) / measured_
    return float((err <= 0.10).mean()), float(np.median(predicted / measured_))


def parse_settings(text: str) -> list[tuple[int, int, int]]:
    """``"12/30,12/30/0"`` -> ``[(12, 30, CALIBRATION_RETRIES), (12, 30, 0)]``."""
    out = []
    for item in text.split(","):
        values = [int(v) for v in item.split("/")]
        out.append((values[0], values[1], values[2] if len(values) > 2 else CALIBRATION_RETRIES))
    return out


def _key(row: dict) -> tuple[int, int, int]:
    return row["plans"], row["repeats"], row.get("retries", 0)


def run(runtime: str, name: str, runs: int, settings: list[tuple[int, int, int]], refits: int) -> list[dict]:
    step = 16 if name.startswith("mobilenet") else 8
    rows = []
    for r in range(runs):
        torch.manual_seed(0)
        model = build_model(name, num_classes=10, in_channels=3).eval()
        graph = build_unit_graph(model, SHAPE)
        lut = build_lut(model, SHAPE, step=step, clock="cpu", runtime=runtime, seed=r, progress=False,
                        calibration_plans=0, model_name=name)
        check = check_lut(lut, model, plans=50, seed=100 + r, repeats=CHECK_REPEATS, progress=False)
        for k in range(refits):
            for plans, repeats, retries in (settings if k % 2 == 0 else settings[::-1]):
                refit = copy.deepcopy(lut)
                start = time.perf_counter()
                calibrate(refit, graph, model, plans, 10 * r + k, repeats, False, runtime=runtime, clock="cpu",
                          calibration_repeats=repeats, retries=retries)
                within, bias = score(refit, graph, check["counts"], check["measured_rel"])
                cal = refit.header.get("calibration", {})
                rows.append({"runtime": runtime, "model": name, "run": r, "refit": k, "plans": plans,
                             "repeats": repeats, "retries": retries, "within_10pct": within, "median_pred_over_meas": bias,
                             "seconds": time.perf_counter() - start,
                             "form": {k2: v for k2, v in cal.items() if k2 not in ("counts", "relative")}})
        print(f"{runtime} {name} run {r}: " + " | ".join(
            "/".join(map(str, st)) + ": " + " ".join(f"{x['within_10pct']:.2f}" for x in rows
                                                     if x["run"] == r and _key(x) == st)
            for st in settings), flush=True)
    return rows


def summary(rows: list[dict], settings: list[tuple[int, int, int]]) -> list[dict]:
    out = []
    for plans, repeats, retries in settings:
        sel = [x for x in rows if _key(x) == (plans, repeats, retries)]
        within = np.array([x["within_10pct"] for x in sel])
        out.append({"plans": plans, "repeats": repeats, "retries": retries, "refits": len(sel), "mean": float(within.mean()),
                    "median": float(np.median(within)), "worst": float(within.min()),
                    "share_ge_095": float((within >= 0.95).mean()),
                    "bias": float(np.mean([abs(x["median_pred_over_meas"] - 1) for x in sel])),
                    "seconds": float(np.mean([x["seconds"] for x in sel]))})
    return out


def report(rows: list[dict], runtime: str, model: str, runs: int, refits: int, settings_arg: str,
           minutes: float, out: str | None = None) -> None:
    """Write ``calibration_repeats_<runtime>_<model>`` (or ``out``) from the refit rows."""
    summ = summary(rows, parse_settings(settings_arg))
    lines = ["| calibration plans | repeats (samples a pass) | retries | refits | within +-10%: mean | median | worst | "
             "refits >= 0.95 | mean abs(median pred/meas - 1) | calibration s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['plans']} (+{s['plans'] // 4} near-full) | {s['repeats']} ({max(3, -(-s['repeats'] // 5))}) | "
              f"{s['retries']} | "
              f"{s['refits']} | {s['mean']:.3f} | {s['median']:.2f} | {s['worst']:.2f} | {s['share_ge_095']:.2f} | "
              f"{s['bias']:.3f} | {s['seconds']:.1f} |" for s in summ]
    lines += ["", f"{runtime} {model}, batch 1, 1 thread, cpu clock, {runs} builds; per build one check of 50 random "
              f"plans at {CHECK_REPEATS} repeats, and {refits} calibrations per setting on fresh timings (the settings "
              f"alternating), each scored on that check. `lut build` calibrates with 12 plans at "
              f"{CALIBRATION_REPEATS} repeats, {CALIBRATION_RETRIES} retries. Wall time {minutes:.1f} min."]
    targets = [target(f"{runtime} / {model}: mean share of check plans within +-10% over refits, {s['plans']} "
                      f"calibration plans at {s['repeats']} repeats, {s['retries']} retries", ">= 0.95", round(s["mean"], 3), s["mean"] >= 0.95)
               for s in summ]
    command = (f"python -m benchmarks.calibration_repeats --runtime {runtime} --model {model} --runs {runs} "
               f"--refits {refits} --settings {settings_arg}")
    write_results(out or f"calibration_repeats_{runtime}_{model}", "\n".join(lines),
                  {"rows": rows, "summary": summ, "minutes": minutes}, targets, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", default="torch")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--runs", type=int, default=6, help="builds (tables + one check each)")
    parser.add_argument("--refits", type=int, default=2, help="calibrations per setting per build")
    parser.add_argument("--settings", default="12/30,12/60,24/30",
                        help="calibration plans/repeats to compare (default: 12/30, 12/60, 24/30)")
    parser.add_argument("--out", default=None, help="results name (default calibration_repeats_<runtime>_<model>)")
    args = parser.parse_args()
    settings = parse_settings(args.settings)
    tune_allocator()
    start = time.perf_counter()
    rows = run(args.runtime, args.model, args.runs, settings, args.refits)
    report(rows, args.runtime, args.model, args.runs, args.refits, args.settings, (time.perf_counter() - start) / 60,
           args.out)


if __name__ == "__main__":
    main()
