"""Latency measurement, LUT format/validation/interpolation/build/check, latency budgets, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_config
from factories import TinyCNN, TinyResidual
from hypothesis import given, settings
from hypothesis import strategies as st

from autoprune.cli import main
from autoprune.core.cost import WidthModel, make_budget
from autoprune.core.graph import build_unit_graph
from autoprune.errors import AutopruneError
from autoprune.latency.build import LayerProfiler, build_lut
from autoprune.latency.lut import Lut, LutCost, ModuleTable, load_lut, make_header, model_signature, tabulate
from autoprune.latency.timing import measure_latency

SHAPE = (1, 8, 8)


def synthetic_lut(graph, step: int = 4, slow: str | None = None, factor: float = 30.0, **header) -> Lut:
    """A LUT whose entries are the module's MACs at those widths (x ``factor`` for ``slow``), in us."""
    info = {m.name: m for m in graph.modules}

    def fn(name, i, o):
        m = info[name]
        macs = m.macs * (o / m.out_ch) * (1.0 if m.kind == "depthwise" else i / m.in_ch)
        return 1e-3 * macs / 1000 * (factor if name == slow else 1.0) + 0.001

    return Lut(make_header(graph, **{"remainder_ms": 0.5, **header}), tabulate(graph, fn, step))


@pytest.fixture
def graph():
    return build_unit_graph(TinyCNN().eval(), SHAPE)


def test_measure_latency_reports_a_median_inside_its_spread_and_restores_state():
    model = TinyCNN().train()
    threads = torch.get_num_threads()
    stats = measure_latency(model, SHAPE, batch=2, threads=1, warmup=1, repeats=5)
    assert 0 < stats.p10_ms <= stats.median_ms <= stats.p90_ms
    assert stats.batch == 2 and stats.threads == 1 and stats.runs_per_sample >= 1
    assert torch.get_num_threads() == threads and model.training
    cpu = measure_latency(model, SHAPE, threads=1, warmup=1, repeats=3, clock="cpu")
    assert cpu.median_ms > 0 and cpu.clock == "cpu"
    with pytest.raises(AutopruneError, match="one thread"):
        measure_latency(model, SHAPE, threads=2, repeats=3, clock="cpu")


