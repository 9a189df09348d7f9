"""The pruning plan and the strict experiment config."""

from __future__ import annotations

import pytest
from conftest import tiny_config
from hypothesis import given
from hypothesis import strategies as st

from autoprune.config import (
    GRANULARITIES,
    RENAMED,
    SCHEDULE_KINDS,
    ExperimentConfig,
    check_choice,
    load_config,
    parse_budget,
)
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan, resolve_count
from autoprune.errors import AutopruneError, ConfigError, closest
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
    with pytest.raises(ConfigError, match=r"unknown config key pruning\.critrion: did you mean pruning\.criterion\?"):
        load_config(raw)
    with pytest.raises(ConfigError, match="unknown config key budgett: did you mean budget"):
        load_config({**tiny_config(), "budgett": {"flops": 0.5}})
    with pytest.raises(ConfigError, match=r"unknown config key train\.zzz: remove it \(valid keys of train: epochs"):
        load_config(tiny_config(), ["train.zzz=1"])


@pytest.mark.parametrize("word,choices,expected", [
    ("epocs", ["epochs", "lr", "batch_size"], "epochs"),
    ("lr_scal", ["epochs", "lr_scale", "schedule"], "lr_scale"),
    ("warmpu", ["episodes", "warmup", "warmup_sampling"], "warmup"),
    ("Batch-Size", ["epochs", "batch_size"], "batch_size"),
    ("channels", GRANULARITIES, "channel"),
    ("cubik", SCHEDULE_KINDS, "cubic"),
    ("flop", ["flops", "params", "latency", "latency_ms"], "flops"),
    ("xyz", GRANULARITIES, None),
])
def test_closest_suggests_common_misspellings(word, choices, expected):
    assert closest(word, choices) == expected


@pytest.mark.parametrize("section,old,new", [
    ("evaluation", "val_samples", "score_samples"),
    ("finetune", "rewind", "rewind_epoch"),
])
def test_renamed_keys_name_the_new_key(section, old, new):
    with pytest.raises(ConfigError, match=rf"^{section}\.{old} was renamed to {section}\.{new}; rename it"):
        load_config(tiny_config(), [f"{section}.{old}=1"])
    assert old in {k.rpartition(".")[2] for k in RENAMED if k.startswith(section)}


def test_renamed_searcher_option_only_where_the_new_one_exists():
    from autoprune.agents.baselines import RandomSearcher
    from autoprune.agents.ddpg import DdpgSearcher
    from autoprune.agents.sensitivity import SensitivitySearcher

    with pytest.raises(ConfigError, match="^searcher.fill_budget was renamed to searcher.scale_to_budget"):
        SensitivitySearcher.parse_options({"fill_budget": False})
    assert SensitivitySearcher.parse_options({"scale_to_budget": False}).scale_to_budget is False
    assert DdpgSearcher.parse_options({"fill_budget": True, "action_wall": True}).fill_budget is True  # kept
    with pytest.raises(ConfigError, match="^searcher.fill_budget is an option of ddpg, not random"):
        RandomSearcher.parse_options({"fill_budget": True})


def test_another_searchers_option_is_named_as_such():
    from autoprune.agents.baselines import RandomSearcher
    from autoprune.agents.ddpg import DdpgSearcher

    with pytest.raises(ConfigError, match=r"^searcher\.warmup is an option of ddpg, not random: remove it, "
                                          r"or set searcher\.name: ddpg; valid keys of searcher: evaluations$"):
        RandomSearcher.parse_options({"name": "random", "warmup": 10})
    with pytest.raises(ConfigError, match=r"^unknown config key searcher\.warmpu: did you mean searcher\.warmup\?"):
        DdpgSearcher.parse_options({"warmpu": 10})


@pytest.mark.parametrize("override,match", [
    ("pruning.granularity=channels", r"pruning\.granularity 'channels' is not a valid value; did you mean channel\? "
                                     r"Set it to one of: channel, fine, nm"),
    ("pruning.scope=globl", "did you mean global"),
    ("pruning.granularity=xyz", "set it to one of: channel, fine, nm"),
    ("train.optimizer=adam", r"train\.optimizer 'adam' is not a valid value; did you mean adamw\? Set it to one of: sgd, adamw"),
])
def test_enumerated_values_suggest_the_closest(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config(), [override])


def test_check_choice_accepts_valid_values():
    check_choice("k", "b", ("a", "b"))
    with pytest.raises(ConfigError, match="^k 'c' is not a valid value; set it to one of: a, b$"):
        check_choice("k", "c", ("a", "b"))


@pytest.mark.parametrize("override,match", [
    ("train.epochs=abc", "train.epochs must be an integer"),
    ("budget.flops=1.5", r"must be in \(0, 1\]"),
    ("budget.flops=0", r"must be in \(0, 1\]"),
    ("pruning.min_ratio=0", "min_ratio"),
    ("model=3", "model must be a mapping"),
    ("pruning.round_to=16x", "pruning.round_to must be an integer >= 1 or auto"),
    ("pruning.round_to=0", "pruning.round_to must be >= 1 or auto"),
    ("pruning.round_to=2.5", "pruning.round_to must be an integer >= 1 or auto"),
])
def test_wrong_values_are_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config(), [override])


def test_overrides_and_budget_short_form():
    cfg = load_config(tiny_config(), ["searcher.evaluations=7", "pruning.round_to=4"], budget="params=0.3")
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.searcher["evaluations"] == 7 and cfg.pruning.round_to == 4
    assert load_config(tiny_config(), ["pruning.round_to=auto"]).pruning.round_to == "auto"
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
