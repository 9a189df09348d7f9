"""Evaluation throughput: plan evaluations per second with workers 0, 1 and 2.

Evaluates the same 16 random plans (ResNet-20 on 3x32x32 MNIST-5k, the search_quality base)
in-process (workers 0, 2 torch threads) and on a local Ray pool of 1 and 2 actors (1 thread
each), through ``evaluate_many``. Overhead = 1 - forward time / evaluation time, where forward
time is adaptive-BN + scoring and the rest is pruning (copy, dependency graph, channel removal).

    python -m benchmarks.throughput [--plans 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from autoprune.pipeline.pool import RayEvaluatorPool
from autoprune.pipeline.session import prepare
from benchmarks.common import base_config, ensure_checkpoint, target, write_results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plans", type=int, default=16)
    args = parser.parse_args()
    ensure_checkpoint()
    session = prepare(base_config(), progress=False)
    ctx = session.context(None, None, None, False)
    rng = np.random.default_rng(0)
    plans = [ctx.plan_from_ratios(ctx.fit_to_budget(rng.uniform(0.2, 1.0, len(session.graph))))
             for _ in range(args.plans)]
    rows = []
    for workers in (0, 1, 2):
        if workers == 0:
            ev = session.evaluator()
        else:
            c = session.cfg
            ev = RayEvaluatorPool(session.model, session.graph, session.data, c.evaluation, c.pruning, c.train,
                                  c.finetune, c.seed, workers=workers)
            ev.evaluate_many(plans[:workers])  # warm the actors up
            ev.cache.clear()
        start = time.perf_counter()
        results = ev.evaluate_many(plans)
        wall = time.perf_counter() - start
        if workers:
            ev.close()
        evals = sum(not r.cached for r in results)
        fwd, tot = sum(r.forward_seconds for r in results), sum(r.seconds for r in results)
        rows.append({"workers": workers, "plans": evals, "wall_s": wall, "evals_per_s": evals / wall,
                     "overhead": 1 - fwd / tot, "accuracies": [r.accuracy for r in results]})
    one, two = rows[1]["evals_per_s"], rows[2]["evals_per_s"]
    same = rows[0]["accuracies"] == rows[1]["accuracies"] == rows[2]["accuracies"]
    table = ["| workers | plans | wall s | evaluations/s | overhead |", "|---|---|---|---|---|"]
    table += [f"| {r['workers']} | {r['plans']} | {r['wall_s']:.1f} | {r['evals_per_s']:.2f} | {r['overhead']:.1%} |"
              for r in rows]
    table.append(f"\nsame accuracies for every worker count: {same}")
    targets = [target("2 workers vs 1", ">= 1.8x", round(two / one, 2), two / one >= 1.8),
               target("overhead (workers 0)", "<= 20%", f"{rows[0]['overhead']:.1%}", rows[0]["overhead"] <= 0.20)]
    write_results("throughput", "\n".join(table), {"rows": rows, "identical_accuracies": same}, targets,
                  f"python -m benchmarks.throughput --plans {args.plans}")


if __name__ == "__main__":
    main()
