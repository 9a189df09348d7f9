"""DDPG option sweep on the search_quality task: which departures from the default close the gap to
random search at equal evaluations?

Each variant is the ``ddpg`` searcher of ``benchmarks.search_quality`` (same episodes, warm-up, 2
parallel episodes) with the options of the default before 2026-12-05 (``PREVIOUS_DEFAULT``: ratio
actions, AMC's warm-up, sigma floor 0.05) and a few overridden, run at 50% and 25% FLOPs of the cached
ResNet-20 for each seed; ``previous_default`` is that searcher unchanged (its runs were
``search_quality``'s ``ddpg`` rows until the default became ``share_smin15d98_bw``). The references
are that benchmark's own runs (``runs/search_quality``: ``random`` and ``ddpg``, the current default),
so run ``python -m benchmarks.search_quality`` first, or pass ``--references results`` to take their
per-seed best from the committed ``search_quality[_e<N>].json`` instead (no last-third or tail-ratio
columns for them then). Reported per variant and
budget: best val accuracy before fine-tuning (mean +- std over seeds, the number search_quality
compares), the mean val accuracy of the last third of the episodes, and the mean preserve ratio of
the last three units in that third (the default saturates them at 50% FLOPs).

    python -m benchmarks.ddpg_sweep [--variants smin15 upt4 ...] [--seeds 0 1 2] [--budgets 0.5 0.25]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

from benchmarks.common import RESULTS, ROOT, base_config, ensure_checkpoint, finished, target, write_results
from benchmarks.search_quality import runs_dir as quality_runs
from benchmarks.search_quality import searchers

RUNS = ROOT / "runs" / "ddpg_sweep"

PREVIOUS_DEFAULT = {"action_mode": "ratio", "sigma_min": 0.05, "sigma_decay": 0.95, "warmup_sampling": "actions"}
"""The ``autoprune`` preset's values before 2026-12-05 that the current default changed: the sweep's base."""

VARIANTS: dict[str, dict] = {
    "previous_default": {},
    "smin15": {"sigma_min": 0.15},
    "smin25": {"sigma_min": 0.25},
    "decay98": {"sigma_decay": 0.98, "sigma_min": 0.1},
    "smin15d98": {"sigma_min": 0.15, "sigma_decay": 0.98},
    "upt4": {"updates_per_transition": 4},
    "upt4_smin15d98": {"updates_per_transition": 4, "sigma_min": 0.15, "sigma_decay": 0.98},
    "share": {"action_mode": "share"},
    "share_smin15d98": {"action_mode": "share", "sigma_min": 0.15, "sigma_decay": 0.98},
    "share_smin15d98_bw": {"action_mode": "share", "sigma_min": 0.15, "sigma_decay": 0.98, "warmup_sampling": "budget"},
    "share_group": {"action_mode": "share", "group_features": True},
    "group": {"group_features": True},
}
"""Named option overrides of ``PREVIOUS_DEFAULT``."""

CURRENT_VARIANTS: dict[str, dict] = {
    "best25": {"explore_best": 0.25},
    "best50": {"explore_best": 0.5},
    # the control: every learning episode explores around the best plan, the actor never acts (it still learns)
    "best100": {"explore_best": 1.0},
}
"""Named option overrides of preset ``share`` (the default from 2026-12-05 to 2026-12-06, against which they
were measured)."""


def sweep_runs(episodes: int):
    """Where a sweep at ``episodes`` keeps its runs (100, the default, in RUNS; others beside it)."""
    return RUNS if episodes == 100 else RUNS.parent / f"ddpg_sweep_e{episodes}"


def options(name: str) -> dict:
    return {"preset": "share", **CURRENT_VARIANTS[name]} if name in CURRENT_VARIANTS else {**PREVIOUS_DEFAULT, **VARIANTS[name]}


def run_variant(name: str, budget: float, seed: int, episodes: int, workers: int):
    """The variant's trials (pandas), running the search unless its run dir is complete."""
    import pandas as pd

    from autoprune.pipeline.run import run_search

    out = sweep_runs(episodes) / f"flops{budget}__{name}__{seed}"
    searcher = {**searchers(episodes)["ddpg"], **options(name)}
    if not finished(out, searcher):
        shutil.rmtree(out, ignore_errors=True)
        cfg = base_config([f"seed={seed}", f"ray.workers={workers}"], searcher=searcher, budget={"flops": budget})
        run_search(cfg, out=out, progress=False)
    return pd.read_parquet(out / "trials.parquet")


def reference(label: str, budget: float, seed: int, episodes: int = 100):
    import pandas as pd

    path = quality_runs(episodes) / f"flops{budget}__{label}__{seed}" / "trials.parquet"
    if not path.exists():
        more = "" if episodes == 100 else f" --episodes {episodes} --searchers random ddpg"
        raise SystemExit(f"{path} is missing: run python -m benchmarks.search_quality{more} first")
    return pd.read_parquet(path)


