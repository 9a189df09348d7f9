"""Baseline searchers: ``uniform`` (one ratio for every unit) and ``random`` (random search)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from autoprune.core.plan import PruningPlan
from autoprune.search.base import Searcher, best_of, plan_from_row, positive, register_searcher

log = logging.getLogger(__name__)


@register_searcher
class UniformSearcher(Searcher):
    """The largest single preserve ratio, shared by every unit, that meets the budget."""

    name = "uniform"

    @dataclass
    class Options:
        iterations: int = 40
        """Bisection steps on the shared ratio."""

    def search(self) -> PruningPlan:
        ctx = self.ctx
        n = len(ctx.graph)
        ratios = ctx.fit_to_budget(np.full(n, ctx.pruning.max_ratio), self.options.iterations)
        plan = ctx.plan_from_ratios(ratios, searcher=self.name)
        if ctx.recorder.rows:  # resumed: the single evaluation is already on record
            return self._annotated(plan, ctx.recorder.rows[-1]["val_accuracy"])
        result = ctx.evaluate(plan)
        ctx.record(plan, result)
        return plan

    def _annotated(self, plan: PruningPlan, acc: float) -> PruningPlan:
        plan.meta.update(self.ctx.describe(plan), val_accuracy=acc)
        return plan


@register_searcher
class RandomSearcher(Searcher):
    """Random per-unit ratios in ``[min_ratio, max_ratio]``, scaled to meet the budget; best of N.

    Each sample draws one ratio per unit uniformly, then scales the vector by the largest factor
    that meets the budget (up or down) (so every plan uses the budget fully). The sample sequence depends only
    on the seed, so a resumed search skips the samples already on record.
    """

    name = "random"

    @dataclass
    class Options:
        evaluations: int = 50
        """Number of plans to evaluate."""

        def validate(self) -> None:
            positive("evaluations", self.evaluations)

    def search(self) -> PruningPlan:
        ctx = self.ctx
        rng = np.random.default_rng(ctx.seed)
        lo, hi = ctx.pruning.min_ratio, ctx.pruning.max_ratio
        done = len(ctx.recorder.rows)
        bar = tqdm(total=self.options.evaluations, initial=done, desc="random search", unit="plan",
                   disable=not ctx.progress or None)
        samples = [ctx.fit_to_budget(rng.uniform(lo, hi, size=len(ctx.graph)))
                   for _ in range(self.options.evaluations)]
        batch = 2 * getattr(ctx.evaluator, "workers", 0) or 1  # a Ray pool evaluates a batch in parallel
        for start in range(done, self.options.evaluations, batch):
            idx = range(start, min(start + batch, self.options.evaluations))
            plans = [ctx.plan_from_ratios(samples[i], searcher=self.name) for i in idx]
            for i, plan, result in zip(idx, plans, ctx.evaluate_many(plans), strict=True):
                row = ctx.record(plan, result, sample=i)
                bar.update(1)
                bar.set_postfix(best=f"{best_of(ctx.recorder.rows)['val_accuracy']:.3f}",
                                acc=f"{row['val_accuracy']:.3f}")
        bar.close()
        best = best_of(ctx.recorder.rows)
        plan = plan_from_row(ctx.graph, best)
        plan.meta.update(ctx.describe(plan), val_accuracy=best["val_accuracy"], searcher=self.name)
        return plan
