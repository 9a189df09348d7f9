"""NetAdapt: budget met greedily, resource falls every iteration, latency awareness, resume."""

from __future__ import annotations

import pytest

from autoprune.agents.netadapt import NetAdaptSearcher
from autoprune.core.cost import Budget
from autoprune.errors import ConfigError
from autoprune.latency.lut import Lut, LutCost, make_header, tabulate
from autoprune.search.records import TrialRecorder

FAST = NetAdaptSearcher.Options(initial_reduction=0.15, decay=0.9, short_term_batches=1, max_iterations=30)


def slow_layer_lut(graph, slow: str, factor: float = 30.0) -> Lut:
    """Latency = MACs at the kept widths, except ``slow``, which costs ``factor`` times more."""
    info = {m.name: m for m in graph.modules}

    def fn(name, i, o):
        m = info[name]
        return 1e-6 * m.macs * (i / m.in_ch) * (o / m.out_ch) * (factor if name == slow else 1.0) + 1e-3

    return Lut(make_header(graph, remainder_ms=0.01), tabulate(graph, fn, step=1))


def _context(session, kind="flops", fraction=0.5, cost=None, recorder=None):
    ctx = session.context(session.evaluator(), recorder or TrialRecorder(None), None, False, progress=False)
    cost = cost or ctx.costs[kind]
    ctx.costs = {**ctx.costs, cost.kind: cost}
    ctx.budget = Budget(cost, fraction * cost.base)
    return ctx


def _chosen(rows):
    return sorted((r for r in rows if r["chosen"]), key=lambda r: r["iteration"])


def test_netadapt_meets_the_budget_with_a_falling_resource(tiny_session):
    ctx = _context(tiny_session, "flops", 0.5)
    plan = NetAdaptSearcher(ctx, FAST).search()
    assert ctx.fits(plan) and plan.meta["flops_kept"] <= 0.5 + 1e-9
    chosen = _chosen(ctx.recorder.rows)
    iterations = sorted({r["iteration"] for r in ctx.recorder.rows})
    assert [r["iteration"] for r in chosen] == iterations  # exactly one chosen proposal per iteration
    resources = [ctx.budget.cost.base] + [r["resource"] for r in chosen]
    assert all(b < a for a, b in zip(resources, resources[1:], strict=False))
    assert all(r["resource"] <= r["target"] * (1 + 1e-9) for r in ctx.recorder.rows)
    for it in iterations:  # the kept proposal is the most accurate of its iteration
        rows = [r for r in ctx.recorder.rows if r["iteration"] == it]
        assert max(r["val_accuracy"] for r in rows) == next(r for r in rows if r["chosen"])["val_accuracy"]
        assert all(sum(r[f"channels/{n}"] < c[f"channels/{n}"] for n in tiny_session.graph.names) == 1
                   for r, c in [(r, _previous(chosen, it, tiny_session.graph)) for r in rows])
    assert plan.meta["val_accuracy"] == chosen[-1]["val_accuracy"]


def _previous(chosen, iteration, graph):
    before = [r for r in chosen if r["iteration"] < iteration]
    return before[-1] if before else {f"channels/{u.name}": u.out_channels for u in graph.units}


def test_latency_guided_netadapt_prunes_the_slow_layer_harder_than_flops_guided(tiny_session):
    graph = tiny_session.graph
    slow = graph.units[0].name  # the first conv: few MACs, made 30x slower on this "device"
    lut_cost = LutCost(slow_layer_lut(graph, slow), graph)
    by_latency = NetAdaptSearcher(_context(tiny_session, cost=lut_cost, fraction=0.6), FAST).search()
    by_flops = NetAdaptSearcher(_context(tiny_session, "flops", 0.6), FAST).search()
    assert lut_cost(by_latency.counts(graph)) <= 0.6 * lut_cost.base * (1 + 1e-9)
    assert by_latency.ratios[slow] < by_flops.ratios[slow]


def test_resume_replays_the_chosen_path(tiny_session):
    full = _context(tiny_session, "flops", 0.5)
    final = NetAdaptSearcher(full, FAST).search()
    rows = full.recorder.rows
    assert len(_chosen(rows)) >= 3
    kept = [r for r in rows if r["iteration"] <= 2]
    part = _context(tiny_session, "flops", 0.5, recorder=TrialRecorder(None, [dict(r) for r in kept]))
    resumed = NetAdaptSearcher(part, FAST).search()
    assert resumed.counts(tiny_session.graph) == final.counts(tiny_session.graph)
    key = [f"channels/{n}" for n in tiny_session.graph.names] + ["iteration", "chosen"]
    assert [[r[k] for k in key] for r in part.recorder.rows] == [[r[k] for k in key] for r in rows]


def test_budget_already_met_evaluates_the_unpruned_model_once(tiny_session):
    ctx = _context(tiny_session, "flops", 1.0)
    plan = NetAdaptSearcher(ctx, FAST).search()
    assert plan.counts(tiny_session.graph) == tiny_session.graph.channels
    assert len(ctx.recorder.rows) == 1 and ctx.recorder.rows[0]["chosen"]


@pytest.mark.parametrize("bad", [{"decay": 0}, {"initial_reduction": 1.5}, {"max_iterations": 0},
                                 {"short_term_batches": -1}, {"initial_reducton": 0.1}])
def test_options_are_validated(bad):
    with pytest.raises(ConfigError):
        NetAdaptSearcher.parse_options({"name": "netadapt", **bad})
