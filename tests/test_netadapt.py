"""NetAdapt: budget met greedily, resource falls every iteration, latency awareness, carried weights,
resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import TESTS, tiny_config, write_config

from autoprune.agents.netadapt import NetAdaptSearcher, load_weights
from autoprune.atomic import read_trials
from autoprune.core.cost import Budget
from autoprune.errors import ConfigError
from autoprune.latency.lut import Lut, LutCost, make_header, tabulate
from autoprune.search.records import TrialRecorder

FAST = NetAdaptSearcher.Options(initial_reduction=0.15, decay=0.9, short_term_batches=1, max_iterations=30)


def slow_layer_lut(graph, slow: str, factor: float = 30.0) -> Lut:
    """Latency = MACs at the kept widths, except ``slow``, which costs ``factor`` times more."""
    info = {m.name: m for m in graph.modules}

    def fn(name, i, o):
        m = info[name]
        return 1e-6 * m.macs * (i / m.in_ch) * (o / m.out_ch) * (factor if name == slow else 1.0) + 1e-3

    return Lut(make_header(graph, remainder_ms=0.01), tabulate(graph, fn, step=1))


def _context(session, kind="flops", fraction=0.5, cost=None, recorder=None, run_dir=None):
    ctx = session.context(session.evaluator(), recorder or TrialRecorder(None), run_dir, run_dir is not None,
                          progress=False)
    cost = cost or ctx.costs[kind]
    ctx.costs = {**ctx.costs, cost.kind: cost}
    ctx.budget = Budget(cost, fraction * cost.base)
    return ctx


def _chosen(rows):
    return sorted((r for r in rows if r["chosen"]), key=lambda r: r["iteration"])


def test_netadapt_meets_the_budget_with_a_falling_resource(tiny_session):
    ctx = _context(tiny_session, "flops", 0.5)
    plan = NetAdaptSearcher(ctx, FAST).search()
    assert ctx.fits(plan) and plan.meta["flops_kept"] <= 0.5 + 1e-9
    chosen = _chosen(ctx.recorder.rows)
    iterations = sorted({r["iteration"] for r in ctx.recorder.rows})
    assert [r["iteration"] for r in chosen] == iterations  # exactly one chosen proposal per iteration
    resources = [ctx.budget.cost.base] + [r["resource"] for r in chosen]
    assert all(b < a for a, b in zip(resources, resources[1:], strict=False))
    assert all(r["resource"] <= r["target"] * (1 + 1e-9) for r in ctx.recorder.rows)
    for it in iterations:  # the kept proposal is the most accurate of its iteration
        rows = [r for r in ctx.recorder.rows if r["iteration"] == it]
        assert max(r["val_accuracy"] for r in rows) == next(r for r in rows if r["chosen"])["val_accuracy"]
        assert all(sum(r[f"channels/{n}"] < c[f"channels/{n}"] for n in tiny_session.graph.names) == 1
                   for r, c in [(r, _previous(chosen, it, tiny_session.graph)) for r in rows])
    assert plan.meta["val_accuracy"] == chosen[-1]["val_accuracy"]


def _previous(chosen, iteration, graph):
    before = [r for r in chosen if r["iteration"] < iteration]
    return before[-1] if before else {f"channels/{u.name}": u.out_channels for u in graph.units}


def test_latency_guided_netadapt_prunes_the_slow_layer_harder_than_flops_guided(tiny_session):
    graph = tiny_session.graph
    slow = graph.units[0].name  # the first conv: few MACs, made 30x slower on this "device"
    lut_cost = LutCost(slow_layer_lut(graph, slow), graph)
    by_latency = NetAdaptSearcher(_context(tiny_session, cost=lut_cost, fraction=0.6), FAST).search()
    by_flops = NetAdaptSearcher(_context(tiny_session, "flops", 0.6), FAST).search()
    assert lut_cost(by_latency.counts(graph)) <= 0.6 * lut_cost.base * (1 + 1e-9)
    assert by_latency.ratios[slow] < by_flops.ratios[slow]


def test_resume_replays_the_chosen_path_from_the_base_weights(tiny_session):
    opt = dataclasses.replace(FAST, continue_weights=False)
    full = _context(tiny_session, "flops", 0.5)
    final = NetAdaptSearcher(full, opt).search()
    rows = full.recorder.rows
    assert len(_chosen(rows)) >= 3
    kept = [r for r in rows if r["iteration"] <= 2]
    part = _context(tiny_session, "flops", 0.5, recorder=TrialRecorder(None, [dict(r) for r in kept]))
    resumed = NetAdaptSearcher(part, opt).search()
    assert resumed.counts(tiny_session.graph) == final.counts(tiny_session.graph)
    assert _path(part.recorder.rows, tiny_session.graph) == _path(rows, tiny_session.graph)
    assert "weights" not in resumed.meta and not resumed.meta["continue_weights"]


def _path(rows, graph):
    key = [f"channels/{n}" for n in graph.names] + ["iteration", "chosen"]
    return [[r[k] for k in key] for r in rows]


def test_continue_weights_carries_the_fine_tuned_network(tiny_session, tmp_path):
    """Iteration 1 is the same either way (both prune the base model); from iteration 2 on, the
    published algorithm starts from iteration 1's fine-tuned network, not the base weights."""
    graph = tiny_session.graph
    base_ctx = _context(tiny_session, "flops", 0.5)
    NetAdaptSearcher(base_ctx, dataclasses.replace(FAST, continue_weights=False)).search()
    ctx = _context(tiny_session, "flops", 0.5, run_dir=tmp_path)
    searcher = NetAdaptSearcher(ctx, FAST)
    plan = searcher.search()
    first = [[r["val_accuracy"], r["proposal_unit"]] for r in ctx.recorder.rows if r["iteration"] == 1]
    assert first == [[r["val_accuracy"], r["proposal_unit"]] for r in base_ctx.recorder.rows if r["iteration"] == 1]
    second = {r["proposal_unit"]: r["val_accuracy"] for r in ctx.recorder.rows if r["iteration"] == 2}
    from_base = {r["proposal_unit"]: r["val_accuracy"] for r in base_ctx.recorder.rows if r["iteration"] == 2}
    assert set(second) == set(from_base) and second != from_base  # same proposals, other starting weights
    # the result is the carried network: saved in the run dir, not the base model pruned to the plan
    saved = tmp_path / plan.meta["weights"]
    assert saved.is_file() and [p.name for p in (tmp_path / "netadapt").iterdir()] == [saved.name]
    carried = load_weights(ctx.evaluator, graph, plan, saved)
    fresh = ctx.evaluator.prune(plan)
    assert all(torch.equal(a, b) for a, b in zip(carried.state_dict().values(),
                                                 searcher.model.state_dict().values(), strict=True))
    assert any(a.shape == b.shape and not torch.equal(a, b) for a, b in
               zip(carried.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert ctx.evaluator.score(carried) == pytest.approx(plan.meta["val_accuracy"])


class _Interrupted(Exception):
    pass


class _StopAt(TrialRecorder):
    """A recorder whose process "dies" when the first row of ``iteration`` arrives."""

    def __init__(self, path, iteration):
        super().__init__(path)
        self.iteration = iteration

    def append(self, row, flush=True):
        if row.get("iteration") == self.iteration:
            raise _Interrupted
        return super().append(row, flush)


def test_continue_weights_resumes_from_the_saved_weights(tiny_session, tmp_path):
    graph = tiny_session.graph
    full = _context(tiny_session, "flops", 0.5, run_dir=tmp_path / "full",
                    recorder=TrialRecorder(tmp_path / "full" / "trials.parquet"))
    final = NetAdaptSearcher(full, FAST).search()
    assert len(_chosen(full.recorder.rows)) >= 4
    run = tmp_path / "run"  # killed after iteration 3's weights were written, before its rows
    with pytest.raises(_Interrupted):
        NetAdaptSearcher(_context(tiny_session, "flops", 0.5, run_dir=run,
                                  recorder=_StopAt(run / "trials.parquet", 3)), FAST).search()
    assert sorted(p.name for p in (run / "netadapt").iterdir()) == ["iter_0002.pt", "iter_0003.pt"]
    part = _context(tiny_session, "flops", 0.5, run_dir=run, recorder=TrialRecorder.resume(run / "trials.parquet"))
    evaluated = len(part.recorder.rows)
    resumed = NetAdaptSearcher(part, FAST).search()
    assert evaluated == sum(r["iteration"] <= 2 for r in full.recorder.rows)
    assert resumed.counts(graph) == final.counts(graph)
    assert _path(part.recorder.rows, graph) == _path(full.recorder.rows, graph)
    assert [r["val_accuracy"] for r in part.recorder.rows] == [r["val_accuracy"] for r in full.recorder.rows]
    assert resumed.meta["weights"] == final.meta["weights"]


def test_budget_already_met_evaluates_the_unpruned_model_once(tiny_session):
    ctx = _context(tiny_session, "flops", 1.0)
    plan = NetAdaptSearcher(ctx, FAST).search()
    assert plan.counts(tiny_session.graph) == tiny_session.graph.channels
    assert len(ctx.recorder.rows) == 1 and ctx.recorder.rows[0]["chosen"]


@pytest.mark.parametrize("bad", [{"decay": 0}, {"initial_reduction": 1.5}, {"max_iterations": 0},
                                 {"short_term_batches": -1}, {"initial_reducton": 0.1},
                                 {"continue_weights": "yes"}])
def test_options_are_validated(bad):
    with pytest.raises(ConfigError):
        NetAdaptSearcher.parse_options({"name": "netadapt", **bad})


def _chosen_so_far(run_dir):
    trials = read_trials(run_dir / "trials.parquet")
    return int(trials["chosen"].sum()) if "chosen" in trials else 0


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_the_carried_weights(tmp_path):
    searcher = {"name": "netadapt", "initial_reduction": 0.05, "decay": 1.0, "short_term_batches": 2}
    cfg = write_config(tmp_path, tiny_config(searcher=searcher, budget={"flops": 0.5}))
    out, env = tmp_path / "run", {**os.environ, "PYTHONPATH": str(TESTS)}
    code = "import sys, autoprune.agents; from autoprune.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen([sys.executable, "-c", code, "search", cfg, "--out", str(out), "--no-progress"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and _chosen_so_far(out) < 3:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_trials(out / "trials.parquet")
    assert 3 <= before["chosen"].sum() and not (out / "best_plan.json").exists()
    assert list((out / "netadapt").glob("iter_*.pt"))
    resumed = subprocess.run([sys.executable, "-c", code, "search", "--resume", str(out), "--no-progress"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = read_trials(out / "trials.parquet")
    assert after.iloc[: len(before)][["iteration", "val_accuracy"]].equals(before[["iteration", "val_accuracy"]])
    chosen = after[after["chosen"]]
    assert list(chosen["iteration"]) == list(range(1, len(chosen) + 1))  # one per iteration, none lost
    plan = json.loads((out / "best_plan.json").read_text())
    assert (out / plan["meta"]["weights"]).is_file() and plan["meta"]["flops_kept"] <= 0.5 + 1e-9


def test_the_long_term_fine_tune_starts_from_the_carried_weights(tmp_path):
    """With ``continue_weights`` the pipeline fine-tunes NetAdapt's carried network, not the base
    model pruned again: the pruned model before fine-tuning holds the saved weights."""
    import torch
    from conftest import tiny_config

    from autoprune.config import load_config
    from autoprune.pipeline.run import _pruned_start, search
    from autoprune.pipeline.session import prepare
    from autoprune.search.records import TrialRecorder

    cfg = load_config(tiny_config(searcher={"name": "netadapt", "initial_reduction": 0.2,
                                            "short_term_batches": 2, "max_iterations": 3}))
    session = prepare(cfg, progress=False)
    plan, evaluator = search(session, tmp_path, TrialRecorder(tmp_path / "trials.parquet"), progress=False)
    assert plan.meta.get("weights")
    saved = torch.load(tmp_path / plan.meta["weights"], weights_only=True)["state_dict"]
    start = _pruned_start(session, evaluator, plan, tmp_path)
    for name, value in start.state_dict().items():
        assert torch.equal(value, saved[name]), name
    base_pruned = evaluator.prune(plan)
    assert any(not torch.equal(v, base_pruned.state_dict()[k]) for k, v in start.state_dict().items())


def test_a_proposal_on_a_cost_that_is_not_monotone_is_the_largest_count_that_fits(tiny_session):
    """Where a wider layer costs less (a LUT of a runtime that favours multiples of 8), bisection over a unit's
    counts can miss the largest that meets the iteration's target; going down from the top cannot."""

    class Aligned:
        kind, monotone = "latency", False

        def __init__(self, graph):
            self.flops = FlopsCost(graph)
            self.base = self(graph.channels)

        def __call__(self, counts):  # FLOPs, plus a price per channel of every unit off a multiple of 8
            return self.flops(counts) / self.flops.base + 2.0 * sum(c for c in counts if c % 8) / 100

    from autoprune.core.cost import FlopsCost

    ctx = _context(tiny_session, fraction=0.9)
    cost = Aligned(ctx.graph)
    ctx.costs, ctx.budget = {**ctx.costs, "latency": cost}, Budget(cost, 0.9 * cost.base)
    searcher = NetAdaptSearcher(ctx, FAST)
    counts = list(ctx.graph.channels)
    for unit in range(len(counts)):
        options = searcher.candidates(unit, counts[unit])
        target = cost(counts[:unit] + [options[-1] // 8 * 8] + counts[unit + 1:]) if options[-1] >= 8 else cost(counts)
        found = searcher.largest_fitting(counts, unit, target)
        fitting = [k for k in options if cost(counts[:unit] + [k] + counts[unit + 1:]) <= target * (1 + 1e-9)]
        assert found == (max(fitting) if fitting else None)
    cost.monotone = True  # bisection alone: misses it for at least one unit here
    missed = 0
    for unit in range(len(counts)):
        options = searcher.candidates(unit, counts[unit])
        if options and options[-1] >= 8:
            target = cost(counts[:unit] + [options[-1] // 8 * 8] + counts[unit + 1:])
            missed += searcher.largest_fitting(counts, unit, target) != options[-1] // 8 * 8
    assert missed >= 1
