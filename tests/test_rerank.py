"""Re-ranking: the proxy's top plans are fine-tuned alike, the best afterwards wins, its cost is reported."""

from __future__ import annotations

import pytest
from conftest import tiny_config

from autoprune.config import RerankConfig, load_config
from autoprune.errors import ConfigError
from autoprune.search.evaluate import EvalResult
from autoprune.search.records import TrialRecorder
from autoprune.search.rerank import rerank, search_rows, without_rerank_rows


class Scripted:
    """Scores by plan: ``proxy[i]`` without fine-tuning, ``tuned[i](steps)`` with it."""

    def __init__(self, graph, plans, proxy, tuned) -> None:
        self.graph, self.calls = graph, []
        self.table = {p.key(graph): (a, f) for p, a, f in zip(plans, proxy, tuned, strict=True)}

    def evaluate(self, plan, finetune_steps=0):
        return self.evaluate_many([plan], finetune_steps)[0]

    def evaluate_many(self, plans, finetune_steps=0):
        self.calls.extend((p.key(self.graph), finetune_steps) for p in plans)
        out = []
        for p in plans:
            proxy, tuned = self.table[p.key(self.graph)]
            out.append(EvalResult(tuned(finetune_steps) if finetune_steps else proxy, 0.01))
        return out


def _setup(session, proxy, tuned, over_budget_proxy=None):
    """Plans A, B, C, ... within the budget, recorded with ``proxy`` scores (plus an over-budget one)."""
    probe = session.context(None, TrialRecorder(None), None, False, progress=False)
    n = len(session.graph)
    shapes = [[1.0] * n, [1.0 - 0.15 * (i % 3) for i in range(n)], [0.5 + 0.15 * (i % 3) for i in range(n)],
              [1.0 - 0.3 * (i % 2) for i in range(n)], [0.4 + 0.6 * (i % 2) for i in range(n)]]
    plans = [probe.plan_from_ratios(probe.fit_to_budget(s)) for s in shapes[: len(proxy)]]
    assert len({p.key(session.graph) for p in plans}) == len(plans)
    extra = []
    if over_budget_proxy is not None:
        extra = [probe.plan_from_ratios([1.0] * n)]
        proxy, tuned = [*proxy, over_budget_proxy], [*tuned, lambda s: 1.0]
    evaluator = Scripted(session.graph, plans + extra, proxy, tuned)
    ctx = session.context(evaluator, TrialRecorder(None), None, False, progress=False)
    for plan, result in zip(plans + extra, evaluator.evaluate_many(plans + extra), strict=True):
        ctx.record(plan, result)
    plans[0].meta.update(val_accuracy=proxy[0], searcher="random")
    evaluator.calls.clear()
    return ctx, plans, evaluator


def test_the_best_after_fine_tuning_wins_and_its_cost_is_reported(tiny_session):
    ctx, plans, ev = _setup(tiny_session, proxy=[0.9, 0.8, 0.7, 0.2], tuned=[lambda s: 0.91, lambda s: 0.85,
                                                                              lambda s: 0.95, lambda s: 0.99],
                            over_budget_proxy=0.99)
    plan, report = rerank(ctx, plans[0], RerankConfig(top_k=3, steps=7))
    graph = tiny_session.graph
    assert plan.key(graph) == plans[2].key(graph)  # third by the proxy, first after fine-tuning
    assert sorted(ev.calls) == sorted((p.key(graph), 7) for p in plans[:3])  # not the 4th, not the over-budget one
    assert report.evaluations == 3 and report.candidates == 3 and report.rounds == [(7, 3)]
    assert report.changed and report.accuracy == 0.95 and report.proxy_accuracy == 0.9 and report.seconds >= 0
    assert plan.meta["rerank_accuracy"] == 0.95 and plan.meta["val_accuracy"] == 0.7 and ctx.fits(plan)
    assert plan.meta["searcher"] == "random" and plans[0].meta["val_accuracy"] == 0.9  # the input is untouched
    rows = [r for r in ctx.recorder.rows if r.get("stage") == "rerank"]
    assert len(rows) == 3 and {r["finetune_steps"] for r in rows} == {7} and {r["rerank_round"] for r in rows} == {0}
    assert len(search_rows(ctx.recorder.rows)) == 5


def test_successive_halving_doubles_the_steps_for_the_better_half(tiny_session):
    # at 5 steps A and C lead; at 10 steps C overtakes A; D is best at 10 steps but is cut at 5
    curves = [lambda s: 0.80 if s == 5 else 0.85, lambda s: 0.70, lambda s: 0.78 if s == 5 else 0.90,
              lambda s: 0.60 if s == 5 else 0.99]
    ctx, plans, ev = _setup(tiny_session, proxy=[0.9, 0.8, 0.7, 0.6], tuned=curves)
    plan, report = rerank(ctx, plans[0], RerankConfig(top_k=4, steps=5, halving=True))
    assert plan.key(tiny_session.graph) == plans[2].key(tiny_session.graph)
    assert report.rounds == [(5, 4), (10, 2)] and report.evaluations == 6 and plan.meta["rerank_steps"] == 10
    assert sorted(r["rerank_round"] for r in ctx.recorder.rows if r.get("stage") == "rerank") == [0, 0, 0, 0, 1, 1]


def test_off_by_default_and_a_tie_keeps_the_searchers_plan(tiny_session):
    ctx, plans, ev = _setup(tiny_session, proxy=[0.9, 0.8], tuned=[lambda s: 0.9, lambda s: 0.9])
    assert RerankConfig().top_k == 0
    plan, report = rerank(ctx, plans[0], RerankConfig())
    assert plan is plans[0] and report.evaluations == 0 and not ev.calls
    plan, report = rerank(ctx, plans[0], RerankConfig(top_k=2, steps=3))
    assert plan.key(tiny_session.graph) == plans[0].key(tiny_session.graph) and not report.changed
    assert plan.meta["searcher"] == "random" and plan.meta["rerank_accuracy"] == 0.9


