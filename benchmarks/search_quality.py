"""Search quality: every searcher and Torch-Pruning's global pruning on one base model.

Base: ResNet-20 trained on 3x32x32 MNIST-5k (cached checkpoint). Budgets: 50% and 25% of FLOPs
(and, with ``--latency``, LUT-guided NetAdapt at 60% of the predicted latency, seed 0). Searchers: uniform, random (as many
evaluations as DDPG has episodes), sensitivity, netadapt, ddpg, and Torch-Pruning's
``MetaPruner(global_pruning=True)`` with L1 group importance at the same FLOPs (the peer a user
would pick). Every plan gets the same fine-tune (2 epochs at lr x 0.1). Reports val
accuracy before fine-tune (adaptive BN) and test accuracy after, mean +- std over seeds.

    python -m benchmarks.search_quality [--seeds 0 1 2] [--episodes 100] [--workers 2] [--latency] [--ablation]
    python -m benchmarks.search_quality --episodes 400 --searchers random ddpg

(the second: AMC's episode count, the agent against random search only; runs in
``benchmarks/runs/search_quality_e400``, results in ``search_quality_e400.md``; any episode count other
than 100 gets its own runs and results alike, and a subset of ``--searchers`` reports the targets it can)

``--ablation`` adds ``ddpg_fill``: the same DDPG with ``warmup_sampling: budget`` (random-search
warm-up plans) and ``fill_budget: true`` (the env's lower wall), the two optional departures from AMC.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch_pruning as tp

from autoprune.atomic import atomic_write_json
from autoprune.core.cost import measure_model
from autoprune.core.train import dataset_accuracy, train_model
from autoprune.pipeline.run import run_search
from autoprune.pipeline.session import prepare, seed_everything
from benchmarks.common import ROOT, base_config, ensure_checkpoint, finished, target, write_results

RUNS = ROOT / "runs" / "search_quality"


def runs_dir(episodes: int) -> Path:
    """Where the runs at ``episodes`` live (100, the default, in RUNS; others beside it)."""
    return RUNS if episodes == 100 else RUNS.parent / f"search_quality_e{episodes}"


def ablation(episodes: int) -> dict[str, dict]:
    """DDPG with the two optional departures from AMC: random-search warm-up plans, budget-filling wall."""
    return {"ddpg_fill": {**searchers(episodes)["ddpg"], "warmup_sampling": "budget", "fill_budget": True,
                          "action_wall": True}}


def searchers(episodes: int) -> dict[str, dict]:
    return {
        "uniform": {"name": "uniform"},
        "random": {"name": "random", "evaluations": episodes},
        "sensitivity": {"name": "sensitivity", "ratios": [0.25, 0.5, 0.75]},
        "netadapt": {"name": "netadapt", "initial_reduction": 0.08, "decay": 0.95, "short_term_batches": 5},
        "ddpg": {"name": "ddpg", "episodes": episodes, "warmup": max(2, episodes // 4) // 2 * 2,
                 "parallel_episodes": 2},
    }


def tp_global(budget: float, seed: int, out: Path, task: str = "resnet20", **sections) -> dict:
    """Torch-Pruning's global magnitude pruning at ``budget`` FLOPs, same fine-tune, same scoring."""
    cfg = base_config([f"seed={seed}"], task=task, budget={"flops": budget}, **sections)
    session = prepare(cfg, progress=False)
    start = time.time()
    base_macs = measure_model(session.model, session.input_shape)[0]
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):  # bisection on the global pruning ratio to meet the FLOPs budget
        mid = (lo + hi) / 2
        model = __import__("copy").deepcopy(session.model)
        pruner = tp.pruner.MetaPruner(model, __import__("torch").randn(1, *session.input_shape),
                                      importance=tp.importance.GroupMagnitudeImportance(p=1),
                                      global_pruning=True, pruning_ratio=mid,
                                      ignored_layers=[model.classifier])
        pruner.step()
        if measure_model(model, session.input_shape)[0] <= budget * base_macs:
            best, hi = model, mid
        else:
            lo = mid
    evaluator = session.evaluator()
    val_before = evaluator.score(best)
    seed_everything(seed)
    train_model(best, session.data.train, cfg.train, epochs=cfg.finetune.epochs,
                lr=cfg.train.lr * cfg.finetune.lr_scale, seed=seed, progress=False)
    macs, params = measure_model(best, session.input_shape)
    summary = {"searcher": "tp_global", "seed": seed, "budget": {"kind": "flops", "fraction": budget},
               "pruned": {"flops_kept": macs / base_macs, "val_accuracy_before_finetune": val_before,
                          "test_accuracy_after_finetune": dataset_accuracy(best, session.data.test)},
               "evaluations": 12, "wall_seconds": time.time() - start}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "summary.json", summary)
    return summary