def test_lut_json_round_trip_keeps_tables_and_predictions(graph, tmp_path):
    lut = synthetic_lut(graph, calibration={"scale": 1.2, "offset_ms": 0.1})
    path = tmp_path / "lut.json"
    path.write_text(lut.to_json())
    back = load_lut(path, graph)
    assert back.header == json.loads(lut.to_json())["header"]
    assert [t.name for t in back.tables] == [t.name for t in lut.tables]
    for a, b in zip(lut.tables, back.tables, strict=True):
        assert a.in_grid == b.in_grid and a.out_grid == b.out_grid
        np.testing.assert_allclose(a.ms, b.ms, atol=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = [int(rng.integers(1, c + 1)) for c in graph.channels]
        assert LutCost(back, graph)(counts) == pytest.approx(LutCost(lut, graph)(counts), abs=1e-5)


def test_prediction_is_exact_on_grid_points(graph):
    lut = synthetic_lut(graph, step=4)
    cost = LutCost(lut, graph)
    by_name = {t.name: t for t in lut.tables}
    widths = WidthModel(graph)
    for counts in ([8, 16], [4, 8], [4, 16], [8, 4], [1, 12]):
        in_k, out_k = widths.ratios(counts)
        expected = 0.0
        for idx, m in enumerate(graph.modules):
            if m.name in by_name:
                t = by_name[m.name]
                i = t.in_grid.index(round(in_k[idx] * m.in_ch))
                expected += t.ms[i, t.out_grid.index(round(out_k[idx] * m.out_ch))]
        assert cost(counts) == pytest.approx(expected + 0.5, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.floats(1, 24), st.floats(1, 16))
def test_interpolation_is_bounded_by_neighbours_and_exact_for_bilinear_tables(seed, x, y):
    rng = np.random.default_rng(seed)
    in_grid, out_grid = [1, 8, 16, 24], [1, 4, 8, 16]
    ms = rng.uniform(0.1, 5.0, (4, 4))
    table = ModuleTable("m", "conv", in_grid, out_grid, ms)
    i = min(int(np.searchsorted(in_grid, x, side="right")) - 1, 2)
    j = min(int(np.searchsorted(out_grid, y, side="right")) - 1, 2)
    corners = ms[i:i + 2, j:j + 2]
    assert corners.min() - 1e-12 <= table.lookup(x, y) <= corners.max() + 1e-12
    a, b, c, d = rng.uniform(0, 1, 4)
    bilinear = ModuleTable("m", "conv", in_grid, out_grid,
                           np.array([[a + b * p + c * q + d * p * q for q in out_grid] for p in in_grid]))
    assert bilinear.lookup(x, y) == pytest.approx(a + b * x + c * y + d * x * y, rel=1e-9)


def test_width_outside_the_grid_is_an_error():
    table = ModuleTable("m", "conv", [4, 8], [4, 8], np.ones((2, 2)))
    with pytest.raises(AutopruneError, match="covers 4..8"):
        table.lookup(2, 8)


def _mutations():
    def wrong_schema(d):
        d["header"]["schema"] = "autoprune.lut/v0"

    def missing_header_field(d):
        del d["header"]["threads"]

    def missing_module(d):
        d["modules"].pop(0)

    def missing_entry(d):
        d["modules"][1]["ms"][0][0] = None

    def ragged(d):
        d["modules"][1]["ms"][0].pop()

    def negative(d):
        d["modules"][0]["ms"][0][0] = -0.1

    def nan(d):
        d["modules"][1]["ms"][1][1] = float("nan")

    def bad_calibration(d):
        d["header"]["calibration"] = {"scale": 1.0}

    def negative_elementwise(d):
        d["header"]["calibration"] = {"scale": 1.0, "offset_ms": 0.1, "ms_per_melement": -2.0}

    def signature(d):
        d["header"]["model_signature"] = "0" * 64

    def grid_end(d):
        d["modules"][1]["out"][-1] = 17

    return [(f.__name__, f) for f in (wrong_schema, missing_header_field, missing_module, missing_entry, ragged,
                                      negative, nan, bad_calibration, negative_elementwise, signature,
                                      grid_end)]


@pytest.mark.parametrize("label,mutate", _mutations(), ids=[m[0] for m in _mutations()])
def test_bad_luts_are_rejected_with_a_clear_error(graph, tmp_path, label, mutate):
    data = synthetic_lut(graph).to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(AutopruneError, match="LUT"):
        load_lut(path, graph)


def test_lut_for_another_model_is_rejected_and_unpinned_lut_is_checked_structurally(graph, tmp_path):
    other = build_unit_graph(TinyResidual().eval(), SHAPE)
    path = tmp_path / "other.json"
    path.write_text(synthetic_lut(other).to_json())
    with pytest.raises(AutopruneError, match="different model"):
        load_lut(path, graph)
    path.write_text(synthetic_lut(other, model_signature=None).to_json())
    with pytest.raises(AutopruneError, match="no table for module"):
        load_lut(path, graph)
    path.write_text(synthetic_lut(graph, model_signature=None).to_json())
    assert load_lut(path, graph).header["model_signature"] is None
    assert model_signature(graph) != model_signature(other)


def test_latency_budget_from_a_lut_is_a_fraction_of_the_predicted_base(graph, tmp_path):
    path = tmp_path / "lut.json"
    path.write_text(synthetic_lut(graph, remainder_ms=0.01).to_json())
    budget = make_budget(graph, "latency", 0.6, lut=str(path))
    assert budget.kind == "latency" and budget.cost.base > 0
    assert budget.target == pytest.approx(0.6 * budget.cost.base)
    assert budget.fits([1, 1]) and not budget.fits(graph.channels)
    absolute = make_budget(graph, "latency", 0.9, absolute=True, lut=str(path))
    assert absolute.target == 0.9


def test_measured_latency_cost_caches_by_counts(graph):
    budget = make_budget(graph, "latency", 0.5, model=graph.model)
    cost = budget.cost
    assert cost.base > 0 and cost.source == "measured"
    first = cost([4, 8])
    assert first > 0 and cost([4, 8]) == first and len(cost.cache) == 2


def test_build_lut_profiles_every_dense_module_and_calibrates(graph):
    lut = build_lut(graph.model, SHAPE, step=8, repeats=3, calibration_plans=2, progress=False, model_name="tiny")
    lut.check(graph)
    assert {t.name for t in lut.tables} == {"conv1", "conv2", "fc"}
    assert all((t.ms > 0).all() for t in lut.tables)
    h = lut.header
    assert h["batch"] == 1 and h["threads"] == 1 and h["dtype"] == "float32" and h["model"] == "tiny"
    assert h["input_shape"] == list(SHAPE) and h["model_signature"] == model_signature(graph)
    assert math.isfinite(h["remainder_ms"]) and h["base_measured_ms"] > 0
    if "calibration" in h:  # fitted on the base + 2 random variants
        assert h["calibration"]["plans"] == 3 and h["calibration"]["scale"] > 0
        assert h["calibration"]["ms_per_melement"] >= 0 and h["calibration"]["offset_ms"] >= 0
    else:  # on a tiny model timing noise can make the fit useless: plain sum + remainder
        assert LutCost(lut, graph).base == pytest.approx(h["base_measured_ms"])


def test_prediction_adds_the_elementwise_term_for_the_kept_output_elements(graph):
    plain = synthetic_lut(graph, calibration={"scale": 1.0, "offset_ms": 0.2})
    withelem = synthetic_lut(graph, calibration={"scale": 1.0, "offset_ms": 0.2, "ms_per_melement": 50.0})
    a, b = LutCost(plain, graph), LutCost(withelem, graph)
    widths = WidthModel(graph)
    # TinyCNN at 1x8x8: conv1 8 x 8x8, conv2 16 x 8x8, fc 10 outputs
    assert widths.activations(graph.channels) == 8 * 64 + 16 * 64 + 10
    assert [m.out_spatial for m in graph.modules if m.kind in ("conv", "linear")] == [64, 64, 1]
    for counts in (graph.channels, [4, 8], [1, 1]):
        assert b(counts) - a(counts) == pytest.approx(50.0 * widths.activations(counts) / 1e6)
    assert widths.activations([4, 8]) == 4 * 64 + 8 * 64 + 10


def test_time_against_base_times_the_base_in_the_same_passes(graph):
    from autoprune.latency.timing import time_against_base, time_plans

    t = time_against_base(graph.model, [graph.model, TinyCNN().eval()], SHAPE, repeats=3, rounds=2, clock="cpu")
    assert t.base_ms > 0 and len(t.ms) == len(t.relative) == 2
    assert t.ms == pytest.approx([r * t.base_ms for r in t.relative])
    small = time_plans(graph, graph.model, [list(graph.channels), [1, 1]], repeats=3, rounds=2, clock="cpu")
    assert small.relative[1] < 1.5 and small.ms[1] > 0


def test_layer_profiler_shares_measurements_between_same_shaped_modules():
    graph = build_unit_graph(TinyResidual().eval(), SHAPE)
    prof = LayerProfiler(graph, repeats=2)
    prof("a1", 8, 12)
    prof("b1", 8, 12)  # same shape as a1
    assert len(prof.cache) == 1


def test_cli_lut_build_and_check_json(tmp_path, capsys):
    lut = tmp_path / "tiny.json"
    code = main(["lut", "build", "--model", "factories:tiny_cnn", "--input-shape", "1,8,8", "--step", "8",
                 "--repeats", "3", "--calibration-plans", "2", "--out", str(lut), "--no-progress"])
    assert code == 0 and "wrote" in capsys.readouterr().out
    report = tmp_path / "check.json"
    code = main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_cnn", "--plans", "4",
                 "--repeats", "3", "--json", str(report), "--no-progress"])
    assert code == 0
    result = json.loads(report.read_text())
    assert result["plans"] == 4 and result["mape"] >= 0 and 0 <= result["within_10pct"] <= 1
    errors = np.abs(np.array(result["predicted_ms"]) - result["measured_ms"]) / np.array(result["measured_ms"])
    assert result["mape"] == pytest.approx(errors.mean() * 100)
    assert result["base_ms_now"] > 0 and result["drift"] == pytest.approx(result["base_ms_now"] / result["base_ms_at_build"])
    corrected = np.array(result["measured_ms"]) / result["drift"]
    errors = np.abs(np.array(result["predicted_ms"]) - corrected) / corrected
    assert result["mape_drift_corrected"] == pytest.approx(errors.mean() * 100)
    assert "build-time latency" in capsys.readouterr().out
    assert (tmp_path / "check.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    code = main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_residual", "--plans", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "LUT" in err[0]


def test_search_with_a_latency_budget_lands_under_it_by_the_lut(tmp_path):
    """A LUT written by "another tool" (MAC-proportional numbers) drives a latency-budget search."""
    from autoprune.models.zoo import build_model

    model_cfg = {"name": "mnist_cnn", "kwargs": {"width": 8}}
    graph = build_unit_graph(build_model("mnist_cnn", kwargs={"width": 8}, in_channels=1, num_classes=10), SHAPE)
    lut = tmp_path / "lut.json"
    lut.write_text(synthetic_lut(graph, step=1, remainder_ms=0.001, device="elsewhere").to_json())
    raw = tiny_config(model=model_cfg, budget={"flops": 0.5, "lut": str(lut)}, train={"epochs": 1, "lr": 0.05},
                      searcher={"name": "netadapt", "initial_reduction": 0.25, "short_term_batches": 1})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--budget", "latency=0.6", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    lat = summary["latency"]
    assert summary["budget"]["kind"] == "latency" and lat["source"] == "lut"
    assert lat["pruned_predicted_ms"] <= 0.6 * lat["base_predicted_ms"] * (1 + 1e-9)
    assert lat["base_measured_ms"] > 0 and lat["pruned_measured_ms"] > 0
    import pandas as pd

    trials = pd.read_parquet(out / "trials.parquet")
    chosen = trials[trials["chosen"]]
    assert chosen["latency_kept"].iloc[-1] <= 0.6 + 1e-9


def test_search_with_a_measured_latency_budget_times_the_plans_it_prices(tmp_path):
    """No LUT: every plan the searcher prices is pruned and timed; the result is under the budget.

    Width 64 keeps the budget far above what min_ratio reaches (~0.4 here), so timing noise on a busy
    machine cannot make it unreachable."""
    raw = tiny_config(model={"name": "mnist_cnn", "kwargs": {"width": 64}}, budget={"latency": 0.8},
                      train={"epochs": 1, "lr": 0.05}, searcher={"name": "uniform", "iterations": 6})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    lat = summary["latency"]
    assert summary["budget"]["kind"] == "latency" and lat["source"] == "measured"
    assert lat["pruned_predicted_ms"] <= 0.8 * lat["base_predicted_ms"] * (1 + 1e-9)
    assert summary["pruned"]["flops_kept"] < 1.0
