"""Evaluator (adaptive BN, cache), data splits, and the baseline searchers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.agents.baselines import GlobalSearcher, RandomSearcher, UniformSearcher
from autoprune.config import DataConfig
from autoprune.core.plan import PruningPlan
from autoprune.core.train import accuracy
from autoprune.data.datasets import load_data
from autoprune.search.evaluate import recalibrate_bn
from autoprune.search.records import TrialRecorder


def test_splits_are_deterministic_disjoint_and_val_comes_from_training_data():
    cfg = DataConfig(name="digits", val_samples=300)
    a, b = load_data(cfg), load_data(cfg)
    assert torch.equal(a.val.tensors[0], b.val.tensors[0])
    sizes = [len(a.train), len(a.val), len(a.test)]
    assert sizes == [1798 - 1 - 360 - 300, 300, 359] or sum(sizes) == 1797
    assert len(a.val) == 300 and len(a.test) == round(0.2 * 1797)
    rows = lambda ds: {tuple(r.flatten().tolist()) for r in ds.tensors[0]}  # noqa: E731
    assert not rows(a.val) & rows(a.test)


def test_resize_and_channels_options():
    data = load_data(DataConfig(name="digits", val_samples=100, resize=32, channels=3))
    assert data.input_shape == (3, 32, 32)
    assert data.train.tensors[0].shape[1:] == (3, 32, 32)


def test_mnist5k_is_real_mnist():
    data = load_data(DataConfig(name="mnist5k", val_samples=1000))
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train) + len(data.val) + len(data.test) == 5000


def test_adaptive_bn_raises_accuracy_of_aggressively_pruned_model(tiny_session):
    ev = tiny_session.evaluator()
    plan = PruningPlan.from_ratios(tiny_session.graph, 0.5)
    pruned = ev.prune(plan)
    stale = accuracy(pruned, ev.val_batches())
    recalibrate_bn(pruned, ev.bn_batches)
    fresh = accuracy(pruned, ev.val_batches())
    assert fresh > stale + 0.05


def test_evaluator_caches_identical_channel_counts(tiny_session):
    ev = tiny_session.evaluator()
    a = ev.evaluate(PruningPlan.from_ratios(tiny_session.graph, 0.5))
    b = ev.evaluate(PruningPlan.from_ratios(tiny_session.graph, 0.501))
    assert not a.cached and b.cached and a.accuracy == b.accuracy
    assert ev.evaluations == 1
    assert ev.base_accuracy() > 0.5


def _context(session, seed=0):
    return session.context(session.evaluator(), TrialRecorder(None), None, False, progress=False)


def test_uniform_uses_one_ratio_within_budget(tiny_session):
    ctx = _context(tiny_session)
    plan = UniformSearcher(ctx).search()
    assert ctx.fits(plan)
    assert len({round(r, 9) for r in plan.ratios.values()}) == 1
    assert plan.meta["flops_kept"] > 0.4  # uses the budget, not far below it


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_global_is_torch_pruning_global_pruning_as_a_plan(tiny_session, ratio):
    """At the FLOPs Torch-Pruning's MetaPruner(global_pruning=True) ends at, ``global`` keeps the same counts."""
    import copy
    import dataclasses

    import torch_pruning as tp

    from autoprune.core.cost import Budget

    model = copy.deepcopy(tiny_session.model)
    classifier = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    tp.pruner.MetaPruner(model, torch.randn(1, *tiny_session.input_shape), global_pruning=True, pruning_ratio=ratio,
                         importance=tp.importance.GroupMagnitudeImportance(p=1), ignored_layers=[classifier]).step()
    modules = dict(model.named_modules())
    theirs = [getattr(modules[n], "out_channels", None) or modules[n].out_features for n in tiny_session.graph.names]
    ctx = _context(tiny_session)
    ctx.pruning = dataclasses.replace(ctx.pruning, min_ratio=0.01)
    ctx.budget = Budget(ctx.costs["flops"], ctx.costs["flops"](theirs))
    plan = GlobalSearcher(ctx).search()
    assert plan.counts(tiny_session.graph) == theirs
    assert theirs != tiny_session.graph.channels  # something was cut
    assert len(ctx.recorder.rows) == 1 and plan.meta["val_accuracy"] == ctx.recorder.rows[0]["val_accuracy"]


