"""Is interleaved timing unbiased? Identical copies of the unpruned model timed as candidates against it.

Every relative latency autoprune compares (LUT calibration, ``lut check``, measured budgets, the
speed-up benchmark) comes from :func:`autoprune.latency.timing.time_interleaved`. A copy of the
reference model is the reference, so its ratio must come out at 1.0, and it must not depend on the
number of samples a pass takes: the calibration times with 6 samples a pass (``repeats`` 30) and
``lut check`` with 3 (``repeats`` 15), and a bias that differs between the two shifts every check.

Two estimators per runtime and model, on the same machine state:

* ``current``: :func:`time_interleaved` itself, at ``repeats`` 15 and 30;
* ``before 2026-12-05``: the earlier estimator (no untimed sample before a session's samples, and the
  faster of the two neighbouring reference timings as the denominator), replayed on raw samples
  recorded in the same pattern (reference every 2 candidates, 5 passes, alternating order).

With ``--passes N`` it times the same 50 random plans (``lut check``'s first stream) in N passes back
to back instead and reports how far each pass's ratios move against the first's: the noise floor a
``lut check`` on this machine cannot get under (results ``timing_bias_passes``).

    python -m benchmarks.timing_bias
    python -m benchmarks.timing_bias --runtimes torch --models resnet20 --copies 4
    python -m benchmarks.timing_bias --runtimes torch --models resnet20 --passes 3
"""

from __future__ import annotations

import argparse
import copy

import numpy as np
import torch

from autoprune.core.graph import build_unit_graph
from autoprune.latency.tables import random_counts
from autoprune.latency.timing import (
    example_input,
    make_timer,
    resolve_runtime,
    runs_per_sample,
    thread_count,
    time_interleaved,
    time_plans,
    tune_allocator,
)
from autoprune.models.zoo import build_model
from benchmarks.common import target, write_results

SHAPE = (3, 32, 32)
ROUNDS, REF_EVERY = 5, 2
TOLERANCE = 0.02
"""Largest acceptable mean bias of an identical copy's ratio (and difference between 3 and 6 samples)."""


def record(reference, candidates, timer, runs: list[int], samples: int) -> list[tuple[int, int, list[float]]]:
    """Raw samples (pass, session index (0: reference), ``samples + 1`` samples) in ``time_interleaved``'s pattern."""
    log, n = [], len(candidates)
    sessions = [reference, *candidates]

    def take(k: int) -> list[float]:
        return [timer.sample(sessions[k], runs[k]) for _ in range(samples + 1)]

    for r in range(ROUNDS):
        order = list(range(1, n + 1)) if r % 2 == 0 else list(reversed(range(1, n + 1)))
        log.append((r, 0, take(0)))
        for start in range(0, n, REF_EVERY):
            log += [(r, k, take(k)) for k in order[start:start + REF_EVERY]]
            log.append((r, 0, take(0)))
    return log


def replay(log: list[tuple[int, int, list[float]]], samples: int, skip: int, denominator: str) -> list[float]:
    """Each candidate's median-over-passes ratio from ``log``: the fastest of ``samples`` samples after
    ``skip`` untimed ones, over the ``denominator`` ("min" or "geo") of the neighbouring reference timings."""
    ratios: dict[int, list[float]] = {}
    for r in range(ROUNDS):
        rows = [(k, min(s[skip:skip + samples])) for rr, k, s in log if rr == r]
        for i, (k, t) in enumerate(rows):
            if k == 0:
                continue
            before = next(rows[j][1] for j in range(i - 1, -1, -1) if rows[j][0] == 0)
            after = next(rows[j][1] for j in range(i + 1, len(rows)) if rows[j][0] == 0)
            den = min(before, after) if denominator == "min" else float(np.sqrt(before * after))
            ratios.setdefault(k, []).append(t / den)
    return [float(np.median(v)) for _, v in sorted(ratios.items())]


