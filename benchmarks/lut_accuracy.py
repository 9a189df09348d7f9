"""LUT accuracy: 50 random plans each for resnet20, resnet56, mobilenetv2_small.

For each model: build a LUT (batch 1, 1 thread, step-4 grid for the ResNets and step 8
for MobileNetV2, calibrated on random variants), then time 50 random pruned variants (a random
stream separate from the calibration plans, timed against the base model: see
``autoprune.latency.time_against_base``) and compare with the LUT's predictions: mean absolute
% error and the share within +-10%. Each model is built and checked ``--runs`` times (calibration
and check plans seeded by the run index); the target uses the median share, because on a shared
VM one run says as much about the machine's mood as about the predictor. The table also shows
the share at the build-time speed (measured latencies divided by the unpruned model's drift since
the build), which ``autoprune lut check`` prints too.

    python -m benchmarks.lut_accuracy [--clock wall|cpu] [--plans 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.latency.build import build_lut, check_lut
from autoprune.latency.lut import Lut
from autoprune.models.zoo import build_model
from benchmarks.common import ROOT, target, write_results

MODELS = ("resnet20", "resnet56", "mobilenetv2_small")
SHAPE = (3, 32, 32)


def lut_path(name: str) -> str:
    return str(ROOT / "luts" / f"{name}_b1_t1.json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--plans", type=int, default=50)
    parser.add_argument("--step", type=int, default=4, help="grid step for the ResNets")
    parser.add_argument("--mobilenet-step", type=int, default=8, help="grid step for mobilenetv2_small (wide layers)")
    parser.add_argument("--calibration-plans", type=int, default=12)
    parser.add_argument("--runs", type=int, default=3, help="build + check this many times per model (seeds 0..)")
    args = parser.parse_args()
    rows, targets = [], []
    keys = [k + sfx for sfx in ("", "_drift_corrected") for k in ("mape", "within_10pct", "max_abs_pct")]
    for name in MODELS:
        model = build_model(name, in_channels=3, num_classes=10).eval()
        step = args.mobilenet_step if name.startswith("mobilenet") else args.step
        for run in range(args.runs):
            start = time.perf_counter()
            lut: Lut = build_lut(model, SHAPE, batch=1, threads=1, step=step, clock=args.clock, model_name=name,
                                 calibration_plans=args.calibration_plans, seed=run, progress=False)
            built = time.perf_counter() - start
            if run == 0:
                atomic_write_text(lut_path(name), lut.to_json())
            start = time.perf_counter()
            res = check_lut(lut, model, plans=args.plans, seed=run, progress=False)
            rows.append({"model": name, "run": run, "step": step, "plans": res["plans"], **{k: res[k] for k in keys},
                         "drift": res["drift"], "base_ms": lut.header.get("base_measured_ms"),
                         "calibration": lut.header.get("calibration"), "build_s": built,
                         "check_s": time.perf_counter() - start})
        share = float(np.median([r["within_10pct"] for r in rows if r["model"] == name]))
        targets.append(target(f"{name}: share within +-10%, median of {args.runs} build+check runs", ">= 0.95",
                              round(share, 3), share >= 0.95))
    table = ["| model | run | grid step | plans | MAPE % | within +-10% | max abs % | calibration fit MAPE % | "
             "speed drift | within +-10% at build speed | base ms | build s | check s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['run']} | {r['step']} | {r['plans']} | {r['mape']:.2f} | {r['within_10pct']:.2f} | "
              f"{r['max_abs_pct']:.1f} | {(r['calibration'] or {}).get('fit_mape', float('nan')):.1f} | "
              f"{r['drift']:.3f} | {r['within_10pct_drift_corrected']:.2f} | {r['base_ms']:.2f} | "
              f"{r['build_s']:.0f} | {r['check_s']:.0f} |" for r in rows]
    write_results("lut_accuracy", "\n".join(table) + f"\n\nbatch 1, 1 thread, "
                  f"{args.calibration_plans} calibration plans, clock `{args.clock}`; speed drift = the unpruned "
                  "model's latency at check time / at build time",
                  {"rows": rows, "clock": args.clock}, targets,
                  f"python -m benchmarks.lut_accuracy --clock {args.clock} --plans {args.plans} --step {args.step} "
                  f"--mobilenet-step {args.mobilenet_step} --calibration-plans {args.calibration_plans} "
                  f"--runs {args.runs}")


if __name__ == "__main__":
    main()
