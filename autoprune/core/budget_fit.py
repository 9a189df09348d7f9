"""Fitting channel-count vectors to a budget: the arithmetic the searchers and the AMC env share.

Every function prices whole count vectors with the budget's own cost model (``budget.fits``), so it
works for any budget kind (FLOPs, params, latency from a LUT) without a special case. FLOPs and params
grow with every count, and bisection finds the largest plan that fits. A latency LUT's prediction does
not: a runtime whose kernels favour multiples of 4, 8 or 16 channels can run a wider layer faster
(measured: a ConvNeXt-style model in ONNX Runtime at 0.50 of its FLOPs ran at 1.6x the unpruned model's
latency, at 0.45 of its FLOPs at 0.93x). A cost model with ``monotone = False`` gets a scan before the
bisection (:attr:`BudgetFitter.scan` factors) and a look past the bisection's count in :meth:`fill`
(the multiples of 4 within :attr:`BudgetFitter.window` channels), so the plan found is the largest on that grid, not the
first crossing bisection met. Ratios are preserve ratios clipped to ``[min_ratio, max_ratio]`` and
resolved to counts rounded to ``round_to`` (:func:`~autoprune.core.plan.resolve_count`).

- :meth:`BudgetFitter.scaled` / :meth:`~BudgetFitter.largest_factor`: scale a ratio vector by the
  largest factor whose plan meets the budget, so the plan keeps its shape (which units are pruned
  harder) and uses the budget (the ``random`` searcher's draws, the env's end-of-episode fit);
- :meth:`~BudgetFitter.fill`: give what rounding leaves to single units, last unit first;
- :meth:`~BudgetFitter.repair` / :meth:`~BudgetFitter.fit`: the two together;
- :meth:`~BudgetFitter.wall`: AMC's action wall (and the env's lower wall);
- :meth:`~BudgetFitter.fair_share`: the ratio the units still to decide can all keep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autoprune.core.cost import Budget
from autoprune.core.graph import LayerSpec, UnitGraph
from autoprune.core.plan import resolve_count


class BudgetFitter:
    """Budget arithmetic over one graph's units (in graph order) and one budget.

    :param graph: the units, in the order count vectors list them.
    :param budget: the budget to meet.
    :param min_ratio: smallest preserve ratio of a unit.
    :param max_ratio: largest preserve ratio of a unit.
    :param round_to: kept channel counts are rounded to a multiple of this.
    """

    scan = 64
    """Factors tried, from the largest down, before bisecting, when the cost is not monotone (on a
    ConvNeXt-style model's ONNX Runtime LUT, 30 random plans at 0.65 of the latency: 64 found a larger
    plan than bisection alone for 18, 32 for 3)."""
    window = 16
    """Channels above the bisection's count within which :meth:`fill` tries the multiples of 4, when the cost
    is not monotone (at most 4 more lookups a unit)."""

    def __init__(self, graph: UnitGraph, budget: Budget, min_ratio: float, max_ratio: float,
                 round_to: int = 1) -> None:
        self.graph, self.budget = graph, budget
        self.monotone = bool(getattr(budget.cost, "monotone", True))
        """Whether cost grows with every count (FLOPs, params); a LUT's latency need not."""
        self.units = list(graph.units)
        self.min_ratio, self.max_ratio, self.round_to = float(min_ratio), float(max_ratio), int(round_to)
        self.min_counts = self.counts([self.min_ratio] * len(self.units))
        self.max_counts = self.counts([self.max_ratio] * len(self.units))
        self.candidates = [self._candidate_counts(u) for u in self.units]
        """Per unit, every count a ratio in the range can resolve to, ascending."""

    def _candidate_counts(self, unit: LayerSpec) -> np.ndarray:
        channels, step = unit.out_channels, unit.step(self.round_to)
        lo = resolve_count(self.min_ratio, channels, step)
        hi = resolve_count(self.max_ratio, channels, step)
        found = {resolve_count(k / channels, channels, step) for k in range(lo, hi + 1)}
        return np.array(sorted(c for c in found | {lo, hi} if lo <= c <= hi), dtype=np.int64)

    # ------------------------------------------------------------------------ ratio vectors
    def counts(self, ratios: Sequence[float], start: int = 0) -> list[int]:
        """The counts of ``ratios`` (units ``start`` onwards), rounded but not clipped."""
        return [resolve_count(float(r), u.out_channels, u.step(self.round_to))
                for r, u in zip(ratios, self.units[start:], strict=True)]

    def ratios_of(self, counts: Sequence[int]) -> np.ndarray:
        return np.array([c / u.out_channels for c, u in zip(counts, self.units, strict=True)], dtype=np.float64)

    def clip(self, ratios: Sequence[float] | np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(ratios, dtype=np.float64), self.min_ratio, self.max_ratio)

    def scaled(self, ratios: np.ndarray, factor: float, floor: Sequence[int] | None = None) -> list[int]:
        """The counts of ``ratios * factor``, clipped to the ratio range and rounded (never below
        ``floor`` when given)."""
        counts = self.counts(self.clip(ratios * factor))
        return counts if floor is None else [max(int(f), c) for f, c in zip(floor, counts, strict=True)]

    def largest_factor(self, ratios: np.ndarray, lo: float, hi: float, iters: int = 40,
                       floor: Sequence[int] | None = None) -> float:
        """The largest factor in [lo, hi] whose scaled plan meets the budget (``lo`` fits): bisection;
        for a cost that is not monotone also a scan of :attr:`scan` factors from ``hi`` down, then
        bisection between the largest factor that fits on that grid and the next, and the larger of the
        two answers (never below bisection's alone)."""
        if self.monotone or hi <= lo:
            return self._bisect(ratios, lo, hi, iters, floor)
        grid = np.linspace(lo, hi, self.scan + 1)
        for k in range(self.scan, 0, -1):
            if self.budget.fits(self.scaled(ratios, float(grid[k]), floor)):
                if k == self.scan:
                    return float(hi)
                # within one step of the grid, 2**-16 of it is finer than a channel
                scanned = self._bisect(ratios, float(grid[k]), float(grid[k + 1]), min(iters, 16), floor)
                break
        else:
            scanned = self._bisect(ratios, lo, float(grid[1]), min(iters, 16), floor)
        return max(scanned, self._bisect(ratios, lo, hi, iters, floor))

    def _bisect(self, ratios: np.ndarray, lo: float, hi: float, iters: int, floor: Sequence[int] | None) -> float:
        for _ in range(iters):
            mid = (lo + hi) / 2
            if self.budget.fits(self.scaled(ratios, mid, floor)):
                lo = mid
            else:
                hi = mid
        return lo

    # ------------------------------------------------------------------------ count vectors
    def fill(self, counts: Sequence[int]) -> list[int]:
        """Rounding leaves a remainder no uniform factor can use: last unit first, raise each count to
        the largest candidate that fits (earlier units only grow after it, so none can grow after).
        ``counts`` must meet the budget."""
        best = list(counts)
        for t in reversed(range(len(self.units))):
            cand = self.candidates[t]
            i = int(np.searchsorted(cand, best[t]))

            def fits(j: int, t: int = t, cand: np.ndarray = cand) -> bool:
                return self.budget.fits(best[:t] + [int(cand[j])] + best[t + 1:])

            if i < len(cand) and fits(i):  # cand[i] is the count itself or, off the grid, the next one up
                j = last_true(i, len(cand), fits)
                if not self.monotone:  # a wider count can cost less: look past the bisection's, at aligned counts
                    ahead = [k for k in range(j + 1, len(cand)) if cand[k] <= cand[j] + self.window and cand[k] % 4 == 0]
                    j = max((k for k in ahead if fits(k)), default=j)
                best[t] = max(best[t], int(cand[j]))
        return best

    def repair(self, counts: Sequence[int], iters: int = 40) -> list[int]:
        """Scale the ratio vector of ``counts`` up by the largest factor whose clipped, rounded plan
        meets the budget, then :meth:`fill`. Never shrinks a count; the result meets the budget (given
        ``counts`` that do) and no unit of it can grow by one candidate count."""
        ratios = self.ratios_of(counts)
        lo, hi = 1.0, self.max_ratio / max(float(ratios.min()), 1e-6)
        if hi > lo and self.budget.fits(self.scaled(ratios, hi, counts)):
            lo = hi
        elif hi > lo:
            lo = self.largest_factor(ratios, lo, hi, iters, counts)
        best = self.scaled(ratios, lo, counts)
        return self.fill(best if self.budget.fits(best) else counts)

    def fit(self, counts: Sequence[int], iters: int = 40) -> list[int]:
        """Scale the ratio vector of ``counts`` by the largest factor (below or above 1) whose clipped,
        rounded plan meets the budget, then fill the remainder as :meth:`repair` does. The result
        meets the budget whenever the minimum counts do (a factor of 0 gives every unit its minimum)."""
        if self.budget.fits(list(counts)):
            return self.repair(counts, iters)
        ratios = self.ratios_of(counts)
        return self.repair(self.scaled(ratios, self.largest_factor(ratios, 0.0, 1.0, iters)), iters)

    # ------------------------------------------------------------------ one unit at a time
    def wall(self, t: int, head: Sequence[int], desired: int, fill_budget: bool = False) -> tuple[int, bool]:
        """The walls on unit ``t``'s count, the first ``t`` units at ``head``. Returns (count, clipped).

        Lower (``fill_budget`` only): ``desired`` is raised to the smallest candidate with which the
        budget can still be used up, later units at their maximum. Upper (AMC): the count is then
        lowered to the largest candidate that keeps the budget reachable, later units at their
        minimum; the upper wall wins (the budget is a hard limit).
        """
        cand, head = self.candidates[t], list(head[:t])

        def fits(count: int, later: list[int]) -> bool:
            return self.budget.fits(head + [int(count)] + later[t + 1:])

        target = int(desired)
        if fill_budget and fits(target, self.max_counts):  # would leave budget nothing later can use
            if fits(int(cand[-1]), self.max_counts):
                target = int(cand[-1])
            else:
                i = int(np.searchsorted(cand, target))
                target = int(cand[last_true(i, len(cand) - 1, lambda k: fits(int(cand[k]), self.max_counts)) + 1])
        if fits(target, self.min_counts):
            return target, target != desired
        # cand[0] fits (it is the vector that passed at the previous step); cand[i] does not
        i = int(np.searchsorted(cand, target))
        count = int(cand[last_true(0, i, lambda k: fits(int(cand[k]), self.min_counts))])
        return count, count != desired

    def fair_share(self, t: int, head: Sequence[int], iters: int = 30) -> float:
        """The largest ratio that units ``t`` onwards can all keep with the budget met, the first ``t``
        units at ``head`` (clipped to the ratio range)."""
        head = list(head[:t])
        rest = len(self.units) - t

        def fits(r: float) -> bool:
            return self.budget.fits(head + self.counts([r] * rest, start=t))

        lo, hi = self.min_ratio, self.max_ratio
        if fits(hi):
            return hi
        if not fits(lo):
            return lo
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


def last_true(lo: int, hi: int, pred: Callable[[int], bool]) -> int:
    """Bisection: the last index in [lo, hi) where ``pred`` holds, given that it holds at ``lo``,
    fails at ``hi`` and is monotone (true, then false)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            lo = mid
        else:
            hi = mid
    return lo
