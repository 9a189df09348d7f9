"""Models defined outside autoprune (torchvision-style ResNet-18, MobileNetV2, VGG-11) prune exactly."""

from __future__ import annotations

import numpy as np
import pytest
import thirdparty_models
import torch

from autoprune.core.cost import FlopsCost, ParamsCost, measure_model
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan


@pytest.mark.parametrize("name,kinds", [("resnet18", {"conv"}), ("mobilenetv2", {"conv", "depthwise"}),
                                        ("vgg11", {"conv", "linear"})])
def test_third_party_models_prune_with_exact_costs(name, kinds):
    model = getattr(thirdparty_models, name)().eval()
    graph = build_unit_graph(model, (3, 32, 32))
    assert {u.kind for u in graph.units} == kinds
    flops, params = FlopsCost(graph), ParamsCost(graph)
    rng = np.random.default_rng(0)
    for _ in range(2):
        plan = PruningPlan.from_ratios(graph, rng.uniform(0.2, 1.0, len(graph)))
        pruned = apply_plan(model, graph, plan)
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert (flops(plan.counts(graph)), params(plan.counts(graph))) == measure_model(pruned, (3, 32, 32))