def test_global_cuts_the_lowest_normalised_scores_until_the_budget_fits(tiny_session):
    """The plan equals removing, one by one, the channel with the lowest score / its unit's mean score
    (units at ``min_ratio`` stay) until the plan meets the budget."""
    from autoprune.core.criteria import get_criterion
    from autoprune.core.prune import channel_scores

    ctx = _context(tiny_session)
    graph = tiny_session.graph
    scores = channel_scores(graph.model, graph, get_criterion(ctx.pruning))
    ranked = sorted((float(s / v.mean()), u) for u, v in enumerate(scores.values()) for s in v)
    counts, floor = list(graph.channels), ctx.min_counts()
    for _score, u in ranked:
        if ctx.budget.fits(counts):
            break
        if counts[u] > floor[u]:
            counts[u] -= 1
    assert GlobalSearcher(ctx).counts() == counts
    assert ctx.budget.fits(counts) and counts != graph.channels


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_global_rounds_like_any_plan_and_stays_within_the_ratio_range(tiny_session, fraction):
    import dataclasses

    from autoprune.core.cost import Budget

    ctx = _context(tiny_session)
    ctx.pruning = dataclasses.replace(ctx.pruning, round_to=4, min_ratio=0.25)
    ctx.budget = Budget(ctx.costs["params"], fraction * ctx.costs["params"].base)
    counts = GlobalSearcher(ctx).counts()
    assert ctx.budget.fits(counts)
    for c, unit, lo in zip(counts, tiny_session.graph.units, ctx.min_counts(), strict=True):
        assert c % 4 == 0 or c == unit.out_channels
        assert lo <= c <= unit.out_channels


def test_global_needs_a_criterion_that_needs_no_data(tiny_session):
    import dataclasses

    from autoprune.errors import ConfigError

    ctx = _context(tiny_session)
    ctx.pruning = dataclasses.replace(ctx.pruning, criterion="taylor")
    with pytest.raises(ConfigError, match="searcher.criterion: l1"):
        GlobalSearcher(ctx).counts()
    assert ctx.fits(GlobalSearcher(ctx, GlobalSearcher.parse_options({"criterion": "l2"})).search())
    with pytest.raises(ConfigError, match="normalizer"):
        GlobalSearcher.parse_options({"normalizer": "median"})
    with pytest.raises(ConfigError, match="not a criterion"):
        GlobalSearcher.parse_options({"criterion": "l3"})


def test_a_search_scored_after_a_short_fine_tune_records_it_and_leaves_sample_efficiency(tmp_path):
    """``evaluation.finetune_steps``: every row of the search carries the count, and the run is left out of
    the proxy-only sample-efficiency table (its scores are not the proxy's)."""
    import json

    import pandas as pd
    from conftest import tiny_config, write_config

    from autoprune.cli import main
    from autoprune.pipeline.efficiency import proxy_trials

    raw = tiny_config(evaluation={"adaptive_bn_batches": 4, "batch_size": 256, "finetune_steps": 2})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 3 and (trials["finetune_steps"] == 2).all()
    assert proxy_trials(trials.assign(run="r")).empty
    assert json.loads((out / "summary.json").read_text())["evaluations"] == 3


@settings(max_examples=15, deadline=None)
@given(st.floats(0.05, 0.9), st.integers(0, 10_000))
def test_fit_to_budget_never_exceeds_the_budget(tiny_session, fraction, seed):
    from autoprune.core.cost import Budget

    ctx = _context(tiny_session)
    ctx.budget = Budget(ctx.costs["flops"], fraction * ctx.costs["flops"].base)
    ratios = np.random.default_rng(seed).uniform(0.2, 1.0, len(ctx.graph))
    fitted = ctx.fit_to_budget(ratios)
    if ctx.budget.fits(ctx.min_counts()):
        assert ctx.budget.fits(ctx.counts(fitted))


def test_random_search_records_every_plan_and_stays_in_budget(tiny_session):
    ctx = _context(tiny_session)
    plan = RandomSearcher(ctx, RandomSearcher.Options(evaluations=4)).search()
    rows = ctx.recorder.rows
    assert len(rows) == 4
    assert all(r["flops_kept"] <= 0.5 + 1e-9 for r in rows)
    assert plan.meta["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert ctx.fits(plan)


def test_random_search_resume_skips_recorded_samples(tiny_session):
    full = _context(tiny_session)
    RandomSearcher(full, RandomSearcher.Options(evaluations=3)).search()
    part = _context(tiny_session)
    RandomSearcher(part, RandomSearcher.Options(evaluations=2)).search()
    RandomSearcher(part, RandomSearcher.Options(evaluations=3)).search()
    key = [c for c in full.recorder.rows[0] if c.startswith("channels/")]
    assert [[r[k] for k in key] for r in part.recorder.rows] == [[r[k] for k in key] for r in full.recorder.rows]


@pytest.mark.parametrize("bad", [{"evaluations": 0}, {"evalutions": 3}])
def test_searcher_options_are_strict(bad):
    from autoprune.errors import ConfigError

    with pytest.raises(ConfigError):
        RandomSearcher.parse_options({"name": "random", **bad})