def run_all(args) -> list[dict]:
    rows, runs = [], runs_dir(args.episodes)
    wanted = set(args.searchers or [*searchers(args.episodes), *ablation(args.episodes), "tp_global"])
    budgets = [("flops", 0.5), ("flops", 0.25)] + ([("latency", 0.6)] if args.latency else [])
    for kind, value in budgets:
        seeds = args.seeds if kind == "flops" else args.seeds[:1]
        for seed in seeds:
            extra = ablation(args.episodes) if args.ablation and kind == "flops" else {}
            for label, searcher in {**searchers(args.episodes), **extra}.items():
                if kind == "latency" and label != "netadapt" or label not in wanted:
                    continue  # the latency budget: LUT-guided NetAdapt
                out = runs / f"{kind}{value}__{label}__{seed}"
                if not finished(out, searcher):
                    shutil.rmtree(out, ignore_errors=True)
                    budget = {kind: value, **({"lut": args.lut} if kind == "latency" else {})}
                    cfg = base_config([f"seed={seed}", f"ray.workers={args.workers}"], searcher=searcher,
                                      budget=budget)
                    run_search(cfg, out=out, progress=False)
                rows.append(_row(label, kind, value, seed, json.loads((out / "summary.json").read_text())))
            if kind == "flops" and "tp_global" in wanted:
                out = runs / f"{kind}{value}__tp_global__{seed}"
                s = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() \
                    else tp_global(value, seed, out)
                rows.append(_row("tp_global", kind, value, seed, s))
            print(f"done {kind}={value} seed {seed}", flush=True)
    return rows


def episode_table(args) -> list[str]:
    """Val accuracy (before FT) of the plans each episode-based searcher evaluated, by phase, over seeds."""
    import pandas as pd

    lines = ["Every evaluated plan, mean val accuracy before FT over all seeds (DDPG: warm-up episodes, then",
             "the learning episodes in thirds; random: its samples in thirds); best: mean over seeds of the best:", "",
             "| budget | searcher | warm-up | learning 1/3 | 2/3 | 3/3 | best |", "|---|---|---|---|---|---|---|"]
    labels = ["random", "ddpg"] + (["ddpg_fill"] if args.ablation else [])
    for budget in ("flops0.5", "flops0.25"):
        for label in labels:
            trials = [pd.read_parquet(p) for p in sorted(runs_dir(args.episodes).glob(f"{budget}__{label}__*/trials.parquet"))]
            if not trials:
                continue
            phases = [[], [], [], []]
            for t in trials:
                acc = t["val_accuracy"].to_numpy()
                warm = t["warmup"].to_numpy(bool) if "warmup" in t else np.zeros(len(t), bool)
                phases[0] += list(acc[warm])
                for k, part in enumerate(np.array_split(acc[~warm], 3)):
                    phases[k + 1] += list(part)
            cells = [f"{np.mean(v):.3f}" if v else "-" for v in phases]
            best = np.mean([t["val_accuracy"].max() for t in trials])
            lines.append(f"| {budget} | {label} | " + " | ".join(cells) + f" | {best:.4f} |")
    return lines


def ratio_table(args, top: int = 5) -> list[str]:
    """Where the best plans of the episode-based searchers keep their channels: per unit, the mean
    preserve ratio of each run's ``top`` plans by val accuracy, averaged over seeds."""
    import pandas as pd

    lines: list[str] = []
    for budget in ("flops0.5", "flops0.25"):
        means = {}
        for label in ["random", "ddpg"] + (["ddpg_fill"] if args.ablation else []):
            runs = sorted(runs_dir(args.episodes).glob(f"{budget}__{label}__*/trials.parquet"))
            tops = []
            for path in runs:
                t = pd.read_parquet(path)
                t = t[t["stage"].isna()] if "stage" in t else t
                cols = [c for c in t.columns if c.startswith("ratio/")]
                tops.append(t.nlargest(top, "val_accuracy")[cols].mean())
            if tops:
                means[label] = pd.concat(tops, axis=1).mean(axis=1)
        if not means:
            continue
        units = [c.split("/", 1)[1] for c in next(iter(means.values())).index]
        if not lines:
            lines = ["", f"Preserve ratio per unit of each run's {top} best plans (val before FT), mean over seeds:", "",
                     "| budget | searcher | " + " | ".join(units) + " |", "|---" * (len(units) + 2) + "|"]
        lines += [f"| {budget} | {label} | " + " | ".join(f"{v:.2f}" for v in m.values) + " |"
                  for label, m in means.items()]
    return lines


