"""Latency measurement, runtimes, drift-proof (relative) timing, LUT format/validation/interpolation/
build/check, old-format LUTs, the LUT directory, latency budgets, CLI."""

from __future__ import annotations

import json
import math
import re

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
from autoprune.latency.calibration import fit_calibration
from autoprune.latency.check import check_lut
from autoprune.latency.lut import Lut, LutCost, ModuleTable, load_lut, make_header, model_signature, tabulate
from autoprune.latency.tables import (
    ALIGNMENTS,
    calibration_counts,
    misaligned_melements,
    near_full_counts,
    padded_melements,
    padded_mmacs,
    random_counts,
)
from autoprune.latency.timing import TimedPlans, default_device_name, measure_latency, time_plans
from autoprune.models import build_model
from autoprune.registry import Registry

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
    lut = synthetic_lut(graph, calibration={"scale": 1.2, "offset": 0.1})
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


def test_grid_has_the_powers_of_two_below_its_step():
    """Between 1 and the step a layer's time is far from linear in its width: the grid samples it."""
    from autoprune.latency.tables import grid_counts

    assert grid_counts(16, 8) == [1, 2, 4, 8, 16]
    assert grid_counts(64, 16) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert grid_counts(3, 8) == [1, 2, 3]
    assert grid_counts(10, 1) == list(range(1, 11))
    with pytest.raises(AutopruneError, match="step must be >= 1"):
        grid_counts(8, 0)


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

    def negative_misaligned(d):
        d["header"]["calibration"] = {"scale": 1.0, "offset": 0.1, "align": 4, "per_misaligned": -2.0}

    def unknown_alignment(d):
        d["header"]["calibration"] = {"scale": 1.0, "offset": 0.1, "align": 3, "per_misaligned": 2.0}

    def negative_padded(d):
        d["header"]["calibration"] = {"scale": 1.0, "offset": 0.1, "pad": 16, "per_padded_mmac": -1.0}

    def pad_inputs_not_a_flag(d):
        d["header"]["calibration"] = {"scale": 1.0, "offset": 0.1, "pad": 16, "per_padded_mmac": 1.0,
                                      "pad_inputs": "no"}

    def anchor_unknown(d):
        d["header"]["calibration"] = {"scale": 1.0, "offset": 0.1, "anchor": "base"}

    def no_scale_and_no_padded_term(d):
        d["header"]["calibration"] = {"scale": 0.0, "offset": 0.1}

    def unknown_unit(d):
        d["header"]["unit"] = "seconds"

    def reference_without_rel(d):
        d["header"]["unit"] = "reference"

    def signature(d):
        d["header"]["model_signature"] = "0" * 64

    def grid_end(d):
        d["modules"][1]["out"][-1] = 17

    return [(f.__name__, f) for f in (wrong_schema, missing_header_field, missing_module, missing_entry, ragged,
                                      negative, nan, bad_calibration, negative_misaligned, unknown_alignment, signature,
                                      grid_end, unknown_unit, reference_without_rel, negative_padded,
                                      no_scale_and_no_padded_term, pad_inputs_not_a_flag, anchor_unknown)]


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
    assert cost.clock == "cpu"  # "auto" at 1 thread on the CPU


def test_build_lut_profiles_every_dense_module_and_calibrates(graph):
    lut = build_lut(graph.model, SHAPE, step=8, repeats=3, calibration_plans=2, progress=False, model_name="tiny")
    lut.check(graph)
    assert {t.name for t in lut.tables} == {"conv1", "conv2", "fc"}
    assert all((t.ms > 0).all() and (t.rel > 0).all() for t in lut.tables)
    h = lut.header
    assert h["batch"] == 1 and h["threads"] == 1 and h["dtype"] == "float32" and h["model"] == "tiny"
    assert h["runtime"] == "torch" and h["runtime_version"] == torch.__version__.split("+")[0]
    assert h["device_kind"] == "cpu" and h["unit"] == "reference" and h["reference"]["ms"] > 0
    assert h["device"] == h["built_on"] == default_device_name() and lut.timed_on(default_device_name())
    assert h["clock"] == "cpu"  # "auto" at 1 thread on the CPU: what a busy machine cannot inflate
    assert h["input_shape"] == list(SHAPE) and h["model_signature"] == model_signature(graph)
    assert math.isfinite(h["remainder"]) and h["base_measured_ms"] > 0 and h["base_reference"] > 0
    cost = LutCost(lut, graph)
    assert cost.fraction(graph.channels) == pytest.approx(1.0) and cost.base == h["base_measured_ms"]
    if "calibration" in h:  # fitted on the base + 2 random variants
        cal = h["calibration"]
        assert cal["plans"] == 3 and cal["scale"] > 0 and cal.get("per_misaligned", 0) >= 0
        assert len(cal["counts"]) == len(cal["relative"]) == 3 and cal["relative"][0] == 1.0


def test_prediction_adds_the_elementwise_term_for_the_kept_output_elements(graph):
    plain = synthetic_lut(graph, calibration={"scale": 1.0, "offset": 0.2})
    withelem = synthetic_lut(graph, calibration={"scale": 1.0, "offset": 0.2, "per_melement": 50.0})
    a, b = LutCost(plain, graph), LutCost(withelem, graph)
    widths = WidthModel(graph)
    # TinyCNN at 1x8x8: conv1 8 x 8x8, conv2 16 x 8x8, fc 10 outputs
    assert widths.activations(graph.channels) == 8 * 64 + 16 * 64 + 10
    assert [m.out_spatial for m in graph.modules if m.kind in ("conv", "linear")] == [64, 64, 1]
    for counts in (graph.channels, [4, 8], [1, 1]):
        assert b(counts) - a(counts) == pytest.approx(50.0 * widths.activations(counts) / 1e6)
    assert widths.activations([4, 8]) == 4 * 64 + 8 * 64 + 10


def test_a_line_with_a_negative_offset_never_prices_a_plan_below_the_smallest_calibrated_plan_scaled(graph):
    plain = LutCost(synthetic_lut(graph), graph)
    raw = {tuple(c): plain.raw(c) for c in ([8, 16], [4, 8], [1, 1])}
    offset = -0.9 * raw[(4, 8)]  # a line fitted from the tables' sum that crosses 0 below the smallest plan
    base = raw[(8, 16)] + offset
    small = 0.6  # the smallest calibration plan's measured fraction of the unpruned model
    cal = {"scale": 1.0, "offset": offset, "counts": [[8, 16], [4, 8]], "relative": [1.0, small]}
    cost = LutCost(synthetic_lut(graph, calibration=cal, base_reference=base), graph)
    assert raw[(1, 1)] + offset < 0  # the bare line prices the 1-channel plan below zero
    widths = WidthModel(graph)
    floor = small * widths.flops([1, 1]) / widths.flops([4, 8])
    assert cost.fraction([1, 1]) == pytest.approx(floor) and floor > 0
    for counts in ([8, 16], [4, 8], [6, 12]):  # at and above the smallest calibration plan: the line itself
        assert cost.fraction(counts) == pytest.approx((raw.get(tuple(counts), plain.raw(counts)) + offset) / base)


def test_time_against_base_times_the_base_in_the_same_passes(graph):
    from autoprune.latency.timing import time_against_base, time_plans

    t = time_against_base(graph.model, [graph.model, TinyCNN().eval()], SHAPE, repeats=3, rounds=2, clock="cpu")
    assert t.base_ms > 0 and len(t.ms) == len(t.relative) == 2
    assert min(t.ms) > 0 and 0.5 < t.relative[0] < 2  # the base against itself: about 1
    small = time_plans(graph, graph.model, [list(graph.channels), [1, 1]], repeats=3, rounds=2, clock="cpu")
    assert small.relative[1] < 1.5 and small.ms[1] > 0


