"""Plans near the unpruned model: does a LUT price them right? (The greedy search's first steps.)

``lut_accuracy`` and ``lut_form_ab`` check LUTs on random plans (every unit cut to 0.2-1.0 of its width),
which never come near the unpruned model. NetAdapt starts there: its first proposals each cut one unit
by a few channels. On OpenVINO the unpruned model (every width a multiple of 16) runs 15-20% faster
than the trend of its pruned variants, and the two calibrations that account for it disagree about the
plans in between: ``anchor: measured`` prices every pruned plan on the pruned trend (a one-unit cut of
ResNet-56 at ~1.27 of the unpruned model), the per-layer anchor (a padded form plus the misaligned term)
charges only the cut unit's convs (~1.00). This times such plans and scores both.

Plans per model: every unit cut alone by one LUT step (8 channels, MobileNetV2 16), and ``--sparse``
plans that cut 2, 4 and 8 random units to 0.5-0.9 of their width, all timed interleaved with the unpruned
model (fractions of it: the relative prediction, the target). LUTs: the capture's stored build of
each model (``lut_form_ab_capture``, timed on this machine), refit with each set of forms of
``lut_form_ab`` (no new LUT timing).

    python -m benchmarks.lut_near_full [--from benchmarks/results/lut_form_ab_capture.json] [--sparse 12]
    python -m benchmarks.lut_near_full --luts benchmarks/luts/resnet56_openvino_b1_t1.json ... --out lut_near_full_saved

(the second: LUT files as ``lut build`` made them, e.g. the ones ``lut_accuracy`` saves)

Timing: run it on a quiet machine (nothing else on the cores).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import resolve_count
from autoprune.latency.lut import Lut, LutCost
from autoprune.latency.timing import time_plans, tune_allocator
from autoprune.models.zoo import build_model
from benchmarks.common import ROOT, target, write_results
from benchmarks.lut_form_ab import MEASURED_ANCHOR, PER_LAYER, SETS, SHAPE, form_of, refit

COMPARED = ("no_per_layer", "per_layer", "all")
"""Sets of forms scored: the measured anchor (what ``lut build`` kept before the per-layer anchor), the
per-layer anchor instead, and everything (what ``lut build`` offers now: leave-one-out chooses)."""


def near_full_plans(graph, step: int, sparse: int, seed: int) -> tuple[list[list[int]], list[str]]:
    """One-unit cuts of every unit, then ``sparse`` plans cutting 2, 4 or 8 random units; with labels."""
    full = [u.out_channels for u in graph.units]
    plans, labels = [], []
    for k, u in enumerate(graph.units):
        plans.append([max(1, c - step) if i == k else c for i, c in enumerate(full)])
        labels.append(f"cut {u.name}")
    rng = np.random.default_rng([seed, 7])
    for j in range(sparse):
        n = (2, 4, 8)[j % 3]
        chosen = set(rng.choice(len(full), size=min(n, len(full)), replace=False).tolist())
        plans.append([resolve_count(rng.uniform(0.5, 0.9), c, u.step()) if i in chosen else c
                      for i, (c, u) in enumerate(zip(full, graph.units, strict=True))])
        labels.append(f"{n} units cut")
    return plans, labels


def sources(args) -> list[dict]:
    """(model, runtime, {label: LUT}) to score: the capture's builds refit with each compared set, or
    (``--luts``) saved LUT files as they are."""
    if args.luts:
        out = []
        for path in args.luts:
            lut = Lut.from_dict(json.loads(Path(path).read_text()))
            out.append({"model": lut.header["model"], "run": 0, "luts": {Path(path).name: lut}})
        return out
    out = []
    for t in json.loads(Path(args.source).read_text())["timings"]:
        graph = build_unit_graph(build_model(t["model"], in_channels=3, num_classes=10).eval(), SHAPE)
        lut = Lut.from_dict(t["lut"])
        out.append({"model": t["model"], "run": t["run"],
                    "luts": {label: refit(lut, graph, SETS[label], measured_anchor=MEASURED_ANCHOR.get(label, True),
                                          per_layer_anchor=PER_LAYER.get(label, True)) for label in COMPARED}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--from", dest="source", default=str(ROOT / "results" / "lut_form_ab_capture.json"))
    parser.add_argument("--luts", nargs="+", default=None, help="score these saved LUT files instead of refits")
    parser.add_argument("--sparse", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default="lut_near_full")
    args = parser.parse_args()
    tune_allocator()
    rows, points = [], []
    for src in sources(args):
        model = build_model(src["model"], in_channels=3, num_classes=10).eval()
        graph = build_unit_graph(model, SHAPE)
        first = next(iter(src["luts"].values()))
        step = 16 if src["model"].startswith("mobilenet") else 8
        plans, labels = near_full_plans(graph, step, args.sparse, src["run"])
        timed = time_plans(graph, model, plans, 1, 1, args.repeats, first.header.get("clock", "wall"),
                           desc=f"timing {src['model']}", runtime=first.header["runtime"])
        measured = np.asarray(timed.relative, float)
        one = np.array([lab.startswith("cut ") for lab in labels])
        for label, fitted in src["luts"].items():
            cost = LutCost(fitted, graph)
            predicted = np.array([cost.fraction(c) for c in plans])
            err = np.abs(predicted - measured) / measured
            rows.append({"model": src["model"], "run": src["run"], "set": label, "form": form_of(fitted),
                         "runtime": fitted.header["runtime"],
                         "within_10pct": float((err <= 0.10).mean()), "mape": float(err.mean() * 100),
                         "one_cut_within": float((err[one] <= 0.10).mean()),
                         "sparse_within": float((err[~one] <= 0.10).mean()) if (~one).any() else None,
                         "predicted_one_cut_median": float(np.median(predicted[one]))})
            print(f"{src['model']} {label}: {rows[-1]['form']}, within +-10% {rows[-1]['within_10pct']:.2f}", flush=True)
        points.append({"model": src["model"], "run": src["run"], "runtime": first.header["runtime"], "labels": labels,
                       "counts": plans, "measured_rel": measured.tolist(), "base_ms": timed.base_ms})
    what = ("the saved LUT files named (each as `lut build` made it)" if args.luts else
            f"the stored builds in `{Path(args.source).name}` refit with each set of forms (`benchmarks.lut_form_ab`)")
    lines = [f"runtime {points[0]['runtime']}, batch 1, 1 thread; LUTs: {what}, scored on plans timed now: "
             f"each unit cut alone by one LUT step, and {args.sparse} plans cutting 2, 4 or 8 units to 0.5-0.9 "
             "(fractions of the unpruned model, timed interleaved with it).", "",
             "| model | measured: one-unit cuts median (min-max) | sparse cuts median (min-max) |", "|---|---|---|"]
    for p in points:
        m, one = np.asarray(p["measured_rel"]), np.array([lab.startswith("cut ") for lab in p["labels"]])
        lines.append(f"| {p['model']} | {np.median(m[one]):.3f} ({m[one].min():.3f}-{m[one].max():.3f}) | "
                     f"{np.median(m[~one]):.3f} ({m[~one].min():.3f}-{m[~one].max():.3f}) |")
    lines += ["", "| model | forms on offer | form kept | predicted one-unit cut (median) | one-unit cuts within "
              "+-10% | sparse cuts within +-10% | all within +-10% | MAPE % |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['set']} | {r['form']} | {r['predicted_one_cut_median']:.3f} | "
              f"{r['one_cut_within']:.2f} | {r['sparse_within']:.2f} | {r['within_10pct']:.2f} | {r['mape']:.2f} |"
              for r in rows]
    targets = [target(f"{r['model']}: near-full plans within +-10% ({r['set']})", ">= 0.95",
                      round(r["within_10pct"], 3), r["within_10pct"] >= 0.95)
               for r in rows if r["set"] == "all" or args.luts]
    command = "python -m benchmarks.lut_near_full" + (f" --sparse {args.sparse}" if args.sparse != 12 else "")
    command += (" --luts " + " ".join(args.luts) if args.luts else "") + (f" --out {args.out}" if args.out != "lut_near_full" else "")
    write_results(args.out, "\n".join(lines), {"rows": rows, "points": points,
                                               "source": args.luts or args.source}, targets, command)


if __name__ == "__main__":
    main()
