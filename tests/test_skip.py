"""``pruning.skip``: layers a user keeps at full width (glob patterns over module names)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config, write_config

from autoprune.cli import main
from autoprune.config import ScheduleConfig, load_config
from autoprune.core.cost import plan_costs
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.skip import skip_units
from autoprune.errors import AutopruneError, ConfigError
from autoprune.latency.lut import model_signature
from autoprune.models import build_model
from autoprune.pipeline.artifacts import load_pruned


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("resnet20", in_channels=3, num_classes=10)
    return model, build_unit_graph(model, (3, 32, 32))


def test_a_skipped_residual_stage_leaves_the_searchable_units(resnet20):
    _model, graph = resnet20
    kept = skip_units(graph, ["layer3.*"])
    gone = [u.name for u in kept.skipped]
    assert gone == ["layer3.0.conv1", "layer3.0.conv2", "layer3.1.conv1", "layer3.2.conv1"]
    assert kept.names == [n for n in graph.names if n not in gone]
    assert [u.index for u in kept.units] == list(range(len(kept)))  # re-numbered for the env's state
    assert kept.discovered() == [(u.name, u.out_channels) for u in graph.units]
    assert model_signature(kept) == model_signature(graph)  # a LUT of the model still fits
    # a pattern on one conv of the stem's residual unit keeps the whole unit (shared channels)
    stem = skip_units(graph, ["layer1.1.conv2"])
    assert [u.name for u in stem.skipped] == ["conv1"] and "conv1" not in stem.names
    with pytest.raises(AutopruneError, match="kept whole by pruning.skip"):
        stem.unit("conv1")


def test_skipped_units_cost_full_width(resnet20):
    _model, graph = resnet20
    kept = skip_units(graph, ["conv1", "layer1.*"])
    assert kept.discovered() == skip_units(skip_units(graph, ["conv1"]), ["layer1.*"]).discovered()
    full, part = plan_costs(graph), plan_costs(kept)
    halved = {u.name: max(1, u.out_channels // 2) for u in kept.units}
    both = {**{u.name: u.out_channels for u in graph.units}, **halved}
    for kind in ("flops", "params"):
        assert part[kind].base == full[kind].base  # nothing pruned: the same model
        assert part[kind]([halved[n] for n in kept.names]) == pytest.approx(full[kind]([both[n] for n in graph.names]))
        assert part[kind]([1] * len(kept)) > full[kind]([1] * len(graph))


def test_bad_patterns_are_one_line_errors(resnet20):
    _model, graph = resnet20
    with pytest.raises(AutopruneError, match=r"'layer9\.\*' matches no layer of the model \(prunable units: conv1,"):
        skip_units(graph, ["layer9.*"])
    with pytest.raises(AutopruneError, match="nothing is left to prune"):
        skip_units(graph, ["*"])
    with pytest.raises(ConfigError, match="pattern is empty"):
        load_config(tiny_config(pruning={"skip": [" "]}))
    with pytest.raises(ConfigError, match="pruning.skip must be a list"):
        load_config(tiny_config(pruning={"skip": 3}))


def test_search_keeps_the_skipped_layer_whole(tmp_path, capsys):
    out = tmp_path / "run"
    raw = tiny_config(pruning={"skip": ["features.0"]}, searcher={"name": "uniform"}, budget={"flops": 0.4})
    assert main(["search", write_config(tmp_path, raw), "--workers", "0", "--out", str(out), "--no-progress"]) == 0
    plan = json.loads((out / "best_plan.json").read_text())
    assert set(plan["channels"]) == {"features.4", "fc1"}
    model = load_pruned(out / "pruned_model.pt")
    assert model.features[0].out_channels == 8 and model.features[4].out_channels < 16
    assert json.loads((out / "summary.json").read_text())["pruned"]["flops_kept"] <= 0.4 + 1e-9
    code = main(["search", write_config(tmp_path, raw), "--set", "pruning.skip=[nope]", "--workers", "0",
                 "--out", str(tmp_path / "bad"), "--no-progress"])
    assert code == 2 and not (tmp_path / "bad" / "summary.json").exists()
    assert "pruning.skip: 'nope' matches no layer of the model" in capsys.readouterr().err


def test_iterative_schedule_keeps_the_skip(tiny_session):
    from autoprune.core.criteria import get_criterion
    from autoprune.core.iterative import iterative_prune

    graph = skip_units(tiny_session.graph, ["features.4"])
    plan = PruningPlan.from_ratios(graph, {n: 0.5 for n in graph.names})
    x = tiny_session.data.train.tensors[0][:64]
    batches = [(x, tiny_session.data.train.tensors[1][:64])]
    result = iterative_prune(tiny_session.model, graph, plan, ScheduleConfig(2, "linear"), tiny_session.cfg.pruning,
                             batches, get_criterion(tiny_session.cfg.pruning), retrain=lambda m: m)
    modules = dict(result.model.named_modules())
    assert modules["features.4"].out_channels == graph.skipped[0].out_channels
    assert modules["features.0"].out_channels == plan.channels["features.0"]
    assert result.model(x).shape == (64, 10) and not torch.isnan(result.model(x)).any()


def test_a_budget_below_the_fixed_part_says_lowering_min_ratio_cannot_help(tmp_path):
    from autoprune.errors import BudgetError
    from autoprune.pipeline.session import prepare

    raw = tiny_config(pruning={"skip": ["features.0", "fc1"], "min_ratio": 0.9}, budget={"flops": 0.05})
    with pytest.raises(BudgetError, match=r"below what this model can reach: 0\.\d+ of the base stays .* pruning\.skip"):
        prepare(load_config(raw), progress=False)
    raw["budget"] = {"flops": 0.5}  # reachable with every unit at one channel, not at min_ratio
    with pytest.raises(BudgetError, match="below the minimum reachable .* lower pruning.min_ratio"):
        prepare(load_config(raw), progress=False)


def test_units_command_lists_the_names_skip_and_plans_use(capsys):
    assert main(["units", "--model", "resnet20", "--input-shape", "3,32,32", "--skip", "layer3.*", "--round-to", "8"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["unit", "kind", "channels", "step"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert list(rows)[:2] == ["conv1", "layer1.0.conv1"] and len(rows) == 12
    assert rows["conv1"][1:4] == ["conv", "16", "8"] and "layer1.2.conv2" in lines[1]
    assert rows["layer3.0.conv2"][4] == "skip" and rows["layer2.0.conv1"][4].endswith("%")
    assert lines[-1].startswith("8 prunable unit(s), 4 kept whole by --skip")
    assert main(["units", "--model", "resnet20", "--input-shape", "3,32,32", "--skip", "nope"]) == 2
    assert "matches no layer" in capsys.readouterr().err
