"""Iterative pruning schedules and lottery-ticket rewinding."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from autoprune.config import PruningConfig, ScheduleConfig, load_config
from autoprune.core.criteria import get_criterion
from autoprune.core.iterative import iterative_prune, recorded
from autoprune.core.plan import PruningPlan
from autoprune.errors import ConfigError
from autoprune.pipeline.session import prepare


def expected_widths(full, final, steps, kind):
    out = []
    for i in range(1, steps + 1):
        t = i / steps
        g = t if kind == "linear" else 1 - (1 - t) ** 3
        out.append([f if i == steps else round(a - (a - f) * g) for a, f in zip(full, final, strict=True)])
    return out


def run_schedule(session, plan, schedule, pruning=None, early=None):
    pruning = pruning or PruningConfig()
    ev = session.evaluator()
    return iterative_prune(session.model, session.graph, plan, schedule, pruning, ev.calibration,
                           get_criterion(pruning), lambda m: m, early)


@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_schedule_reaches_plan_along_its_curve(tiny_session, kind):
    graph = tiny_session.graph
    plan = PruningPlan.from_ratios(graph, 0.25)
    result = run_schedule(tiny_session, plan, ScheduleConfig(3, kind))
    assert result.widths == expected_widths(graph.channels, plan.counts(graph), 3, kind)
    assert result.widths[-1] == plan.counts(graph)
    modules = dict(result.model.named_modules())
    assert [modules[n].weight.shape[0] for n in graph.names] == plan.counts(graph)
    assert len(result.removals) == 3


def test_cubic_prunes_faster_early(tiny_session):
    graph = tiny_session.graph
    plan = PruningPlan.from_ratios(graph, 0.25)
    cubic = run_schedule(tiny_session, plan, ScheduleConfig(3, "cubic")).widths[0]
    linear = run_schedule(tiny_session, plan, ScheduleConfig(3, "linear")).widths[0]
    assert sum(cubic) < sum(linear)


def test_fine_schedule_densities(tiny_session):
    graph = tiny_session.graph
    plan = PruningPlan.from_ratios(graph, 0.25)
    result = run_schedule(tiny_session, plan, ScheduleConfig(2, "linear"), PruningConfig(granularity="fine"))
    assert result.widths == expected_widths(graph.channels, plan.counts(graph), 2, "linear")


@pytest.fixture(scope="module")
def rewind_session():
    cfg = load_config(tiny_config(finetune={"epochs": 1, "rewind_epoch": 1}))
    return prepare(cfg, progress=False)


def survivors(removals, channels):
    kept = list(range(channels))
    for step in removals:
        gone = set(step)
        kept = [k for i, k in enumerate(kept) if i not in gone]
    return kept


def test_rewind_restores_recorded_weights_channel(rewind_session):
    session = rewind_session
    state = recorded(session.model)
    assert state is not None
    assert not torch.equal(state["features.0.weight"], session.model.features[0].weight)  # trained on after epoch 1
    early = type(session.model)(**{"in_channels": 1, "num_classes": 10, "width": 8})
    early.load_state_dict(state)
    plan = PruningPlan.from_ratios(session.graph, 0.5)
    result = run_schedule(session, plan, ScheduleConfig(2, "linear"), early=early)
    steps = {name: [dict(step).get(name, []) for step in result.removals] for name in session.graph.names}
    k0 = survivors(steps["features.0"], 8)
    k1 = survivors(steps["features.4"], 16)
    model = result.model
    assert torch.equal(model.features[0].weight, state["features.0.weight"][k0])
    assert torch.equal(model.features[1].weight, state["features.1.weight"][k0])
    assert torch.equal(model.features[4].weight, state["features.4.weight"][k1][:, k0])
    assert len(k0) == plan.channels["features.0"]


def test_rewind_restores_recorded_weights_fine(rewind_session):
    session = rewind_session
    state = recorded(session.model)
    early = type(session.model)(in_channels=1, num_classes=10, width=8)
    early.load_state_dict(state)
    plan = PruningPlan.from_ratios(session.graph, 0.5)
    result = run_schedule(session, plan, ScheduleConfig(1, "linear"), PruningConfig(granularity="fine"), early=early)
    conv = result.model.features[4]
    mask = conv.weight_mask
    assert 0 < mask.mean() < 1
    assert torch.equal(conv.weight, state["features.4.weight"] * mask)
    trained = session.model.features[4].weight.detach().abs()
    assert trained[mask.bool()].min() >= trained[~mask.bool()].max()  # mask chosen on the trained weights


def test_rewind_needs_recorded_weights(tmp_path):
    base = tmp_path / "base.pt"
    model = prepare(load_config(tiny_config()), progress=False).model
    torch.save(model.state_dict(), base)
    with pytest.raises(ConfigError, match="finetune.rewind_epoch needs .* drop finetune.rewind_epoch or model.checkpoint"):
        load_config(tiny_config(model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(base)},
                                finetune={"rewind_epoch": 0}))
    with pytest.raises(ConfigError, match="finetune.rewind_epoch needs .* resumed run"):  # no record at run time
        prepare(load_config(tiny_config(finetune={"rewind_epoch": 0})), base_checkpoint=base, progress=False)


@pytest.mark.parametrize("finetune,match", [
    ({"rewind_epoch": 9}, r"finetune.rewind_epoch 9 is past the base training's 2 epochs .* at most 2"),
    ({"rewind_epoch": -1}, "finetune.rewind_epoch must be >= 0"),
    ({"rewind_epoch": "epoch_1"}, "finetune.rewind_epoch must be an integer"),
    ({"rewind": "init"}, "finetune.rewind was renamed to finetune.rewind_epoch.* init as 0"),
    ({"schedule": {"steps": 2, "kind": "exp"}}, "finetune.schedule.kind 'exp' is not a valid value"),
    ({"schedule": {"steps": 2, "kind": "linaer"}}, "did you mean linear"),
    ({"schedule": {"steps": 0}}, "finetune.schedule.steps must be >= 1"),
    ({"schedule": {"kind": "cubic"}}, "finetune.schedule.steps is required"),
    ({"schedule": {"steps": 2, "knd": "cubic"}}, "did you mean finetune.schedule.kind"),
    ({"schedule": 3}, "finetune.schedule must be a mapping"),
])
def test_schedule_and_rewind_are_checked_at_load(finetune, match):
    with pytest.raises(ConfigError, match=match):
        load_config(tiny_config(finetune=finetune))


def test_schedule_is_typed():
    cfg = load_config(tiny_config(finetune={"schedule": {"steps": 3}, "rewind_epoch": 1}))
    assert cfg.finetune.schedule == ScheduleConfig(steps=3, kind="cubic")
    assert cfg.finetune.rewind_epoch == 1
    with pytest.raises(ConfigError, match="does not apply to granularity nm"):
        load_config(tiny_config(finetune={"schedule": {"steps": 2}}, pruning={"granularity": "nm"}))


def test_run_with_schedule_and_rewind(tmp_path):
    from autoprune.pipeline.artifacts import load_pruned
    from autoprune.pipeline.run import run_search

    cfg = load_config(tiny_config(searcher={"name": "uniform"},
                                  finetune={"epochs": 1, "lr_scale": 0.1, "rewind_epoch": 0,
                                            "schedule": {"steps": 2, "kind": "cubic"}}))
    run_dir = run_search(cfg, out=tmp_path / "run", progress=False)
    plan = json.loads((run_dir / "best_plan.json").read_text())
    model = load_pruned(run_dir / "pruned_model.pt")
    modules = dict(model.named_modules())
    assert {n: modules[n].weight.shape[0] for n in plan["channels"]} == plan["channels"]
    assert json.loads((run_dir / "summary.json").read_text())["pruned"]["test_accuracy_after_finetune"] > 0.1
