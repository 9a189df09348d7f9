"""Speed-up: measured CPU latency of each searcher's best plan vs the base model.

Loads the pruned models that ``benchmarks.search_quality`` wrote (seed 0) and times them against
the base model at batch 1 and 32 (1 thread, the timing thread's CPU time: the machine is shared;
``autoprune.latency.time_against_base``: interleaved passes, fastest pass kept). Two forms of
every model, base included: ``eager`` (the module as trained) and ``folded`` (BatchNorm folded
into the convs, as ``autoprune export --fold-bn`` writes it for deployment). Reports speed-up and
speed-up x kept FLOPs (1.0 = latency fell exactly as much as FLOPs). Then compares, at equal
FLOPs, the latency-LUT-guided NetAdapt plan with a FLOPs-guided NetAdapt plan (eager form: the
form the LUT was built for).

    python -m benchmarks.speedup
"""

from __future__ import annotations

import json
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

import autoprune
from autoprune.latency.timing import time_against_base
from autoprune.models.zoo import build_model, load_checkpoint
from autoprune.pipeline.export import fold_batchnorm
from autoprune.pipeline.run import run_search
from benchmarks.common import CHECKPOINT, base_config, target, write_results
from benchmarks.search_quality import RUNS, searchers

SHAPE = (3, 32, 32)
BATCHES = (1, 32)


def timed(base, models, batch: int):
    return time_against_base(base, models, SHAPE, batch=batch, threads=1, repeats=15, clock="cpu")


LEAVES = {"conv": ("mkldnn_convolution", "thnn_conv", "_slow_conv", "convolution_overrideable"),
          "batch norm": ("native_batch_norm", "_native_batch_norm_legit"),
          "relu / add": ("aten::relu", "aten::add")}


def op_profile(model, batch: int, iters: int = 20) -> dict[str, float]:
    """ms per forward spent in conv kernels, batch norm, relu/add and everything else (torch.profiler,
    self CPU time of leaf ops, 1 thread)."""
    x = torch.randn(batch, *SHAPE)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for _ in range(5):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(iters):
                    model(x)
    finally:
        torch.set_num_threads(old)
    out: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        group = next((g for g, keys in LEAVES.items() if any(k in e.key for k in keys)), "other")
        out[group] += e.self_cpu_time_total / iters / 1000
    return dict(out)


