"""LUT accuracy: 50 random plans each for resnet20, resnet56, mobilenetv2_small.

For each model: build a LUT (batch 1, 1 thread, step-4 grid for the ResNets and step 8
for MobileNetV2, calibrated on random variants), then time 50 random pruned variants (a random
stream separate from the calibration plans, timed against the base model: see
``autoprune.latency.time_against_base``) and compare with the LUT's predictions: mean absolute
% error and the share within +-10%, as measured and at the build-time machine speed (measured
latencies divided by the base model's drift since the build; the target uses the latter, the
table shows both).

    python -m benchmarks.lut_accuracy [--clock wall|cpu] [--plans 50]
"""

from __future__ import annotations

import argparse
import time

from autoprune.latency import build_lut, check_lut
from autoprune.lut import Lut
from autoprune.models import build_model
from autoprune.runs import atomic_write_text
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
    args = parser.parse_args()
    rows, targets = [], []
    for name in MODELS:
        model = build_model(name, in_channels=3, num_classes=10).eval()
        start = time.perf_counter()
        step = args.mobilenet_step if name.startswith("mobilenet") else args.step
        lut: Lut = build_lut(model, SHAPE, batch=1, threads=1, step=step, clock=args.clock, model_name=name,
                             calibration_plans=args.calibration_plans, progress=False)
        built = time.perf_counter() - start
        atomic_write_text(lut_path(name), lut.to_json())
        start = time.perf_counter()
        res = check_lut(lut, model, plans=args.plans, progress=False)
        checked = time.perf_counter() - start
        keys = [k + sfx for sfx in ("", "_drift_corrected") for k in ("mape", "within_10pct", "max_abs_pct")]
        rows.append({"model": name, "step": step, "plans": res["plans"], **{k: res[k] for k in keys},
                     "drift": res["drift"], "base_ms": lut.header.get("base_measured_ms"),
                     "calibration": lut.header.get("calibration"), "build_s": built, "check_s": checked})
        targets.append(target(f"{name}: share within +-10% (at build-time speed)", ">= 0.95",
                              round(res["within_10pct_drift_corrected"], 3), res["within_10pct_drift_corrected"] >= 0.95))
        targets.append(target(f"{name}: share within +-10% (as measured, informative)", ">= 0.95",
                              round(res["within_10pct"], 3), res["within_10pct"] >= 0.95))
    table = ["| model | grid step | plans | MAPE % | within +-10% | max abs % | speed drift | MAPE % at build speed | "
             "within +-10% at build speed | base ms | build s | check s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['model']} | {r['step']} | {r['plans']} | {r['mape']:.2f} | {r['within_10pct']:.2f} | "
              f"{r['max_abs_pct']:.1f} | {r['drift']:.3f} | {r['mape_drift_corrected']:.2f} | "
              f"{r['within_10pct_drift_corrected']:.2f} | {r['base_ms']:.2f} | {r['build_s']:.0f} | {r['check_s']:.0f} |"
              for r in rows]
    write_results("lut_accuracy", "\n".join(table) + f"\n\nbatch 1, 1 thread, "
                  f"{args.calibration_plans} calibration plans, clock `{args.clock}`",
                  {"rows": rows, "clock": args.clock}, targets,
                  f"python -m benchmarks.lut_accuracy --clock {args.clock} --plans {args.plans} --step {args.step} "
                  f"--mobilenet-step {args.mobilenet_step} --calibration-plans {args.calibration_plans}")


if __name__ == "__main__":
    main()
