"""BudgetFitter: the budget arithmetic the searchers (``SearchContext.fit_to_budget``) and the AMC env share."""

from __future__ import annotations

import numpy as np
import pytest
from factories import TinyConcat, TinyResidual
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.config import PruningConfig
from autoprune.core.budget_fit import BudgetFitter
from autoprune.core.cost import Budget, make_budget
from autoprune.core.graph import build_unit_graph
from autoprune.envs.pruning_env import ChannelPruningEnv
from autoprune.search.base import SearchContext

GRAPHS = {"residual": build_unit_graph(TinyResidual(), (1, 8, 8)),
          "concat": build_unit_graph(TinyConcat(), (1, 8, 8))}


class UnevenCost:
    """Not FLOPs: a per-unit weighted sum plus a constant (what a latency LUT's cost looks like)."""

    kind = "latency"

    def __init__(self, graph):
        self.weights = np.linspace(3.0, 1.0, len(graph))
        self.base = self(graph.channels)

    def __call__(self, counts):
        return float(0.5 + self.weights @ np.asarray(counts, dtype=float))


def budgets(g):
    return {"flops": make_budget(g, "flops", 0.35), "params": make_budget(g, "params", 0.5),
            "latency": Budget(UnevenCost(g), 0.4 * UnevenCost(g).base)}


def maximal(fitter: BudgetFitter, counts: list[int]) -> bool:
    """No unit can grow by one candidate count within the budget."""
    for t, cand in enumerate(fitter.candidates):
        higher = cand[cand > counts[t]]
        if len(higher) and fitter.budget.fits(counts[:t] + [int(higher[0])] + counts[t + 1:]):
            return False
    return True


@pytest.mark.parametrize("name", list(GRAPHS))
@pytest.mark.parametrize("kind", ["flops", "params", "latency"])
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_fit_meets_and_uses_the_budget_for_any_counts_and_cost_model(name, kind, data):
    g = GRAPHS[name]
    fitter = BudgetFitter(g, budgets(g)[kind], 0.2, 1.0, round_to=data.draw(st.sampled_from([1, 2])))
    counts = [data.draw(st.integers(int(c[0]), int(c[-1]))) for c in fitter.candidates]
    fitted = fitter.fit(counts)
    assert fitter.budget.fits(fitted) and maximal(fitter, fitted)
    if fitter.budget.fits(counts):  # repair (what fit does to a fitting vector) never shrinks a count
        assert fitted == fitter.repair(counts) and all(a >= b for a, b in zip(fitted, counts, strict=True))
    # the wall keeps the budget reachable whatever the unit asks for, and fair shares fit exactly
    t = data.draw(st.integers(0, len(g) - 1))
    head = fitter.min_counts[:t]
    count, clipped = fitter.wall(t, head, int(fitter.max_counts[t]))
    assert fitter.budget.fits(head + [count] + fitter.min_counts[t + 1:]) and clipped == (count != fitter.max_counts[t])
    share = fitter.fair_share(t, head)
    assert fitter.budget.fits(head + fitter.counts([share] * (len(g) - t), start=t))


@pytest.mark.parametrize("kind", ["flops", "params", "latency"])
def test_searchers_and_the_env_share_one_fitter(kind):
    g = GRAPHS["residual"]
    budget = budgets(g)[kind]
    ctx = SearchContext(graph=g, evaluator=None, budget=budget, costs={},
                        pruning=PruningConfig(min_ratio=0.2, round_to=1))
    env = ChannelPruningEnv(g, None, budget, min_ratio=0.2, action_wall=False)
    rng = np.random.default_rng(0)
    for _ in range(20):
        draw = rng.uniform(0.1, 1.0, len(g))
        ratios = ctx.fit_to_budget(draw)
        counts = ctx.counts(ratios)
        assert budget.fits(counts)
        # the scale keeps the draw's shape: one factor for every unclipped unit
        free = (ratios > 0.2 + 1e-9) & (ratios < 1.0 - 1e-9)
        if free.sum() > 1:
            assert np.allclose(ratios[free] / ctx.clip(draw)[free], (ratios[free] / ctx.clip(draw)[free])[0])
        # the env's fit of those counts is the fitter's, and the context's fitter is the same arithmetic
        assert env.fit(counts) == ctx.fitter.fit(counts) == env.fitter.fit(counts)


class AlignedCost:
    """FLOPs plus a price per channel of every unit whose count is off a multiple of 8 (a LUT's
    misaligned-elements term): a wider layer can cost less. Not monotone."""

    kind = "latency"
    monotone = False

    def __init__(self, graph, per_channel=2.0):
        from autoprune.core.cost import FlopsCost

        self.flops, self.per_channel, self.channels = FlopsCost(graph), per_channel, sum(graph.channels)
        self.base = self(graph.channels)

    def __call__(self, counts):
        misaligned = sum(int(c) for c in counts if int(c) % 8)
        return self.flops(counts) / self.flops.base + self.per_channel * misaligned / self.channels


def resnet20_graph():
    from autoprune.models import build_model

    return build_unit_graph(build_model("resnet20", in_channels=1, num_classes=10), (1, 8, 8))


def test_a_cost_that_is_not_monotone_is_scanned_not_only_bisected():
    """Bisection alone stops at the first crossing it meets; with ``monotone = False`` the fitter scans
    the factors from the top first, so its plan is the largest on the scan's grid, and it meets the budget."""
    g = resnet20_graph()
    cost = AlignedCost(g)
    budget = Budget(cost, 0.6 * cost.base)
    scanned = SearchContext(graph=g, evaluator=None, budget=budget, costs={}, pruning=PruningConfig(min_ratio=0.2))
    bisected = SearchContext(graph=g, evaluator=None, budget=budget, costs={}, pruning=PruningConfig(min_ratio=0.2))
    bisected.fitter.monotone = True  # the fitter as it was: bisection alone
    assert scanned.fitter.monotone is False
    rng = np.random.default_rng(0)
    flops, larger = cost.flops, 0
    for _ in range(20):
        draw = rng.uniform(0.2, 1.0, len(g))
        a, b = scanned.counts(scanned.fit_to_budget(draw)), bisected.counts(bisected.fit_to_budget(draw))
        assert budget.fits(a) and budget.fits(b)
        assert flops(a) >= flops(b)
        larger += flops(a) > flops(b)
        # no factor on the scan's grid above the one found fits
        ratios, fitter = scanned.clip(draw), scanned.fitter
        hi = 1.0 / ratios.min()
        found = fitter.largest_factor(ratios, 0.0, hi)
        assert np.allclose(scanned.fit_to_budget(draw), scanned.clip(ratios * found))
        above = [f for f in np.linspace(0.0, hi, fitter.scan + 1) if f > found + 1e-9]
        assert not any(budget.fits(fitter.scaled(ratios, f)) for f in above)
    assert larger >= 3  # measured 5 of 20, up to 6.6x the FLOPs


def test_fill_looks_past_a_count_that_costs_more_than_a_wider_one():
    g = resnet20_graph()
    cost = AlignedCost(g)
    counts = [16] * len(g)  # every unit aligned
    budget = Budget(cost, cost(counts[:-1] + [24]))  # the last unit at 17-23 pays for misaligned channels
    fitter = BudgetFitter(g, budget, 0.2, 1.0)
    assert not budget.fits(counts[:-1] + [17])
    assert fitter.fill(counts) == counts[:-1] + [24]
    fitter.monotone = True  # bisection alone: 17 does not fit, so nothing grows
    assert fitter.fill(counts) == counts
