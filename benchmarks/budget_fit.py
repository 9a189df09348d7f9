"""Fitting plans to a latency budget where a wider layer can run faster.

A ConvNeXt-style model (depthwise 7x7 convs, channels-first LayerNorm with its own parameters, a channels-last
MLP through ``nn.Linear``, layer scale; 9 prunable units; random weights: only its speed matters here) runs in
ONNX Runtime much slower at channel counts off multiples of 4 (a plan at half the FLOPs can run slower than the
unpruned model), and its LUT says so (fine curves timed at every width). The searchers scale every draw to
the budget (:meth:`SearchContext.fit_to_budget`); this benchmark measures, on ``--draws`` seeded random draws per
budget, the FLOPs the fitted plans keep with

- ``bisect``: bisection alone (the fitter before 2026-12-07, still what a monotone cost gets),
- ``scan``: the fitter as it is (the LUT cost says it is not monotone: 64 factors scanned, then bisection),
- ``round_to`` 4, 8 and 16: the same draws, the fitter as it is, counts rounded
  (:func:`autoprune.pipeline.session.rounding_gains`, the numbers a search's warning quotes),

then times the first ``--timed`` plans of ``bisect``, ``scan`` and the rounding a search would suggest at the
middle budget in ONNX Runtime, interleaved with the unpruned model (what they really run at), and records
whether a search at each budget warns (:func:`autoprune.pipeline.session.warn_misaligned`).

    python -m benchmarks.budget_fit [--budgets 0.65,0.72,0.8] [--draws 30] [--timed 8] [--rebuild]

The LUT is built once (``benchmarks/luts/convnext_ish_onnxruntime_b1_t1.json``, about a minute) and reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import time

import numpy as np
import torch
from torch import nn

from autoprune.atomic import atomic_write_text
from autoprune.config import PruningConfig
from autoprune.core.cost import make_budget, plan_costs
from autoprune.core.graph import build_unit_graph
from autoprune.latency.build import build_lut
from autoprune.latency.lut import load_lut
from autoprune.latency.timing import time_plans, tune_allocator
from autoprune.pipeline.session import warn_misaligned
from autoprune.search.base import SearchContext
from autoprune.search.rounding import rounding_gains, suggested_round_to
from benchmarks.common import ROOT, target, write_results

SHAPE = (3, 32, 32)
LUT = ROOT / "luts" / "convnext_ish_onnxruntime_b1_t1.json"


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm with its own weight and bias (as ConvNeXt writes it)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None, None] * (x - mean) / torch.sqrt(var + self.eps) + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtish(nn.Module):
    """Three stages of two blocks (24, 48, 96 channels), a patchify stem and strided 2x2 downsampling."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, dims: tuple[int, ...] = (24, 48, 96)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2), LayerNorm2d(dims[0]))
        stages = []
        for i, d in enumerate(dims):
            down = [LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], d, 2, stride=2)] if i else []
            stages.append(nn.Sequential(*down, ConvNeXtBlock(d), ConvNeXtBlock(d)))
        self.stages = nn.Sequential(*stages)
        self.norm, self.head = nn.LayerNorm(dims[-1]), nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.stages(self.stem(x)).mean((-2, -1))))


def convnext_ish(in_channels: int = 3, num_classes: int = 10) -> ConvNeXtish:
    return ConvNeXtish(in_channels, num_classes)


