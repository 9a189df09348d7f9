"""Sensitivity analysis and the ``sensitivity`` searcher.

Analysis (Han et al. 2015; the lectures' Lab 1): prune one unit at a time to each preserve
ratio in a grid, leave every other unit whole, and score the model (adaptive BN + val accuracy).

Searcher: from the curves, a unit's ratio for an allowed accuracy drop ``t`` is the smallest grid
ratio whose drop is at most ``t`` (1.0 when none is). Larger ``t`` prunes more, so the cost falls
as ``t`` grows; ``t`` is found by binary search as the smallest drop whose plan meets the budget.
With ``scale_to_budget`` the plan is then scaled (all ratios by one factor, see
``SearchContext.fit_to_budget``) to use the budget fully.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from autoprune.core.plan import PruningPlan
from autoprune.errors import ConfigError
from autoprune.search.base import SearchContext, Searcher, positive, register_searcher
from autoprune.search.evaluate import EvalResult

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def check_ratios(ratios: Sequence[float], what: str = "ratios") -> list[float]:
    values = sorted({float(r) for r in ratios})
    if not values or any(not 0 < r <= 1 for r in values):
        raise ConfigError(f"{what} must be preserve ratios in (0, 1], e.g. 0.1,0.5,0.9 (got {list(ratios)})")
    return values


def analyse(ctx: SearchContext, ratios: Sequence[float], record: bool = True) -> list[dict]:
    """One row per (unit, ratio): ``unit``, ``ratio``, ``channels``, ``val_accuracy`` and costs.

    Rows already in ``ctx.recorder`` (a resumed search) are reused, not re-evaluated.
    """
    done = {(r.get("unit"), float(r.get("ratio", np.nan))): r for r in ctx.recorder.rows if r.get("unit")}
    rows = []
    bar = tqdm(total=len(ctx.graph) * len(ratios), desc="sensitivity", unit="plan", disable=not ctx.progress or None)
    for unit in ctx.graph.units:
        plans = {ratio: ctx.plan_from_ratios([ratio if u.name == unit.name else 1.0 for u in ctx.graph.units])
                 for ratio in ratios}
        todo = [r for r in ratios if (unit.name, r) not in done]
        # one unit's ratios are independent: a Ray pool scores them in parallel
        results: dict[float, EvalResult] = dict(zip(todo, ctx.evaluate_many([plans[r] for r in todo]), strict=True))
        for ratio in ratios:
            plan = plans[ratio]
            if (unit.name, ratio) in done:
                row = done[(unit.name, ratio)]
            elif record:
                row = ctx.record(plan, results[ratio], unit=unit.name, ratio=ratio)
            else:
                row = {**ctx.describe(plan), "val_accuracy": results[ratio].accuracy, "unit": unit.name,
                       "ratio": ratio}
            rows.append({"unit": unit.name, "ratio": ratio, "channels": plan.channels[unit.name],
                         "val_accuracy": float(row["val_accuracy"]),
                         **{k: float(row[k]) for k in ctx.describe(plan)}})
            bar.update(1)
    bar.close()
    return rows


def ratios_for_drop(curves: dict[str, dict[float, float]], base: float, drop: float) -> dict[str, float]:
    """Per unit: the smallest grid ratio whose accuracy drop is at most ``drop`` (else 1.0)."""
    out = {}
    for unit, curve in curves.items():
        ok = [r for r, acc in curve.items() if base - acc <= drop]
        out[unit] = min(ok) if ok else 1.0
    return out


@register_searcher
class SensitivitySearcher(Searcher):
    """Per-unit ratios from an accuracy-drop threshold found by binary search on the budget."""

    name = "sensitivity"

    @dataclass
    class Options:
        ratios: list[float] | None = None
        """Preserve-ratio grid of the analysis (default 0.1..0.9 within [min_ratio, max_ratio])."""
        iterations: int = 40
        """Bisection steps on the accuracy-drop threshold."""
        scale_to_budget: bool = True
        """Scale the threshold plan (all ratios by one factor) to use the budget fully."""

        def validate(self) -> None:
            positive("iterations", self.iterations)
            if self.ratios is not None:
                check_ratios(self.ratios, "searcher.ratios")

    def grid(self) -> list[float]:
        lo, hi = self.ctx.pruning.min_ratio, self.ctx.pruning.max_ratio
        ratios = [r for r in (self.options.ratios or DEFAULT_RATIOS) if lo <= r <= hi]
        if not ratios:
            raise ConfigError(f"searcher.ratios has no ratio within pruning.min_ratio..max_ratio ({lo}..{hi})")
        return check_ratios(ratios)

    def search(self) -> PruningPlan:
        ctx = self.ctx
        base = ctx.evaluator.base_accuracy() if hasattr(ctx.evaluator, "base_accuracy") else 1.0
        rows = analyse(ctx, self.grid())
        curves: dict[str, dict[float, float]] = {}
        for row in rows:
            curves.setdefault(row["unit"], {})[row["ratio"]] = row["val_accuracy"]
        drop = self.threshold(curves, base)
        ratios = ratios_for_drop(curves, base, drop)
        vector = ctx.clip([ratios[n] for n in ctx.graph.names])
        if self.options.scale_to_budget or not ctx.budget.fits(ctx.counts(vector)):
            vector = ctx.fit_to_budget(vector, self.options.iterations)
        plan = ctx.plan_from_ratios(vector, searcher=self.name, threshold=drop, base_accuracy=base)
        ctx.record(plan, ctx.evaluate(plan), unit="", ratio=np.nan, threshold=drop)
        log.info("sensitivity: accuracy-drop threshold %.4f", drop)
        return plan

    def threshold(self, curves: dict[str, dict[float, float]], base: float) -> float:
        """Smallest accuracy drop whose plan meets the budget (bisection)."""
        ctx = self.ctx

        def fits(drop: float) -> bool:
            r = ratios_for_drop(curves, base, drop)
            return ctx.budget.fits(ctx.counts(ctx.clip([r[n] for n in ctx.graph.names])))

        lo, hi = 0.0, max(base - min(min(c.values()) for c in curves.values()), 0.0) + 1e-9
        if fits(lo):
            return lo
        if not fits(hi):
            return hi  # even the smallest grid ratios miss the budget: fit_to_budget scales down
        for _ in range(self.options.iterations):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if fits(mid) else (mid, hi)
        return hi
