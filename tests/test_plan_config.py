"""The pruning plan and the strict experiment config."""

from __future__ import annotations

import pytest
from conftest import tiny_config
from hypothesis import given
from hypothesis import strategies as st

from autoprune.config import ExperimentConfig, load_config, parse_budget
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan, resolve_count
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models.zoo import MODELS


@given(st.floats(0.0, 1.0), st.integers(1, 512), st.sampled_from([1, 2, 4, 8]))
def test_resolve_count_is_within_range_and_rounded(ratio, channels, round_to):
    kept = resolve_count(ratio, channels, round_to)
    assert 1 <= kept <= channels
    if round_to > 1 and kept not in (channels, 1):
        assert kept % round_to == 0


def test_plan_json_round_trip():
    graph = build_unit_graph(MODELS.get("resnet20")(), (3, 32, 32))
    plan = PruningPlan.from_ratios(graph, [0.3 + 0.05 * i for i in range(len(graph))], round_to=2,
                                   searcher="test", val_accuracy=0.5)
    again = PruningPlan.from_json(plan.to_json())
    assert again.channels == plan.channels
    assert again.ratios == pytest.approx(plan.ratios)
    assert again.meta == plan.meta
    assert all(c % 2 == 0 for c in again.channels.values())


def test_plan_rejects_unknown_units_and_bad_json():
    graph = build_unit_graph(MODELS.get("mnist_cnn")(), (1, 28, 28))
    with pytest.raises(AutopruneError, match="unknown units"):
        PruningPlan.from_ratios(graph, {"nope": 0.5})
    with pytest.raises(AutopruneError, match="not valid JSON"):
        PruningPlan.from_json("{")


def test_unknown_key_is_named_with_suggestion():
    raw = tiny_config()
    raw["pruning"] = {"critrion": "l1"}
    with pytest.raises(ConfigError, match=r"pruning\.'critrion'.*did you mean.*criterion"):
        load_config(raw)
    with pytest.raises(ConfigError, match="unknown config key 'budgett'"):
        load_config({**tiny_config(), "budgett": {"flops": 0.5}})


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("budget.flops=1.5", r"must be in \(0, 1\]"),
    ("budget.flops=0", r"must be in \(0, 1\]"),
    ("pruning.min_ratio=0", "min_ratio"),
    ("model=3", "model must be a mapping"),
])
def test_wrong_values_are_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config(), [override])


def test_overrides_and_budget_short_form():
    cfg = load_config(tiny_config(), ["searcher.evaluations=7", "pruning.round_to=4"], budget="params=0.3")
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.searcher["evaluations"] == 7 and cfg.pruning.round_to == 4
    assert (cfg.budget.kind, cfg.budget.value) == ("params", 0.3)
    assert parse_budget("latency=0.6") == {"latency": 0.6}
    with pytest.raises(ConfigError):
        parse_budget("flops")


def test_shipped_experiment_files_are_valid_and_the_quickstart_runs_on_local_ray():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))
    assert files
    configs = {f.stem: load_config(str(f)) for f in files}  # strict: a stale key would raise
    quick = configs["quickstart"]
    assert quick.ray.workers > 0 and quick.ray.address is None  # a local Ray started for the run
    assert quick.model.name == "mnist_cnn" and quick.data.name == "mnist5k"