def committed(label: str, budget: float, seeds: list, episodes: int) -> dict:
    """The reference's per-seed best val accuracy from the committed search_quality results."""
    name = "search_quality" if episodes == 100 else f"search_quality_e{episodes}"
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run python -m benchmarks.search_quality first")
    rows = {r["seed"]: r["val_before"] for r in json.loads(path.read_text())["rows"]
            if r["searcher"] == label and r["budget"] == f"flops={budget}"}
    if missing := [s for s in seeds if s not in rows]:
        raise SystemExit(f"{path} has no {label} row at flops={budget} for seeds {missing}")
    return {**best_stats([float(rows[s]) for s in seeds]), "late_mean": float("nan"), "tail_ratio": float("nan")}


def best_stats(best: list[float]) -> dict:
    """Per-seed best val accuracies, their mean and std over seeds."""
    return {"best": best, "best_mean": float(np.mean(best)), "best_std": float(np.std(best, ddof=1)) if len(best) > 1 else 0.0}


def describe(trials: list) -> dict:
    """Best, last-third mean val accuracy and last-three-units ratio, per seed and their mean/std."""
    best = [float(t["val_accuracy"].max()) for t in trials]
    late, tail_ratio = [], []
    for t in trials:
        learn = t[~t["warmup"].to_numpy(bool)] if "warmup" in t else t
        third = learn.iloc[-max(1, len(learn) // 3):]
        late.append(float(third["val_accuracy"].mean()))
        cols = [c for c in t.columns if c.startswith("ratio/")][-3:]
        tail_ratio.append(float(third[cols].to_numpy().mean()))
    return {**best_stats(best), "late_mean": float(np.mean(late)), "tail_ratio": float(np.mean(tail_ratio))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*VARIANTS, *CURRENT_VARIANTS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--references", choices=["runs", "results"], default="runs",
                        help="random and default ddpg rows from search_quality's run dirs (runs) or its committed "
                             "results JSON (results: per-seed best only)")
    parser.add_argument("--out", default=None, help="results name (default ddpg_sweep, ddpg_sweep_e<N> at other episodes)")
    args = parser.parse_args()
    out = args.out or ("ddpg_sweep" if args.episodes == 100 else f"ddpg_sweep_e{args.episodes}")
    ensure_checkpoint()
    if args.workers:
        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    rows = []
    for budget in args.budgets:
        for label in ("random", "ddpg"):
            ref = (committed(label, budget, args.seeds, args.episodes) if args.references == "results"
                   else describe([reference(label, budget, s, args.episodes) for s in args.seeds]))
            rows.append({"variant": label if label == "random" else "ddpg (default)", "budget": budget, "options": {}, **ref})
        for name in args.variants:
            trials = [run_variant(name, budget, s, args.episodes, args.workers) for s in args.seeds]
            rows.append({"variant": name, "budget": budget, "options": options(name), **describe(trials)})
            print(f"done {name} flops={budget}", flush=True)

    lines = [f"ResNet-20 task of `search_quality`, {args.episodes} episodes, seeds {args.seeds}; best: best val "
             "accuracy before FT, mean +- std over seeds; last third: mean val accuracy of the last third of the "
             "learning episodes (random: of its last third of samples); tail ratio: mean preserve ratio of the "
             "last three units there.", "",
             "| FLOPs | variant | options | best | last third | tail ratio |", "|---|---|---|---|---|---|"]
    for r in rows:
        opts = ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-"
        late = "-" if np.isnan(r["late_mean"]) else f"{r['late_mean']:.3f}"
        tail = "-" if np.isnan(r["tail_ratio"]) else f"{r['tail_ratio']:.2f}"
        lines.append(f"| {r['budget']} | {r['variant']} | {opts} | {r['best_mean']:.4f} +- {r['best_std']:.4f} | "
                     f"{late} | {tail} |")
    targets = []
    for budget in args.budgets:
        rand = next(r["best_mean"] for r in rows if r["budget"] == budget and r["variant"] == "random")
        wins = [r["variant"] for r in rows if r["budget"] == budget and r["variant"] != "random"
                and r["best_mean"] >= rand]
        targets.append(target(f"a DDPG variant >= random at {budget:.0%} FLOPs (best val before FT)", "ddpg >= random",
                              {"random": round(rand, 4), "variants at or above": wins}, bool(wins)))
    command = f"python -m benchmarks.ddpg_sweep --variants {' '.join(args.variants)}"
    if args.episodes != 100:
        command += f" --episodes {args.episodes} --budgets {' '.join(map(str, args.budgets))}"
    if args.references != "runs":
        command += f" --references {args.references}"
    write_results(out, "\n".join(lines), {"rows": rows}, targets, command + (f" --out {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
