"""Models defined outside autoprune (torchvision-style ResNet-18, MobileNetV2, VGG-11, a ViT, a
ResNeXt-style net with GroupNorm, squeeze-excite and a concat, a ShuffleNet-style net) prune exactly,
or are left out with a warning where they cannot."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import thirdparty_models
import torch

from autoprune import load_pruned
from autoprune.core.cost import FlopsCost, ParamsCost, measure_model
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import AutopruneError


@pytest.mark.parametrize("name,kinds", [("resnet18", {"conv"}), ("mobilenetv2", {"conv", "depthwise"}),
                                        ("vgg11", {"conv", "linear"}), ("resnextish", {"conv"}),
                                        ("vit", {"conv", "linear"}), ("convnext_ish", {"depthwise", "linear"})])
def test_third_party_models_prune_with_exact_costs(name, kinds):
    if name == "convnext_ish":
        from benchmarks.budget_fit import convnext_ish as factory
    else:
        factory = getattr(thirdparty_models, name)
    model = factory().eval()
    graph = build_unit_graph(model, (3, 32, 32))
    assert {u.kind for u in graph.units} == kinds
    flops, params = FlopsCost(graph), ParamsCost(graph)
    rng = np.random.default_rng(0)
    for _ in range(2):
        plan = PruningPlan.from_ratios(graph, rng.uniform(0.2, 1.0, len(graph)))
        pruned = apply_plan(model, graph, plan)
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert (flops(plan.counts(graph)), params(plan.counts(graph))) == measure_model(pruned, (3, 32, 32))


def test_heads_and_groups_stay_whole():
    """Attention heads, GroupNorm groups and grouped-conv groups split a unit into equal blocks:
    counts round to a multiple of the block count and every block keeps the same positions."""
    vit = thirdparty_models.vit().eval()
    graph = build_unit_graph(vit, (3, 32, 32))
    assert {u.name: u.blocks for u in graph.units} == {
        "patch": 4, "encoder.layers.0.linear1": 1, "encoder.layers.1.linear1": 1}
    for ratio in (0.3, 0.55, 0.8):
        plan = PruningPlan.from_ratios(graph, ratio, round_to=8)
        assert plan.channels["patch"] % 8 == 0
        pruned = apply_plan(vit, graph, plan)
        attn = pruned.encoder.layers[0].self_attn
        assert attn.embed_dim == plan.channels["patch"] and attn.num_heads == 4
        assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    net = thirdparty_models.resnextish().eval()
    graph = build_unit_graph(net, (3, 32, 32))
    assert {u.name: u.blocks for u in graph.units} == {"c1": 4, "c2": 8, "se1": 1, "c3": 1}
    with pytest.raises(AutopruneError, match="multiple of 4"):
        apply_plan(net, graph, PruningPlan.from_counts(graph, {"c1": 30}))


def test_a_grouped_conv_input_cut_in_every_group_alike_equals_zeroing_those_channels():
    """Cutting the channels feeding a grouped conv must remove the same input slots of every group:
    the pruned net computes exactly what the full net computes with those channels zeroed."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 8, 3, padding=1, groups=4), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 36, 10)).eval()
    graph = build_unit_graph(net, (3, 6, 6))
    assert graph.units[0].blocks == 4
    removed = []
    pruned = apply_plan(net, graph, PruningPlan.from_counts(graph, {"0": 8}), log=removed)
    (_, idxs), = removed
    assert len(idxs) == 8 and sorted({i % 4 for i in idxs}) == sorted({i % 4 for i in idxs[:2]})
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        zeroed[0].weight[idxs] = 0
        zeroed[0].bias[idxs] = 0
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(pruned(x), zeroed(x))


@pytest.mark.parametrize("name", ["resnextish", "vit"])
def test_a_lut_builds_and_checks_on_grouped_convs_and_attention(name):
    """Grouped convs are timed at whole groups; attention (not a layer table) is carried by the
    calibration. The plans a check times keep heads and groups whole."""
    from autoprune.latency.build import build_lut
    from autoprune.latency.check import check_lut

    model = getattr(thirdparty_models, name)().eval()
    lut = build_lut(model, (3, 32, 32), step=16, repeats=2, calibration_plans=2, progress=False, model_name=name)
    if name == "resnextish":
        c2 = next(t for t in lut.tables if t.name == "c2")
        assert all(w % 4 == 0 for w in c2.in_grid + c2.out_grid) and len(c2.out_grid) > 2  # groups=4
    result = check_lut(lut, model, plans=3, repeats=2, progress=False)
    graph = build_unit_graph(model, (3, 32, 32))
    assert all(c % u.blocks == 0 for counts in result["counts"] for c, u in zip(counts, graph.units, strict=True))
    assert result["plans"] == 3 and 0 <= result["mape"] < 100


@pytest.mark.parametrize("model,shape,searcher", [
    ("feature_mlp", "flat", {"name": "random", "evaluations": 4}),
    ("signal_cnn", "signal", {"name": "netadapt", "max_iterations": 2, "short_term_batches": 2}),
])
def test_feature_vectors_and_1d_signals_search_end_to_end(tmp_path, model, shape, searcher):
    """Samples need not be images: [64] feature vectors and [1, 64] signals search, prune and
    fine-tune like images, with the plan-only FLOPs equal to the built model's."""
    from conftest import tiny_config

    from autoprune.config import load_config
    from autoprune.pipeline.run import run_search

    cfg = load_config(tiny_config(model={"factory": f"factories:{model}"},
                                  data={"factory": "factories:digit_features", "kwargs": {"shape": shape}},
                                  searcher=searcher, train={"epochs": 3, "lr": 0.05, "batch_size": 64}))
    run = run_search(cfg, tmp_path / "run", progress=False)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["pruned"]["flops_kept"] <= 0.5 + 1e-9
    in_shape = (64,) if shape == "flat" else (1, 64)
    assert measure_model(load_pruned(run / "pruned_model.pt"), in_shape)[0] == summary["pruned"]["flops"]
    assert summary["pruned"]["test_accuracy_after_finetune"] > 0.2  # 10 classes: twice chance


