"""Unit discovery, physical pruning and the plan-only cost model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import TinyConcat, TinyResidual

from autoprune.core.cost import FlopsCost, ParamsCost, measure_model
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import AutopruneError
from autoprune.models.zoo import MODELS

BUILTINS = ["mnist_cnn", "resnet20", "resnet56", "vgg_small", "mobilenetv2_small"]


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_plans_keep_shape_and_match_predicted_cost(name):
    model = MODELS.get(name)().eval()
    shape = model.default_input_shape
    graph = build_unit_graph(model, shape)
    flops, params = FlopsCost(graph), ParamsCost(graph)
    assert (flops.base, params.base) == measure_model(model, shape)
    rng = np.random.default_rng(0)
    x = torch.randn(2, *shape)
    for ratios in (0.5, 0.25, rng.uniform(0.2, 1.0, len(graph)), rng.uniform(0.1, 1.0, len(graph))):
        plan = PruningPlan.from_ratios(graph, ratios)
        pruned = apply_plan(model, graph, plan)
        assert pruned(x).shape == (2, 10)
        real_flops, real_params = measure_model(pruned, shape)
        counts = plan.counts(graph)
        assert abs(flops(counts) - real_flops) <= 0.01 * real_flops
        assert abs(params(counts) - real_params) <= 0.01 * real_params
        assert real_flops < flops.base


def test_apply_plan_never_mutates_the_callers_model():
    model = MODELS.get("resnet20")().eval()
    graph = build_unit_graph(model, (3, 32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_plan(model, graph, PruningPlan.from_ratios(graph, 0.3))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_residual_units_are_coupled_and_pruned_consistently():
    model = TinyResidual().eval()
    graph = build_unit_graph(model, (1, 8, 8))
    stem = graph.unit("stem")
    # the stem, a2 and b2 all feed the residual adds: one unit
    assert set(stem.members) == {"stem", "a2", "b2"}
    plan = PruningPlan.from_counts(graph, {"stem": 3})
    pruned = apply_plan(model, graph, plan)
    assert pruned.stem.out_channels == pruned.a2.out_channels == pruned.b2.out_channels == 3
    assert pruned.a1.in_channels == pruned.b1.in_channels == pruned.fc.in_features == 3
    assert pruned(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_concat_producers_are_separate_units_with_exact_costs():
    model = TinyConcat().eval()
    graph = build_unit_graph(model, (1, 8, 8))
    assert set(graph.names) == {"left", "right", "merge"}
    plan = PruningPlan.from_counts(graph, {"left": 2, "right": 7, "merge": 5})
    pruned = apply_plan(model, graph, plan)
    assert pruned.merge.in_channels == 9
    assert FlopsCost(graph)(plan.counts(graph)) == measure_model(pruned, (1, 8, 8))[0]


def test_depthwise_pairs_are_one_unit():
    model = MODELS.get("mobilenetv2_small")().eval()
    graph = build_unit_graph(model, (3, 32, 32))
    kinds = {u.kind for u in graph.units}
    assert "depthwise" in kinds
    unit = next(u for u in graph.units if u.name == "features.4.conv.0")
    plan = PruningPlan.from_counts(graph, {unit.name: 10})
    pruned = dict(apply_plan(model, graph, plan).named_modules())
    assert pruned["features.4.conv.3"].groups == pruned["features.4.conv.3"].out_channels == 10


def test_classifier_is_never_a_unit():
    model = MODELS.get("vgg_small")()
    graph = build_unit_graph(model, (3, 32, 32))
    assert "classifier" not in graph.names
    assert "classifier" in graph.ignored
    pruned = apply_plan(model, graph, PruningPlan.from_ratios(graph, 0.2))
    assert pruned.classifier.out_features == 10


def test_layer_specs_describe_the_unit():
    model = MODELS.get("resnet20")()
    graph = build_unit_graph(model, (3, 32, 32))
    first = graph.units[0]
    assert (first.index, first.name, first.kind) == (0, "conv1", "conv")
    assert (first.in_channels, first.out_channels, first.kernel, first.in_h, first.in_w) == (3, 16, 3, 32, 32)
    strided = graph.unit("layer2.0.conv1")
    assert strided.stride == 2 and strided.in_h == 32
    assert sum(u.flops for u in graph.units) <= FlopsCost(graph).base


def test_model_without_prunable_unit_is_a_user_error():
    with pytest.raises(AutopruneError, match="no prunable unit"):
        build_unit_graph(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), (1, 8, 8))
