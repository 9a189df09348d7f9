"""Search quality on the harder task: ResNet-56 on 3x32x32 MNIST-5k at 30% and 15% of the FLOPs.

The first task (``benchmarks.search_quality``, ResNet-20 at 50%/25%) is too easy to tell searchers
apart after fine-tuning. Here a deeper network (30 prunable units) is cut hard. Base: ResNet-56
trained once (30 epochs, seed 0) and cached under ``benchmarks/checkpoints``.

Searchers at equal evaluations (``--evaluations``, default 100): ``random``, ``tpe`` (Optuna),
``cmaes`` (the ``cmaes`` package), ``ddpg`` (the default ``autoprune`` preset of the run's day: ratio
actions in the results of 2026-11-30; preset ``share``, reproducible as ``ddpg_current``, from 2026-12-05;
ratio actions with ``explore_best: 0.5``, the same as ``ddpg_previous``, since 2026-12-06) and ``ddpg_amc``
(``preset: amc``, AMC's published settings), each followed by the same re-ranking stage (top ``--top-k`` plans by the proxy, ``--steps`` fine-tuning batches
each, the best after that is kept); peers: ``uniform``, ``global`` (autoprune's global ranking, one
evaluation) and Torch-Pruning's global L1 pruning (``MetaPruner(global_pruning=True)``) at the same FLOPs. Every result gets the same fine-tune
(2 epochs at lr x 0.1). Reported, mean +- std over seeds:

- best proxy: the best val accuracy (adaptive BN, no training) among the searcher's own
  evaluations, before re-ranking: the searchers compared at equal evaluations;
- test accuracy after the fine-tune of the plan re-ranking chose;
- sample efficiency: evaluations each searcher needed to reach random search's best of
  ``--evaluations`` in the same seed (``-`` when it never did).

    python -m benchmarks.search_quality_hard [--seeds 0 1 2] [--evaluations 100] [--workers 2]
    python -m benchmarks.search_quality_hard --evaluations 400 --searchers random ddpg --top-k 0

    python -m benchmarks.search_quality_hard --budgets 0.1 --searchers uniform tp_global random tpe cmaes ddpg
    python -m benchmarks.search_quality_hard --searchers ddpg_share ddpg_share_plain ddpg_share_bw --out search_quality_hard_share
    python -m benchmarks.search_quality_hard --budgets 0.1 --searchers random tpe ddpg_current --rerank-uniform \
        --out search_quality_hard_flops0.1_uniform
    python -m benchmarks.search_quality_hard --budgets 0.1 --searchers ddpg_centred --top-k 0 \
        --out search_quality_hard_flops0.1_centred

    python -m benchmarks.search_quality_hard --searchers ddpg --references results --out search_quality_hard_ddpg_default

(the second: AMC's episode count, the agent against random search only, results in
``search_quality_hard_e400.md``; the third: a budget beyond the default two, results in
``search_quality_hard_flops0.1.md``, its targets taken at that budget as the aggressive one; the
fourth: DDPG option sets from ``benchmarks.ddpg_sweep`` (``ON_REQUEST``), in their own results file; the
fifth: the uniform plan added to every re-ranking pool, ``rerank.uniform``, labels ``<searcher>+uniform``; the
sixth: a new ``ddpg`` default rerun alone, the other searchers' rows taken from the committed results, so the targets
compare it with them)

Runs land in ``benchmarks/runs/search_quality_hard/<budget>__<searcher>__<seed>`` (run dirs:
``autoprune compare`` reads them; ``docs/compare_hard`` is that report). A finished run is reused,
so an interrupted benchmark continues where it stopped; ``--report`` only rewrites the tables.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from autoprune.pipeline.run import run_search
from benchmarks.common import RESULTS, ROOT, base_config, ensure_checkpoint, finished, target, write_results
from benchmarks.search_quality import tp_global

TASK = "resnet56"
RUNS = ROOT / "runs" / "search_quality_hard"
BUDGETS = (0.15, 0.3)
"""Aggressive first: the budget the targets are about."""
EVALUATION = {"adaptive_bn_batches": 5, "batch_size": 256, "score_samples": 500}
"""The proxy: BN statistics re-estimated on 5 batches, accuracy on 500 fixed val samples."""
SEARCHERS = ("random", "tpe", "cmaes", "ddpg")
"""The searchers compared at equal evaluations in the targets (``ddpg_amc`` runs for one seed only)."""


def searchers(evaluations: int) -> dict[str, dict]:
    return {
        "uniform": {"name": "uniform"},
        "global": {"name": "global"},  # autoprune's global ranking (Torch-Pruning's global pruning as a plan)
        "random": {"name": "random", "evaluations": evaluations},
        "tpe": {"name": "tpe", "evaluations": evaluations, "parallel": 2},
        "cmaes": {"name": "cmaes", "evaluations": evaluations, "parallel": 2},
        "ddpg": {"name": "ddpg", "episodes": evaluations, "warmup": max(2, evaluations // 4) // 2 * 2,
                 "parallel_episodes": 2},
        "ddpg_amc": {"name": "ddpg", "preset": "amc", "episodes": evaluations,
                     "warmup": max(2, evaluations // 4) // 2 * 2, "parallel_episodes": 2},
        "netadapt": {"name": "netadapt", "initial_reduction": 0.08, "decay": 0.95, "short_term_batches": 5},
        # the default with share actions and a wider noise floor (the best of benchmarks.ddpg_sweep)
        "ddpg_share": {"name": "ddpg", "episodes": evaluations, "warmup": max(2, evaluations // 4) // 2 * 2,
                       "parallel_episodes": 2, "action_mode": "share", "sigma_min": 0.15, "sigma_decay": 0.98},
        # ddpg_share with random-search warm-up plans (fed as share actions)
        "ddpg_share_bw": {"name": "ddpg", "episodes": evaluations, "warmup": max(2, evaluations // 4) // 2 * 2,
                          "parallel_episodes": 2, "action_mode": "share", "sigma_min": 0.15, "sigma_decay": 0.98,
                          "warmup_sampling": "budget"},
        # the default before 2026-12-05 (ratio actions, AMC's warm-up, floor 0.05): the ``ddpg`` rows of the
        # results committed before that date; since 2026-12-05 late it runs with the preset's explore_best 0.5,
        # which made it the default since 2026-12-06
        "ddpg_previous": {"name": "ddpg", "episodes": evaluations, "warmup": max(2, evaluations // 4) // 2 * 2,
                          "parallel_episodes": 2, "action_mode": "ratio", "sigma_min": 0.05, "sigma_decay": 0.95,
                          "warmup_sampling": "actions"},
        # share actions alone
        "ddpg_share_plain": {"name": "ddpg", "episodes": evaluations, "warmup": max(2, evaluations // 4) // 2 * 2,
                             "parallel_episodes": 2, "action_mode": "share"},
        # preset share (the default from 2026-12-05 to 2026-12-06) with every other learning episode exploring
        # around the best plan so far (the preset has it since 2026-12-05 late)
        "ddpg_best50": {"name": "ddpg", "preset": "share", "episodes": evaluations,
                        "warmup": max(2, evaluations // 4) // 2 * 2, "parallel_episodes": 2, "explore_best": 0.5},
        # preset share as it was the default from 2026-12-05 late to 2026-12-06, run with re-ranking for
        # docs/compare_hard; the ``ddpg`` run dirs hold the default of their day
        "ddpg_current": {"name": "ddpg", "preset": "share", "episodes": evaluations,
                         "warmup": max(2, evaluations // 4) // 2 * 2, "parallel_episodes": 2},
        # preset share with centred actions (the fair share at 0, ratio mode's slope on both sides)
        "ddpg_centred": {"name": "ddpg", "preset": "share", "episodes": evaluations,
                         "warmup": max(2, evaluations // 4) // 2 * 2, "parallel_episodes": 2, "action_mode": "centred"},
        # TPE with every plan scored after 20 short-term fine-tuning batches (``evaluation.finetune_steps``),
        # half the evaluations (each costs several proxy evaluations): does a fine-tuned score find plans that
        # fine-tune better? ``_evaluation`` is merged into the benchmark's evaluation section
        "tpe_ft20": {"name": "tpe", "evaluations": max(2, evaluations // 2), "parallel": 2,
                     "_evaluation": {"finetune_steps": 20}},
        # the control of explore_best (on preset share): after the warm-up only the local search acts
        "ddpg_best100": {"name": "ddpg", "preset": "share", "episodes": evaluations,
                         "warmup": max(2, evaluations // 4) // 2 * 2, "parallel_episodes": 2, "explore_best": 1.0},
    }


ON_REQUEST = ("ddpg_share", "ddpg_share_bw", "ddpg_share_plain", "ddpg_previous", "ddpg_best50", "ddpg_current",
              "ddpg_centred", "ddpg_best100", "tpe_ft20")
"""DDPG option sets from ``benchmarks.ddpg_sweep``, run only when named in ``--searchers`` (results with
``--out search_quality_hard_share``)."""
FIRST_SEED_ONLY = ("ddpg_amc", "netadapt")
"""Run for the first seed only (CPU time is scarce here): the AMC preset (kept reachable, not tuned) and
NetAdapt (the greedy searcher for the comparison report; it sets its own evaluation count)."""
NO_RERANK = ("uniform", "global", "netadapt")
"""One plan (uniform, global), or scores taken after short-term fine-tuning already (NetAdapt's proposals)."""
EXTRA = ("ddpg_wall", "ddpg_nofloor")
"""Labels reported when their run dirs exist but no longer run: ``ddpg_wall`` is an earlier default
(AMC's wall plus the end-of-episode repair), kept for seed 0 at 15% as the evidence for the change;
``ddpg_nofloor`` is the default before ``sigma_min`` (sigma decayed to ~0 after the warm-up)."""


def runs_dir(evaluations: int) -> Path:
    """Where the runs at ``evaluations`` live (100, the default, in RUNS; others beside it)."""
    return RUNS if evaluations == 100 else RUNS.parent / f"search_quality_hard_e{evaluations}"


def run_all(args) -> list[dict]:
    rows, runs = [], runs_dir(args.evaluations)
    wanted = set(args.searchers or [*(k for k in searchers(args.evaluations) if k not in ON_REQUEST), "tp_global"])
    for seed in args.seeds:
        for budget in args.budgets or BUDGETS:
            for name, searcher in searchers(args.evaluations).items():
                if name in FIRST_SEED_ONLY and seed != args.seeds[0] or name not in wanted:
                    continue
                searcher = dict(searcher)
                evaluation = {**EVALUATION, **searcher.pop("_evaluation", {})}
                label = name + ("+uniform" if args.rerank_uniform and name not in NO_RERANK else "")
                out = runs / f"flops{budget}__{label}__{seed}"
                if not args.report and not finished(out, searcher):
                    shutil.rmtree(out, ignore_errors=True)
                    rerank = ({"top_k": args.top_k, "steps": args.steps, "uniform": args.rerank_uniform}
                              if name not in NO_RERANK else {"top_k": 0})
                    cfg = base_config([f"seed={seed}", f"ray.workers={args.workers}"], task=TASK,
                                      searcher=searcher, budget={"flops": budget}, evaluation=evaluation,
                                      rerank=rerank)
                    run_search(cfg, out=out, progress=False)
                if (out / "summary.json").exists():
                    rows.append(_row(label, budget, seed, out))
            for label in EXTRA:
                if (runs / f"flops{budget}__{label}__{seed}" / "summary.json").exists():
                    rows.append(_row(label, budget, seed, runs / f"flops{budget}__{label}__{seed}"))
            out = runs / f"flops{budget}__tp_global__{seed}"
            if not (out / "summary.json").exists() and not args.report and "tp_global" in wanted:
                tp_global(budget, seed, out, task=TASK, evaluation=EVALUATION)
            if (out / "summary.json").exists():
                rows.append(_row("tp_global", budget, seed, out))
            print(f"done flops={budget} seed {seed}", flush=True)
    return rows


def _search_trials(out: Path) -> pd.DataFrame | None:
    """The searcher's own evaluations in order (re-ranking rows left out)."""
    path = out / "trials.parquet"
    if not path.exists():
        return None
    t = pd.read_parquet(path)
    if "stage" in t:
        t = t[t["stage"].isna() | (t["stage"] != "rerank")]
    return t.sort_values("index") if "index" in t else t


def _row(label: str, budget: float, seed: int, out: Path) -> dict:
    s = json.loads((out / "summary.json").read_text())
    p = s["pruned"]
    t = _search_trials(out)
    best_proxy = float(t["val_accuracy"].max()) if t is not None and len(t) else p["val_accuracy_before_finetune"]
    tuned = label == "netadapt" or (t is not None and "finetune_steps" in t and bool((t["finetune_steps"] > 0).any()))
    if tuned:  # rows scored after a short-term fine-tune (NetAdapt's, evaluation.finetune_steps): only the
        best_proxy = p["val_accuracy_before_finetune"]  # result's proxy score compares, and no best-so-far
        t = None
    rerank = s.get("rerank") or {}
    return {"searcher": label, "budget": f"flops={budget}", "seed": seed, "flops_kept": p["flops_kept"],
            "best_proxy": best_proxy, "val_before": p["val_accuracy_before_finetune"],
            "test_after": p["test_accuracy_after_finetune"],
            "evaluations": s["evaluations"], "rerank_evaluations": rerank.get("evaluations", 0),
            "rerank_s": rerank.get("seconds", 0.0), "rerank_changed": bool(rerank.get("changed", False)),
            "rerank_uniform_won": bool(rerank.get("uniform_won", False)),
            "wall_s": s["wall_seconds"],
            "best_so_far": list(t["val_accuracy"].cummax()) if t is not None and len(t) else []}


def evaluations_to_reach(curve: list[float], threshold: float) -> int | None:
    """1-based count of evaluations after which the best-so-far first reaches ``threshold``."""
    for i, value in enumerate(curve):
        if value >= threshold - 1e-12:
            return i + 1
    return None


def efficiency(df: pd.DataFrame) -> pd.DataFrame:
    """Per budget, searcher and seed: evaluations to reach random search's best in that seed."""
    out = []
    for (budget, seed), g in df.groupby(["budget", "seed"]):
        rand = g[g["searcher"] == "random"]
        if rand.empty:
            continue
        threshold = rand.iloc[0]["best_proxy"]  # the end of its best-so-far curve (also for committed rows)
        for _, r in g[~g["searcher"].isin(("uniform", "tp_global", "netadapt"))].iterrows():
            # a committed row (--references results) has no curve: its count comes from that file
            reach = (evaluations_to_reach(r["best_so_far"], threshold) if r["best_so_far"]
                     else r.get("to_reach_committed"))
            out.append({"budget": budget, "seed": seed, "searcher": r["searcher"],
                        "to_reach": None if reach is None or pd.isna(reach) else int(reach)})
    return pd.DataFrame(out)


def tables(df: pd.DataFrame, evaluations: int) -> list[str]:
    base = json.loads(next(runs_dir(evaluations).glob("*/summary.json")).read_text())["base"]
    eff = efficiency(df)
    lines = [f"base model: ResNet-56, val {base['val_accuracy']:.4f}, test {base['test_accuracy']:.4f}; "
             f"seeds per row in the `n` column", "",
             "| budget | searcher | n | kept FLOPs | best proxy (val before FT) | test acc after FT | "
             "evaluations (+ re-rank) | re-rank s | re-ranking chose uniform | evaluations to reach random's best | "
             "wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (budget, searcher), g in df.groupby(["budget", "searcher"]):
        e = eff[(eff["budget"] == budget) & (eff["searcher"] == searcher)] if len(eff) else eff
        reach = "-" if e is None or e.empty else ", ".join("-" if pd.isna(v) else str(int(v)) for v in e["to_reach"])
        lines.append(
            f"| {budget} | {searcher} | {len(g)} | {g['flops_kept'].mean():.3f} | "
            f"{g['best_proxy'].mean():.4f} +- {np.nan_to_num(g['best_proxy'].std()):.4f} | "
            f"{g['test_after'].mean():.4f} +- {np.nan_to_num(g['test_after'].std()):.4f} | "
            f"{g['evaluations'].mean():.0f} (+ {g['rerank_evaluations'].mean():.0f}) | "
            f"{g['rerank_s'].mean():.0f} | {int(g.get('rerank_uniform_won', pd.Series(dtype=bool)).fillna(False).astype(bool).sum())} | {reach} | "
            f"{g['wall_s'].mean():.0f} |")
    lines += ["", f"Evaluations to reach random's best: one number per seed (random's own is {evaluations} "
              "or fewer by construction; `-`: not reached within the searcher's evaluations)."]
    return lines


def committed_rows(name: str, present: pd.DataFrame) -> tuple[list[dict], str]:
    """The rows of ``name``'s committed results whose searcher ran not here (``--references results``:
    the peers of a partial rerun, e.g. a new DDPG default against the committed random search), and a
    line saying so. Their best-so-far curves are not committed; their sample-efficiency counts are (``efficiency``)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        raise SystemExit(f"--references results: no committed {path.name}")
    data = json.loads(path.read_text())
    ran = set(present["searcher"]) if len(present) else set()
    reach = {(e["budget"], e["seed"], e["searcher"]): e["to_reach"] for e in data.get("efficiency", [])}
    rows = [{**r, "best_so_far": [], "to_reach_committed": reach.get((r["budget"], r["seed"], r["searcher"]))}
            for r in data["rows"] if r["searcher"] not in ran]
    labels = ", ".join(sorted({r["searcher"] for r in rows}))
    return rows, (f"Rows of {labels} are the committed `{path.name}` of {data['date']} (not rerun here: "
                  "`--references results`).")


def targets_of(df: pd.DataFrame) -> list[dict]:
    m = df.groupby(["budget", "searcher"]).mean(numeric_only=True)
    present = sorted(set(df["budget"]), key=lambda b: float(b.split("=")[1]))
    hard, milder = present[0], present[1:]  # the smallest budget run is the aggressive one
    out = []

    def have(budget, *names):
        return budget in m.index.get_level_values(0) and all(n in m.loc[budget].index for n in names)

    for budget, margin in ((hard, 0.03), *((b, 0.0) for b in milder)):
        if have(budget, *SEARCHERS):
            best = m.loc[budget].loc[list(SEARCHERS[1:]), "best_proxy"]
            rnd = m.loc[budget].loc["random", "best_proxy"]
            out.append(target(f"best searcher vs random, best proxy at equal evaluations, {budget}",
                              f">= random + {margin:.2f}", {best.idxmax(): round(float(best.max()), 4),
                                                            "random": round(float(rnd), 4)},
                              best.max() >= rnd + margin))
    for budget in present:
        if have(budget, "ddpg", "random"):
            d, r = m.loc[budget].loc["ddpg", "best_proxy"], m.loc[budget].loc["random", "best_proxy"]
            out.append(target(f"ddpg >= random at equal evaluations, {budget}", "ddpg >= random",
                              [round(float(d), 4), round(float(r), 4)], d >= r))
    ddpg = df[df["searcher"] == "ddpg"]
    if len(ddpg):
        use = ddpg["flops_kept"] / ddpg["budget"].str.split("=").str[1].astype(float)
        out.append(target("budget use: the best DDPG plan's kept FLOPs / budget (worst run)", ">= 0.95",
                          round(float(use.min()), 3), use.min() >= 0.95))
    if have(hard, *SEARCHERS, "uniform", "tp_global"):
        best = m.loc[hard].loc[list(SEARCHERS), "test_after"]
        for peer in ("uniform", "tp_global"):
            p = m.loc[hard].loc[peer, "test_after"]
            out.append(target(f"with re-ranking, best searcher's test acc after FT vs {peer}, {hard}",
                              f">= {peer} + 1.0 point", {best.idxmax(): round(float(best.max()), 4),
                                                         peer: round(float(p), 4)}, best.max() >= p + 0.01))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--searchers", nargs="+", help="run only these labels (e.g. random ddpg at 400)")
    parser.add_argument("--budgets", type=float, nargs="+", help=f"default {BUDGETS}; another budget (e.g. 0.08) writes "
                        "its own results file, search_quality_hard_flops<budgets>.md")
    parser.add_argument("--rerank-uniform", action="store_true", help="re-rank the uniform plan too "
                        "(rerank.uniform); labels get '+uniform'")
    parser.add_argument("--report", action="store_true", help="only rewrite the tables from the runs on disk")
    parser.add_argument("--references", choices=["runs", "results"], default="runs",
                        help="the searchers not run here: from no rows (runs) or from the committed results of "
                             "the default file name (results), so a partial rerun is compared with its peers")
    parser.add_argument("--out", help="results file name (default: search_quality_hard[_e<N>][_flops<budgets>]); "
                        "give one with --searchers, or the partial table replaces the full one")
    args = parser.parse_args()
    ensure_checkpoint(TASK)
    if args.workers and not args.report:  # one local Ray for all runs (the pools join it)
        import os

        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    df = pd.DataFrame(run_all(args))
    name = "search_quality_hard" + ("" if args.evaluations == 100 else f"_e{args.evaluations}")
    if args.budgets and set(args.budgets) - set(BUDGETS):  # an extra budget: its own results file
        name += "_flops" + "_".join(f"{b:g}" for b in sorted(args.budgets))
    note = []
    if args.references == "results":
        rows, line = committed_rows(name, df)
        df, note = pd.concat([df, pd.DataFrame(rows)], ignore_index=True), ["", line]
    data = {"rows": df.drop(columns=["best_so_far", "to_reach_committed"], errors="ignore").to_dict("records"),
            "efficiency": efficiency(df).to_dict("records")}
    name = args.out or name
    write_results(name, "\n".join(tables(df, args.evaluations) + note), data, targets_of(df),
                  f"python -m benchmarks.search_quality_hard --seeds {' '.join(map(str, args.seeds))} "
                  f"--evaluations {args.evaluations} --workers {args.workers} --top-k {args.top_k} "
                  f"--steps {args.steps}" + (f" --budgets {' '.join(map(str, args.budgets))}" if args.budgets else "")
                  + (f" --searchers {' '.join(args.searchers)}" if args.searchers else "")
                  + (" --rerank-uniform" if args.rerank_uniform else "")
                  + (" --references results" if args.references == "results" else "")
                  + (f" --out {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
