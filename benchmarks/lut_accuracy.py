"""LUT accuracy per runtime: 50 random plans each for resnet20, resnet56, mobilenetv2_small.

For each runtime (``torch`` eager, ``onnxruntime``, ``openvino``) and model: build a LUT (batch 1, 1 thread, a
step-8 grid for the ResNets and step 16 for MobileNetV2, plus the fine curves; every entry timed
interleaved with the reference op; calibrated on 12 random variants timed against the unpruned
model), then time 50 random pruned variants (a random stream separate from the calibration
plans) interleaved with the unpruned model and compare with the LUT's predictions. The target is
the **relative** prediction (latency as a fraction of the unpruned model): the share of plans
within +-10%, median of ``--runs`` build+check runs. The ms predictions (which move with the
machine's speed between build and check) are reported too, and so is a plain ``a * MACs + b``
regression fitted on the same calibration plans (the baseline a LUT has to beat).

    python -m benchmarks.lut_accuracy [--runtimes torch,onnxruntime,openvino] [--models ...] [--runs 3]
    python -m benchmarks.lut_accuracy --load 2 [--load-during check]

(the second: the drift check. The LUT is built on the machine as it is and checked while ``--load``
busy processes (:func:`benchmarks.common.cpu_load`) run beside the timing thread, a machine made slower
between build and check on purpose; ``--load-during build`` or ``both`` loads the other phases instead.
Results in ``lut_accuracy_load.md``: the relative prediction should hold where the ms one does not.)

    python -m benchmarks.lut_accuracy --runtimes onnxruntime --check-round-to 16 --out lut_accuracy_rounded

(each LUT also checked on the same draws with every count rounded to 16, what a search with
``pruning.round_to: 16`` makes; ``--out`` leaves the committed LUTs under ``benchmarks/luts`` alone.)

    python -m benchmarks.lut_accuracy --check-timings 2 --out lut_accuracy_repeat

(every check times its plans twice, one whole timing after the other (``lut check --timings 2``): the
table adds the machine's repeatability, the share of plans whose two fractions agree within +-10%, which
bounds what any LUT can score on that machine.)

    python -m benchmarks.lut_accuracy --check-reanchor 8 --out lut_accuracy_reanchor

(every check also times 8 other random plans alongside and scores the LUT re-anchored on them, ``lut check
--reanchor 8``: what ``lut reanchor`` right before would make of the LUT; the headline stays the LUT as built.)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from autoprune.atomic import atomic_write_text
from autoprune.core.cost import FlopsCost
from autoprune.core.graph import build_unit_graph
from autoprune.latency.build import build_lut
from autoprune.latency.check import check_lut
from autoprune.latency.lutdir import record_check
from autoprune.latency.timing import tune_allocator
from autoprune.models.zoo import build_model
from benchmarks.common import RESULTS, ROOT, cpu_load, target, write_results
from benchmarks.lut_form_ab import form_of

MODELS = ("resnet20", "resnet56", "mobilenetv2_small")
TIMINGS = ROOT / "runs" / "lut_accuracy"
"""Each run's LUT and check timings (``<runtime>_<model>_<run>.json``; not committed: 0.6 MB a LUT)."""
SHAPE = (3, 32, 32)


def lut_path(name: str, runtime: str) -> str:
    return str(ROOT / "luts" / f"{name}_{runtime}_b1_t1.json")


def macs_baseline(graph, lut, check: dict) -> dict[str, float]:
    """``relative ~ a * MACs + b`` fitted on the LUT's calibration plans, scored on the check's plans."""
    cal = lut.header.get("calibration")
    if not cal:
        return {}
    flops = FlopsCost(graph)
    x = np.array([flops(c) for c in cal["counts"]]) / flops.base
    a, b = np.polyfit(x, np.array(cal["relative"]), 1)
    predicted = (a * np.array([flops(c) for c in check["counts"]]) / flops.base + b) / (a + b)
    err = np.abs(predicted - np.array(check["measured_rel"])) / np.array(check["measured_rel"])
    return {"macs_mape": float(err.mean() * 100), "macs_within_10pct": float((err <= 0.10).mean())}


