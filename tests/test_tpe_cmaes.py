"""TPE (Optuna) and CMA-ES (cmaes): budget, rows, seeds, and a resume that re-evaluates nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import TESTS, tiny_config, write_config

from autoprune.agents.cma_es import CmaEsSearcher
from autoprune.agents.tpe import TpeSearcher
from autoprune.atomic import read_trials
from autoprune.errors import ConfigError
from autoprune.search.records import TrialRecorder

SEARCHERS = {"tpe": TpeSearcher, "cmaes": CmaEsSearcher}
NAMES = list(SEARCHERS)
OPTIONS = {"tpe": {"evaluations": 12, "parallel": 4, "startup_trials": 4},
           "cmaes": {"evaluations": 12, "parallel": 4, "sigma0": 0.3}}


class Counting:
    """An evaluator that counts the plans it is asked to score."""

    def __init__(self, inner) -> None:
        self.inner, self.asked = inner, 0

    def evaluate(self, plan, finetune_steps=0):
        return self.evaluate_many([plan], finetune_steps)[0]

    def evaluate_many(self, plans, finetune_steps=0):
        self.asked += len(plans)
        return self.inner.evaluate_many(plans, finetune_steps)


def _search(session, name, recorder=None, seed=0, **options):
    ctx = session.context(Counting(session.evaluator()), recorder or TrialRecorder(None), None, False, progress=False)
    ctx.seed, ctx.searcher_name = seed, name
    cls = SEARCHERS[name]
    plan = cls(ctx, cls.parse_options({**OPTIONS[name], **options})).search()
    return plan, ctx


def _plans(rows, graph):
    return [tuple(int(r[f"channels/{n}"]) for n in graph.names) for r in rows]


@pytest.mark.parametrize("name", NAMES)
def test_every_plan_meets_the_budget_and_is_a_row(tiny_session, name):
    plan, ctx = _search(tiny_session, name)
    rows, graph = ctx.recorder.rows, tiny_session.graph
    assert len(rows) == 12 and ctx.evaluator.asked == 12
    assert [r["sample"] for r in rows] == list(range(12))
    assert all(r["searcher"] == name and r["flops_kept"] <= 0.5 + 1e-9 for r in rows)
    assert all(0.2 - 1e-9 <= r[f"ask/{n}"] <= 1.0 + 1e-9 for r in rows for n in graph.names)
    assert ctx.fits(plan) and plan.meta["val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert plan.meta["flops_kept"] > 0.45  # scaled to use the budget, as random does
    assert len(set(_plans(rows, graph))) > 3  # it explores


@pytest.mark.parametrize("name", NAMES)
def test_the_seed_decides_the_proposals(tiny_session, name):
    graph = tiny_session.graph
    first = _plans(_search(tiny_session, name, seed=1, evaluations=6)[1].recorder.rows, graph)
    again = _plans(_search(tiny_session, name, seed=1, evaluations=6)[1].recorder.rows, graph)
    other = _plans(_search(tiny_session, name, seed=2, evaluations=6)[1].recorder.rows, graph)
    assert first == again and first != other


@pytest.mark.parametrize(("name", "kept"), [("tpe", 8), ("cmaes", 8), ("cmaes", 7)])
def test_resume_continues_where_it_stopped_without_re_evaluating(tiny_session, tmp_path, name, kept):
    """An interrupted run (its trials.parquet holds the first ``kept`` rows) resumes to the same rows."""
    graph = tiny_session.graph
    full_plan, full = _search(tiny_session, name)
    TrialRecorder(tmp_path / "trials.parquet", [dict(r) for r in full.recorder.rows[:kept]]).flush()
    plan, resumed = _search(tiny_session, name, recorder=TrialRecorder.resume(tmp_path / "trials.parquet"))
    assert resumed.evaluator.asked == 12 - kept  # the finished evaluations were not run again
    assert _plans(resumed.recorder.rows, graph) == _plans(full.recorder.rows, graph)
    assert plan.counts(graph) == full_plan.counts(graph)
    assert len(TrialRecorder.resume(tmp_path / "trials.parquet").rows) == 12


def test_a_finished_run_resumes_to_its_result_without_evaluating(tiny_session):
    plan, full = _search(tiny_session, "tpe")
    again, resumed = _search(tiny_session, "tpe", recorder=TrialRecorder(None, [dict(r) for r in full.recorder.rows]))
    assert resumed.evaluator.asked == 0 and again.counts(tiny_session.graph) == plan.counts(tiny_session.graph)


def test_rows_of_another_searcher_are_not_replayed(tiny_session):
    rows = _search(tiny_session, "cmaes", evaluations=4)[1].recorder.rows
    for row in rows:
        row.pop(f"ask/{tiny_session.graph.names[0]}")
    with pytest.raises(ConfigError, match="ask/"):
        _search(tiny_session, "tpe", recorder=TrialRecorder(None, rows))


@pytest.mark.parametrize(("name", "bad"), [("tpe", {"evaluations": 0}), ("tpe", {"parallel": -1}),
                                           ("tpe", {"startup_trials": -2}), ("cmaes", {"sigma0": 0}),
                                           ("cmaes", {"population": 2}), ("cmaes", {"startup_trials": 3})])
def test_options_are_validated(name, bad):
    with pytest.raises(ConfigError):
        SEARCHERS[name].parse_options({"name": name, **bad})


def _cli(args):
    """``autoprune ARGS`` in a fresh process (importing the searchers first, entry points or not)."""
    code = "import sys, autoprune.agents; from autoprune.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *args]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_kill_9_then_resume_loses_no_finished_evaluation(tmp_path, name):
    cfg = write_config(tmp_path, tiny_config(searcher={"name": name, "evaluations": 40, "parallel": 2}))
    out, env = tmp_path / "run", {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen(_cli(["search", cfg, "--out", str(out), "--no-progress"]), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_trials(out / "trials.parquet")) < 6:
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = read_trials(out / "trials.parquet")
    assert 6 <= len(before) < 40
    resumed = subprocess.run(_cli(["search", "--resume", str(out), "--no-progress"]), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    after = read_trials(out / "trials.parquet")
    search = after[after["sample"].notna()]
    assert list(search["sample"]) == list(range(40))
    assert after.iloc[: len(before)][["sample", "val_accuracy"]].equals(before[["sample", "val_accuracy"]])
    assert json.loads((out / "summary.json").read_text())["evaluations"] >= 40
