"""LUT calibration forms A/B on the same timings: which form predicts a runtime's check plans best?

``lut_accuracy`` builds and checks one LUT per run, with whichever calibration form leave-one-out picks
on its 12 calibration plans; a change of the forms on offer and a change of the machine's speed then
land in the same number. Here each run builds and checks once (as ``lut_accuracy`` does, same seeds),
then refits the calibration from that build's stored calibration timings with each *set* of forms
below and scores every refit LUT on the same 50 measured check plans, so the sets differ by their fit
alone:

- ``all``: every form (what ``lut build`` offers now);
- ``no_per_layer``: every form but the per-layer anchor (padded forms with the misaligned term added,
  fitted through the unpruned model; what it offered before 2026-12-06);
- ``per_layer``: every form but the measured anchor;
- ``no_measured_anchor``: every form, each fitted through the unpruned model only, no per-layer anchor (what
  it offered before 2026-12-05 night; ``anchor: measured`` fits the pruned plans alone, see ``fit_calibration``);
- ``no_out_padded``: without the output-only padded forms (what it offered before 2026-12-05 evening);
- ``out_padded``: only the output-only padded forms (channels-last kernels that block output channels);
- ``padded``: only the in-and-out padded forms (blocked-layout kernels).

Reported per (model, run, set): the form kept, its leave-one-out error on the calibration plans and
the share of check plans predicted within +-10% (relative to the unpruned model).

    python -m benchmarks.lut_form_ab [--runtime openvino] [--models resnet20,resnet56,mobilenetv2_small] [--runs 3]

The results JSON keeps every run's timings (``timings``: the calibration plans' and the check plans'
channel counts and measured fractions), so another form can be refit and scored offline on them
(:func:`refit`, :func:`score`) without timing again; ``--out`` names another results file.

    python -m benchmarks.lut_form_ab --from benchmarks/results/lut_form_ab_capture.json --out lut_form_ab_anchor

(refits the timings stored in a results file with today's sets, no timing: its models and runs)

    python -m benchmarks.lut_form_ab --runtime torch --from-runs '*' --sets all,per_layer --out lut_form_ab_runs_torch

(refits every build ``lut_accuracy`` kept under ``benchmarks/runs/lut_accuracy`` for that runtime, each
scored on its own check's timings, and adds a summary over the builds per set)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from autoprune.core.cost import WidthModel
from autoprune.core.graph import build_unit_graph
from autoprune.latency.build import build_lut, fit_calibration
from autoprune.latency.check import check_lut
from autoprune.latency.lut import Lut, LutCost
from autoprune.latency.tables import ALIGNMENTS, misaligned_melements, padded_melements, padded_mmacs
from autoprune.latency.timing import tune_allocator
from autoprune.models.zoo import build_model
from benchmarks.common import ROOT, target, write_results

SHAPE = (3, 32, 32)
SETS = {"all": ("misaligned", "padded", "padded_out"), "no_per_layer": ("misaligned", "padded", "padded_out"),
        "per_layer": ("misaligned", "padded", "padded_out"),
        "no_measured_anchor": ("misaligned", "padded", "padded_out"),
        "no_out_padded": ("misaligned", "padded"), "out_padded": ("padded_out",), "padded": ("padded",)}
"""Which third-term families each set offers (the form without a third term is always offered); every set
but ``no_measured_anchor`` and ``per_layer`` also offers each form fitted without the unpruned model
(``anchor: measured``), and every set with both the misaligned and a padded family but ``no_per_layer`` and
``no_measured_anchor`` the padded forms with the misaligned term added (the per-layer anchor)."""
MEASURED_ANCHOR = {"no_measured_anchor": False, "per_layer": False}
PER_LAYER = {"no_per_layer": False, "no_measured_anchor": False}


def refit(lut: Lut, graph, families: tuple[str, ...], measured_anchor: bool = True, per_layer_anchor: bool = True) -> Lut:
    """A copy of ``lut`` calibrated again on its own calibration timings with ``families`` on offer."""
    new = Lut.from_dict(json.loads(lut.to_json()))
    cal = lut.header["calibration"]
    counts, relative, widths = cal["counts"], cal["relative"], WidthModel(graph)

    def per_align(fn, **kw):
        return {a: [fn(graph, widths, c, a, **kw) for c in counts] for a in ALIGNMENTS}

    fit_calibration(new, counts, [new.raw_sum(graph, widths, c) for c in counts],
                    [widths.activations(c) / 1e6 for c in counts], relative, lut.header["base_reference"],
                    per_align(misaligned_melements) if "misaligned" in families else None,
                    per_align(padded_mmacs) if "padded" in families else None,
                    per_align(padded_melements),
                    per_align(padded_mmacs, inputs=False) if "padded_out" in families else None,
                    measured_anchor=measured_anchor, per_layer_anchor=per_layer_anchor)
    return new


def one_unit_cuts(lut: Lut, graph, step: int) -> np.ndarray:
    """``lut``'s predicted fraction of each plan that cuts one unit by ``step`` channels (the rest unpruned):
    what a greedy search from the unpruned model (NetAdapt) prices first."""
    cost, full = LutCost(lut, graph), [u.out_channels for u in graph.units]
    return np.array([cost.fraction([max(1, c - step) if i == k else c for i, c in enumerate(full)])
                     for k in range(len(full))])


def score(lut: Lut, graph, counts, measured) -> np.ndarray:
    """Each plan's relative error of ``lut``'s predicted fraction against the ``measured`` one."""
    cost, measured = LutCost(lut, graph), np.asarray(measured, float)
    return np.abs(np.array([cost.fraction(c) for c in counts]) - measured) / measured


def form_of(lut: Lut) -> str:
    cal = lut.header.get("calibration") or {}
    if cal.get("align") and not cal.get("pad"):
        return f"misaligned/{cal['align']}"
    if cal.get("pad"):
        kind = "out-padded" if cal.get("pad_inputs") is False else "padded"
        return (f"{kind}/{cal['pad']}" + (" +padded elements" if cal.get("padded_elements") else "")
                + (f" +misaligned/{cal['align']}" if cal.get("align") else "")
                + (", measured anchor" if cal.get("anchor") == "measured" else ""))
    return "tables only"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", default="openvino")
    parser.add_argument("--models", default="resnet20,resnet56,mobilenetv2_small")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plans", type=int, default=50)
    parser.add_argument("--out", default="lut_form_ab", help="results file name (benchmarks/results/<out>.md)")
    parser.add_argument("--from", dest="source", default=None,
                        help="refit the timings stored in this results JSON instead of timing")
    parser.add_argument("--from-runs", dest="runs_glob", default=None,
                        help="refit the builds lut_accuracy kept under benchmarks/runs/lut_accuracy whose file "
                             "names match this glob (e.g. '*' or 'lut_accuracy_2026-12-06c_*'), --runtime's only")
    parser.add_argument("--sets", default=",".join(SETS), help="the sets of forms to refit with (comma-separated)")
    args = parser.parse_args()
    unknown = [label for label in args.sets.split(",") if label not in SETS]
    if unknown:
        parser.error(f"--sets: unknown {', '.join(unknown)} (known: {', '.join(SETS)})")
    sets = {label: SETS[label] for label in args.sets.split(",")}
    if args.source:
        args.runtime = json.loads(Path(args.source).read_text())["timings"][0]["lut"]["header"]["runtime"]
    tune_allocator()
    rows: list[dict] = []
    timings = json.loads(Path(args.source).read_text())["timings"] if args.source else []
    if args.runs_glob:
        timings = stored_builds(args.runs_glob, args.runtime)
        if not timings:
            parser.error(f"--from-runs: no {args.runtime} build under benchmarks/runs/lut_accuracy matches {args.runs_glob!r}")
    elif not args.source:
        for name in args.models.split(","):
            model = build_model(name, in_channels=3, num_classes=10).eval()
            for run in range(args.runs):
                timings.append(timed(model, name, run, args))
    for t in timings:
        graph = build_unit_graph(build_model(t["model"], in_channels=3, num_classes=10).eval(), SHAPE)
        lut, check = Lut.from_dict(t["lut"]), t["check"]
        for label, families in sets.items():
            fitted = refit(lut, graph, families, measured_anchor=MEASURED_ANCHOR.get(label, True),
                           per_layer_anchor=PER_LAYER.get(label, True))
            err = score(fitted, graph, check["counts"], check["measured_rel"])
            cal = fitted.header.get("calibration") or {}
            cuts = one_unit_cuts(fitted, graph, 16 if t["model"].startswith("mobilenet") else 8)
            rows.append({"model": t["model"], "run": t["run"], "set": label, "form": form_of(fitted),
                         "loo_mape": cal.get("loo_mape"), "mape": float(err.mean() * 100),
                         "within_10pct": float((err <= 0.10).mean()), "one_cut_max": float(cuts.max()),
                         "one_cut_median": float(np.median(cuts))})
            print(f"{t['model']} run {t['run']} {label}: {rows[-1]['form']}, within +-10% "
                  f"{rows[-1]['within_10pct']:.2f}", flush=True)
    plans = len(timings[0]["check"]["counts"]) if timings else args.plans
    models = list(dict.fromkeys(t["model"] for t in timings))
    lines = [f"runtime {args.runtime}, batch 1, 1 thread, 12 calibration plans, {plans} check plans; each "
             "run's sets are refits of one build's calibration timings, scored on the same measured plans."
             + (f" Timings from `{args.source}` (refit here, not timed again)." if args.source else ""), "",
             "One-unit cuts: the refit LUT's predicted fraction of each plan that cuts a single unit by one "
             "LUT step (8 channels, MobileNetV2 16), median and max over units (model only, not timed): "
             "a greedy search's first proposals; the unpruned model is 1.0.", "",
             "| model | run | forms on offer | form kept | calibration leave-one-out % | check MAPE % | "
             "check within +-10% | one-unit cuts: median, max |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['run']} | {r['set']} | {r['form']} | "
              f"{'-' if r['loo_mape'] is None else format(r['loo_mape'], '.2f')} | {r['mape']:.2f} | "
              f"{r['within_10pct']:.2f} | {r['one_cut_median']:.2f}, {r['one_cut_max']:.2f} |" for r in rows]
    targets = []
    others = [s for s in ("no_per_layer", "no_measured_anchor", "no_out_padded", "per_layer") if s in sets]
    for name in models if "all" in sets and others else []:
        med = {s: round(float(np.median([r["within_10pct"] for r in rows if r["model"] == name and r["set"] == s])), 3)
               for s in sets}
        targets.append(target(f"{args.runtime} / {name}: all forms at least as good as fewer (median within +-10%)",
                              f"all >= {', '.join(others)}", med, med["all"] >= max(med[s] for s in others)))
    if args.runs_glob:
        lines[0:0] = [summary(rows, sets), ""]
    stored = {"source": args.source} if args.source else {"runs": args.runs_glob} if args.runs_glob else {"timings": timings}
    write_results(args.out, "\n".join(lines), {"rows": rows, **stored}, targets,
                  (f"python -m benchmarks.lut_form_ab --from {args.source}" if args.source else
                   f"python -m benchmarks.lut_form_ab --runtime {args.runtime} --from-runs '{args.runs_glob}'"
                   f" --sets {args.sets}" if args.runs_glob else
                   f"python -m benchmarks.lut_form_ab --runtime {args.runtime} --models {args.models} "
                   f"--runs {args.runs} --plans {args.plans}")
                  + (f" --out {args.out}" if args.out != "lut_form_ab" else ""))


def stored_builds(pattern: str, runtime: str) -> list[dict]:
    """The builds (LUT and check timings) ``lut_accuracy`` kept under ``benchmarks/runs/lut_accuracy`` whose
    file names match ``pattern``, for ``runtime``; ``run`` is the file's name."""
    out = []
    for path in sorted((ROOT / "runs" / "lut_accuracy").glob(f"{pattern}.json")):
        stored = json.loads(path.read_text())
        header = stored["lut"]["header"]
        if header.get("runtime") == runtime and "calibration" in header:
            out.append({"model": header["model"], "run": path.stem, "lut": stored["lut"], "check": stored["check"]})
    return out


