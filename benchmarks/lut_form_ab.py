"""LUT calibration forms A/B on the same timings: which form predicts a runtime's check plans best?

``lut_accuracy`` builds and checks one LUT per run, with whichever calibration form leave-one-out picks
on its 12 calibration plans; a change of the forms on offer and a change of the machine's speed then
land in the same number. Here each run builds and checks once (as ``lut_accuracy`` does, same seeds),
then refits the calibration from that build's stored calibration timings with each *set* of forms
below and scores every refit LUT on the same 50 measured check plans, so the sets differ by their fit
alone:

- ``all``: every form (what ``lut build`` offers now);
- ``no_out_padded``: without the output-only padded forms (what it offered before 2026-12-05 evening);
- ``out_padded``: only the output-only padded forms (channels-last kernels that block output channels);
- ``padded``: only the in-and-out padded forms (blocked-layout kernels).

Reported per (model, run, set): the form kept, its leave-one-out error on the calibration plans and
the share of check plans predicted within +-10% (relative to the unpruned model).

    python -m benchmarks.lut_form_ab [--runtime openvino] [--models resnet20,resnet56,mobilenetv2_small] [--runs 3]

The results JSON keeps every run's timings (``timings``: the calibration plans' and the check plans'
channel counts and measured fractions), so another form can be refit and scored offline on them
(:func:`refit`, :func:`score`) without timing again; ``--out`` names another results file.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from autoprune.core.cost import WidthModel
from autoprune.core.graph import build_unit_graph
from autoprune.latency.build import build_lut, check_lut, fit_calibration
from autoprune.latency.lut import Lut, LutCost
from autoprune.latency.tables import ALIGNMENTS, misaligned_melements, padded_melements, padded_mmacs
from autoprune.latency.timing import tune_allocator
from autoprune.models.zoo import build_model
from benchmarks.common import target, write_results

SHAPE = (3, 32, 32)
SETS = {"all": ("misaligned", "padded", "padded_out"), "no_out_padded": ("misaligned", "padded"),
        "out_padded": ("padded_out",), "padded": ("padded",)}
"""Which third-term families each set offers (the form without a third term is always offered)."""


def refit(lut: Lut, graph, families: tuple[str, ...]) -> Lut:
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
                    per_align(padded_mmacs, inputs=False) if "padded_out" in families else None)
    return new


def score(lut: Lut, graph, counts, measured) -> np.ndarray:
    """Each plan's relative error of ``lut``'s predicted fraction against the ``measured`` one."""
    cost, measured = LutCost(lut, graph), np.asarray(measured, float)
    return np.abs(np.array([cost.fraction(c) for c in counts]) - measured) / measured


def form_of(lut: Lut) -> str:
    cal = lut.header.get("calibration") or {}
    if cal.get("align"):
        return f"misaligned/{cal['align']}"
    if cal.get("pad"):
        kind = "out-padded" if cal.get("pad_inputs") is False else "padded"
        return f"{kind}/{cal['pad']}" + (" +padded elements" if cal.get("padded_elements") else "")
    return "tables only"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", default="openvino")
    parser.add_argument("--models", default="resnet20,resnet56,mobilenetv2_small")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--plans", type=int, default=50)
    parser.add_argument("--out", default="lut_form_ab", help="results file name (benchmarks/results/<out>.md)")
    args = parser.parse_args()
    tune_allocator()
    rows, timings = [], []
    for name in args.models.split(","):
        model = build_model(name, in_channels=3, num_classes=10).eval()
        graph = build_unit_graph(model, SHAPE)
        for run in range(args.runs):
            lut = build_lut(model, SHAPE, batch=1, threads=1, step=16 if name.startswith("mobilenet") else 8,
                            clock="cpu", model_name=name, runtime=args.runtime, calibration_plans=12, seed=run,
                            progress=False)
            check = check_lut(lut, model, plans=args.plans, seed=run, progress=False)
            cal = lut.header["calibration"]
            timings.append({"model": name, "run": run, "lut": json.loads(lut.to_json()),
                            "calibration": {"counts": cal["counts"], "relative": cal["relative"]},
                            "check": {"counts": [list(map(int, c)) for c in check["counts"]],
                                      "measured_rel": list(map(float, check["measured_rel"]))}})
            for label, families in SETS.items():
                fitted = refit(lut, graph, families)
                err = score(fitted, graph, check["counts"], check["measured_rel"])
                cal = fitted.header.get("calibration") or {}
                rows.append({"model": name, "run": run, "set": label, "form": form_of(fitted),
                             "loo_mape": cal.get("loo_mape"), "mape": float(err.mean() * 100),
                             "within_10pct": float((err <= 0.10).mean())})
                print(f"{name} run {run} {label}: {rows[-1]['form']}, within +-10% {rows[-1]['within_10pct']:.2f}",
                      flush=True)
    lines = [f"runtime {args.runtime}, batch 1, 1 thread, 12 calibration plans, {args.plans} check plans; each "
             "run's sets are refits of one build's calibration timings, scored on the same measured plans.", "",
             "| model | run | forms on offer | form kept | calibration leave-one-out % | check MAPE % | "
             "check within +-10% |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['run']} | {r['set']} | {r['form']} | "
              f"{'-' if r['loo_mape'] is None else format(r['loo_mape'], '.2f')} | {r['mape']:.2f} | "
              f"{r['within_10pct']:.2f} |" for r in rows]
    targets = []
    for name in args.models.split(","):
        med = {s: float(np.median([r["within_10pct"] for r in rows if r["model"] == name and r["set"] == s]))
               for s in SETS}
        targets.append(target(f"{args.runtime} / {name}: all forms at least as good as before (median within +-10%)",
                              "all >= no_out_padded", med, med["all"] >= med["no_out_padded"]))
    write_results(args.out, "\n".join(lines), {"rows": rows, "timings": timings}, targets,
                  f"python -m benchmarks.lut_form_ab --runtime {args.runtime} --models {args.models} "
                  f"--runs {args.runs} --plans {args.plans}" + (f" --out {args.out}" if args.out != "lut_form_ab" else ""))


if __name__ == "__main__":
    main()