def main() -> None:
    base = load_checkpoint(build_model("resnet20", in_channels=3, num_classes=10), CHECKPOINT).eval()
    runs = [(budget, label, RUNS / f"{budget}__{label}__0") for budget in ("flops0.5", "flops0.25", "latency0.6")
            for label in searchers(1)]
    runs = [(b, label, r) for b, label, r in runs if (r / "pruned_model.pt").exists()]
    models = [autoprune.load_pruned(r / "pruned_model.pt").eval() for _, _, r in runs]
    rows = [{"budget": b, "searcher": label,
             "flops_kept": json.loads((r / "summary.json").read_text())["pruned"]["flops_kept"]}
            for b, label, r in runs]
    base_ms = {}
    for form in ("eager", "folded"):
        fb = base if form == "eager" else fold_batchnorm(base)
        fm = models if form == "eager" else [fold_batchnorm(m) for m in models]
        for batch in BATCHES:
            t = timed(fb, fm, batch)
            base_ms[f"{form}_b{batch}"] = t.base_ms
            for row, ms, rel in zip(rows, t.ms, t.relative, strict=True):
                row[f"{form}_ms_b{batch}"] = ms
                row[f"{form}_speedup_b{batch}"] = 1 / rel
                row[f"{form}_efficiency_b{batch}"] = row["flops_kept"] / rel
    comparison = {}
    lat_run = RUNS / "latency0.6__netadapt__0"
    if (lat_run / "summary.json").exists():
        kept = json.loads((lat_run / "summary.json").read_text())["pruned"]["flops_kept"]
        flops_run = RUNS / "equal_flops__netadapt__0"
        if not (flops_run / "summary.json").exists():
            cfg = base_config(["seed=0", "ray.workers=2"], searcher=searchers(1)["netadapt"],
                              budget={"flops": round(kept, 4)})
            run_search(cfg, out=flops_run, progress=False)
        kept_f = json.loads((flops_run / "summary.json").read_text())["pruned"]["flops_kept"]
        pair = [autoprune.load_pruned(r / "pruned_model.pt").eval() for r in (lat_run, flops_run)]
        t = timed(base, pair, 1)
        comparison = {"latency_guided": {"flops_kept": kept, "ms_b1": t.ms[0]},
                      "flops_guided": {"flops_kept": kept_f, "ms_b1": t.ms[1]}}
    profiles = {}
    quarter = [m for (b, label, _), m in zip(runs, models, strict=True) if (b, label) == ("flops0.25", "uniform")]
    for batch in BATCHES if quarter else ():
        profiles[f"b{batch}"] = {"base": op_profile(base, batch), "uniform 25%": op_profile(quarter[0], batch)}
    table = [", ".join(f"base {k.replace('_b', ' batch ')}: {v:.2f} ms" for k, v in base_ms.items()), ""]
    if profiles:
        groups = ["conv", "batch norm", "relu / add", "other"]
        table += ["Where the time goes (eager, torch.profiler self CPU time, ms per forward, 1 thread):", "",
                  "| batch | model | " + " | ".join(groups) + " | conv speed-up |", "|---" * (len(groups) + 3) + "|"]
        for b, prof in profiles.items():
            for name, g in prof.items():
                speed = prof["base"].get("conv", 0) / max(g.get("conv", 1e-9), 1e-9)
                table.append(f"| {b[1:]} | {name} | " + " | ".join(f"{g.get(k, 0):.2f}" for k in groups)
                             + f" | {speed:.2f} |")
        table.append("")
    for form in ("folded", "eager"):
        table += [f"**{form}**", "",
                  "| budget | searcher | kept FLOPs | ms b1 | speed-up b1 | x kept FLOPs | ms b32 | speed-up b32 | x kept FLOPs |",
                  "|---|---|---|---|---|---|---|---|---|"]
        table += [f"| {r['budget']} | {r['searcher']} | {r['flops_kept']:.3f} | "
                  + " | ".join(f"{r[f'{form}_ms_b{b}']:.2f} | {r[f'{form}_speedup_b{b}']:.2f} | "
                               f"{r[f'{form}_efficiency_b{b}']:.2f}" for b in BATCHES) + " |" for r in rows]
        table.append("")
    if comparison:
        lg, fg = comparison["latency_guided"], comparison["flops_guided"]
        table += [f"NetAdapt at equal FLOPs (eager, batch 1): latency-LUT-guided {lg['flops_kept']:.3f} FLOPs kept, "
                  f"{lg['ms_b1']:.2f} ms; FLOPs-guided {fg['flops_kept']:.3f}, {fg['ms_b1']:.2f} ms"]
    flops_rows = [r for r in rows if r["budget"].startswith("flops")]
    targets = []
    for form in ("folded", "eager"):
        eff = [r[f"{form}_efficiency_b{b}"] for r in flops_rows for b in BATCHES]
        worst, mean = (min(eff), sum(eff) / len(eff)) if eff else (float("nan"), float("nan"))
        label = "speed-up x kept FLOPs, every FLOPs-budget plan, b1 and b32, " + (
            "BatchNorm folded (as deployed)" if form == "folded" else "eager (informative)")
        targets.append(target(label, ">= 0.85", {"worst": round(worst, 2), "mean": round(mean, 2)}, worst >= 0.85))
    if comparison:
        faster = comparison["latency_guided"]["ms_b1"] < 0.95 * comparison["flops_guided"]["ms_b1"]
        targets.append(target("latency-LUT NetAdapt faster than FLOPs NetAdapt at equal FLOPs", "measurably (>5%)",
                              [round(float(comparison["latency_guided"]["ms_b1"]), 2),
                               round(float(comparison["flops_guided"]["ms_b1"]), 2)], faster))
    write_results("speedup", "\n".join(table), {"base_ms": base_ms, "rows": rows, "netadapt": comparison,
                                                 "op_profile": profiles}, targets,
                  "python -m benchmarks.speedup")


if __name__ == "__main__":
    main()
