"""Speed-up: measured CPU latency of each searcher's best plan vs the base model.

Loads the pruned models that ``benchmarks.search_quality`` wrote (seed 0), measures batch-1 and
batch-32 latency (1 thread, the timing thread's CPU time: the machine is shared), and reports
speed-up and speed-up x kept FLOPs (1.0 = latency fell exactly as much as FLOPs). Then compares,
at equal FLOPs, the latency-LUT-guided NetAdapt plan with a FLOPs-guided NetAdapt plan.

    python -m benchmarks.speedup
"""

from __future__ import annotations

import json

import numpy as np

import autoprune
from autoprune.latency import measure_latency
from autoprune.models import build_model, load_checkpoint
from autoprune.runner import run_search
from benchmarks.common import CHECKPOINT, base_config, target, write_results
from benchmarks.search_quality import RUNS, searchers

SHAPE = (3, 32, 32)


def latency(model, batch: int) -> float:
    return measure_latency(model, SHAPE, batch=batch, threads=1, repeats=30, clock="cpu").median_ms


def main() -> None:
    base = load_checkpoint(build_model("resnet20", in_channels=3, num_classes=10), CHECKPOINT).eval()
    base_ms = {b: latency(base, b) for b in (1, 32)}
    rows = []
    for budget in ("flops0.5", "flops0.25", "latency0.6"):
        for label in searchers(1):
            run = RUNS / f"{budget}__{label}__0"
            if not (run / "pruned_model.pt").exists():
                continue
            kept = json.loads((run / "summary.json").read_text())["pruned"]["flops_kept"]
            model = autoprune.load_pruned(run / "pruned_model.pt")
            ms = {b: latency(model, b) for b in (1, 32)}
            rows.append({"budget": budget, "searcher": label, "flops_kept": kept,
                         **{f"ms_b{b}": ms[b] for b in ms},
                         **{f"speedup_b{b}": base_ms[b] / ms[b] for b in ms},
                         **{f"efficiency_b{b}": base_ms[b] / ms[b] * kept for b in ms}})
    lat_run = RUNS / "latency0.6__netadapt__0"
    comparison = {}
    if lat_run.exists():
        kept = json.loads((lat_run / "summary.json").read_text())["pruned"]["flops_kept"]
        flops_run = RUNS / "equal_flops__netadapt__0"
        if not (flops_run / "summary.json").exists():
            cfg = base_config(["seed=0", "ray.workers=2"], searcher=searchers(1)["netadapt"],
                              budget={"flops": round(kept, 4)})
            run_search(cfg, out=flops_run, progress=False)
        kept_f = json.loads((flops_run / "summary.json").read_text())["pruned"]["flops_kept"]
        lat = [np.median([latency(autoprune.load_pruned(r / "pruned_model.pt"), 1) for _ in range(3)])
               for r in (lat_run, flops_run)]
        comparison = {"latency_guided": {"flops_kept": kept, "ms_b1": lat[0]},
                      "flops_guided": {"flops_kept": kept_f, "ms_b1": lat[1]}}
    table = [f"base: {base_ms[1]:.2f} ms (batch 1), {base_ms[32]:.2f} ms (batch 32)", "",
             "| budget | searcher | kept FLOPs | ms b1 | speed-up b1 | x kept FLOPs | ms b32 | speed-up b32 | x kept FLOPs |",
             "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['budget']} | {r['searcher']} | {r['flops_kept']:.3f} | {r['ms_b1']:.2f} | {r['speedup_b1']:.2f} | "
              f"{r['efficiency_b1']:.2f} | {r['ms_b32']:.2f} | {r['speedup_b32']:.2f} | {r['efficiency_b32']:.2f} |"
              for r in rows]
    if comparison:
        lg, fg = comparison["latency_guided"], comparison["flops_guided"]
        table += ["", f"NetAdapt at equal FLOPs: latency-LUT-guided {lg['flops_kept']:.3f} FLOPs kept, "
                      f"{lg['ms_b1']:.2f} ms; FLOPs-guided {fg['flops_kept']:.3f}, {fg['ms_b1']:.2f} ms (batch 1)"]
    flops_rows = [r for r in rows if r["budget"].startswith("flops")]
    worst = min(min(r["efficiency_b1"], r["efficiency_b32"]) for r in flops_rows) if flops_rows else float("nan")
    targets = [target("speed-up x kept FLOPs (every FLOPs-budget plan, b1 and b32)", ">= 0.85", round(worst, 2),
                      worst >= 0.85)]
    if comparison:
        faster = comparison["latency_guided"]["ms_b1"] < 0.95 * comparison["flops_guided"]["ms_b1"]
        targets.append(target("latency-LUT NetAdapt faster than FLOPs NetAdapt at equal FLOPs", "measurably (>5%)",
                              [round(float(comparison["latency_guided"]["ms_b1"]), 2), round(float(comparison["flops_guided"]["ms_b1"]), 2)],
                              faster))
    write_results("speedup", "\n".join(table), {"base_ms": base_ms, "rows": rows, "netadapt": comparison}, targets,
                  "python -m benchmarks.speedup")


if __name__ == "__main__":
    main()