def measure(runtime: str, name: str, copies: int) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name, in_channels=3, num_classes=10).eval()
    x = example_input(model, SHAPE, 1)
    rt = resolve_runtime(runtime)
    rows = []
    with thread_count(1):
        ref = rt.prepare(model, x, 1)
        cands = [rt.prepare(copy.deepcopy(model), x, 1) for _ in range(copies)]
        for repeats in (15, 30):
            samples = max(3, -(-repeats // ROUNDS))
            now = time_interleaved(ref, cands, 1, ROUNDS, samples, clock="cpu", ref_every=REF_EVERY).relative
            timer = make_timer("cpu", "cpu", 1)
            tune_allocator()
            runs = [runs_per_sample(s, timer, 2, 1.0) for s in (ref, *cands)]
            old = replay(record(ref, cands, timer, runs, samples), samples, 0, "min")
            for estimator, rel in (("current", now), ("before 2026-12-05", old)):
                rows.append({"runtime": runtime, "model": name, "repeats": repeats, "samples": samples,
                             "estimator": estimator, "mean": float(np.mean(rel)), "min": float(np.min(rel)),
                             "max": float(np.max(rel)), "ratios": rel})
            print(f"{runtime} {name} repeats {repeats}: current {np.mean(now):.3f}, before {np.mean(old):.3f}", flush=True)
    return rows


def passes(runtime: str, name: str, n: int, plans: int = 50) -> list[dict]:
    """The same ``plans`` random plans timed in ``n`` passes (``time_plans``: pruned anew each pass), at 15
    and 30 repeats: each later pass's plan-by-plan ratios over the first pass's."""
    model = build_model(name, in_channels=3, num_classes=10).eval()
    graph = build_unit_graph(model, SHAPE)
    rng = np.random.default_rng([0, 2])  # check_lut's stream for seed 0
    counts = [random_counts(graph, rng) for _ in range(plans)]
    rows = []
    for repeats in (15, 30):
        rel = [np.array(time_plans(graph, model, counts, 1, 1, repeats, "cpu", runtime=runtime).relative) for _ in range(n)]
        for k in range(1, n):
            r = rel[k] / rel[0]
            rows.append({"runtime": runtime, "model": name, "repeats": repeats, "pass": k,
                         "median": float(np.median(r)), "p5": float(np.percentile(r, 5)), "p95": float(np.percentile(r, 95)),
                         "within_10pct": float(np.mean(np.abs(r - 1) <= 0.10))})
            print(f"{runtime} {name} repeats {repeats} pass {k}: median {rows[-1]['median']:.3f}", flush=True)
    return rows


def main_passes(args: argparse.Namespace) -> None:
    rows = [r for rt in args.runtimes.split(",") for m in args.models.split(",") for r in passes(rt, m, args.passes)]
    lines = ["| runtime | model | repeats | pass | median ratio to pass 0 | 5th-95th percentile | plans within +-10% of pass 0 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['runtime']} | {r['model']} | {r['repeats']} | {r['pass']} | {r['median']:.3f} | {r['p5']:.3f}-{r['p95']:.3f} | "
              f"{r['within_10pct']:.2f} |" for r in rows]
    lines += ["", "50 random plans (ratios uniform on [0.2, 1], `lut check`'s stream for seed 0) timed against the unpruned "
              "model in each pass, pruned anew each pass; batch 1, 1 thread, cpu clock. A LUT checked against one pass "
              "cannot be more accurate than the passes agree with each other."]
    command = f"python -m benchmarks.timing_bias --runtimes {args.runtimes} --models {args.models} --passes {args.passes}"
    write_results(args.out if args.out != "timing_bias" else "timing_bias_passes", "\n".join(lines), {"rows": rows}, [],
                  command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", default="torch,onnxruntime,openvino")
    parser.add_argument("--models", default="resnet20,resnet56")
    parser.add_argument("--copies", type=int, default=8, help="identical copies timed as candidates (default 8)")
    parser.add_argument("--passes", type=int, default=0, help="time 50 random plans in this many passes instead")
    parser.add_argument("--out", default="timing_bias")
    args = parser.parse_args()
    if args.passes:
        return main_passes(args)
    rows = [r for rt in args.runtimes.split(",") for m in args.models.split(",") for r in measure(rt, m, args.copies)]
    lines = ["| runtime | model | repeats | samples a pass | estimator | mean ratio | min | max |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['runtime']} | {r['model']} | {r['repeats']} | {r['samples']} | {r['estimator']} | {r['mean']:.3f} | "
              f"{r['min']:.3f} | {r['max']:.3f} |" for r in rows]
    lines += ["", f"{args.copies} identical copies of the unpruned model timed as candidates against it (batch 1, 1 thread, "
              "cpu clock, 5 passes, reference every 2 candidates); the ratio must be 1.0. `before 2026-12-05` replays "
              "the earlier estimator on raw samples recorded right after the current one."]
    targets = []
    for rt in args.runtimes.split(","):
        for m in args.models.split(","):
            cur = {r["repeats"]: r["mean"] for r in rows if (r["runtime"], r["model"], r["estimator"]) == (rt, m, "current")}
            targets.append(target(f"{rt} / {m}: identical copies' mean ratio, current estimator (15 and 30 repeats)",
                                  f"within 1 +- {TOLERANCE}", [round(cur[15], 3), round(cur[30], 3)],
                                  all(abs(v - 1) <= TOLERANCE for v in cur.values())))
            targets.append(target(f"{rt} / {m}: 15 vs 30 repeats (check vs calibration), current estimator",
                                  f"|difference| <= {TOLERANCE / 2}", round(cur[15] - cur[30], 3),
                                  abs(cur[15] - cur[30]) <= TOLERANCE / 2))
    command = (f"python -m benchmarks.timing_bias --runtimes {args.runtimes} --models {args.models} --copies {args.copies}"
               + (f" --out {args.out}" if args.out != "timing_bias" else ""))
    write_results(args.out, "\n".join(lines), {"rows": rows}, targets, command)


if __name__ == "__main__":
    main()