def _row(label: str, kind: str, value: float, seed: int, s: dict) -> dict:
    p = s["pruned"]
    return {"searcher": label, "budget": f"{kind}={value}", "seed": seed, "flops_kept": p["flops_kept"],
            "val_before": p["val_accuracy_before_finetune"], "test_after": p["test_accuracy_after_finetune"],
            "evaluations": s["evaluations"], "wall_s": s["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency", action="store_true", help="add a latency=0.6 budget (needs --lut)")
    parser.add_argument("--ablation", action="store_true", help="add ddpg_fill: DDPG with budget warm-up and fill")
    parser.add_argument("--lut", default=str(ROOT / "luts" / "search_quality_resnet20_b1_t1.json"))
    parser.add_argument("--searchers", nargs="+", default=None,
                        help="run only these (labels of the table, tp_global included); default: all")
    parser.add_argument("--out", default=None, help="results file name (default: search_quality[_e<N>]); give one "
                                                    "with --searchers, or the partial table replaces the full one")
    args = parser.parse_args()
    ensure_checkpoint()
    import pandas as pd

    if args.workers:  # one local Ray for all runs (the pools join it instead of starting their own)
        import os

        import ray

        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    df = pd.DataFrame(run_all(args))
    base = json.loads(next(runs_dir(args.episodes).glob("flops0.5__*/summary.json")).read_text())["base"]
    agg = df.groupby(["budget", "searcher"]).agg(["mean", "std"])
    lines = [f"base model: val {base['val_accuracy']:.4f}, test {base['test_accuracy']:.4f}", "",
             "| budget | searcher | kept FLOPs | val acc before FT | test acc after FT | evaluations | wall s |",
             "|---|---|---|---|---|---|---|"]
    for (budget, searcher), r in agg.iterrows():
        lines.append(f"| {budget} | {searcher} | {r[('flops_kept', 'mean')]:.3f} | "
                     f"{r[('val_before', 'mean')]:.4f} +- {np.nan_to_num(r[('val_before', 'std')]):.4f} | "
                     f"{r[('test_after', 'mean')]:.4f} +- {np.nan_to_num(r[('test_after', 'std')]):.4f} | "
                     f"{r[('evaluations', 'mean')]:.0f} | {r[('wall_s', 'mean')]:.0f} |")
    lines += ["", *episode_table(args), *ratio_table(args)]
    m = df.groupby(["budget", "searcher"]).mean(numeric_only=True)
    write_results(results_name(args), "\n".join(lines), {"rows": df.to_dict("records"), "base": base},
                  targets(m, base, [s for s in searchers(args.episodes)]),
                  "python -m benchmarks.search_quality " + " ".join(
                      [f"--seeds {' '.join(map(str, args.seeds))}", f"--episodes {args.episodes}",
                       f"--workers {args.workers}"] + (["--latency"] if args.latency else [])
                      + (["--ablation"] if args.ablation else [])
                      + ([f"--searchers {' '.join(args.searchers)}"] if args.searchers else [])
                      + ([f"--out {args.out}"] if args.out else [])))


def results_name(args) -> str:
    if getattr(args, "out", None):
        return args.out
    return "search_quality" if args.episodes == 100 else f"search_quality_e{args.episodes}"


def targets(m, base: dict, ours: list[str]) -> list[dict]:
    """The targets the rows in ``m`` (mean per budget and searcher) can answer; a subset of searchers
    (``--searchers``) gives a subset of targets."""
    budgets = ("flops=0.5", "flops=0.25")
    have = {b: set(m.loc[b].index) if b in m.index.get_level_values(0) else set() for b in budgets}
    out, best_test = [], {}
    if all(have.values()):
        present = {b: [s for s in ours if s in have[b]] for b in budgets}
        best_test = {b: m.loc[b].loc[present[b], "test_after"].max() for b in budgets if present[b]}
        b25 = m.loc["flops=0.25"]
        if "uniform" in have["flops=0.25"] and present["flops=0.25"]:
            best25 = b25.loc[present["flops=0.25"], "val_before"].max()
            out.append(target("best searcher vs uniform, val before FT at 25% FLOPs", ">= +3 points",
                              round(float(100 * (best25 - b25.loc["uniform", "val_before"])), 2),
                              best25 >= b25.loc["uniform", "val_before"] + 0.03))
    if all({"ddpg", "random"} <= have[b] for b in budgets):
        out.append(target("DDPG vs random at equal evaluations (val before FT, both budgets)", "ddpg >= random",
                          {b: [round(float(m.loc[b].loc["ddpg", "val_before"]), 4),
                               round(float(m.loc[b].loc["random", "val_before"]), 4)] for b in budgets},
                          all(m.loc[b].loc["ddpg", "val_before"] >= m.loc[b].loc["random", "val_before"]
                              for b in budgets)))
    if all(have.values()) and "flops=0.5" in best_test:
        best50_test = best_test["flops=0.5"]
        out.append(target("after FT within 0.5 points of base at 50% FLOPs", ">= base - 0.005",
                          [round(float(best50_test), 4), round(base["test_accuracy"], 4)],
                          best50_test >= base["test_accuracy"] - 0.005))
    if all("tp_global" in have[b] for b in budgets) and len(best_test) == 2:
        out.append(target("best autoprune >= Torch-Pruning global after FT", ">= tp_global",
                          {b: [round(float(best_test[b]), 4), round(float(m.loc[b].loc["tp_global", "test_after"]), 4)]
                           for b in best_test},
                          all(best_test[b] >= m.loc[b].loc["tp_global", "test_after"] for b in best_test)))
    return out


if __name__ == "__main__":
    main()
