"""Granularities fine and N:M: masks survive fine-tuning, plan-only costs, storage accounting."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from autoprune.config import PruningConfig, TrainConfig, load_config
from autoprune.core.cost import COST_MODELS
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.core.sparsity import SparseCost, make_permanent, nm_groups_view, storage_report, tensor_storage
from autoprune.core.train import train_model
from autoprune.errors import ConfigError


def finetuned(session, plan, pruning, steps=15):
    pruned = apply_plan(session.model, session.graph, plan, pruning)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    train_model(pruned, session.data.train, TrainConfig(batch_size=64, lr=0.05), max_steps=steps, progress=False)
    changed = any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items() if k.endswith("weight_orig"))
    assert changed, "fine-tuning did not move the weights"
    return make_permanent(pruned)


def member_weights(session, model):
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach() for u in session.graph.units for name in u.members}


def test_nm_masks_hold_after_finetuning(tiny_session):
    pruning = PruningConfig(granularity="nm", n=2, m=4)
    plan = PruningPlan.from_ratios(tiny_session.graph, 0.5)
    model = finetuned(tiny_session, plan, pruning)
    checked = 0
    for name, w in member_weights(tiny_session, model).items():
        groups = nm_groups_view(w, 4)
        if groups is None:  # first conv (1 input channel): left dense
            assert (w != 0).all(), name
            continue
        zeros = (groups == 0).sum(1)
        assert bool((zeros >= 2).all()), f"{name}: a group of 4 has fewer than 2 zeros"
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_fine_sparsity_within_one_percent_after_finetuning(tiny_session, scope):
    graph = tiny_session.graph
    ratios = {u.name: r for u, r in zip(graph.units, [0.75, 0.25, 0.5], strict=False)}
    plan = PruningPlan.from_ratios(graph, ratios)
    model = finetuned(tiny_session, plan, PruningConfig(granularity="fine", scope=scope))
    weights = member_weights(tiny_session, model)
    target = {name: plan.channels[u.name] / u.out_channels for u in graph.units for name in u.members}
    if scope == "layer":
        for name, w in weights.items():
            assert abs(float((w != 0).float().mean()) - target[name]) <= 0.01, name
    total = sum(w.numel() for w in weights.values())
    kept = sum(int((w != 0).sum()) for w in weights.values())
    wanted = sum(target[n] * w.numel() for n, w in weights.items())
    assert abs(kept - wanted) / total <= 0.01
    # the plan-only cost model prices exactly what was built
    cost = COST_MODELS.get("params_fine")(graph)
    nonzeros = sum(int((p != 0).sum()) for p in model.parameters())
    dense_other = sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[0] not in weights
                      or not n.endswith("weight"))
    assert cost(plan.counts(graph)) == pytest.approx(kept + dense_other, abs=2)
    assert nonzeros <= cost(plan.counts(graph))


def test_nm_cost_matches_built_model(tiny_session):
    graph = tiny_session.graph
    plan = PruningPlan.from_ratios(graph, 0.5)
    model = make_permanent(apply_plan(tiny_session.model, graph, plan, PruningConfig(granularity="nm")))
    cost = SparseCost(graph, "params", "nm", 2, 4)
    zeros_made = sum(int((p == 0).sum()) for p in model.parameters()) - sum(
        int((p == 0).sum()) for p in tiny_session.model.parameters())
    assert cost(plan.counts(graph)) == cost.base - zeros_made
    assert cost(graph.channels) == cost.base


def test_storage_accounting_on_known_tensor():
    t = torch.zeros(4, 8)
    t[0, :3] = 1.0
    t[2, 1:8] = 2.0  # 10 non-zeros in 4 rows of 8
    dense = tensor_storage(t, "dense")
    assert dense == {"dense_bytes": 128, "value_bytes": 128, "index_bytes": 0, "nonzeros": 10, "params": 32}
    csr = tensor_storage(t, "csr")
    assert csr["value_bytes"] == 10 * 4
    assert csr["index_bytes"] == 10 * 4 + (4 + 1) * 4  # int32 column indices + row pointers
    nm = tensor_storage(t, "nm", n=2, m=4)
    assert nm["value_bytes"] == 16 * 4  # 2 of every 4 values kept
    assert nm["index_bytes"] == 16 * 2 // 8  # 2 bits of metadata per kept value

    layer = torch.nn.Linear(8, 4, bias=True)
    with torch.no_grad():
        layer.weight.copy_(t)
    report = storage_report(torch.nn.Sequential(layer), {"0": "csr"})
    assert report["dense_bytes"] == 128 + 16
    assert report["sparse_bytes"] == 40 + 60 + 16  # CSR weight + dense bias
    assert report["compression"] == pytest.approx(144 / 116)


def test_fine_run_writes_storage_and_meets_params_budget(tmp_path):
    from autoprune.pipeline.artifacts import load_pruned
    from autoprune.pipeline.run import run_search

    cfg = load_config(tiny_config(pruning={"granularity": "fine"}, budget={"params": 0.5}, searcher={"name": "uniform"},
                                  finetune={"epochs": 1, "lr_scale": 0.1, "schedule": {"steps": 2, "kind": "linear"}}))
    run_dir = run_search(cfg, out=tmp_path / "run", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    storage = summary["storage"]
    assert storage["nonzeros"] <= 0.5 * storage["params"] * 1.001
    assert storage["index_bytes"] > 0 and storage["sparse_bytes"] == storage["value_bytes"] + storage["index_bytes"]
    model = load_pruned(run_dir / "pruned_model.pt")
    assert sum(int((p != 0).sum()) for p in model.parameters()) == storage["nonzeros"]


def test_sparse_granularity_config_errors():
    from autoprune.core.sparsity import cost_kind

    with pytest.raises(ConfigError, match="granularity"):
        cost_kind("flops", PruningConfig(granularity="block"))
    with pytest.raises(ConfigError, match="latency"):
        cost_kind("latency", PruningConfig(granularity="fine"))
    with pytest.raises(ConfigError, match="n < m"):
        cost_kind("params", PruningConfig(granularity="nm", n=4, m=4))
    assert cost_kind("params", PruningConfig(granularity="fine")) == "params_fine"
