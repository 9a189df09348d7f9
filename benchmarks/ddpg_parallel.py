"""DDPG with parallel episodes: search wall time in-process vs on a 2-actor Ray pool.

ResNet-20 base of search_quality, FLOPs budget 0.5, DDPG with ``episodes`` episodes: (a)
``workers: 0``, one episode at a time; (b) ``workers: 2``, ``parallel_episodes: 2`` (two envs in
lock-step, their plans scored together by ``evaluate_many``). Times the search only (Ray start-up
excluded: Ray is started before the clock).

    python -m benchmarks.ddpg_parallel [--episodes 24]
"""

from __future__ import annotations

import argparse
import os
import time

from autoprune.pipeline.session import prepare
from autoprune.search.records import TrialRecorder
from benchmarks.common import base_config, ensure_checkpoint, target, write_results


def timed_search(workers: int, parallel: int, episodes: int) -> tuple[float, float]:
    cfg = base_config([f"ray.workers={workers}"], searcher={
        "name": "ddpg", "episodes": episodes, "warmup": episodes // 3 // 2 * 2, "parallel_episodes": parallel})
    session = prepare(cfg, progress=False)
    evaluator = session.evaluator()
    ctx = session.context(evaluator, TrialRecorder(None), None, False, progress=False)
    start = time.perf_counter()
    plan = session.searcher_cls(ctx, session.searcher_options).search()
    wall = time.perf_counter() - start
    if hasattr(evaluator, "close"):
        evaluator.close()
    return wall, plan.meta["val_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=24)
    args = parser.parse_args()
    ensure_checkpoint()
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serial = timed_search(0, 1, args.episodes)
    parallel = timed_search(2, 2, args.episodes)
    speedup = serial[0] / parallel[0]
    table = ("| setting | search wall s | best val acc |\n|---|---|---|\n"
             f"| workers 0, parallel_episodes 1 | {serial[0]:.0f} | {serial[1]:.4f} |\n"
             f"| workers 2, parallel_episodes 2 | {parallel[0]:.0f} | {parallel[1]:.4f} |")
    write_results("ddpg_parallel", table, {"serial_s": serial[0], "parallel_s": parallel[0], "speedup": speedup},
                  [target("DDPG parallel episodes speed-up (2 workers)", "> 1 (informative)", round(speedup, 2),
                          speedup > 1)],
                  f"python -m benchmarks.ddpg_parallel --episodes {args.episodes}")


if __name__ == "__main__":
    main()
