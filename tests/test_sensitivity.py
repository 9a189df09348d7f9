"""Sensitivity analysis: curves on a trained model, the searcher meets the budget, the command."""

from __future__ import annotations

import csv

import yaml
from conftest import tiny_config

from autoprune.agents.sensitivity import SensitivitySearcher, analyse, ratios_for_drop
from autoprune.cli import main
from autoprune.search.records import TrialRecorder


def test_curves_are_monotone_ish_on_trained_model(tiny_session):
    ctx = tiny_session.context(tiny_session.evaluator(), TrialRecorder(None), None, False, progress=False)
    rows = analyse(ctx, [0.1, 0.5, 0.9])
    acc = {(r["unit"], r["ratio"]): r["val_accuracy"] for r in rows}
    units = tiny_session.graph.names
    assert len(rows) == 3 * len(units)
    better = sum(acc[(u, 0.9)] >= acc[(u, 0.1)] for u in units)
    assert better >= len(units) - 1 and better * 2 > len(units)
    assert any(acc[(u, 0.9)] > acc[(u, 0.1)] for u in units)  # pruning hard does hurt somewhere
    assert [r["unit"] for r in ctx.recorder.rows] == [r["unit"] for r in rows]  # analysis rows recorded


def test_ratios_for_drop_is_monotone():
    curves = {"a": {0.2: 0.5, 0.5: 0.8, 0.9: 0.9}, "b": {0.2: 0.85, 0.5: 0.88, 0.9: 0.9}}
    tight, loose = ratios_for_drop(curves, 0.9, 0.0), ratios_for_drop(curves, 0.9, 0.06)
    assert tight == {"a": 0.9, "b": 0.9}
    assert loose == {"a": 0.9, "b": 0.2}
    assert ratios_for_drop(curves, 0.9, -1.0) == {"a": 1.0, "b": 1.0}


def test_sensitivity_searcher_meets_budget(tiny_session):
    ctx = tiny_session.context(tiny_session.evaluator(), TrialRecorder(None), None, False, progress=False)
    searcher = SensitivitySearcher(ctx, SensitivitySearcher.parse_options({"ratios": [0.2, 0.5, 0.8]}))
    plan = searcher.search()
    assert ctx.fits(plan)
    assert plan.meta["flops_kept"] <= tiny_session.budget.fraction + 1e-9
    assert plan.meta["threshold"] >= 0
    final = ctx.recorder.rows[-1]
    assert final["unit"] == "" and final["val_accuracy"] == plan.meta["val_accuracy"]


def test_sensitivity_command_writes_csv_and_plot(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_config()))
    out = tmp_path / "sens"
    assert main(["sensitivity", str(cfg_path), "--ratios", "0.25,0.75", "--out", str(out), "--no-progress"]) == 0
    with open(out / "sensitivity.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["ratio"] for r in rows} == {"0.25", "0.75"}
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["sensitivity", str(cfg_path), "--ratios", "0,2", "--out", str(out)]) == 2