def run_one(name: str, runtime: str, run: int, args: argparse.Namespace) -> dict:
    model = build_model(name, in_channels=3, num_classes=10).eval()
    step = args.mobilenet_step if name.startswith("mobilenet") else args.step
    start = time.perf_counter()
    with cpu_load(args.load if args.load_during in ("build", "both") else 0):
        lut = build_lut(model, SHAPE, batch=1, threads=1, step=step, clock=args.clock, model_name=name, runtime=runtime,
                        calibration_plans=args.calibration_plans, seed=run, progress=False,
                        fine={"auto": None, "on": True, "off": False}[args.fine])
    built = time.perf_counter() - start
    keep = run == 0 and not args.load and not args.out  # the committed LUTs come from the main run only
    if keep:
        atomic_write_text(lut_path(name, runtime), lut.to_json())
    start = time.perf_counter()
    rounded = {}
    with cpu_load(args.load if args.load_during in ("check", "both") else 0):
        if args.check_round_to > 1 and run % 2:  # the two checks in turns: neither always times first
            rounded = check_lut(lut, model, plans=args.plans, seed=run, progress=False, round_to=args.check_round_to,
                                timings=args.check_timings, reanchor=args.check_reanchor)
            start = time.perf_counter()
        res = check_lut(lut, model, plans=args.plans, seed=run, progress=False, timings=args.check_timings,
                        reanchor=args.check_reanchor)
        checked = time.perf_counter() - start
        if args.check_round_to > 1 and not run % 2:
            rounded = check_lut(lut, model, plans=args.plans, seed=run, progress=False, round_to=args.check_round_to,
                                timings=args.check_timings, reanchor=args.check_reanchor)
    if keep:
        record_check(lut_path(name, runtime), res)  # what autoprune lut list shows
    keys = [k + sfx for sfx in ("", "_ms") for k in ("mape", "within_10pct", "max_abs_pct")]
    row = {"runtime": runtime, "model": name, "run": run, "step": step, "fine": bool(lut.header["fine"]),
           "plans": res["plans"],
           **{k: res[k] for k in keys}, "drift": res["drift"], "base_ms": lut.header["base_measured_ms"],
           "fit_mape": (lut.header.get("calibration") or {}).get("fit_mape", float("nan")),
           **macs_baseline(build_unit_graph(model, SHAPE), lut, res),
           "build_s": built, "check_s": checked, "form": form_of(lut),
           "pass_shift": res["pass_shift"], "calibration_pass_shift": (lut.header.get("calibration") or {}).get("pass_shift"),
           **({"repeatability": res["repeatability"], "within_10pct_each": res["within_10pct_each"]}
              if res.get("repeatability") is not None else {}),
           **({"level_now": res["level_now"], "within_10pct_reanchored": res["within_10pct_reanchored"],
               "mape_reanchored": res["mape_reanchored"], "reanchor": args.check_reanchor} if "level_now" in res else {}),
           **({"within_10pct_rounded": rounded["within_10pct"], "mape_rounded": rounded["mape"],
               "pass_shift_rounded": rounded["pass_shift"], "round_to": args.check_round_to,
               **({"repeatability_rounded": rounded["repeatability"]} if rounded.get("repeatability") is not None
                  else {}),
               **({"level_now_rounded": rounded["level_now"],
                   "within_10pct_reanchored_rounded": rounded["within_10pct_reanchored"]} if "level_now" in rounded
                  else {})} if rounded else {})}
    # the LUT and the check's timings, to refit offline (benchmarks.lut_form_ab.refit) without timing again
    prefix = f"{args.out}_" if args.out else ""  # an --out run leaves the main run's timings alone
    atomic_write_text(TIMINGS / f"{prefix}{runtime}_{name}_{run}.json", json.dumps(
        {"lut": json.loads(lut.to_json()), "check": {"counts": [list(map(int, c)) for c in res["counts"]],
                                                     "measured_rel": list(map(float, res["measured_rel"]))}}))
    if rounded:
        print(f"{runtime} {name} run {run}: plans rounded to {args.check_round_to}: within +-10% "
              f"{row['within_10pct_rounded']:.2f}", flush=True)
    print(f"{runtime} {name} run {run}: within +-10% {row['within_10pct']:.2f} (MACs baseline "
          f"{row.get('macs_within_10pct', float('nan')):.2f}), {row['build_s']:.0f}+{row['check_s']:.0f} s", flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| runtime | model | run | grid step | fine | plans | rel. MAPE % | rel. within +-10% | rel. max % | "
             "a*MACs+b MAPE % | a*MACs+b within +-10% | ms MAPE % | ms within +-10% | speed drift | "
             "calibration fit MAPE % | base ms | build s | check s | pass shift: check, calibration |",
             "|---" * 19 + "|"]
    lines += [f"| {r['runtime']} | {r['model']} | {r['run']} | {r['step']} | {'yes' if r.get('fine') else 'no'} | "
              f"{r['plans']} | {r['mape']:.2f} | "
              f"{r['within_10pct']:.2f} | {r['max_abs_pct']:.1f} | {r.get('macs_mape', float('nan')):.2f} | "
              f"{r.get('macs_within_10pct', float('nan')):.2f} | {r['mape_ms']:.2f} | {r['within_10pct_ms']:.2f} | "
              f"{r['drift']:.3f} | {r['fit_mape']:.1f} | {r['base_ms']:.2f} | {r['build_s']:.0f} | "
              f"{r['check_s']:.0f} | {_pct(r.get('pass_shift'))}, {_pct(r.get('calibration_pass_shift'))} |" for r in rows]
    repeated = [r for r in rows if "repeatability" in r]
    if repeated:
        lines += ["", "Each check timed its plans twice, one whole timing after the other (`lut check --timings 2`); "
                  "its plans' measured fractions above are the median of the two. Repeatability: the share of plans "
                  "whose fractions in the two timings agree within +-10% (what the machine lets any prediction "
                  "score); the LUT scored against each timing alone:", "",
                  "| runtime | model | run | repeatability | rel. within +-10% (median) | against each timing |"
                  + (" repeatability, rounded plans |" if any("repeatability_rounded" in r for r in repeated) else ""),
                  "|---" * (6 + any("repeatability_rounded" in r for r in repeated)) + "|"]
        lines += [f"| {r['runtime']} | {r['model']} | {r['run']} | {r['repeatability']:.2f} | {r['within_10pct']:.2f} | "
                  + ", ".join(f"{w:.2f}" for w in r["within_10pct_each"]) + " |"
                  + (f" {r['repeatability_rounded']:.2f} |" if "repeatability_rounded" in r else "") for r in repeated]
    anchored = [r for r in rows if "level_now" in r]
    if anchored:
        both = any("level_now_rounded" in r for r in anchored)
        lines += ["", f"Each check also timed {anchored[0]['reanchor']} other random plans alongside its own (`lut check "
                  "--reanchor`) and scored the LUT re-anchored on them: every pruned plan's predicted fraction times "
                  "the level, the median of measured over predicted on those plans (what `lut reanchor` right before "
                  "the check would store). The table above is the LUT as built:", "",
                  "| runtime | model | run | level | re-anchored: rel. MAPE % | re-anchored: rel. within +-10% | "
                  "as built: rel. within +-10% |" + (" rounded plans: level, re-anchored within +-10% |" if both else ""),
                  "|---" * (7 + both) + "|"]
        lines += [f"| {r['runtime']} | {r['model']} | {r['run']} | {r['level_now']:.3f} | {r['mape_reanchored']:.2f} | "
                  f"{r['within_10pct_reanchored']:.2f} | {r['within_10pct']:.2f} |"
                  + (f" {r['level_now_rounded']:.3f}, {r['within_10pct_reanchored_rounded']:.2f} |"
                     if "level_now_rounded" in r else "") for r in anchored]
    rounded = [r for r in rows if "within_10pct_rounded" in r]
    if rounded:
        lines += ["", f"The same LUTs checked on the same draws with every count rounded to a multiple of "
                  f"{rounded[0]['round_to']} (`lut check --round-to`; what a search with `pruning.round_to` makes), "
                  "timed right before or after the check above, in turns:", "",
                  "| runtime | model | run | rounded: rel. MAPE % | rounded: rel. within +-10% | unrounded: rel. within +-10% "
                  "| pass shift: rounded, unrounded |", "|---" * 7 + "|"]
        lines += [f"| {r['runtime']} | {r['model']} | {r['run']} | {r['mape_rounded']:.2f} | {r['within_10pct_rounded']:.2f} | "
                  f"{r['within_10pct']:.2f} | {_pct(r['pass_shift_rounded'])}, {_pct(r['pass_shift'])} |" for r in rounded]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtimes", default="torch,onnxruntime")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--plans", type=int, default=50)
    parser.add_argument("--step", type=int, default=8, help="grid step for the ResNets")
    parser.add_argument("--mobilenet-step", type=int, default=16, help="grid step for mobilenetv2_small (wide layers)")
    parser.add_argument("--calibration-plans", type=int, default=12)
    parser.add_argument("--fine", choices=("auto", "on", "off"), default="auto",
                        help="fine curves: auto = the runtime's default (on for onnxruntime and openvino, off for torch on a CPU)")
    parser.add_argument("--runs", type=int, default=3, help="build + check this many times per model (seeds 0..)")
    parser.add_argument("--note", default="", help="a line for the results (e.g. how loaded the machine was)")
    parser.add_argument("--load", type=int, default=0,
                        help="busy processes beside the timing thread (results in lut_accuracy_load)")
    parser.add_argument("--load-during", choices=("check", "build", "both"), default="check")
    parser.add_argument("--check-round-to", type=int, default=1,
                        help="also check each LUT on the same plans rounded to multiples of this (lut check --round-to)")
    parser.add_argument("--check-timings", type=int, default=1,
                        help="time each check's plans this many times and report the repeatability (lut check --timings)")
    parser.add_argument("--check-reanchor", type=int, default=0,
                        help="also score each LUT re-anchored on this many other plans timed alongside (lut check --reanchor)")
    parser.add_argument("--out", help="results file name (default lut_accuracy, or lut_accuracy_load with --load); with "
                        "it the committed LUTs under benchmarks/luts are left as they are")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of other (runtime, model) pairs from the last results file")
    args = parser.parse_args()
    tune_allocator()
    runtimes, models = args.runtimes.split(","), args.models.split(",")
    rows, started = [], time.perf_counter()
    for runtime in runtimes:
        for name in models:
            rows += [run_one(name, runtime, run, args) for run in range(args.runs)]
    minutes = (time.perf_counter() - started) / 60
    command = (f"python -m benchmarks.lut_accuracy --runtimes {args.runtimes} --models {args.models} --clock {args.clock} "
               f"--plans {args.plans} --step {args.step} --mobilenet-step {args.mobilenet_step} "
               f"--calibration-plans {args.calibration_plans} --runs {args.runs} --fine {args.fine}"
               + (f" --load {args.load} --load-during {args.load_during}" if args.load else "")
               + (f" --check-round-to {args.check_round_to}" if args.check_round_to > 1 else "")
               + (f" --check-timings {args.check_timings}" if args.check_timings > 1 else "")
               + (f" --check-reanchor {args.check_reanchor}" if args.check_reanchor else "")
               + (f" --out {args.out}" if args.out else ""))
    name = args.out or ("lut_accuracy_load" if args.load else "lut_accuracy")
    runs = [{"command": command, "minutes": round(minutes, 1), "date": time.strftime("%Y-%m-%d"),
             "note": args.note, "pairs": sorted({f"{r['runtime']}/{r['model']}" for r in rows})}]
    if args.merge and (RESULTS / f"{name}.json").exists():  # keep the other (runtime, model) pairs' rows
        old = json.loads((RESULTS / f"{name}.json").read_text())
        done = {(r["runtime"], r["model"]) for r in rows}
        rows = [r for r in old.get("rows", []) if (r.get("runtime"), r["model"]) not in done] + rows
        runs = [r for r in old.get("runs", []) if set(r["pairs"]) - {f"{a}/{b}" for a, b in done}] + runs
    write_results(name, table(rows) + notes(args, runs), {"rows": rows, "runs": runs}, targets(rows),
                  " ; ".join(r["command"] for r in runs))