def contexts(graph, lut: str, fraction: float) -> dict[str, SearchContext]:
    pruning = PruningConfig()
    budget = make_budget(graph, "latency", fraction, pruning=pruning, lut=lut)
    costs = plan_costs(graph, pruning)
    costs["latency"] = budget.cost
    scan = SearchContext(graph=graph, evaluator=None, budget=budget, costs=costs, pruning=pruning)
    bisect = dataclasses.replace(scan)
    bisect.fitter.monotone = True  # bisection alone, as for FLOPs
    return {"bisect": bisect, "scan": scan}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="0.65,0.72,0.8")
    ap.add_argument("--draws", type=int, default=30)
    ap.add_argument("--timed", type=int, default=8, help="plans of each arm timed at the middle budget")
    ap.add_argument("--rebuild", action="store_true", help="build the LUT again")
    args = ap.parse_args()
    tune_allocator()
    torch.manual_seed(0)
    model = convnext_ish().eval()
    graph = build_unit_graph(model, SHAPE)
    if args.rebuild or not LUT.is_file():
        start = time.perf_counter()
        lut = build_lut(model, SHAPE, runtime="onnxruntime", model_name="benchmarks.budget_fit:convnext_ish",
                        progress=False)
        atomic_write_text(LUT, lut.to_json())
        print(f"built {LUT.name} in {time.perf_counter() - start:.0f} s")
    load_lut(LUT, graph)  # fails here on a LUT for another model
    budgets = [float(b) for b in args.budgets.split(",")]
    draws = np.random.default_rng(0).uniform(0.2, 1.0, (args.draws, len(graph)))
    rows, timed_plans = [], {}
    middle = budgets[len(budgets) // 2]
    for fraction in budgets:
        ctxs = contexts(graph, str(LUT), fraction)
        flops = ctxs["scan"].costs["flops"]
        start = time.perf_counter()
        fitted = {arm: [ctx.counts(ctx.fit_to_budget(x)) for x in draws] for arm, ctx in ctxs.items()}
        seconds = time.perf_counter() - start
        kept = {arm: [flops(c) / flops.base for c in plans] for arm, plans in fitted.items()}
        rounded = rounding_gains(ctxs["scan"], args.draws)  # the same draws (seed 0), rounded
        align = suggested_round_to({k: v for k, v in rounded.items() if k > 1})
        warned = warn_misaligned(ctxs["scan"])
        rows.append({"budget": fraction, "flops_bisect": float(np.mean(kept["bisect"])),
                     "flops_scan": float(np.mean(kept["scan"])),
                     **{f"flops_round_to_{k}": v for k, v in rounded.items() if k > 1},
                     "scan_larger": int(sum(a > b + 1e-12 for a, b in zip(kept["scan"], kept["bisect"], strict=True))),
                     "scan_smaller": int(sum(a < b - 1e-12 for a, b in zip(kept["scan"], kept["bisect"], strict=True))),
                     "fits": bool(all(ctxs[arm].budget.fits(c) for arm, plans in fitted.items() for c in plans)),
                     "fit_seconds_scan_and_bisect": seconds, "suggested_round_to": align, "warning": warned,
                     "warned_round_to": " ".join(re.findall(r"set pruning\.(round_to: \d+)", warned or ""))})
        if fraction == middle:
            at = dataclasses.replace(ctxs["scan"], pruning=dataclasses.replace(ctxs["scan"].pruning, round_to=align))
            timed_plans = {**fitted, f"round_to {align}": [at.counts(at.fit_to_budget(x)) for x in draws]}
    arms = list(timed_plans)
    plans = [c for arm in arms for c in timed_plans[arm][:args.timed]]
    timed = time_plans(graph, model, plans, runtime="onnxruntime", repeats=15, timings=2)
    measured = {arm: timed.relative[i * args.timed:(i + 1) * args.timed] for i, arm in enumerate(arms)}
    flops = plan_costs(graph, PruningConfig())["flops"]
    timed_rows = [{"arm": arm, "measured": float(np.mean(measured[arm])),
                   "within": float(np.mean([m <= middle * 1.1 for m in measured[arm]])),
                   "flops": float(np.mean([flops(c) / flops.base for c in timed_plans[arm][:args.timed]]))}
                  for arm in arms]
    table = ["| budget (latency) | FLOPs kept: bisect | scan | round_to 4 | 8 | 16 | scan larger / smaller "
             "| all fit (LUT) | fitting s (2 x draws) | a search warns (6 draws) |", "|---" * 10 + "|"]
    for r in rows:
        table.append(f"| {r['budget']:.2f} | {r['flops_bisect']:.3f} | {r['flops_scan']:.3f} | "
                     + " | ".join(f"{r.get(f'flops_round_to_{k}', float('nan')):.3f}" for k in (4, 8, 16))
                     + f" | {r['scan_larger']} / {r['scan_smaller']} of {args.draws} | {'yes' if r['fits'] else 'NO'} | "
                     f"{r['fit_seconds_scan_and_bisect']:.1f} | {r['warned_round_to'] or 'no'} |")
    table += ["", f"Timed in ONNX Runtime at {middle:.2f} (the first {args.timed} plans of each arm, two timings, "
              "interleaved with the unpruned model):", "",
              "| arm | FLOPs kept | measured latency (of the unpruned model) | at most budget + 10% |", "|---|---|---|---|"]
    table += [f"| {t['arm']} | {t['flops']:.3f} | {t['measured']:.3f} | {t['within']:.2f} |" for t in timed_rows]
    table += ["", f"LUT: `{LUT.relative_to(ROOT.parent)}`; repeatability of the two timings "
              f"{timed.repeatability:.2f}."]
    by_arm = {t["arm"]: t for t in timed_rows}
    targets = [
        target("scan's plan never below bisection's", "0 smaller", sum(r["scan_smaller"] for r in rows),
               all(r["scan_smaller"] == 0 for r in rows)),
        target("every fitted plan meets the budget (LUT)", "all", all(r["fits"] for r in rows), all(r["fits"] for r in rows)),
        target("scan's timed plans at most 10% over the budget", ">= 0.9", f"{by_arm['scan']['within']:.2f}",
               by_arm["scan"]["within"] >= 0.9),
    ]
    write_results("budget_fit", "\n".join(table),
                  {"rows": rows, "timed": timed_rows, "timed_at": middle, "repeatability": timed.repeatability,
                   "draws": args.draws},
                  targets, "python -m benchmarks.budget_fit " + " ".join(
                      f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (False, None)))


if __name__ == "__main__":
    main()
