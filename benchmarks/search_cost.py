"""Search cost: wall time and peak memory of a 300-episode DDPG search on ResNet-56 (2 cores).

ResNet-56 on 3x32x32 MNIST-5k (untrained weights: the cost of a search does not depend on them),
FLOPs budget 0.5, AMC's DDPG defaults except the episode count (300, warm-up 100), evaluation
with 5 adaptive-BN batches of 64 and 500 search-validation images, in-process (workers 0).
Peak memory is the process's maximum resident set size.

    python -m benchmarks.search_cost [--episodes 300]
"""

from __future__ import annotations

import argparse
import resource
import time

from autoprune.pipeline.session import prepare
from autoprune.search.records import TrialRecorder
from benchmarks.common import base_config, target, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    cfg = base_config(
        [f"searcher.episodes={args.episodes}", f"searcher.warmup={args.warmup}", "train.epochs=0"],
        model={"name": "resnet56"}, searcher={"name": "ddpg"},
        evaluation={"adaptive_bn_batches": 5, "batch_size": 256, "score_samples": 500},
    )
    start = time.perf_counter()
    session = prepare(cfg, progress=False)
    ctx = session.context(session.evaluator(), TrialRecorder(None), None, False, progress=False)
    plan = session.searcher_cls(ctx, session.searcher_options).search()
    wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows = ctx.recorder.rows
    eval_s = sum(r["seconds"] for r in rows)
    data = {"episodes": len(rows), "wall_s": wall, "peak_rss_gib": peak_gib, "evaluation_s": eval_s,
            "units": len(session.graph), "best_flops_kept": plan.meta.get("flops_kept")}
    table = ("| episodes | units | wall s | of which plan evaluation s | peak RSS GiB |\n|---|---|---|---|---|\n"
             f"| {len(rows)} | {len(session.graph)} | {wall:.0f} | {eval_s:.0f} | {peak_gib:.2f} |")
    targets = [target("wall time", "<= 600 s", round(wall), wall <= 600),
               target("peak memory", "<= 2 GiB", round(peak_gib, 2), peak_gib <= 2)]
    write_results("search_cost", table, data, targets,
                  f"python -m benchmarks.search_cost --episodes {args.episodes} --warmup {args.warmup}")


if __name__ == "__main__":
    main()