def targets(rows: list[dict]) -> list[dict]:
    out = []
    for runtime, name in dict.fromkeys((r["runtime"], r["model"]) for r in rows):
        got = [r for r in rows if (r["runtime"], r["model"]) == (runtime, name)]
        share = float(np.median([r["within_10pct"] for r in got]))
        macs = float(np.median([r.get("macs_within_10pct", np.nan) for r in got]))
        out.append(target(f"{runtime} / {name}: share of plans within +-10% (relative prediction), median of "
                          f"{len(got)} build+check run(s) (a*MACs+b baseline: {macs:.2f})", ">= 0.95", round(share, 3),
                          share >= 0.95))
        if all("within_10pct_reanchored" in r for r in got):
            share = float(np.median([r["within_10pct_reanchored"] for r in got]))
            out.append(target(f"{runtime} / {name}: the same, re-anchored on {got[0]['reanchor']} other plans timed "
                              "alongside (lut check --reanchor)", ">= 0.95", round(share, 3), share >= 0.95))
        if all("within_10pct_rounded" in r for r in got):
            share = float(np.median([r["within_10pct_rounded"] for r in got]))
            out.append(target(f"{runtime} / {name}: the same, plans rounded to {got[0]['round_to']}", ">= 0.95",
                              round(share, 3), share >= 0.95))
    return out


def notes(args: argparse.Namespace, runs: list[dict]) -> str:
    lines = [f"batch 1, 1 thread, {args.calibration_plans} calibration plans; rel. = latency as a fraction of the "
             "unpruned model, timed interleaved with it (the target); ms = absolute; speed drift = the unpruned "
             "model's latency at check time / at build time; a*MACs+b = a plain MACs regression fitted on the same "
             "calibration plans, scored on the same check plans; pass shift = how far one of the 5 timing passes moved every "
             "plan's fraction at once (the machine's load changing mid-timing; `TimedPlans.pass_shift`)."
             + (f" Loaded on purpose: {args.load} busy processes (one-thread matmuls and a 32 MB streaming add, "
                f"`benchmarks.common.cpu_load`) on this {os.cpu_count()}-core machine during the "
                f"{'build and the check' if args.load_during == 'both' else args.load_during}." if args.load else "")
             + " Runs:"]
    lines += [f"- {r['date']}: `{r['command']}` ({r['minutes']} min; {', '.join(r['pairs'])})"
              + (f" {r['note']}" if r.get("note") else "") for r in runs]
    return "\n\n" + "\n".join(lines)


if __name__ == "__main__":
    main()