def test_units_whose_cut_breaks_the_forward_are_left_out_with_a_warning(caplog):
    """timm-style attention reshapes qkv with the embedding width and a fixed head count: cutting
    the embedding or qkv alone breaks the forward, which the dependency graph cannot see. Those units
    are left out (named in a warning); the MLP's hidden width still prunes, with exact costs."""
    model = thirdparty_models.timm_style_vit().eval()
    with caplog.at_level("WARNING", logger="autoprune.core.tracing"):
        graph = build_unit_graph(model, (3, 32, 32))
    assert graph.names == ["mlp.0"]
    assert "patch" in caplog.text and "qkv" in caplog.text
    plan = PruningPlan.from_ratios(graph, 0.3)
    pruned = apply_plan(model, graph, plan)
    assert pruned(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    counts = plan.counts(graph)
    assert (FlopsCost(graph)(counts), ParamsCost(graph)(counts)) == measure_model(pruned, (3, 32, 32))


class _Permuting(torch.nn.Module):
    """conv a -> ReLU -> a channel permutation -> conv b -> classifier."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a, self.b = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.a(x))
        if self.op == "index":  # every other channel first, computed from the width
            x = x[:, torch.cat([torch.arange(0, x.shape[1], 2), torch.arange(1, x.shape[1], 2)])]
        elif self.op == "flip":
            x = x.flip(1)
        elif self.op == "roll":
            x = x.roll(3, 1)
        return self.fc(torch.relu(self.b(x)).mean((2, 3)))


@pytest.mark.parametrize("op", ["none", "index", "flip", "roll"])
def test_units_whose_channels_are_permuted_on_the_way_are_left_out(op, caplog):
    """torch-pruning passes an index, flip or roll of the channel dim through as if it kept every
    channel in place: cutting conv ``a`` then removes other inputs of ``b`` than the channels ``a``
    lost (the pruned net differs from the full net with those channels zeroed), so ``a`` is left
    out with a warning. Without a permutation it stays and prunes exactly."""
    import torch_pruning as tp

    torch.manual_seed(0)
    net = _Permuting(op).eval()
    with caplog.at_level("WARNING", logger="autoprune.core.tracing"):
        graph = build_unit_graph(net, (3, 6, 6))
    assert graph.names == (["a", "b"] if op == "none" else ["b"])
    assert ("permuted" in caplog.text and ": a;" in caplog.text) == (op != "none")
    cut = copy.deepcopy(net)  # what pruning ``a`` would do, straight through torch-pruning
    dg = tp.DependencyGraph().build_dependency(cut, example_inputs=torch.randn(1, 3, 6, 6))
    dg.get_pruning_group(cut.a, tp.prune_conv_out_channels, idxs=[1, 2, 5]).prune()
    zeroed = copy.deepcopy(net)
    with torch.no_grad():
        zeroed.a.weight[[1, 2, 5]] = 0
        zeroed.a.bias[[1, 2, 5]] = 0
    x = torch.randn(4, 3, 6, 6)
    assert torch.allclose(cut(x), zeroed(x), atol=1e-5) == (op == "none")


def test_a_channel_shuffle_unit_is_left_out_and_the_rest_prune_exactly(caplog):
    """ShuffleNet (v1): the bottleneck of each unit is shuffled before its depthwise conv, which the
    dependency graph does not follow: those units are left out; the stage's channels prune exactly."""
    model = thirdparty_models.shufflenet_v1ish().eval()
    with caplog.at_level("WARNING", logger="autoprune.core.tracing"):
        graph = build_unit_graph(model, (3, 32, 32))
    assert graph.names == ["stem.0"] and "stage.0.g1, stage.1.g1" in caplog.text
    plan = PruningPlan.from_ratios(graph, 0.5)
    pruned = apply_plan(model, graph, plan)
    counts = plan.counts(graph)
    assert (FlopsCost(graph)(counts), ParamsCost(graph)(counts)) == measure_model(pruned, (3, 32, 32))



def test_a_convnext_style_model_prunes_exactly_with_its_own_norm_parameters_and_layer_scale():
    """ConvNeXt's pattern: a depthwise 7x7 conv, a channels-first LayerNorm written with bare Parameters, a
    channels-last MLP through nn.Linear after a permute, and a layer-scale Parameter: every one follows its
    unit's channels (benchmarks/budget_fit.py times this model; exact costs: the parametrized test above)."""
    from benchmarks.budget_fit import convnext_ish

    model = convnext_ish().eval()
    graph = build_unit_graph(model, (3, 32, 32))
    assert len(graph) == 9
    plan = PruningPlan.from_ratios(graph, np.random.default_rng(0).uniform(0.2, 1.0, len(graph)))
    pruned = apply_plan(model, graph, plan)
    stem = plan.counts(graph)[0]  # the stem's unit carries its LayerNorm2d and every stage-1 gamma
    assert pruned.stem[1].weight.shape == (stem,) and pruned.stages[0][0].gamma.shape == (stem,)