def summary(rows: list[dict], sets: dict) -> str:
    """Per set over every refit build: mean share within +-10%, builds >= 0.95, mean check MAPE."""
    lines = ["| forms on offer | builds | mean within +-10% | builds >= 0.95 | mean check MAPE % |", "|---|---|---|---|---|"]
    for label in sets:
        got = [r for r in rows if r["set"] == label]
        if got:
            within = np.array([r["within_10pct"] for r in got])
            lines.append(f"| {label} | {len(got)} | {within.mean():.3f} | {int((within >= 0.95).sum())} | "
                         f"{np.mean([r['mape'] for r in got]):.2f} |")
    return "\n".join(lines)


def timed(model, name: str, run: int, args: argparse.Namespace) -> dict:
    """Build a LUT (12 calibration plans) and check it on ``args.plans`` plans: the timings to refit."""
    lut = build_lut(model, SHAPE, batch=1, threads=1, step=16 if name.startswith("mobilenet") else 8,
                    clock="cpu", model_name=name, runtime=args.runtime, calibration_plans=12, seed=run,
                    progress=False)
    check = check_lut(lut, model, plans=args.plans, seed=run, progress=False)
    cal = lut.header["calibration"]
    return {"model": name, "run": run, "lut": json.loads(lut.to_json()),
            "calibration": {"counts": cal["counts"], "relative": cal["relative"]},
            "check": {"counts": [list(map(int, c)) for c in check["counts"]],
                      "measured_rel": list(map(float, check["measured_rel"]))}}


if __name__ == "__main__":
    main()
