"""Speed-up per runtime: measured latency of pruned models vs the unpruned model.

Runtimes: ``torch`` (eager), ``torch-folded`` (eager with BatchNorm folded into the convs, as
``autoprune export --fold-bn`` writes it), ``onnxruntime`` and ``openvino`` (CPU; both fold
BatchNorm themselves). Models: ResNet-20 (16-64 channels, the model of the comparison below) and
the wider VGG-small (32-256 channels). Every model is timed interleaved with the unpruned model in
the same runtime (``autoprune.latency.timing.time_against_base``: 1 thread, the timing thread's
CPU time, fastest sample per pass, median ratio over passes), at batch 1 and 32. Reported:
speed-up and speed-up x kept FLOPs (1.0 = latency fell exactly as much as FLOPs).

Plans (latency depends on channel counts only, so no training is needed for these): at 50% and
25% of the FLOPs, ``uniform`` (every unit kept at the same ratio) and two ``random`` shapes
(seeded random ratios scaled to the budget, as the random searcher draws them), each with any
counts and with every count a multiple of 8 and of 16 (``pruning.round_to``).

Latency budget vs FLOPs budget at equal FLOPs, per runtime: a searcher (``--searcher``: ``netadapt``,
the greedy search built for latency, by default; or ``random`` with ``--evaluations`` plans) under
``latency: 0.5`` priced by that runtime's LUT (``benchmarks/luts/resnet20_<runtime>_b1_t1.json``
from ``benchmarks.lut_accuracy``, built here if missing), then the same searcher and seed under a
FLOPs budget equal to the FLOPs the latency plan kept; both plans timed at batch 1 in that runtime,
interleaved with the unpruned model (three timings, the median fraction). Once per ``--round-to`` (any
channel counts, multiples of 8 ...) for both searches; ``auto``: each search as autoprune's default
``pruning.round_to: auto`` rounds it (the latency search as its LUT favours, the FLOPs search at 1). Targets: the latency plan is faster (by more than the
5% timing noise) and its measured latency is within +-10% of the 0.5 budget.

    python -m benchmarks.speedup [--searcher netadapt|random] [--evaluations 16] [--round-to 1 8 auto] [--reanchor 8]
                                 [--verify 3] [--models resnet20 vgg_small]

(``--reanchor N``: the latency search also runs with a copy of the LUT re-anchored first on N plans timed
then, drawn with the search's ``round_to`` near the 0.5 budget (``autoprune lut reanchor --near 0.5``, since
2026-12-07: ``benchmarks/reanchor_near``; the runs before drew them over the whole range; the copy under
``benchmarks/runs/speedup``), and both latency plans are timed and reported. ``--verify N``: each latency
plan is fitted to the budget by timing it first (``budget.verify: N``, :mod:`autoprune.latency.verify`); the
verified plan is the latency plan of the targets, its FLOPs those of the FLOPs search, and the plan as
searched is timed beside both. ``--models`` with no names: the comparison only. ``--committed-luts``: the
LUTs under ``benchmarks/luts`` even when another machine timed them (a copy relabelled as this machine's
under ``benchmarks/runs/speedup``, which ``budget.verify`` accepts): a LUT whose machine moved under it.)
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.config import PruningConfig
from autoprune.core.cost import FlopsCost, make_budget
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import BudgetError
from autoprune.latency.build import build_lut
from autoprune.latency.check import reanchor_lut
from autoprune.latency.lut import load_lut
from autoprune.latency.timing import default_device_name, time_against_base, tune_allocator
from autoprune.latency.verify import verify_plan
from autoprune.models.zoo import build_model
from autoprune.pipeline.export import fold_batchnorm
from autoprune.search.base import SearchContext
from benchmarks.common import ROOT, ensure_checkpoint, target, write_results
from benchmarks.lut_accuracy import lut_path

SHAPE = (3, 32, 32)
LATENCY_BUDGET = 0.5
"""The latency budget of the latency-vs-FLOPs comparison: a fraction of the unpruned model's latency."""
BATCHES = (1, 32)
TIMINGS = 3
"""The latency-vs-FLOPs plans are timed this many times, one timing after another, and each plan's fraction is
the median (since 2026-12-07b; before, one timing: on the AMD EPYC VM two copies of one plan in one timing
measured 0.582 and 0.433 of the base)."""
FORMS = {"torch": "torch", "torch-folded": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino"}
"""Timed form -> the runtime its sessions run in."""
MODEL_NOTES = {"resnet20": "16-64 channels", "vgg_small": "32-256 channels"}
"""The models timed (random weights: latency depends on the shapes only) and their widths."""


def flops_plans(graph) -> list[dict]:
    """Uniform and two random shapes at 50% and 25% of the FLOPs, each with any counts, with every
    count a multiple of 8 (``pruning.round_to: 8``: the channel blocks fast kernels want) and of 16
    (16 fp32 lanes is one AVX-512 register; OpenVINO's CPU plugin computes in 16-channel blocks)."""
    out = []
    for fraction in (0.5, 0.25):
        shapes = {"uniform": (np.ones(len(graph)), 1), "uniform, round_to 8": (np.ones(len(graph)), 8),
                  "uniform, round_to 16": (np.ones(len(graph)), 16)}
        for s in (1, 2):
            ratios = np.random.default_rng(s).uniform(0.2, 1.0, len(graph))
            shapes |= {f"random{s}": (ratios, 1), f"random{s}, round_to 8": (ratios, 8),
                       f"random{s}, round_to 16": (ratios, 16)}
        for label, (ratios, round_to) in shapes.items():
            ctx = SearchContext(graph=graph, evaluator=None, budget=make_budget(graph, "flops", fraction), costs={},
                                pruning=PruningConfig(round_to=round_to))
            counts = ctx.counts(ctx.fit_to_budget(ratios))
            if ctx.budget.fits(counts):  # round_to 16 cannot reach 25% of ResNet-20 (16-channel stage)
                out.append({"budget": f"flops{fraction}", "plan": label, "round_to": round_to, "counts": counts})
    return out


def time_forms(base, graph, rows: list[dict], forms: list[str]) -> dict[str, float]:
    """Time every row's plan against ``base`` in each form and batch; fill the row's columns."""
    flops = FlopsCost(graph)
    models = [apply_plan(base, graph, PruningPlan.from_counts(graph, r["counts"])).eval() for r in rows]
    base_ms = {}
    for form in forms:
        fb, fm = (fold_batchnorm(base), [fold_batchnorm(m) for m in models]) if form == "torch-folded" else (base, models)
        for batch in BATCHES:
            t = time_against_base(fb, fm, SHAPE, batch=batch, threads=1, repeats=15, clock="cpu", runtime=FORMS[form])
            base_ms[f"{form}_b{batch}"] = t.base_ms
            for row, ms, rel in zip(rows, t.ms, t.relative, strict=True):
                row["flops_kept"] = flops(row["counts"]) / flops.base
                row[f"{form}_ms_b{batch}"] = ms
                row[f"{form}_speedup_b{batch}"] = 1 / rel
                row[f"{form}_efficiency_b{batch}"] = row["flops_kept"] / rel
    return base_ms


def profile_ops(base, graph, rows: list[dict], batch: int = 32, iters: int = 10) -> list[dict]:
    """Where eager PyTorch spends the time (1 thread, ``torch.profiler``): the convolutions' share and
    their throughput in GFLOP/s (the model's MACs x 2 / the conv kernels' time), base vs the
    uniform plans. Profiled on a loaded machine the shares hold better than the milliseconds."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    flops = FlopsCost(graph)
    torch.set_num_threads(1)
    picks = [("base", list(graph.channels))] + [(f"{r['budget']} {r['plan']}", r["counts"]) for r in rows
                                                 if r["plan"].startswith("uniform")]
    out, x = [], torch.randn(batch, *SHAPE)
    for label, counts in picks:
        model = base if label == "base" else apply_plan(base, graph, PruningPlan.from_counts(graph, counts)).eval()
        with torch.inference_mode():
            for _ in range(3):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(iters):
                    model(x)
        self_us = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
        total = sum(self_us.values())
        conv = sum(v for k, v in self_us.items() if "convolution" in k)
        gflops = 2 * flops(counts) * batch * iters / (conv * 1e-6) / 1e9 if conv else float("nan")
        out.append({"plan": label, "flops_kept": flops(counts) / flops.base, "conv_share": conv / total,
                    "conv_gflops": gflops, "ms": total / iters / 1000})
    return out


SEARCHERS = {
    "random": lambda evaluations: {"name": "random", "evaluations": evaluations},
    "netadapt": lambda _: {"name": "netadapt", "initial_reduction": 0.08, "decay": 0.95, "short_term_batches": 5},
}


def searched_plan(budget: dict, evaluations: int, round_to: int = 1, searcher: str = "random"):
    """The searcher's plan under ``budget`` (no long-term fine-tune: latency does not depend on weights)."""
    from autoprune.pipeline.session import prepare
    from benchmarks.common import base_config

    cfg = base_config(["seed=0", f"pruning.round_to={round_to}"], searcher=SEARCHERS[searcher](evaluations),
                      budget=budget)
    session = prepare(cfg, progress=False)
    plan = session.searcher_cls(session.context(progress=False), session.searcher_options).search()
    return plan.counts(session.graph), session


def machine_lut(runtime: str, committed: bool = False) -> Path:
    """ResNet-20's LUT for ``runtime`` timed on this machine: the committed one (``benchmarks.lut_accuracy``) when
    it was timed here, else one built here once (``benchmarks/runs/luts``, named by machine): a LUT of another
    CPU prices plans by that CPU's kernels. ``committed``: the committed one wherever it was timed (a LUT whose
    machine moved under it: what ``budget.verify`` is for)."""
    here = default_device_name()
    path = Path(lut_path("resnet20", runtime))
    if path.exists() and load_lut(path).timed_on(here):
        return path
    if committed:  # relabelled as this machine's (budget.verify times plans only with a LUT of this machine)
        lut = load_lut(path)
        lut.header["built_on"] = here
        copy = ROOT / "runs" / "speedup" / f"resnet20_{runtime}_committed_relabelled.json"
        copy.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(copy, lut.to_json())
        return copy
    path = ROOT / "runs" / "luts" / f"resnet20_{runtime}_b1_t1_{re.sub(r'[^A-Za-z0-9]+', '-', here).strip('-')}.json"
    if not path.exists():
        model = build_model("resnet20", in_channels=3, num_classes=10).eval()
        print(f"building the {runtime} LUT on this machine ({here}): {path}", flush=True)
        lut = build_lut(model, SHAPE, step=8, clock="cpu", runtime=runtime, model_name="resnet20", progress=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, lut.to_json())
    return path


def latency_vs_flops(runtime: str, evaluations: int, graph, round_to: int | str = 1, searcher: str = "random",
                     reanchor: int = 0, verify: int = 0, committed: bool = False) -> dict:
    path = machine_lut(runtime, committed)
    header = load_lut(lut_path("resnet20", runtime) if committed else path).header
    timed_on = header.get("built_on") or header.get("device")
    level = None
    if reanchor:  # a copy re-anchored now on plans drawn as the search draws them
        lut = load_lut(path)
        model = build_model("resnet20", in_channels=3, num_classes=10).eval()
        level = reanchor_lut(lut, model, plans=reanchor, round_to=round_to, progress=False,
                             near=LATENCY_BUDGET)["level"]  # where the search ends (benchmarks/reanchor_near)
        path = ROOT / "runs" / "speedup" / f"resnet20_{runtime}_reanchored_{round_to}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(lut.to_json())
    try:
        lat_counts, session = searched_plan({"latency": LATENCY_BUDGET, "lut": str(path), "runtime": runtime},
                                            evaluations, round_to, searcher)
    except BudgetError as e:  # e.g. a re-anchored level that puts the budget below every plan: no latency plan
        return {"runtime": runtime, "round_to": round_to, "searcher": searcher, "level": level, "unreachable": str(e)}
    budget, searched, record = session.budget, list(lat_counts), None
    resolved = session.cfg.pruning.round_to  # pruning.round_to: auto, as the search resolved it
    if verify:  # budget.verify: the searched plan timed and fitted to the budget by measurement
        p = session.cfg.pruning
        lat_counts, budget, record = verify_plan(budget, session.graph, session.model, lat_counts,
                                                 min_ratio=p.min_ratio, max_ratio=p.max_ratio, round_to=resolved,
                                                 rounds=verify)
    flops = FlopsCost(graph)
    kept = flops(lat_counts) / flops.base
    flops_counts, _ = searched_plan({"flops": round(kept, 4)}, evaluations, round_to, searcher)  # auto: 1 for FLOPs
    timed = [lat_counts, flops_counts] + ([searched] if verify else [])
    models = [apply_plan(session.model, graph, PruningPlan.from_counts(graph, c)).eval() for c in timed]
    t = time_against_base(session.model, models, SHAPE, batch=1, threads=1, repeats=15, clock="cpu", runtime=runtime,
                          timings=TIMINGS)
    label = f"auto ({resolved}; FLOPs plan 1)" if round_to == "auto" else round_to
    out = {"runtime": runtime, "timings": t.timings, "round_to": label, "searcher": searcher, "level": level,
           "lut_timed_on": timed_on, "lut_timed_here": timed_on == default_device_name(),
           "latency_plan": {"flops_kept": kept, "ms": t.ms[0], "relative": t.relative[0],
                            "lut_predicted": float(budget.cost.fraction(lat_counts)),
                            "counts": [int(c) for c in lat_counts]},
           "flops_plan": {"flops_kept": flops(flops_counts) / flops.base, "ms": t.ms[1], "relative": t.relative[1],
                          "counts": [int(c) for c in flops_counts]}}
    if verify:  # the plan as searched, timed again beside the verified one
        out["verify"] = {**record, "searched": {"counts": [int(c) for c in searched], "relative": t.relative[2],
                                                "lut_predicted": float(session.budget.cost.fraction(searched))}}
    return out


def tables(rows, base_ms, forms, comparisons, profiled=()) -> str:
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        out += [f"### {model} ({MODEL_NOTES.get(model, '')})", "",
                ", ".join(f"base {k.replace('_b', ' batch ')}: {v:.2f} ms" for k, v in base_ms[model].items()), ""]
        prof = [p for p in profiled if p["model"] == model]
        if prof:
            out += ["Profile, eager torch, batch 32, 1 thread (`torch.profiler`): the convolutions' share of the "
                    "time and their throughput (2 x MACs / conv kernel time):", "",
                    "| plan | kept FLOPs | conv share | conv GFLOP/s | ms (under the profiler) |", "|---|---|---|---|---|"]
            out += [f"| {p['plan']} | {p['flops_kept']:.3f} | {100 * p['conv_share']:.0f}% | {p['conv_gflops']:.1f} | "
                    f"{p['ms']:.2f} |" for p in prof]
            out.append("")
        for form in forms:
            out += [f"**{model}, {form}**", "",
                    "| budget | plan | kept FLOPs | ms b1 | speed-up b1 | x kept FLOPs | ms b32 | speed-up b32 | "
                    "x kept FLOPs |", "|---|---|---|---|---|---|---|---|---|"]
            out += [f"| {r['budget']} | {r['plan']} | {r['flops_kept']:.3f} | "
                    + " | ".join(f"{r[f'{form}_ms_b{b}']:.2f} | {r[f'{form}_speedup_b{b}']:.2f} | "
                                 f"{r[f'{form}_efficiency_b{b}']:.2f}" for b in BATCHES) + " |"
                    for r in rows if r["model"] == model]
            out.append("")
    if comparisons:
        out += [f"Latency budget ({LATENCY_BUDGET}, the runtime's LUT) vs FLOPs budget at the same FLOPs, resnet20, "
                f"{comparisons[0].get('searcher', 'random')} searcher, batch 1:", "",
                "| runtime | round_to | LUT | latency plan: kept FLOPs | LUT-predicted latency | measured latency | "
                "FLOPs plan: kept FLOPs | measured latency | budget.verify |", "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {c['runtime']} | {c['round_to']} | {_lut_label(c)} | {c['latency_plan']['flops_kept']:.3f} | "
                f"{c['latency_plan']['lut_predicted']:.3f} | {c['latency_plan']['relative']:.3f} | "
                f"{c['flops_plan']['flops_kept']:.3f} | {c['flops_plan']['relative']:.3f} | {_verify_label(c)} |"
                if "unreachable" not in c else
                f"| {c['runtime']} | {c['round_to']} | {_lut_label(c)} | no plan: {c['unreachable']} | - | - | - | - | - |"
                for c in comparisons]
        out += ["", "(latencies as fractions of the unpruned model, timed interleaved with it)"]
    return "\n".join(out)


def _verify_label(c: dict) -> str:
    """The searched plan before ``budget.verify`` (LUT-predicted, and measured in the final timing beside the
    verified plan: a plan kept is timed there twice, as two copies), the re-fits, and why they stopped."""
    v = c.get("verify")
    if v is None:
        return "-"
    fits = len(v["rounds"]) - 1
    return (f"searched plan {v['searched']['lut_predicted']:.3f} predicted, {v['searched']['relative']:.3f} measured; "
            + (f"{fits} re-fit{'s' if fits != 1 else ''} (level x{v['level']:.3f})" if v["changed"] else "kept")
            + (f", {v['stopped']}" if v.get("stopped") not in (None, "met") else ""))


def _lut_label(c: dict) -> str:
    built = "as built" if c.get("lut_timed_here", True) else f"timed on {c['lut_timed_on']}"
    return built if c.get("level") is None else f"{built}, re-anchored (level x{c['level']:.3f})"


def efficiency_targets(rows: list[dict], forms: list[str]) -> list[dict]:
    """Per model: the worst speed-up x kept FLOPs at batch 32 over every plan, and over the plans
    whose counts are multiples of 8 or 16 (what a search for these runtimes should be run with)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for which, keep in (("every FLOPs-budget plan", lambda r: True),
                            ("every plan with round_to 8 or 16", lambda r: r["round_to"] > 1),
                            ("every plan with round_to 16", lambda r: r["round_to"] == 16)):
            picked = [r for r in rows if r["model"] == model and keep(r)]
            worst = {f: round(min(r[f"{f}_efficiency_b32"] for r in picked), 2) for f in forms}
            out.append(target(f"{model}: speed-up x kept FLOPs at batch 32, {which} (worst), in at least one runtime",
                              ">= 0.85", worst, max(worst.values()) >= 0.85))
        mine = [r for r in rows if r["model"] == model]
        out.append(target(f"{model}: speed-up x kept FLOPs at batch 1, every plan (worst; informative)", "-",
                          {f: round(min(r[f"{f}_efficiency_b1"] for r in mine), 2) for f in forms}, True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="*", default=list(MODEL_NOTES),
                        help="models of the FLOPs-plan tables (none: only the latency-vs-FLOPs comparison)")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--searcher", choices=sorted(SEARCHERS), default="netadapt",
                        help="the searcher of the latency-vs-FLOPs comparison (resnet20)")
    parser.add_argument("--evaluations", type=int, default=16,
                        help="random: plans per search; 0 skips the latency-vs-FLOPs comparison")
    parser.add_argument("--round-to", type=lambda v: v if v == "auto" else int(v), nargs="+", default=[1, 8],
                        help="the searches' pruning.round_to: numbers, or auto (the default of autoprune: the "
                             "latency search rounds as its LUT favours, the FLOPs search at 1)")
    parser.add_argument("--reanchor", type=int, default=0,
                        help="also search with a copy of the LUT re-anchored on this many plans first (lut reanchor)")
    parser.add_argument("--verify", type=int, default=0, metavar="N",
                        help="fit each latency plan to the budget by timing it (budget.verify: at most N rounds); "
                             "the searched plan is timed beside it")
    parser.add_argument("--committed-luts", action="store_true",
                        help="use the committed LUTs (benchmarks/luts) even when timed on another machine")
    parser.add_argument("--note", default="", help="a line for the results (e.g. how loaded the machine was)")
    parser.add_argument("--out", default="speedup", help="results file name (default speedup)")
    args = parser.parse_args()
    if args.reanchor and "auto" in args.round_to:
        parser.error("--reanchor draws its plans at a number: give --round-to numbers with it")
    tune_allocator()
    started = time.perf_counter()
    forms = args.forms.split(",")
    rows, base_ms, profiled = [], {}, []
    for name in args.models:
        base = build_model(name, in_channels=3, num_classes=10).eval()
        graph = build_unit_graph(base, SHAPE)
        mine = [{"model": name, **r} for r in flops_plans(graph)]
        base_ms[name] = time_forms(base, graph, mine, forms)
        if "torch" in forms:
            profiled += [{"model": name, **p} for p in profile_ops(base, graph, mine)]
        rows += mine
        print(f"timed {name}", flush=True)
    comparisons = []
    if args.evaluations > 0:
        ensure_checkpoint()
        graph = build_unit_graph(build_model("resnet20", in_channels=3, num_classes=10), SHAPE)
        comparisons = [latency_vs_flops(rt, args.evaluations, graph, r, args.searcher, k, args.verify,
                                     args.committed_luts)
                       for rt in dict.fromkeys(FORMS[f] for f in forms) for r in args.round_to
                       for k in ([0, args.reanchor] if args.reanchor else [0])]
    targets = efficiency_targets(rows, forms)
    for c in comparisons:
        lut = ("" if c.get("level") is None else ", LUT re-anchored") + (", verified" if "verify" in c else "")
        if "unreachable" in c:  # the search refused the budget: both targets missed, the reason kept
            for what in ("faster than the FLOPs-budget plan", f"within +-10% of the budget ({LATENCY_BUDGET})"):
                targets.append(target(f"{c['runtime']}, round_to {c['round_to']}{lut}: latency-budget plan {what}",
                                      "a plan", "none: the LUT prices every plan above the budget", False))
            continue
        lat, flo = c["latency_plan"], c["flops_plan"]
        targets.append(target(f"{c['runtime']}, round_to {c['round_to']}{lut}: latency-budget plan faster than the "
                              "FLOPs-budget plan at equal FLOPs "
                              f"({lat['flops_kept']:.3f} vs {flo['flops_kept']:.3f} kept)",
                              "faster by > 5% (beyond timing noise)", [round(lat["relative"], 3), round(flo["relative"], 3)],
                              lat["relative"] < 0.95 * flo["relative"]))
        targets.append(target(f"{c['runtime']}, round_to {c['round_to']}{lut}: latency-budget plan's measured latency "
                              f"within +-10% of the budget ({LATENCY_BUDGET} of the base, timed in {c['runtime']})",
                              "|measured / budget - 1| <= 0.10", round(lat["relative"] / LATENCY_BUDGET - 1, 3),
                              abs(lat["relative"] / LATENCY_BUDGET - 1) <= 0.10))
    minutes = (time.perf_counter() - started) / 60
    note = f"\n\nTook {minutes:.0f} min." + (f" {args.note}" if args.note else "")
    write_results(args.out, tables(rows, base_ms, forms, comparisons, profiled) + note,
                  {"base_ms": base_ms, "rows": rows, "latency_vs_flops": comparisons, "profile": profiled,
                   "minutes": minutes}, targets,
                  f"python -m benchmarks.speedup --models {' '.join(args.models)} --forms {args.forms} "
                  f"--searcher {args.searcher} --evaluations {args.evaluations} "
                  f"--round-to {' '.join(map(str, args.round_to))}" + (f" --reanchor {args.reanchor}" if args.reanchor else "")
                  + (f" --verify {args.verify}" if args.verify else "")
                  + (" --committed-luts" if args.committed_luts else "")
                  + (f" --out {args.out}" if args.out != "speedup" else ""))


if __name__ == "__main__":
    main()
