"""Baseline searchers: ``uniform`` (one ratio for every unit), ``random`` (random search) and ``global``
(one threshold on channel scores across all units, Torch-Pruning's global pruning as a plan)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from autoprune.config import PruningConfig
from autoprune.core.criteria import CRITERIA, Criterion, get_criterion
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import channel_scores
from autoprune.errors import ConfigError
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


NORMALIZERS = {
    "mean": lambda s: s / s.mean(),
    "max": lambda s: s / s.max(),
    "sum": lambda s: s / s.sum(),
    "none": lambda s: s,
}
"""How ``global`` puts one unit's channel scores on a scale shared by all units (Torch-Pruning's
global pruning divides by the group's mean by default)."""


@register_searcher
class GlobalSearcher(Searcher):
    """Global ranking: one score threshold across every unit, the lowest whose plan meets the budget.

    Each unit's channels are scored by a criterion that needs no data (``criterion`` here, else
    ``pruning.criterion``), the scores divided by the unit's mean (``normalizer``), and every channel
    scoring below the threshold is cut, each unit kept within ``[min_ratio, max_ratio]`` and rounded
    like any plan. The peer a pruning practitioner reaches for first (Torch-Pruning's
    ``MetaPruner(global_pruning=True)``), here as a plan: the same units, budget, fine-tune and export
    as every searcher. One evaluation.
    """

    name = "global"

    @dataclass
    class Options:
        normalizer: str = "mean"
        """``mean`` | ``max`` | ``sum`` | ``none``: what each unit's scores are divided by before ranking."""
        criterion: str | None = None
        """The criterion that scores channels (default ``pruning.criterion``); it must need no data."""

        def validate(self) -> None:
            if self.normalizer not in NORMALIZERS:
                raise ConfigError(f"searcher.normalizer must be one of {', '.join(NORMALIZERS)} "
                                  f"(got {self.normalizer!r})")
            if self.criterion is not None and self.criterion not in CRITERIA:
                raise ConfigError(f"searcher.criterion {self.criterion!r} is not a criterion; known: "
                                  f"{', '.join(CRITERIA)}")

    @classmethod
    def check(cls, options: Options, pruning: PruningConfig) -> None:
        cls.criterion(options, pruning)

    @staticmethod
    def criterion(options: Options, pruning: PruningConfig) -> Criterion:
        """The criterion that ranks channels; one that needs data is refused (ranking gets none)."""
        name = options.criterion or pruning.criterion
        criterion = get_criterion(dataclasses.replace(pruning, criterion=name))
        if criterion.needs_data:
            raise ConfigError(f"searcher global ranks channels without data; criterion {name!r} needs calibration "
                              "batches: set searcher.criterion: l1 (or l2, lp, bn_scale)")
        return criterion

    def search(self) -> PruningPlan:
        ctx = self.ctx
        plan = PruningPlan.from_counts(ctx.graph, self.counts(), searcher=self.name)
        if ctx.recorder.rows:  # resumed: the single evaluation is already on record
            plan.meta.update(ctx.describe(plan), val_accuracy=ctx.recorder.rows[-1]["val_accuracy"])
            return plan
        ctx.record(plan, ctx.evaluate(plan))
        return plan

    def scores(self) -> list[np.ndarray]:
        """Per unit, its normalised channel scores (units of equal blocks: per position, each block alike)."""
        ctx = self.ctx
        raw = channel_scores(ctx.graph.model, ctx.graph, self.criterion(self.options, ctx.pruning))
        out = []
        for unit in ctx.graph.units:
            s = raw[unit.name].double().view(unit.blocks, -1).mean(0).numpy()
            out.append(np.nan_to_num(NORMALIZERS[self.options.normalizer](np.abs(s) + 1e-12)))
        return out

    def counts(self) -> list[int]:
        """The counts at the lowest threshold that meets the budget (every unit at its least if none does)."""
        ctx, fitter = self.ctx, self.ctx.fitter
        scores = self.scores()
        ranked = [np.sort(s)[::-1] for s in scores]

        def at(threshold: float) -> list[int]:
            counts = []
            for unit, s, cand in zip(ctx.graph.units, ranked, fitter.candidates, strict=True):
                want = int(np.searchsorted(-s, -threshold, side="right")) * unit.blocks  # scores >= threshold
                counts.append(int(cand[min(np.searchsorted(cand, want), len(cand) - 1)]))
            return counts

        thresholds = np.unique(np.concatenate(scores))  # ascending: more channels kept first
        lo, hi = 0, len(thresholds)  # the first index whose plan fits is in [lo, hi]; hi: none
        while lo < hi:
            mid = (lo + hi) // 2
            if ctx.budget.fits(at(float(thresholds[mid]))):
                hi = mid
            else:
                lo = mid + 1
        return at(float(thresholds[lo])) if lo < len(thresholds) else list(fitter.min_counts)
