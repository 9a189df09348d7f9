"""Is a searcher's best proxy score real? Its top plans re-scored on images the search never saw.

Searchers pick plans by the proxy (adaptive BN, accuracy on the 1000 validation images); the best of
hundreds of noisy scores is biased upwards, the more so for a searcher that samples many similar plans
or climbs around one (``explore_best``). Here each run's top ``--top`` distinct plans by the proxy are
pruned, BN re-estimated the same way, and scored on the **test** split (1000 other images, never used
by any search), no fine-tune. Reported per searcher and budget: the best plan's proxy and held-out
accuracy, and the means over the top plans, mean over seeds.

    python -m benchmarks.proxy_holdout [--episodes 400] [--runs random=search_quality_e400/{budget}__random__{seed} ...]

Default runs: ``search_quality``'s random and ddpg runs at ``--episodes`` and the ddpg runs of the
default before ``explore_best`` (``ddpg_prev``; run that benchmark first).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from autoprune.core.plan import PruningPlan
from autoprune.core.train import dataset_accuracy
from autoprune.pipeline.session import prepare
from benchmarks.common import ROOT, base_config, ensure_checkpoint, target, write_results


def default_runs(episodes: int) -> dict[str, str]:
    """``search_quality``'s random and ddpg runs at ``episodes``, and its ``ddpg_prev`` runs: the ddpg runs
    of the default before ``explore_best`` (moved aside when the default changed, 2026-12-05)."""
    quality = "search_quality" if episodes == 100 else f"search_quality_e{episodes}"
    return {"random": f"{quality}/{{budget}}__random__{{seed}}",
            "ddpg (explore_best 0.5, the default)": f"{quality}/{{budget}}__ddpg__{{seed}}",
            "ddpg before explore_best": f"{quality}/{{budget}}__ddpg_prev__{{seed}}"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--runs", nargs="+", default=None, help="label=path under benchmarks/runs with {budget} and {seed}")
    parser.add_argument("--out", default="proxy_holdout")
    args = parser.parse_args()
    runs = dict(r.split("=", 1) for r in args.runs) if args.runs else default_runs(args.episodes)
    ensure_checkpoint()
    rows = []
    for budget in args.budgets:
        for seed in args.seeds:
            session = prepare(base_config([f"seed={seed}"], budget={"flops": budget}, searcher={"name": "uniform"}),
                              progress=False)
            for label, pattern in runs.items():
                t = pd.read_parquet(ROOT / "runs" / pattern.format(budget=f"flops{budget}", seed=seed) / "trials.parquet")
                channels = [c for c in t.columns if c.startswith("channels/")]
                top = t.drop_duplicates(channels).sort_values("val_accuracy", ascending=False).head(args.top)
                for rank, (_, r) in enumerate(top.iterrows()):
                    plan = PruningPlan.from_counts(session.graph, {c.split("/", 1)[1]: int(r[c]) for c in channels})
                    evaluator = session.evaluator()
                    pruned = evaluator.prune(plan)
                    proxy = evaluator.score(pruned)  # adaptive BN in place, as the search scored it
                    rows.append({"budget": budget, "seed": seed, "searcher": label, "rank": rank, "proxy": float(proxy),
                                 "held_out": float(dataset_accuracy(pruned, session.data.test))})
            print(f"done flops={budget} seed {seed}", flush=True)
    df = pd.DataFrame(rows)
    lines = [f"ResNet-20 task of `search_quality`, {args.episodes} evaluations per search, seeds {args.seeds}: each "
             f"run's top {args.top} distinct plans by the proxy (val, 1000 images) re-scored on the test split "
             "(1000 images no search saw; adaptive BN the same way, no fine-tune). Mean over seeds.", "",
             "| FLOPs | searcher | best plan: proxy | best plan: held-out | top plans: proxy | top plans: held-out |",
             "|---|---|---|---|---|---|"]
    summary = []
    for (budget, label), g in df.groupby(["budget", "searcher"], sort=False):
        best = g[g["rank"] == 0]
        summary.append({"budget": budget, "searcher": label, "best_proxy": best["proxy"].mean(),
                        "best_held_out": best["held_out"].mean(), "top_proxy": g["proxy"].mean(),
                        "top_held_out": g["held_out"].mean(), "best_held_out_per_seed": best["held_out"].tolist()})
        s = summary[-1]
        lines.append(f"| {budget} | {label} | {s['best_proxy']:.4f} | {s['best_held_out']:.4f} | {s['top_proxy']:.4f} | "
                     f"{s['top_held_out']:.4f} |")
    targets = []
    for budget in args.budgets:
        got = {s["searcher"]: round(float(s["best_held_out"]), 4) for s in summary if s["budget"] == budget}
        rand, first = got.get("random"), next((k for k in runs if k != "random"), None)
        if rand is not None and first in got:  # the first searcher named after random (the default: ddpg)
            targets.append(target(f"held-out accuracy of the best plan at {budget:.0%} FLOPs: {first} vs random",
                                  ">= random", {"random": rand, first: got[first]}, got[first] >= rand))
    write_results(args.out, "\n".join(lines), {"rows": rows, "summary": summary}, targets,
                  f"python -m benchmarks.proxy_holdout --episodes {args.episodes}")
    print(np.round(df.groupby(["budget", "searcher"])[["proxy", "held_out"]].mean(), 4))


if __name__ == "__main__":
    main()