def test_layer_profiler_shares_measurements_between_same_shaped_modules():
    graph = build_unit_graph(TinyResidual().eval(), SHAPE)
    prof = LayerProfiler(graph, repeats=2, rounds=2)
    ms, rel = prof("a1", 8, 12)
    assert prof("b1", 8, 12) == (ms, rel)  # same shape as a1
    assert len(prof.cache) == 1 and ms > 0 and rel > 0


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
    rel_errors = np.abs(np.array(result["predicted_rel"]) - result["measured_rel"]) / np.array(result["measured_rel"])
    assert result["mape"] == pytest.approx(rel_errors.mean() * 100)
    errors = np.abs(np.array(result["predicted_ms"]) - result["measured_ms"]) / np.array(result["measured_ms"])
    assert result["mape_ms"] == pytest.approx(errors.mean() * 100)
    assert result["base_ms_now"] > 0 and result["drift"] == pytest.approx(result["base_ms_now"] / result["base_ms_at_build"])
    assert 0 <= result["pass_shift"] < 1
    assert "fraction of the unpruned model" in capsys.readouterr().out
    last = json.loads(lut.read_text())["header"]["last_check"]  # recorded for autoprune lut list
    assert last["plans"] == 4 and last["within_10pct"] == pytest.approx(result["within_10pct"], abs=1e-4)
    assert (tmp_path / "check.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    code = main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_residual", "--plans", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "LUT" in err[0]


def test_a_calibration_that_predicts_left_out_plans_poorly_gets_a_warning():
    from autoprune.pipeline.lut import LOO_WARN_PCT, calibration_warning

    assert calibration_warning({"runtime": "torch"}) is None  # no calibration (e.g. --calibration-plans 0)
    assert calibration_warning({"calibration": {"loo_mape": LOO_WARN_PCT - 1}}) is None
    warning = calibration_warning({"runtime": "openvino", "calibration": {"loo_mape": 12.46}})
    assert warning.startswith("warning:") and "12.5% mean error" in warning and "openvino" in warning
    assert "\n" not in warning
    moved = calibration_warning({"calibration": {"loo_mape": 1.0, "pass_shift": 0.12}})
    assert moved.startswith("warning:") and "up to 12%" in moved and "quieter machine" in moved
    assert calibration_warning({"calibration": {"loo_mape": 1.0, "pass_shift": 0.02}}) is None
    both = calibration_warning({"calibration": {"loo_mape": 9.0, "pass_shift": 0.12}})
    assert both.count("warning:") == 1 and "up to 12%" in both and "9.0% mean error" in both and "\n" not in both


def test_lut_check_notes_a_check_whose_passes_moved_together(monkeypatch, capsys):
    import autoprune.pipeline.lut as pipeline_lut

    result = {"plans": 50, "runtime": "onnxruntime", "mape": 9.0, "within_10pct": 0.5, "max_abs_pct": 30.0,
              "plot": None, "mape_ms": 9.0, "within_10pct_ms": 0.5, "drift": 1.0, "base_ms_now": 1.0,
              "base_ms_at_build": 1.0, "device": "here", "device_now": "here"}
    for shift, noted in ((0.15, True), (0.01, False)):
        monkeypatch.setattr(pipeline_lut, "check_lut_file", lambda *a, s=shift, **k: {**result, "pass_shift": s})
        assert main(["lut", "check", "--lut", "x.json", "--model", "factories:tiny_cnn", "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert ("moved every plan's fraction together by up to 15%" in out) == noted


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


@pytest.mark.parametrize("measured, device, built_on, warned", [
    (0.65, "here", None, True), (0.52, "here", None, False), (0.44, "here", None, True), (0.65, "a phone", None, False),
    (0.65, "my-laptop-ort", "here", True), (0.65, "a phone", "the phone's cpu", False)])
def test_latency_summary_warns_when_the_lut_misprices_the_final_plan(monkeypatch, caplog, measured, device, built_on,
                                                                      warned):
    """The final plan is timed against the base; a LUT for this machine whose fraction is off that by
    more than 10% (speedup's torch plan: 0.50 predicted, 0.60 measured) is named in a warning. A LUT
    for another device (imported from probes) is not compared with this machine's timing; one timed here
    under a name of the user's (``lut build --device-name``: ``built_on`` is this machine) is."""
    from types import SimpleNamespace

    from torch import nn

    from autoprune.latency import costs

    class Lut50:  # a LUT cost that prices the plan at half the base
        source, base, batch, threads, clock, runtime = "lut", 2.0, 1, 1, "cpu", "torch"
        lut = Lut({"device": device, "built_on": built_on}, [])

        def __call__(self, counts):
            return 1.0

    session = SimpleNamespace(budget=SimpleNamespace(kind="latency", cost=Lut50(), target=1.0), graph=None,
                              model=None, input_shape=(1, 8, 8))
    monkeypatch.setattr(costs, "time_against_base",
                        lambda *a, **k: SimpleNamespace(base_ms=2.0, ms=[2.0 * measured], relative=[measured]))
    monkeypatch.setattr(costs, "default_device_name", lambda where="cpu": "here")
    with caplog.at_level("WARNING", logger=costs.log.name):
        lat = costs.latency_summary(session, nn.Linear(2, 2), SimpleNamespace(counts=lambda graph: [1]))["latency"]
    assert lat["kept_predicted"] == 0.5 and lat["kept_measured"] == measured
    assert ("misprices" in caplog.text) == warned
    if warned:
        assert f"{(measured / 0.5 - 1) * 100:+.0f}%" in caplog.text


@pytest.mark.parametrize("runtime", [None, "openvino"])
def test_search_with_a_measured_latency_budget_times_the_plans_it_prices(tmp_path, runtime):
    """No LUT: every plan the searcher prices is pruned and timed (in the budget's runtime: torch by
    default, or OpenVINO, whose LUTs are not accurate); the result is under the budget.

    Width 64 keeps the budget far above what min_ratio reaches (~0.4 here), so timing noise on a busy
    machine cannot make it unreachable."""
    if runtime:
        pytest.importorskip(runtime)
    budget = {"latency": 0.8, **({"runtime": runtime} if runtime else {})}
    raw = tiny_config(model={"name": "mnist_cnn", "kwargs": {"width": 64}}, budget=budget,
                      train={"epochs": 1, "lr": 0.05}, searcher={"name": "uniform", "iterations": 6})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    lat = summary["latency"]
    assert summary["budget"]["kind"] == "latency" and lat["source"] == "measured"
    assert lat["runtime"] == (runtime or "torch")
    assert lat["pruned_predicted_ms"] <= 0.8 * lat["base_predicted_ms"] * (1 + 1e-9)
    assert summary["pruned"]["flops_kept"] < 1.0


# ------------------------------------------------------------------ drift-proof timing (a fake machine)


class FakeMachine:
    """A clock that only moves when a fake session runs: a session costs ``speed * (10 us + MACs / 10 G)``.

    ``speed`` 1.5 is a machine that runs everything 1.5x slower.
    """

    t = 0.0
    speed = 1.0

    @classmethod
    def now(cls) -> float:
        return cls.t


class FakeSession:
    device = "cpu"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self):
        FakeMachine.t += FakeMachine.speed * self.seconds


class FakeRuntime:
    name = "fake"

    def version(self) -> str:
        return "0"

    def prepare(self, model, example, threads=1):
        from autoprune.core.cost import measure_model

        macs, _ = measure_model(model, tuple(example.shape[1:]))
        return FakeSession(1e-5 + macs * example.shape[0] / 1e10)


@pytest.fixture
def fake_machine(monkeypatch):
    from autoprune.latency import clocks, runtimes

    monkeypatch.setitem(clocks.CLOCKS, "fake", FakeMachine.now)
    monkeypatch.setattr(runtimes, "RUNTIMES", Registry("runtime"))
    runtimes.RUNTIMES.register("torch", runtimes.TorchRuntime)
    runtimes.RUNTIMES.register("fake", FakeRuntime)
    monkeypatch.setattr(FakeMachine, "speed", 1.0)
    monkeypatch.setattr(FakeMachine, "t", 0.0)  # each test's clock from 0: float spacing grows with t
    return FakeMachine


def test_the_calibration_times_its_plans_with_more_samples_than_the_layer_probes(fake_machine, monkeypatch):
    """The calibration's fractions pick the form and every coefficient: each plan gets at least
    CALIBRATION_REPEATS samples, whatever ``--repeats`` the layer probes get; more if asked."""
    from autoprune.latency import build, timing

    seen: list[tuple[str, int]] = []
    real = timing.time_interleaved

    def spy(reference, candidates, threads=1, rounds=5, samples=3, **kw):
        seen.append((kw.get("desc", "timing"), samples))
        return real(reference, candidates, threads, rounds, samples, **kw)

    monkeypatch.setattr(timing, "time_interleaved", spy)
    monkeypatch.setattr(build, "time_interleaved", spy)
    model = TinyResidual().eval()
    kwargs = dict(step=4, calibration_plans=4, progress=False, runtime="fake", clock="fake")
    build_lut(model, SHAPE, repeats=3, **kwargs)
    per_pass = build.CALIBRATION_REPEATS // 5
    assert per_pass > 3
    assert seen[-1] == ("calibrating", per_pass)  # the plans against the unpruned model
    assert seen[-2] == ("timing", per_pass)  # the unpruned model against the reference op
    assert {s for d, s in seen[:-2]} == {3}  # the layer probes: --repeats 3 -> 3 a pass
    seen.clear()
    build_lut(model, SHAPE, repeats=200, **kwargs)
    assert seen[-1] == ("calibrating", 40) and seen[-2] == ("timing", 40)
    lut = build_lut(model, SHAPE, repeats=3, **kwargs)
    seen.clear()
    build.calibrate(lut, lut_graph := build_unit_graph(model, SHAPE), model, 4, repeats=3, progress=False,
                    runtime="fake", clock="fake", calibration_repeats=60)
    assert seen == [("timing", 12), ("calibrating", 12)]
    assert LutCost(lut, lut_graph).fraction(lut_graph.channels) == pytest.approx(1.0)


def test_a_calibration_disturbed_while_timed_is_timed_again_and_the_better_one_kept(fake_machine, monkeypatch):
    """A calibration that cannot predict its own left-out plans (leave-one-out above LOO_WARN_PCT) was
    disturbed while it was timed: it is timed again (up to CALIBRATION_RETRIES times) and the attempt with
    the lowest error kept. Here the first timing's fractions are scrambled by +-30%, the second is clean."""
    from autoprune.latency import build
    from autoprune.latency.calibration import LOO_WARN_PCT
    from autoprune.latency.timing import TimedPlans

    real, calls = build.time_plans, {"n": 0}
    rng = np.random.default_rng(0)

    def disturbed_once(*args, **kwargs):
        timed = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            noise = rng.uniform(0.7, 1.3, len(timed.relative))
            return TimedPlans(timed.ms, list(np.array(timed.relative) * noise), timed.base_ms)
        return timed

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    kwargs = dict(step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake", clock="fake")
    clean = build_lut(model, SHAPE, **kwargs)
    assert "attempts" not in clean.header["calibration"]  # a clean calibration is timed once
    monkeypatch.setattr(build, "time_plans", disturbed_once)
    lut = build_lut(model, SHAPE, **kwargs)
    assert calls["n"] == 2 and lut.header["calibration"]["attempts"] == 2
    from autoprune.pipeline.lut import calibration_summary

    assert "timed 2 times, the best kept" in calibration_summary(lut.header)  # what `lut build` prints
    assert "timed" not in calibration_summary(clean.header)
    assert lut.header["calibration"]["loo_mape"] <= LOO_WARN_PCT
    assert lut.header["calibration"]["relative"] == pytest.approx(clean.header["calibration"]["relative"], rel=1e-9)
    lut0 = build_lut(model, SHAPE, **{**kwargs, "calibration_plans": 0})
    calls["n"] = 0
    build.calibrate(lut0, graph, model, 8, 0, 3, False, runtime="fake", clock="fake", retries=0)
    assert calls["n"] == 1 and lut0.header["calibration"]["loo_mape"] > LOO_WARN_PCT  # retries=0: kept as timed
    assert "attempts" not in lut0.header["calibration"]


def test_relative_predictions_do_not_change_when_the_machine_slows_down(fake_machine):
    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    kwargs = dict(step=4, repeats=3, calibration_plans=4, progress=False, runtime="fake", clock="fake")
    fast = build_lut(model, SHAPE, **kwargs)
    fake_machine.speed = 1.5
    slow = build_lut(model, SHAPE, **kwargs)
    for a, b in zip(fast.tables, slow.tables, strict=True):
        np.testing.assert_allclose(b.rel, a.rel, rtol=1e-9)  # stored as ratios to the reference op: unchanged
        np.testing.assert_allclose(b.ms, 1.5 * a.ms, rtol=1e-9)  # and in ms: 1.5x
    assert slow.header["base_measured_ms"] == pytest.approx(1.5 * fast.header["base_measured_ms"], rel=1e-9)
    cf, cs = LutCost(fast, graph), LutCost(slow, graph)
    rng = np.random.default_rng(0)
    for _ in range(10):
        counts = [int(rng.integers(1, c + 1)) for c in graph.channels]
        assert cs.fraction(counts) == pytest.approx(cf.fraction(counts), rel=1e-9)
        assert cs(counts) == pytest.approx(1.5 * cf(counts), rel=1e-9)
    # checked on the slow machine, the LUT built on the fast one predicts the fractions as well as
    # the slow one does; only the ms (and the drift) show the difference
    at_slow = check_lut(fast, model, plans=6, repeats=3, progress=False)
    fake_machine.speed = 1.0
    at_fast = check_lut(fast, model, plans=6, repeats=3, progress=False)
    assert at_slow["drift"] == pytest.approx(1.5) and at_fast["drift"] == pytest.approx(1.0)
    assert at_slow["measured_rel"] == pytest.approx(at_fast["measured_rel"], rel=1e-9)
    assert at_slow["mape"] == pytest.approx(at_fast["mape"], rel=1e-6, abs=1e-9)
    assert at_fast["mape"] < 10 and at_fast["within_10pct"] == 1.0  # the fake machine is MAC-linear
    assert at_slow["mape_ms"] > 30 > at_fast["mape_ms"]


def test_interleaved_ratios_survive_a_machine_that_changes_speed_between_passes(fake_machine):
    from autoprune.latency.timing import time_interleaved

    calls = {"n": 0}

    class Drifting(FakeSession):
        def __call__(self):
            calls["n"] += 1
            fake_machine.speed = 1.0 + 0.1 * (calls["n"] // 50 % 7)  # speed moves every 50 runs
            super().__call__()

    t = time_interleaved(Drifting(1e-4), [Drifting(5e-5), Drifting(2e-4)], rounds=5, samples=3, clock="fake",
                         ref_every=1)
    assert t.relative == pytest.approx([0.5, 2.0], rel=0.1)


def test_interleaved_ratio_of_an_identical_copy_is_unbiased_under_noise(fake_machine):
    """Every timing gets random extra time (interference only adds): an identical copy of the
    reference must still come out at 1.0 on average. The faster of the two neighbouring reference
    timings as the denominator (a minimum over twice the candidate's samples) put it at ~1.03 here."""
    from autoprune.latency.timing import time_interleaved

    rng = np.random.default_rng(0)

    class Noisy(FakeSession):
        def __call__(self):
            FakeMachine.t += self.seconds * (1 + rng.exponential(0.2))

    t = time_interleaved(Noisy(2e-3), [Noisy(2e-3) for _ in range(32)], rounds=5, samples=3, clock="fake")
    assert np.mean(t.relative) == pytest.approx(1.0, abs=0.012)


def test_interleaved_timing_reports_a_pass_that_moved_every_fraction_at_once(fake_machine):
    """A load that slows the candidates 20% and not the reference (memory-bound plans on a contended
    host: ONNX Runtime ResNet-20's fractions moved 9-19% between passes minutes apart on this
    machine) moves every fraction of a pass together; ``pass_shift`` says so, and the median over
    passes keeps the unloaded fractions."""
    from autoprune.latency.timing import time_interleaved

    window = (0.0, 0.0)

    class Contended(FakeSession):
        def __call__(self):
            FakeMachine.t += self.seconds * (1.2 if window[0] <= FakeMachine.t < window[1] else 1.0)

    def timing():
        start = FakeMachine.t
        t = time_interleaved(FakeSession(2e-3), [Contended(1e-3 * (1 + k / 10)) for k in range(10)], rounds=5,
                             samples=3, clock="fake")
        return t, FakeMachine.t - start

    quiet, span = timing()
    assert quiet.pass_shift == pytest.approx(0.0, abs=1e-9)
    window = (FakeMachine.t + 0.3 * span, FakeMachine.t + 0.65 * span)  # more than one whole pass of five
    loaded, _ = timing()
    assert loaded.pass_shift == pytest.approx(0.2, abs=0.02)
    assert loaded.relative == pytest.approx(quiet.relative, rel=1e-6)


def test_measured_latency_budget_prices_fractions_that_do_not_move_with_the_machine(fake_machine):
    from autoprune.latency.costs import MeasuredLatencyCost

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    plans = [[4, 8, 8], [8, 4, 12], [1, 1, 1]]
    fast = MeasuredLatencyCost(graph, model, runtime="fake", clock="fake")
    fake_machine.speed = 1.5
    slow = MeasuredLatencyCost(graph, model, runtime="fake", clock="fake")
    assert slow.base == pytest.approx(1.5 * fast.base)
    for counts in plans:
        assert slow.fraction(counts) == pytest.approx(fast.fraction(counts), rel=1e-9)
        assert fast.fraction(counts) < 1


# -------------------------------------------------------------------------------------- runtimes


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_exported_runtimes_run_the_model_and_time_it(runtime):
    pytest.importorskip(runtime)
    from autoprune.latency.runtimes import get_runtime
    from autoprune.latency.timing import time_against_base

    model = TinyResidual().eval()
    x = torch.randn(2, *SHAPE)
    session = get_runtime(runtime).prepare(model, x)
    with torch.no_grad():
        out = session()
        np.testing.assert_allclose(out[0] if isinstance(out, list) else out, model(x).numpy(), atol=1e-5)
    stats = measure_latency(model, SHAPE, repeats=3, warmup=1, runtime=runtime, clock="cpu")
    assert stats.median_ms > 0 and stats.runtime == runtime
    graph = build_unit_graph(model, SHAPE)
    from autoprune.core.plan import PruningPlan
    from autoprune.core.prune import apply_plan

    # half the widths, not one channel: OpenVINO on an AVX2 CPU (AMD EPYC, 2026-12-07) ran TinyResidual cut to one
    # channel per unit 3.2x slower than the unpruned model (0.21 vs 0.06 ms; half the widths 0.88 of it)
    small = apply_plan(model, graph, PruningPlan.from_counts(graph, [4, 6, 6]))
    t = time_against_base(model, [small], SHAPE, repeats=3, rounds=2, runtime=runtime, clock="cpu")
    assert t.ms[0] > 0 and 0 < t.relative[0] < 1.5


def test_openvino_runtime_says_what_to_install_when_missing(monkeypatch):
    import importlib.util

    from autoprune.latency.runtimes import get_runtime

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(AutopruneError, match=r"runtime 'openvino' needs the openvino package: pip install"):
        get_runtime("openvino")


def test_unknown_runtime_and_cuda_with_the_cpu_clock_are_one_line_errors():
    from autoprune.latency.clocks import make_timer

    with pytest.raises(AutopruneError, match="unknown runtime 'tensorrt'"):
        measure_latency(TinyCNN(), SHAPE, repeats=1, runtime="tensorrt")
    with pytest.raises(AutopruneError, match="cannot time a CUDA device"):
        make_timer("cuda:0", "cpu", 1)


def test_the_auto_clock_is_thread_time_for_one_cpu_thread_only():
    import time

    from autoprune.latency.clocks import CudaTimer, clock_fn, make_timer, resolve_clock

    assert resolve_clock("auto", 1) == "cpu" and resolve_clock("auto", 1, "cpu") == "cpu"
    assert resolve_clock("auto", 2) == "wall" and resolve_clock("auto", 1, "cuda:0") == "wall"
    assert resolve_clock("auto", 1, "mps") == "wall" and resolve_clock("wall", 1) == "wall"
    assert clock_fn("auto", 1) is time.thread_time and clock_fn("auto", 4) is time.perf_counter
    assert isinstance(make_timer("cuda:0", "auto", 1), CudaTimer)  # CUDA events, not the cpu clock
    assert measure_latency(TinyCNN(), SHAPE, repeats=2).clock == "cpu"
    assert measure_latency(TinyCNN(), SHAPE, repeats=2, threads=2).clock == "wall"


def test_a_lut_for_another_runtime_or_device_is_refused(graph, tmp_path):
    path = tmp_path / "ort.json"
    path.write_text(synthetic_lut(graph, runtime="onnxruntime", device="pixel7").to_json())
    assert make_budget(graph, "latency", 0.6, lut=str(path), runtime="onnxruntime", device="pixel7").cost.base > 0
    with pytest.raises(AutopruneError, match="built for runtime 'onnxruntime', the budget asks for 'torch'"):
        make_budget(graph, "latency", 0.6, lut=str(path), runtime="torch")
    with pytest.raises(AutopruneError, match="built for device 'pixel7', the budget asks for 'pixel8'"):
        make_budget(graph, "latency", 0.6, lut=str(path), device="pixel8")
    with pytest.raises(AutopruneError, match="runtime 'onnxruntime'"):
        check_lut(load_lut(path), graph.model, plans=1, runtime="torch")


def test_budget_config_takes_runtime_device_and_a_lut_directory():
    from autoprune.config import load_config

    raw = tiny_config(budget={"latency_ms": 2.0, "device": "pixel7-ort", "runtime": "onnxruntime"}, luts="/luts")
    cfg = load_config(raw)
    assert cfg.budget.device == "pixel7-ort" and cfg.budget.runtime == "onnxruntime" and cfg.luts == "/luts"
    cfg = load_config(raw, budget="latency=0.5")  # --budget keeps lut, runtime and device from the file
    assert cfg.budget.latency == 0.5 and cfg.budget.device == "pixel7-ort"


# ------------------------------------------------------------------------------- old-format LUTs


def v1_dict(lut: Lut) -> dict:
    """``lut`` (an ms LUT) written as schema v1 did."""
    data = json.loads(lut.to_json())
    h = data["header"]
    for key in ("runtime", "runtime_version", "device_kind", "unit"):
        h.pop(key)
    h["schema"] = "autoprune.lut/v1"
    h["remainder_ms"] = h.pop("remainder")
    if "calibration" in h:
        h["calibration"] = {{"offset": "offset_ms", "per_melement": "ms_per_melement"}.get(k, k): v
                            for k, v in h["calibration"].items()}
    return data


def test_v1_luts_still_load_and_predict_as_before(graph, tmp_path):
    lut = synthetic_lut(graph, calibration={"scale": 1.2, "offset": 0.1, "per_melement": 3.0})
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1_dict(lut)))
    old = load_lut(path, graph)
    assert old.header["runtime"] == "torch" and old.header["upgraded_from"] == "autoprune.lut/v1"
    for counts in (graph.channels, [4, 8], [1, 3]):
        assert LutCost(old, graph)(counts) == pytest.approx(LutCost(lut, graph)(counts), rel=1e-9)
    data = v1_dict(lut)
    data["header"]["schema"] = "autoprune.lut/v0"
    path.write_text(json.dumps(data))
    with pytest.raises(AutopruneError, match="unsupported LUT schema.*rebuild it with autoprune lut build"):
        load_lut(path)


# ------------------------------------------------------------------------------- the LUT directory


def test_lut_directory_finds_luts_by_device_runtime_and_model(graph, tmp_path, monkeypatch, capsys):
    from autoprune.latency.lutdir import find_lut, record_check

    other = build_unit_graph(TinyResidual().eval(), SHAPE)
    folder = tmp_path / "luts"
    (folder / "phones").mkdir(parents=True)
    files = {"a_torch": synthetic_lut(graph, device="a", created="2026-11-30T10:00:00"),
             "a_ort": synthetic_lut(graph, device="a", runtime="onnxruntime"),
             "phones/b": synthetic_lut(graph, device="b"),
             "b_other_model": synthetic_lut(other, device="b")}
    for name, lut in files.items():
        (folder / f"{name}.json").write_text(lut.to_json())
    (folder / "notes.json").write_text('{"not": "a LUT"}')
    v1 = tmp_path / "luts" / "old.json"
    v1.write_text(json.dumps(v1_dict(synthetic_lut(graph, device="old-box"))))
    sig = model_signature(graph)
    assert find_lut(folder, "a", "torch", sig).name == "a_torch.json"
    assert find_lut(folder, "b", None, sig).name == "b.json"
    assert find_lut(folder, "old-box", "torch", sig).name == "old.json"
    with pytest.raises(AutopruneError, match="several LUTs match device 'a'.*a_ort.json.*a_torch.json"):
        find_lut(folder, "a", None, sig)
    with pytest.raises(AutopruneError, match="no LUT for device 'c'.*it has: a \\(onnxruntime\\), a \\(torch\\)"):
        find_lut(folder, "c", None, sig)
    # a budget names the device; the directory comes from the config (luts) or $AUTOPRUNE_LUT_DIR
    budget = make_budget(graph, "latency", 0.5, device="a", runtime="onnxruntime", luts=str(folder))
    assert budget.cost.lut.header["runtime"] == "onnxruntime"
    monkeypatch.delenv("AUTOPRUNE_LUT_DIR", raising=False)
    with pytest.raises(AutopruneError, match="needs a LUT directory"):
        make_budget(graph, "latency", 0.5, device="a", runtime="torch")
    monkeypatch.setenv("AUTOPRUNE_LUT_DIR", str(folder))
    assert make_budget(graph, "latency", 0.5, device="b").cost.base > 0
    # autoprune lut list: one line per LUT, with the last check's accuracy
    record_check(folder / "a_torch.json", {"plans": 50, "within_10pct": 0.96, "mape": 3.1, "within_10pct_ms": 0.2,
                                           "drift": 1.3, "device_now": "a", "runtime": "torch"})
    capsys.readouterr()
    assert main(["lut", "list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["device", "runtime", "model"] and len(lines) == 1 + 5
    (a_torch,) = [line for line in lines if "a_torch.json" in line]
    assert "96% within +-10% (50 plans" in a_torch and "2026-11-30" in a_torch
    assert main(["lut", "list", "--dir", str(tmp_path / "nope")]) == 2


def test_cuda_timer_synchronises_around_event_timing(monkeypatch):
    """The CUDA path (no GPU here): synchronise, record start, run, record end, wait for it, divide."""
    from autoprune.latency.clocks import CudaTimer

    log = []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing
            self.name = "start" if not any(e.startswith("new") for e in log) else "end"
            log.append(f"new {self.name}")

        def record(self, stream=None):
            log.append(f"record {self.name} on {stream}")

        def synchronize(self):
            log.append(f"wait {self.name}")

        def elapsed_time(self, other):
            return 12.0

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append(f"synchronize {device}"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: "stream")
    ms = CudaTimer("cuda:0").sample(lambda: log.append("run"), runs=3)
    assert ms == 4.0
    assert log == ["new start", "new end", "synchronize cuda:0", "record start on stream", "run", "run", "run",
                   "record end on stream", "wait end"]


def test_build_lut_in_openvino_records_its_runtime_and_a_budget_for_another_refuses_it(tmp_path):
    pytest.importorskip("openvino")
    import openvino

    # 64x64 input: at the fixture's 8x8 the model is all runtime overhead and a [4, 4] plan times like the base
    graph = build_unit_graph(TinyCNN().eval(), (1, 64, 64))
    lut = build_lut(graph.model, (1, 64, 64), step=8, repeats=3, calibration_plans=2, progress=False,
                    runtime="openvino")
    h = lut.header
    assert h["runtime"] == "openvino" and h["runtime_version"] == openvino.__version__.split("-")[0]
    assert h["fine"] is True and h["threads"] == 1 and h["batch"] == 1
    path = tmp_path / "ov.json"
    path.write_text(lut.to_json())
    assert 0 < make_budget(graph, "latency", 0.6, lut=str(path), runtime="openvino").cost.fraction([4, 4]) < 1
    with pytest.raises(AutopruneError, match="built for runtime 'openvino', the budget asks for 'onnxruntime'"):
        make_budget(graph, "latency", 0.6, lut=str(path), runtime="onnxruntime")


def test_build_lut_in_onnxruntime_records_the_runtime_and_fine_curves(graph):
    pytest.importorskip("onnxruntime")
    lut = build_lut(graph.model, SHAPE, step=8, repeats=3, calibration_plans=2, progress=False, runtime="onnxruntime")
    h = lut.header
    assert h["runtime"] == "onnxruntime" and h["runtime_version"] and h["fine"] is True
    assert {t.name: set(t.fine) for t in lut.tables} == {"conv1": {"out"}, "conv2": {"in", "out"}, "fc": {"in"}}
    conv2 = next(t for t in lut.tables if t.name == "conv2")
    assert conv2.fine["out"].widths == list(range(1, 17)) and (conv2.fine["out"].rel > 0).all()
    back = Lut.from_dict(json.loads(lut.to_json()))
    cost, again = LutCost(lut, graph), LutCost(back, graph)
    for counts in ([5, 7], [8, 13], [1, 1]):  # off-grid widths go through the fine curves
        # the JSON keeps 6 significant digits; a sum with terms of both signs (the calibration's) can lift
        # that to ~2e-5 of the fraction (seen once on a contended host), far below any timing's noise
        assert again.fraction(counts) == pytest.approx(cost.fraction(counts), rel=1e-4)


def resnet20_widths():
    """ResNet-20's unit graph (3x32x32) and its width model: the calibration tests' model."""
    g = build_unit_graph(build_model("resnet20", num_classes=10, in_channels=3).eval(), (3, 32, 32))
    return g, WidthModel(g)


def calibrate_on(lut, g, w, cal, raw, truth) -> dict:
    """``fit_calibration`` on plans ``cal`` with every feature ``lut build`` gives it; the fitted calibration."""
    fit_calibration(lut, cal, [raw(c) for c in cal], [w.activations(c) / 1e6 for c in cal],
                    [truth(c) / truth(cal[0]) for c in cal], truth(cal[0]),
                    {a: [misaligned_melements(g, w, c, a) for c in cal] for a in ALIGNMENTS},
                    {a: [padded_mmacs(g, w, c, a) for c in cal] for a in ALIGNMENTS},
                    {a: [padded_melements(g, w, c, a) for c in cal] for a in ALIGNMENTS},
                    {a: [padded_mmacs(g, w, c, a, inputs=False) for c in cal] for a in ALIGNMENTS})
    return lut.header["calibration"]


@pytest.mark.parametrize("pad_inputs", [True, False])
@pytest.mark.parametrize("padded_elements", [False, True])
def test_calibration_takes_padded_macs_where_latency_follows_them(padded_elements, pad_inputs):
    """OpenVINO-like latency: MACs with every width padded to 16 channels plus elementwise work (on
    padded channels too, or not), which lone-layer tables (here: plain MACs) miss; or with only the
    output widths padded (``pad_inputs=False``: OpenVINO's channels-last ``brgconv`` kernels). The calibration
    picks that form from 12 calibration plans and predicts unseen random plans; a LUT with that form
    loads and prices plans."""
    g, w = resnet20_widths()

    def truth(c):
        elements = padded_melements(g, w, c, 16) if padded_elements else w.activations(c) / 1e6
        return 0.02 * padded_mmacs(g, w, c, 16, inputs=pad_inputs) + 3.0 * elements + 0.1

    def raw(c):
        return 0.5 * w.flops(c) / 1e6

    cal = calibration_counts(g, 12, seed=0)
    lut = synthetic_lut(g)
    fitted = calibrate_on(lut, g, w, cal, raw, truth)
    assert fitted["pad"] == 16 and fitted["per_padded_mmac"] > 0 and fitted["loo_mape"] < 0.5
    assert fitted.get("padded_elements", False) == padded_elements
    assert fitted.get("pad_inputs", True) == pad_inputs
    cost = LutCost(Lut.from_dict(json.loads(lut.to_json())), g)
    rng = np.random.default_rng(1)
    for counts in [random_counts(g, rng) for _ in range(10)]:
        assert cost.fraction(counts) == pytest.approx(truth(counts) / truth(g.channels), rel=0.01)
    assert padded_mmacs(g, w, g.channels, 16) >= w.flops(g.channels) / 1e6  # the 3-channel input pads up
    odd = [c - 1 for c in g.channels]  # 15/31/63 channels: outputs pad back to full width, inputs do not
    assert padded_mmacs(g, w, odd, 16, inputs=False) < padded_mmacs(g, w, odd, 16)


def test_calibration_leaves_out_an_unpruned_model_off_the_trend_of_its_pruned_variants():
    """OpenVINO on this project's machine: the unpruned model (every width a multiple of 16) runs 15-20%
    faster than the padded-MACs trend of its pruned variants. A fit forced through it bends every plan's
    fraction; the calibration then fits the pruned plans alone and takes fractions of the measured
    unpruned latency (``anchor: measured``), and the unpruned model is priced at exactly 1.0."""
    g, w = resnet20_widths()

    def trend(c):
        return 0.02 * padded_mmacs(g, w, c, 16, inputs=False) + 3.0 * padded_melements(g, w, c, 16) + 0.1

    base = 0.83 * trend(g.channels)  # the unpruned model, measured: faster than the trend says
    cal = calibration_counts(g, 12, seed=0)
    measured = [base] + [trend(c) for c in cal[1:]]
    lut = synthetic_lut(g)
    fit_calibration(lut, cal, [lut.raw_sum(g, w, c) for c in cal], [w.activations(c) / 1e6 for c in cal],
                    [m / base for m in measured], base, None,
                    {a: [padded_mmacs(g, w, c, a) for c in cal] for a in ALIGNMENTS},
                    {a: [padded_melements(g, w, c, a) for c in cal] for a in ALIGNMENTS},
                    {a: [padded_mmacs(g, w, c, a, inputs=False) for c in cal] for a in ALIGNMENTS})
    fitted = lut.header["calibration"]
    assert fitted["anchor"] == "measured" and fitted["pad"] == 16 and fitted["loo_mape"] < 1.0
    cost = LutCost(Lut.from_dict(json.loads(lut.to_json())), g)
    assert cost.fraction(g.channels) == 1.0
    rng = np.random.default_rng(1)
    for counts in [random_counts(g, rng) for _ in range(10)]:
        assert cost.fraction(counts) == pytest.approx(trend(counts) / base, rel=0.01)
        assert cost(counts) == pytest.approx(cost.fraction(counts) * cost.base)


def test_calibration_charges_the_gap_per_misaligned_conv_where_near_full_plans_show_it():
    """OpenVINO on this project's machine: the aligned unpruned model runs faster than its pruned variants'
    trend, but a plan that cuts one unit runs at about the unpruned model's speed, not on that trend. With
    the calibration's near-full plans the per-layer anchor (padded MACs plus the misaligned term, through
    the unpruned model) is kept over ``anchor: measured``, and one-unit cuts and random plans are both
    priced right."""
    g, w = resnet20_widths()

    def truth(c):  # the trend, plus a reorder cost on the output elements of every conv off 16
        return (0.02 * padded_mmacs(g, w, c, 16, inputs=False) + 3.0 * w.activations(c) / 1e6 + 0.1
                + 0.6 * misaligned_melements(g, w, c, 16))

    cal = calibration_counts(g, 12, seed=0)
    assert len(cal) == 1 + 12 + 3 and all(sum(a != b for a, b in zip(c, g.channels, strict=True)) <= 4 for c in cal[13:])
    lut = synthetic_lut(g)
    fitted = calibrate_on(lut, g, w, cal, lambda c: lut.raw_sum(g, w, c), truth)
    assert "anchor" not in fitted and fitted["align"] == fitted["pad"] == 16 and fitted["per_misaligned"] > 0
    cost = LutCost(Lut.from_dict(json.loads(lut.to_json())), g)
    rng = np.random.default_rng(1)
    for counts in [random_counts(g, rng) for _ in range(5)] + [near_full_counts(g, rng, 1) for _ in range(5)]:
        assert cost.fraction(counts) == pytest.approx(truth(counts) / truth(g.channels), rel=0.01)


def test_calibration_on_too_few_plans_fits_a_line_on_the_sum_and_never_a_zero_weight_on_the_tables(graph):
    from autoprune.latency.build import fit_calibration

    counts = [list(graph.channels), [4, 8], [2, 4]]
    # three noisy plans: a 3-term fit through them put 1e-13 on the tables (every plan priced as the base)
    lut = synthetic_lut(graph)
    fit_calibration(lut, counts, [9.0, 5.0, 2.0], [1.5, 0.7, 0.3], [1.0, 1.3, 0.6], 3.0)
    cal = lut.header["calibration"]
    assert cal["scale"] > 0 and cal["per_melement"] == 0 and cal["loo_mape"] is None
    cost = LutCost(lut, graph)
    assert 0 < cost.fraction([2, 4]) < cost.fraction([4, 8]) < 1
    # a line that falls with the sum is no fit; the tables sum to 3x the model: scaled down to it, not
    # priced by sum + a negative remainder (which made pruned plans negative)
    lut = synthetic_lut(graph)
    fit_calibration(lut, counts, [9.0, 5.0, 2.0], [1.5, 0.7, 0.3], [1.0, 1.1, 1.2], 3.0)
    assert lut.header["remainder"] == -6.0
    cal = lut.header["calibration"]
    assert cal["scale"] == pytest.approx(3.0 / 9.0) and cal["offset"] == 0
    cost = LutCost(lut, graph)  # the tables' own shares: the fraction is the ratio of their sums
    assert cost.fraction([2, 4]) == pytest.approx(cost.raw([2, 4]) / cost.raw(graph.channels))


def test_lut_check_rounds_its_plans_like_a_search_with_round_to(tmp_path, capsys):
    """``lut check --round-to 4`` times the same draws rounded to multiples of 4 (what a search with
    ``pruning.round_to: 4`` makes), says so, and records it for ``lut list``."""
    from autoprune.latency.lutdir import LutEntry

    lut = tmp_path / "tiny.json"
    assert main(["lut", "build", "--model", "factories:tiny_cnn", "--input-shape", "1,8,8", "--step", "8",
                 "--repeats", "3", "--calibration-plans", "0", "--out", str(lut), "--no-progress"]) == 0
    reports = {}
    for round_to in (1, 4):
        reports[round_to] = tmp_path / f"check{round_to}.json"
        assert main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_cnn", "--plans", "6", "--repeats",
                     "3", "--round-to", str(round_to), "--json", str(reports[round_to]), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "counts rounded to 4" in out
    plain, rounded = (json.loads(reports[k].read_text()) for k in (1, 4))
    assert plain["round_to"] == 1 and rounded["round_to"] == 4
    full = list(graph_of_tiny_cnn().channels)
    assert any(c % 4 for counts in plain["counts"] for c in counts)  # the draws leave odd counts ...
    for a, b in zip(plain["counts"], rounded["counts"], strict=True):
        assert all(r % 4 == 0 or r == f for r, f in zip(b, full, strict=True))  # ... which rounding removes
        assert all(abs(r - c) <= 3 for r, c in zip(b, a, strict=True))  # the same draws, rounded
    header = json.loads(lut.read_text())["header"]
    assert header["last_check"]["round_to"] == 4
    assert "6 plans rounded to 4" in LutEntry(lut, header).row()["accuracy"]
    code = main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_cnn", "--round-to", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--round-to" in err[0]


def graph_of_tiny_cnn():
    from factories import tiny_cnn

    return build_unit_graph(tiny_cnn().eval(), (1, 8, 8))


def test_lut_check_points_a_poor_onnxruntime_check_at_rounded_plans(monkeypatch, capsys):
    import autoprune.pipeline.lut as pipeline_lut

    result = {"plans": 50, "mape": 9.0, "max_abs_pct": 30.0, "plot": None, "mape_ms": 9.0, "within_10pct_ms": 0.5,
              "drift": 1.0, "base_ms_now": 1.0, "base_ms_at_build": 1.0, "device": "here", "device_now": "here",
              "pass_shift": 0.0}
    for runtime, share, args, noted in (("onnxruntime", 0.5, [], True), ("onnxruntime", 0.98, [], False),
                                        ("torch", 0.5, [], False), ("openvino", 0.5, [], False),  # not measured
                                        ("onnxruntime", 0.5, ["--round-to", "16"], False)):
        monkeypatch.setattr(pipeline_lut, "check_lut_file",
                            lambda *a, r=runtime, s=share, **k: {**result, "runtime": r, "within_10pct": s})
        assert main(["lut", "check", "--lut", "x.json", "--model", "factories:tiny_cnn", "--no-progress", *args]) == 0
        assert ("check those with --round-to 16" in capsys.readouterr().out) == noted, (runtime, share, args)


def test_repeatability_is_the_share_of_timing_pairs_within_10pct():
    two = TimedPlans([1.0, 2.0], [1.025, 2.25], 1.0, 0.0, [[1.0, 2.0], [1.05, 2.5]])
    assert two.repeatability == pytest.approx(0.5)  # plan 0 agrees (both ways), plan 1 does not (0.8, 1.25)
    three = TimedPlans([1.0], [1.0], 1.0, 0.0, [[1.0], [1.0], [1.2]])
    assert three.repeatability == pytest.approx(2 / 6)  # of the 6 ordered pairs only (0, 1) and (1, 0) agree
    assert TimedPlans([1.0], [1.0], 1.0).repeatability is None  # one timing: nothing to compare


def test_lut_check_times_the_plans_twice_and_reports_the_machines_repeatability(tmp_path, capsys):
    """``lut check --timings 2`` times the same plans in two whole timings: the measured fractions are
    their median, the result says how often the two agree, the LUT is scored against each, and ``lut
    list`` shows the repeatability next to the accuracy."""
    from autoprune.latency.lutdir import LutEntry

    lut = tmp_path / "tiny.json"
    assert main(["lut", "build", "--model", "factories:tiny_cnn", "--input-shape", "1,8,8", "--step", "8",
                 "--repeats", "3", "--calibration-plans", "0", "--out", str(lut), "--no-progress"]) == 0
    report = tmp_path / "check.json"
    assert main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_cnn", "--plans", "5", "--repeats", "3",
                 "--timings", "2", "--json", str(report), "--no-progress"]) == 0
    assert "2 timings: a plan's fractions in two of them agree within +-10% for" in capsys.readouterr().out
    r = json.loads(report.read_text())
    assert r["timings"] == 2 and 0.0 <= r["repeatability"] <= 1.0 and len(r["within_10pct_each"]) == 2
    header = json.loads(lut.read_text())["header"]
    assert header["last_check"]["repeatability"] == pytest.approx(r["repeatability"], abs=1e-4)
    assert "repeatability" in LutEntry(lut, header).row()["accuracy"]
    code = main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_cnn", "--timings", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--timings" in err[0]


def test_time_against_base_with_two_timings_keeps_each_and_takes_their_median():
    from factories import tiny_cnn

    base = tiny_cnn().eval()
    graph = build_unit_graph(base, (1, 8, 8))
    plans = [[max(1, c // 2) for c in graph.channels], [max(1, c // 4) for c in graph.channels]]
    timed = time_plans(graph, base, plans, repeats=3, clock="cpu", timings=2)
    assert len(timed.timings) == 2 and all(len(t) == 2 for t in timed.timings)
    assert timed.relative == pytest.approx(np.median(timed.timings, axis=0).tolist())
    assert timed.repeatability is not None
    with pytest.raises(AutopruneError, match="timings"):
        time_plans(graph, base, plans, repeats=3, timings=0)


def test_lut_check_says_when_the_machine_does_not_repeat_its_timings(monkeypatch, capsys):
    import autoprune.pipeline.lut as pipeline_lut

    result = {"plans": 50, "mape": 9.0, "max_abs_pct": 30.0, "plot": None, "mape_ms": 9.0, "within_10pct_ms": 0.5,
              "drift": 1.0, "base_ms_now": 1.0, "base_ms_at_build": 1.0, "device": "here", "device_now": "here",
              "pass_shift": 0.0, "runtime": "torch", "within_10pct": 0.7, "timings": 2, "within_10pct_each": [0.7, 0.6]}
    for repeatability, noted in ((0.6, True), (0.98, False)):
        monkeypatch.setattr(pipeline_lut, "check_lut_file", lambda *a, q=repeatability, **k: {**result, "repeatability": q})
        assert main(["lut", "check", "--lut", "x.json", "--model", "factories:tiny_cnn", "--timings", "2"]) == 0
        out = capsys.readouterr().out
        assert "the LUT against each timing alone: 70%, 60%" in out
        assert ("does not repeat its own timings" in out) == noted, repeatability


def slow_pruned_models(monkeypatch, model, factor: float = 1.2) -> None:
    """The fake machine after the build: every pruned model (fewer parameters than ``model``) runs ``factor``
    times slower, the unpruned one as before (the level moves, the shape does not)."""
    full, built = sum(p.numel() for p in model.parameters()), FakeRuntime.prepare

    def busier(self, net, example, threads=1):
        session = built(self, net, example, threads)
        if sum(p.numel() for p in net.parameters()) < full:
            session.seconds *= factor
        return session

    monkeypatch.setattr(FakeRuntime, "prepare", busier)


def test_reanchoring_a_lut_follows_a_machine_whose_state_moved_every_pruned_plan(fake_machine, monkeypatch, tmp_path):
    """On a busy machine the fractions of all pruned plans can move together between the build and later use
    (measured: -6% to +15%, docs/latency.md). Here every pruned model runs 1.2x slower after the build while
    the unpruned one does not: the LUT as built misses every plan by ~17%; ``check_lut(reanchor=N)`` scores it
    re-anchored on N other plans timed alongside; ``reanchor_lut`` stores that level in the header, and the
    LUT then predicts the plans within +-10% (the unpruned model stays at 1.0)."""
    from autoprune.latency.check import anchor_counts, reanchor_lut

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    lut = build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake",
                    clock="fake")
    before = check_lut(lut, model, plans=10, repeats=3, progress=False)
    assert before["within_10pct"] == 1.0 and before["level"] == 1.0
    slow_pruned_models(monkeypatch, model)
    moved = check_lut(lut, model, plans=10, repeats=3, progress=False, reanchor=4)
    assert moved["within_10pct"] == 0.0  # every plan ~17% above its prediction
    assert moved["offset_pct"] == pytest.approx(100 / 1.2 - 100, abs=1.5)  # a common offset ...
    assert moved["within_10pct_offset_removed"] == 1.0  # ... and the shape holds
    assert moved["level_now"] == pytest.approx(1.2, rel=0.03) and moved["within_10pct_reanchored"] == 1.0
    anchors = anchor_counts(graph, 4, 0)
    assert not set(map(tuple, anchors)) & set(map(tuple, moved["counts"]))  # other plans than the check's
    assert all(list(c) != list(graph.channels) for c in anchors)
    result = reanchor_lut(lut, model, plans=4, repeats=3, progress=False)
    assert result["level"] == pytest.approx(1.2, rel=0.03) and result["previous"] == 1.0
    assert lut.header["level"]["factor"] == pytest.approx(result["level"], abs=1e-4)
    after = check_lut(lut, model, plans=10, repeats=3, progress=False)
    assert after["within_10pct"] == 1.0 and after["level"] == pytest.approx(1.2, rel=0.03)
    cost = LutCost(lut, graph)
    assert cost.fraction(graph.channels) == 1.0  # the unpruned model is not re-leveled
    assert Lut.from_dict(json.loads(lut.to_json())).header["level"] == lut.header["level"]  # saved with the LUT


@pytest.mark.parametrize("round_to", [1, 4])
def test_near_counts_are_plans_the_lut_prices_just_under_the_budget(round_to):
    """``lut reanchor --near F`` / ``budget.reanchor`` draw their plans where a search under a budget of F ends
    (benchmarks/reanchor_near: a level measured there priced searched plans better on a contended host)."""
    from autoprune.latency.check import near_counts

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    cost = LutCost(synthetic_lut(graph), graph)
    smallest = cost.fraction([1] * len(graph.channels))  # 0.70 here: the synthetic LUT's fixed remainder
    near = (smallest + 1) / 2
    plans = near_counts(graph, cost, 6, near, np.random.default_rng(0), round_to)
    assert len(plans) == 6 and len(set(map(tuple, plans))) > 1
    assert all(near - 0.03 - 1e-9 <= cost.fraction(c) <= near + 1e-9 for c in plans)
    assert all(c % round_to == 0 or c == n for p in plans for c, n in zip(p, graph.channels, strict=True))
    with pytest.raises(AutopruneError, match="no plan of this model is priced at or below"):
        near_counts(graph, cost, 3, smallest / 2, np.random.default_rng(0))


def test_lut_reanchor_updates_the_file_in_place_and_lut_list_shows_the_level(tmp_path, capsys):
    from autoprune.latency.lutdir import LutEntry

    lut = tmp_path / "tiny.json"
    assert main(["lut", "build", "--model", "factories:tiny_cnn", "--input-shape", "1,8,8", "--step", "8",
                 "--repeats", "3", "--calibration-plans", "0", "--out", str(lut), "--no-progress"]) == 0
    assert main(["lut", "check", "--lut", str(lut), "--model", "factories:tiny_cnn", "--plans", "4", "--repeats",
                 "3", "--reanchor", "3", "--no-progress"]) == 0
    assert "re-anchored on 3 other plans timed alongside (level x" in capsys.readouterr().out
    assert "last_check" in json.loads(lut.read_text())["header"]
    assert main(["lut", "reanchor", "--lut", str(lut), "--model", "factories:tiny_cnn", "--plans", "3", "--repeats",
                 "3", "--no-progress"]) == 0
    assert "level x" in capsys.readouterr().out
    header = json.loads(lut.read_text())["header"]
    assert header["level"]["plans"] == 3 and header["level"]["factor"] > 0
    assert "last_check" not in header  # it scored the LUT at its old level
    assert f"level x{header['level']['factor']:.3f}" in LutEntry(lut, header).row()["accuracy"]
    assert main(["lut", "reanchor", "--lut", str(lut), "--model", "factories:tiny_cnn", "--plans", "3", "--repeats",
                 "3", "--near", "0.97", "--no-progress"]) == 0
    assert "3 plans near 0.97 of the unpruned model measured at" in capsys.readouterr().out
    header = json.loads(lut.read_text())["header"]
    assert header["level"]["near"] == 0.97 and header["level"]["plans"] == 3
    for bad in (["--plans", "0"], ["--round-to", "0"], ["--near", "1.5"]):
        code = main(["lut", "reanchor", "--lut", str(lut), "--model", "factories:tiny_cnn", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and bad[0] in err[0], bad
    assert json.loads(lut.read_text())["header"] == header  # a refused call leaves the file as it was
    assert main(["lut", "reanchor", "--lut", str(lut), "--model", "factories:tiny_cnn", "--clear"]) == 0
    assert "level removed (was x" in capsys.readouterr().out
    assert "level" not in json.loads(lut.read_text())["header"]  # priced as built again


def test_lut_check_names_a_common_offset_when_dividing_it_out_would_put_the_plans_within_10pct(monkeypatch, capsys):
    import autoprune.pipeline.lut as pipeline_lut

    result = {"plans": 50, "mape": 14.0, "max_abs_pct": 20.0, "plot": None, "mape_ms": 9.0, "within_10pct_ms": 0.5,
              "drift": 1.0, "base_ms_now": 1.0, "base_ms_at_build": 1.0, "device": "here", "device_now": "here",
              "pass_shift": 0.0, "runtime": "torch", "within_10pct": 0.06}
    for offset, removed, noted in ((14.6, 1.0, True), (2.0, 1.0, False), (14.6, 0.1, False)):
        monkeypatch.setattr(pipeline_lut, "check_lut_file", lambda *a, o=offset, w=removed, **k: {
            **result, "offset_pct": o, "within_10pct_offset_removed": w})
        assert main(["lut", "check", "--lut", "x.json", "--model", "factories:tiny_cnn"]) == 0
        out = capsys.readouterr().out
        assert ("the predictions sit +14.6% off the measurements as a whole" in out) == noted, (offset, removed)


@pytest.mark.parametrize("skip", [[], ["a1"]])
def test_budget_reanchor_prices_a_search_at_the_level_measured_before_it_and_a_resume_keeps_it(
        fake_machine, monkeypatch, tmp_path, skip):
    """``budget.reanchor: N``: before the search the LUT's level is re-measured on N plans (every pruned model
    here runs 1.2x slower than at the build), every plan is priced at it, the run dir and the summary keep it,
    the LUT file is left as it was, and ``--resume`` uses the stored level instead of timing again."""
    import pandas as pd

    from autoprune.core.skip import skip_units
    from autoprune.latency import check as latency_check

    model = TinyResidual().eval()
    path = tmp_path / "lut.json"
    path.write_text(build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake",
                              clock="fake").to_json())
    slow_pruned_models(monkeypatch, model)
    real, anchored = latency_check.reanchor_lut, []

    def spy(lut, net, **kw):
        anchored.append((kw["graph"].names, kw["near"]))
        return real(lut, net, **kw)

    monkeypatch.setattr(latency_check, "reanchor_lut", spy)
    raw = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"},
                      budget={"latency": 0.7, "lut": str(path), "reanchor": 3}, pruning={"skip": skip})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    level = json.loads((out / "summary.json").read_text())["budget"]["lut_level"]
    assert level["factor"] == pytest.approx(1.2, rel=0.03) and level["plans"] == 3 and level["previous"] == 1.0
    assert level["near"] == pytest.approx(0.7)  # the anchors were drawn where the search ends: at the budget
    assert json.loads((out / "lut_level.json").read_text()) == level
    assert "level" not in json.loads(path.read_text())["header"]  # the LUT file is not changed
    assert len(anchored) == 1 and ("a1" in anchored[0][0]) == (not skip)  # anchors drawn over the search's units
    assert anchored[0][1] == pytest.approx(0.7)
    graph = skip_units(build_unit_graph(model, SHAPE), skip)
    as_built = LutCost(load_lut(path, graph), graph)
    for _, row in pd.read_parquet(out / "trials.parquet").iterrows():
        counts = [int(row[f"channels/{n}"]) for n in graph.names]
        assert row["latency_kept"] == pytest.approx(level["factor"] * as_built.fraction(counts), rel=1e-6)
        assert row["latency_kept"] <= 0.7 + 1e-9

    def no_timing(*a, **k):
        raise AssertionError("a resumed run timed the plans again")

    monkeypatch.setattr(latency_check, "reanchor_lut", no_timing)
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["budget"]["lut_level"] == level


def test_round_to_auto_rounds_a_search_as_its_lut_favours_and_a_resume_keeps_the_choice(tmp_path, monkeypatch):
    """With ``pruning.round_to: auto`` (the default) a search with a LUT whose widths off multiples of 4 run 3x
    slower rounds to a coarser multiple, says so, records it (summary.json, round_to.json), and a resume keeps it."""
    from autoprune.pipeline import session as session_module

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    info = {m.name: m for m in graph.modules}

    def fn(name, i, o):
        m = info[name]
        return 1e-6 * m.macs * (o / m.out_ch) * (i / m.in_ch) * (1 if o % 4 == 0 else 3)

    path = tmp_path / "lut.json"
    path.write_text(Lut(make_header(graph, remainder_ms=0.0), tabulate(graph, fn, step=1)).to_json())
    raw = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"},
                      budget={"latency": 0.6, "lut": str(path)}, searcher={"name": "random", "evaluations": 4})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rounding = summary["round_to"]
    assert rounding["auto"] and rounding["value"] in (4, 8) and json.loads((out / "round_to.json").read_text()) == rounding
    kept = rounding["flops_kept"]
    assert kept[str(rounding["value"])] >= 1.1 * kept["1"]
    plan = json.loads((out / "best_plan.json").read_text())["channels"]
    full = dict(zip(graph.names, graph.channels, strict=True))
    assert all(c % rounding["value"] == 0 or c == full[n] for n, c in plan.items())
    monkeypatch.setattr(session_module, "auto_round_to", lambda *a, **k: pytest.fail("a resumed run chose again"))
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["round_to"] == rounding
    monkeypatch.undo()
    flops = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"},
                        budget={"flops": 0.6}, searcher={"name": "random", "evaluations": 2})
    assert main(["search", write_config(tmp_path, flops), "--out", str(tmp_path / "f"), "--no-progress"]) == 0
    assert json.loads((tmp_path / "f" / "summary.json").read_text())["round_to"] == {"value": 1, "auto": True}


def test_an_unreachable_latency_budget_names_the_luts_reanchored_level(fake_machine):
    """A re-anchored level can put a budget below every plan (speedup benchmark, 2026-12-06: a torch LUT at level
    x1.28 priced ResNet-20's smallest plan at 0.569 of the base against a 0.5 budget): the error says so."""
    from autoprune.core.cost import Budget
    from autoprune.errors import BudgetError

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    lut = build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake", clock="fake")
    floor = [1] * len(graph.units)
    as_built = LutCost(lut, graph)
    target = 1.05 * as_built.fraction(floor)  # reachable as built
    Budget(as_built, target * as_built.base).check_reachable(floor, floor_counts=floor)
    lut.header["level"] = {"factor": 3.0, "plans": 4, "date": "2026-12-06T22:20:38", "previous": 1.0}
    leveled = LutCost(lut, graph)
    with pytest.raises(BudgetError) as err:
        Budget(leveled, target * leveled.base).check_reachable(floor, floor_counts=floor)
    assert "re-anchored level x3.000, measured 2026-12-06" in str(err.value) and "slower" in str(err.value)
    assert "\n" not in str(err.value)


def test_budget_reanchor_that_puts_the_budget_out_of_reach_is_a_one_line_error_naming_the_level(
        fake_machine, monkeypatch, tmp_path, capsys):
    """A machine where every pruned model runs 1.2x slower than at the build: a budget 10% above the LUT's
    smallest plan as built is out of reach at the level ``budget.reanchor`` measures; the CLI says so in one line."""
    model = TinyResidual().eval()
    path = tmp_path / "lut.json"
    path.write_text(build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake",
                              clock="fake").to_json())
    graph = build_unit_graph(model, SHAPE)
    smallest = LutCost(load_lut(path, graph), graph).fraction([1] * len(graph.units))
    slow_pruned_models(monkeypatch, model)
    raw = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"},
                      budget={"latency": round(1.1 * smallest, 4), "lut": str(path), "reanchor": 3},
                      pruning={"min_ratio": 0.01})
    code = main(["search", write_config(tmp_path, raw), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.search(r"re-anchored level x1\.(1[7-9]|2[0-3])\d", err[0]) and "slower" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before the run dir is written


@pytest.mark.parametrize("budget", [{"flops": 0.5, "reanchor": 4}, {"latency": 0.5, "reanchor": 4},
                                    {"latency": 0.5, "lut": "x.json", "reanchor": -1}])
def test_budget_reanchor_needs_a_latency_budget_with_a_lut(tmp_path, capsys, budget):
    code = main(["search", write_config(tmp_path, tiny_config(budget=budget)), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "budget.reanchor" in err[0], err
    assert not (tmp_path / "r").exists()


def test_the_budget_flag_keeps_reanchor_for_a_latency_budget_only(tmp_path):
    from autoprune.config import load_config

    raw = tiny_config(budget={"latency": 0.6, "lut": "r20.json", "reanchor": 8})
    assert load_config(raw, budget="latency=0.5").budget.reanchor == 8
    flops = load_config(raw, budget="flops=0.5").budget
    assert flops.reanchor == 0 and flops.flops == 0.5


# ------------------------------------------------------------------ budget.verify: fitting a plan by measurement


def verify_setup(fake_machine, monkeypatch, factor: float):
    """TinyResidual, a LUT built on the fake machine, a searched-like plan the LUT prices at 0.7 of the unpruned
    model, and then every pruned model running ``factor`` times slower than at the build."""
    from autoprune.core.budget_fit import BudgetFitter
    from autoprune.core.cost import Budget

    model = TinyResidual().eval()
    graph = build_unit_graph(model, SHAPE)
    lut = build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake", clock="fake")
    cost = LutCost(lut, graph)
    budget = Budget(cost, 0.7 * cost.base)
    shape = np.array([1.0, 0.5, 0.9, 0.6, 1.0])[:len(graph.units)]
    searched = BudgetFitter(graph, budget, 0.1, 1.0).fit(BudgetFitter(graph, budget, 0.1, 1.0).scaled(shape, 1.0))
    assert cost.fraction(searched) == pytest.approx(0.7, abs=0.03)
    slow_pruned_models(monkeypatch, model, factor)
    return model, graph, budget, searched


@pytest.mark.parametrize("factor", [1.2, 0.85])
def test_budget_verify_lands_a_plan_the_lut_misprices_on_the_budget_as_measured(fake_machine, monkeypatch, factor):
    """Every pruned model runs ``factor`` times slower than the LUT says (a machine whose state moved, or plans
    the tables' sum misjudges): the searched plan measures ~0.7 x factor. ``verify_plan`` re-levels the LUT on
    it and scales the plan (one factor on every ratio, so its shape stays) to the budget: it shrinks when the
    plan ran slow and grows when it ran fast, and the plan it returns measures within the tolerance."""
    from autoprune.latency.verify import verify_plan

    model, graph, budget, searched = verify_setup(fake_machine, monkeypatch, factor)
    counts, fitted, record = verify_plan(budget, graph, model, searched, min_ratio=0.1, rounds=3, repeats=3)
    first, last = record["rounds"][0], record["rounds"][-1]
    assert first["counts"] == list(searched) and first["measured"] == pytest.approx(factor * first["predicted"],
                                                                                    rel=0.02)
    assert record["changed"] and record["met"] and record["stopped"] == "met" and len(record["rounds"]) >= 2
    assert abs(last["measured"] / 0.7 - 1) <= 0.05 and last["counts"] == counts
    assert record["level"] == pytest.approx(factor, rel=0.03) == fitted.cost.level
    assert fitted.fits(counts) and fitted.target == budget.target  # the same budget, priced at the new level
    smaller = factor > 1
    assert all((c <= s) if smaller else (c >= s) for c, s in zip(counts, searched, strict=True))
    assert budget.cost.level == 1.0 and "level" not in budget.cost.lut.header  # the LUT given is not changed


def test_budget_verify_keeps_a_plan_measured_within_the_tolerance(fake_machine, monkeypatch):
    from autoprune.latency.verify import verify_plan

    model, graph, budget, searched = verify_setup(fake_machine, monkeypatch, 1.02)
    counts, fitted, record = verify_plan(budget, graph, model, searched, min_ratio=0.1, rounds=3, repeats=3)
    assert counts == list(searched) and fitted is budget
    assert len(record["rounds"]) == 1 and record["met"] and not record["changed"] and record["stopped"] == "met"


def test_budget_verify_keeps_the_plan_when_no_plan_meets_the_budget_at_the_level_measured(fake_machine, monkeypatch):
    """Pruned models 3x slower than the LUT says: at that level even the search's smallest plan is over the
    budget, so the plan stays as searched and the record says why (the CLI prints it)."""
    from autoprune.latency.verify import verify_plan

    model, graph, budget, searched = verify_setup(fake_machine, monkeypatch, 3.0)
    counts, fitted, record = verify_plan(budget, graph, model, searched, min_ratio=0.1, rounds=3, repeats=3)
    assert counts == list(searched) and fitted is budget and len(record["rounds"]) == 1
    assert record["stopped"] == "unreachable" and not record["met"] and not record["changed"]


def test_budget_verify_returns_the_plan_timed_closest_to_the_budget_when_the_rounds_run_out(fake_machine,
                                                                                            monkeypatch):
    """Timings that jump around (a busy machine) can make the re-fits overshoot: with the rounds spent and no plan
    within the tolerance, the plan timed closest to the budget is returned (here the third of four), with the
    budget it was fitted at, and the record says the tolerance was not met."""
    from types import SimpleNamespace

    from autoprune.latency import verify

    model, graph, budget, searched = verify_setup(fake_machine, monkeypatch, 1.0)
    timings = iter([0.84, 0.60, 0.76, 0.63])  # 0.7 +20%, -14%, +8.6%, -10%
    monkeypatch.setattr(verify, "time_plans", lambda *a, **k: SimpleNamespace(relative=[next(timings)]))
    counts, fitted, record = verify.verify_plan(budget, graph, model, searched, min_ratio=0.1, rounds=3)
    assert [r["measured"] for r in record["rounds"]] == [0.84, 0.60, 0.76, 0.63]
    assert record["chosen"] == 2 and counts == record["rounds"][2]["counts"] and not record["met"]
    assert record["measured"] == 0.76 and record["changed"] and counts != list(searched)
    assert fitted.fits(counts) and fitted.cost.level == record["level"] == record["rounds"][2]["level"] != 1.0


def test_budget_verify_refuses_a_lut_timed_on_another_device(fake_machine, monkeypatch):
    from autoprune.latency.verify import verify_plan

    model, graph, budget, searched = verify_setup(fake_machine, monkeypatch, 1.2)
    budget.cost.lut.header.update(device="pixel7-ort", built_on=None)
    with pytest.raises(AutopruneError, match="timed on 'pixel7-ort'"):
        verify_plan(budget, graph, model, searched, min_ratio=0.1, repeats=3)


def test_budget_verify_in_a_search_writes_the_fitted_plan_and_its_rounds(fake_machine, monkeypatch, tmp_path,
                                                                          capsys):
    """``budget.verify: N`` in a run: the plan the search returns is timed here and fitted to the budget;
    ``best_plan.json`` and the pruned model are the fitted plan, ``summary.json`` has the rounds
    (``verify``) and its measured fraction (``latency.kept_measured``) within the tolerance of the budget."""
    model = TinyResidual().eval()
    path = tmp_path / "lut.json"
    path.write_text(build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake",
                              clock="fake").to_json())
    slow_pruned_models(monkeypatch, model, 1.2)
    raw = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"},
                      budget={"latency": 0.7, "lut": str(path), "verify": 3}, pruning={"min_ratio": 0.1})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    verify = summary["verify"]
    assert verify["changed"] and verify["met"] and verify["rounds"][0]["measured"] > 0.7 * 1.1
    assert summary["latency"]["kept_measured"] == pytest.approx(0.7, rel=0.05)
    assert summary["latency"]["kept_predicted"] == pytest.approx(summary["latency"]["kept_measured"], rel=0.05)
    plan = json.loads((out / "best_plan.json").read_text())
    graph = build_unit_graph(model, SHAPE)
    assert [plan["channels"][n] for n in graph.names] == verify["rounds"][-1]["counts"]
    assert plan["meta"]["verify"] == verify
    printed = capsys.readouterr().out
    assert f"verify   the searched plan ran at {verify['rounds'][0]['measured']:.3f} of the base" in printed
    assert f"fitted in {len(verify['rounds']) - 1} round" in printed and "not within" not in printed


@pytest.mark.parametrize("budget", [{"flops": 0.5, "verify": 2}, {"latency": 0.5, "verify": 2},
                                    {"latency": 0.5, "lut": "x.json", "verify": -1},
                                    {"latency": 0.5, "lut": "x.json", "verify": 2, "verify_tolerance": 0}])
def test_budget_verify_needs_a_latency_budget_with_a_lut(tmp_path, capsys, budget):
    code = main(["search", write_config(tmp_path, tiny_config(budget=budget)), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "budget.verify" in err[0], err
    assert not (tmp_path / "r").exists()


def test_budget_verify_with_a_lut_of_another_device_fails_before_the_search(fake_machine, tmp_path, capsys):
    model = TinyResidual().eval()
    lut = build_lut(model, SHAPE, step=4, repeats=3, calibration_plans=8, progress=False, runtime="fake",
                    clock="fake")
    lut.header.update(device="pixel7-ort", built_on=None)
    path = tmp_path / "lut.json"
    path.write_text(lut.to_json())
    raw = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"},
                      budget={"latency": 0.7, "lut": str(path), "verify": 2})
    code = main(["search", write_config(tmp_path, raw), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "budget.verify" in err[0] and "pixel7-ort" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_lut_budget_whose_runtime_favours_aligned_counts_warns_to_round_or_rounds_by_itself(caplog):
    """The committed MobileNetV2 ONNX Runtime LUT prices counts off multiples of 4-16 higher: at 0.7 of its
    latency random plans fitted to the budget keep 0.09 of the FLOPs on average at round_to 1 and 0.64 at 16,
    so a search says to round to 16; rounded so, or with a FLOPs budget (monotone), it says nothing."""
    from pathlib import Path

    from autoprune.config import PruningConfig
    from autoprune.core.cost import plan_costs
    from autoprune.pipeline.session import warn_misaligned
    from autoprune.search.base import SearchContext
    from autoprune.search.rounding import auto_round_to, rounding_gains

    lut = Path(__file__).resolve().parents[1] / "benchmarks" / "luts" / "mobilenetv2_small_onnxruntime_b1_t1.json"
    graph = build_unit_graph(build_model("mobilenetv2_small", in_channels=3, num_classes=10).eval(), (3, 32, 32))

    def context(kind, round_to):
        pruning = PruningConfig(round_to=round_to)
        budget = make_budget(graph, kind, 0.7, pruning=pruning, lut=str(lut) if kind == "latency" else None)
        return SearchContext(graph=graph, evaluator=None, budget=budget, costs=plan_costs(graph, pruning),
                             pruning=pruning)

    with caplog.at_level("WARNING"):
        line = warn_misaligned(context("latency", 1))
    assert line in caplog.text and "set pruning.round_to: 16" in line
    kept = rounding_gains(context("latency", 1))
    assert list(kept) == [1, 4, 8, 16] and kept[16] >= 2 * kept[1]  # 0.09 and 0.64
    assert f"keep {kept[1]:.2f} of the FLOPs on average at pruning.round_to 1 and {kept[16]:.2f} at 16" in line
    caplog.clear()
    assert warn_misaligned(context("latency", 16)) is None  # rounded as the LUT favours: no coarser rounding to try
    assert warn_misaligned(context("flops", 1)) is None  # FLOPs grow with every count
    assert not caplog.records
    # pruning.round_to: auto (the default) rounds as the warning says, and leaves FLOPs budgets at 1
    auto = auto_round_to(context("latency", 1))
    assert auto["value"] == 16 and auto["auto"] and auto["flops_kept"] == {str(k): round(v, 4) for k, v in kept.items()}
    assert auto_round_to(context("flops", 1)) == {"value": 1, "auto": True}
    assert PruningConfig().round_to == "auto"
    direct = context("latency", "auto")  # a context built by hand resolves auto itself
    assert direct.pruning.round_to == 16 and direct.rounding == auto


def test_a_module_tables_remembered_lookups_are_its_lookups():
    """``ModuleTable.lookup`` remembers each width pair's value (a search prices plans that differ in one unit
    over and over): the same as computing it, for the ms and the relative table, and a fine curve added later
    is not hidden behind a remembered value."""
    from autoprune.latency.tables import FineAxis

    rng = np.random.default_rng(0)
    ms, rel = rng.uniform(1, 2, (3, 3)), rng.uniform(0.1, 0.2, (3, 3))
    table = ModuleTable("m", "conv", [4, 8, 16], [4, 8, 16], ms, rel)
    pairs = [(float(i), float(o)) for i, o in rng.uniform(4, 16, (20, 2))]
    for relative in (False, True):
        first = [table.lookup(i, o, relative) for i, o in pairs]
        assert first == [table.lookup(i, o, relative) for i, o in pairs] == [table._lookup(i, o, relative) for i, o in pairs]
    before = table.lookup(6.0, 12.0)
    table.fine["out"] = FineAxis(list(range(4, 17)), np.linspace(3, 5, 13))
    assert table.lookup(6.0, 12.0) == table._lookup(6.0, 12.0, False) != before