def test_a_resumed_rerank_reuses_the_rows_on_record(tiny_session, tmp_path):
    ctx, plans, ev = _setup(tiny_session, proxy=[0.9, 0.8, 0.7], tuned=[lambda s: 0.5, lambda s: 0.6, lambda s: 0.7])
    first, _ = rerank(ctx, plans[0], RerankConfig(top_k=3, steps=4))
    TrialRecorder(tmp_path / "trials.parquet", ctx.recorder.rows).flush()
    ctx.recorder = TrialRecorder.resume(tmp_path / "trials.parquet")
    ev.calls.clear()
    again, report = rerank(ctx, plans[0], RerankConfig(top_k=3, steps=4))
    assert not ev.calls and report.evaluations == 0 and again.key(tiny_session.graph) == first.key(tiny_session.graph)
    assert len(ctx.recorder.rows) == 6  # nothing recorded twice


def test_rerank_with_the_real_evaluator_after_a_random_search(tiny_session, tmp_path):
    from autoprune.agents.baselines import RandomSearcher

    recorder = TrialRecorder(tmp_path / "trials.parquet")
    ctx = tiny_session.context(tiny_session.evaluator(), recorder, tmp_path, False, progress=False)
    ctx.searcher_name = "random"
    plan = RandomSearcher(ctx, RandomSearcher.Options(evaluations=4)).search()
    best, report = rerank(ctx, plan, RerankConfig(top_k=2, steps=2))
    assert report.evaluations == 2 and ctx.fits(best) and 0 <= best.meta["rerank_accuracy"] <= 1
    df = TrialRecorder.resume(tmp_path / "trials.parquet")
    assert [r.get("stage") for r in df.rows][-2:] == ["rerank", "rerank"]
    with without_rerank_rows(df):  # a resumed searcher sees its own rows only
        ctx.recorder = df
        again = RandomSearcher(ctx, RandomSearcher.Options(evaluations=4)).search()
    assert again.key(tiny_session.graph) == plan.key(tiny_session.graph) and len(df.rows) == 6


@pytest.mark.parametrize("bad", [{"top_k": -1}, {"steps": 0}, {"topk": 2}, {"halving": "yes"}])
def test_the_rerank_section_is_validated(bad):
    with pytest.raises(ConfigError):
        load_config({**tiny_config(), "rerank": bad})


def test_run_search_reranks_and_reports_the_stage_in_the_summary(tmp_path):
    """``rerank.top_k`` is wired into ``autoprune search``: the summary reports the stage's cost and
    counts the searcher's evaluations without the re-ranking rows."""
    import json

    import pandas as pd
    from conftest import tiny_config

    from autoprune.config import load_config
    from autoprune.pipeline.run import run_search

    cfg = load_config(tiny_config(searcher={"name": "random", "evaluations": 4},
                                  rerank={"top_k": 2, "steps": 3}))
    run_dir = run_search(cfg, out=tmp_path / "run", progress=False)
    summary = json.loads((run_dir / "summary.json").read_text())
    trials = pd.read_parquet(run_dir / "trials.parquet")
    reranked = trials[trials.get("stage") == "rerank"] if "stage" in trials else trials.iloc[:0]
    assert summary["rerank"]["candidates"] == 2
    assert summary["rerank"]["evaluations"] == len(reranked) == 2
    assert summary["evaluations"] == len(trials) - len(reranked)


def test_the_uniform_plan_joins_the_pool_once_and_wins_where_it_fine_tunes_best(tiny_session):
    """``rerank.uniform``: the uniform plan at the budget is re-ranked beside the searcher's plans
    (one more evaluation, none when it is among them already) and returned where it scores best."""
    ctx, plans, ev = _setup(tiny_session, proxy=[0.6, 0.8, 0.7], tuned=[lambda s: 0.91, lambda s: 0.85, lambda s: 0.95])
    graph, n = tiny_session.graph, len(tiny_session.graph)
    uniform = ctx.plan_from_ratios(ctx.fit_to_budget([ctx.pruning.max_ratio] * n))
    assert uniform.key(graph) == plans[0].key(graph)  # the all-ones shape scaled to the budget
    plans[2].meta.update(val_accuracy=0.7, searcher="tpe")
    plan, report = rerank(ctx, plans[2], RerankConfig(top_k=1, steps=3, uniform=True))
    assert plan.key(graph) == plans[2].key(graph) and not report.uniform_won and not report.changed
    assert report.candidates == 2 and report.evaluations == 2 and report.uniform_accuracy == 0.91
    plans[1].meta.update(val_accuracy=0.8, searcher="tpe")
    plan, report = rerank(ctx, plans[1], RerankConfig(top_k=1, steps=3, uniform=True))
    assert plan.key(graph) == uniform.key(graph) and report.uniform_won and report.changed
    assert plan.meta["candidate"] == "uniform" and plan.meta["searcher"] == "tpe" and plan.meta["rerank_accuracy"] == 0.91
    assert report.to_dict()["uniform_won"] and report.evaluations == 1  # the uniform plan's row was reused
    plan, report = rerank(ctx, plans[1], RerankConfig(top_k=3, steps=3, uniform=True))
    assert report.candidates == 3  # the uniform plan is the proxy's third: not in the pool twice
    plan, report = rerank(ctx, plans[1], RerankConfig(top_k=1, steps=3))
    assert report.candidates == 1 and report.uniform_accuracy is None and plan.key(graph) == plans[1].key(graph)
