"""Re-ranking: short-term fine-tune the proxy's top plans and keep the best after fine-tuning.

The search proxy (adaptive BN, no training) misjudges some plans: very thin layers look fine to it
and hurt after fine-tuning (``FACTS.md``). Re-ranking spends a few more evaluations to correct it.
The top-``k`` distinct plans that meet the budget, by the proxy (the searcher's own plan always
among them), are each fine-tuned for the same ``steps`` batches and scored again
(``ctx.evaluate(plan, finetune_steps=steps)``, so a Ray pool runs them in parallel); the best one
becomes the result. With ``halving`` (successive halving) the better half goes on to a round at
twice the steps, until one plan is left: ``k`` plans at ``s`` steps, ``k/2`` at ``2s``, ... . With
``uniform`` the uniform plan at the budget joins the pool (one more evaluation per round it stays):
a search whose plans fine-tune worse than shrinking every unit alike then returns that plan instead.

Every re-ranking evaluation is a row of ``trials.parquet`` with ``stage: rerank``, ``rerank_round``
and ``finetune_steps``; search rows have no ``stage`` (read back as missing). A resumed run reuses
the rerank rows already on record instead of evaluating those plans again. Searchers that read
their own rows back should look at :func:`search_rows` (or run inside :func:`without_rerank_rows`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoprune.config import RerankConfig
from autoprune.core.plan import PruningPlan
from autoprune.search.base import SearchContext, plan_from_row
from autoprune.search.records import TrialRecorder

log = logging.getLogger(__name__)

STAGE = "rerank"
"""The ``stage`` column of re-ranking rows."""
UNIFORM = "uniform"
"""``meta["candidate"]`` of the uniform plan in the pool (``rerank.uniform``)."""


def is_rerank(row: dict[str, Any]) -> bool:
    return row.get("stage") == STAGE


def search_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a searcher recorded (re-ranking rows left out)."""
    return [r for r in rows if not is_rerank(r)]


@contextmanager
def without_rerank_rows(recorder: TrialRecorder) -> Iterator[None]:
    """Hide re-ranking rows from a resumed searcher (they are put back, at the end, afterwards)."""
    held = [r for r in recorder.rows if is_rerank(r)]
    recorder.rows[:] = search_rows(recorder.rows)
    try:
        yield
    finally:
        recorder.rows.extend(held)


@dataclass
class RerankReport:
    """What re-ranking did and cost."""

    evaluations: int = 0
    """Fine-tune-and-score evaluations run now (rows reused from a resumed run not counted)."""
    seconds: float = 0.0
    """Wall time of the stage."""
    candidates: int = 0
    """Distinct plans re-ranked (0: re-ranking off)."""
    rounds: list[tuple[int, int]] = field(default_factory=list)
    """``(finetune_steps, plans)`` of each round."""
    proxy_accuracy: float | None = None
    """The searcher's plan's proxy score."""
    accuracy: float | None = None
    """The chosen plan's score after its last round of fine-tuning."""
    changed: bool = False
    """Whether re-ranking chose another plan than the searcher's."""
    uniform_accuracy: float | None = None
    """The uniform plan's score after its last round (``rerank.uniform``; None when it was not in
    the pool or left it before the last round)."""
    uniform_won: bool = False
    """Whether the uniform plan was chosen (``rerank.uniform``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"evaluations": self.evaluations, "seconds": self.seconds, "candidates": self.candidates,
                "rounds": [list(r) for r in self.rounds], "proxy_accuracy": self.proxy_accuracy,
                "accuracy": self.accuracy, "changed": self.changed, "uniform_accuracy": self.uniform_accuracy,
                "uniform_won": self.uniform_won}


def candidates(ctx: SearchContext, plan: PruningPlan, k: int, uniform: bool = False) -> list[PruningPlan]:
    """``plan`` and the next best distinct plans by the proxy that meet the budget (``k`` at most),
    then, with ``uniform``, the uniform plan at the budget (when it is not among them already)."""
    graph = ctx.graph
    out = [PruningPlan.from_dict(plan.to_dict())]
    seen = {plan.key(graph)}
    rows = [r for r in search_rows(ctx.recorder.rows) if _finite(r.get("val_accuracy"))]
    for row in sorted(rows, key=lambda r: -float(r["val_accuracy"])):  # stable: earlier rows win ties
        if len(out) >= k:
            break
        cand = plan_from_row(graph, row)
        if cand.key(graph) in seen or not ctx.fits(cand):
            continue
        seen.add(cand.key(graph))
        cand.meta["val_accuracy"] = float(row["val_accuracy"])
        out.append(cand)
    if uniform:
        even = ctx.plan_from_ratios(ctx.fit_to_budget(np.full(len(graph), ctx.pruning.max_ratio)), candidate=UNIFORM)
        if even.key(graph) not in seen and ctx.fits(even):
            out.append(even)
    return out


def rerank(ctx: SearchContext, plan: PruningPlan, cfg: RerankConfig) -> tuple[PruningPlan, RerankReport]:
    """Re-rank the searcher's ``plan`` against the proxy's next best; return the winner and the cost.

    :param ctx: the search context the searcher used (its recorder holds the search rows).
    :param plan: the searcher's result.
    :param cfg: ``top_k`` (0: return ``plan`` untouched), ``steps``, ``halving``, ``uniform``.
    The winner's ``meta`` holds its costs, its proxy ``val_accuracy``, ``rerank_accuracy`` and
    ``rerank_steps``; the searcher's other ``meta`` stays only when its own plan wins.
    """
    report = RerankReport(proxy_accuracy=_proxy(plan))
    if cfg.top_k <= 0:
        return plan, report
    start = time.perf_counter()
    pool = candidates(ctx, plan, cfg.top_k, uniform=cfg.uniform)
    report.candidates = len(pool)
    done = {(_key(ctx, r), int(r["finetune_steps"])): float(r["val_accuracy"])
            for r in ctx.recorder.rows if is_rerank(r)}
    scores: list[float] = []
    steps, round_ = cfg.steps, 0
    while True:
        scores = _score_round(ctx, pool, steps, round_, done, report)
        report.rounds.append((steps, len(pool)))
        order = sorted(range(len(pool)), key=lambda i: -scores[i])  # stable: the searcher's plan wins ties
        if not cfg.halving or len(pool) <= 2:
            break
        keep = sorted(order[: math.ceil(len(pool) / 2)])
        pool, scores = [pool[i] for i in keep], [scores[i] for i in keep]
        steps, round_ = steps * 2, round_ + 1
    best = order[0]
    winner = pool[best]
    report.changed = winner.key(ctx.graph) != plan.key(ctx.graph)
    report.uniform_won = winner.meta.get("candidate") == UNIFORM
    report.uniform_accuracy = next((s for p, s in zip(pool, scores, strict=True) if p.meta.get("candidate") == UNIFORM),
                                   None)
    kept = {"searcher": plan.meta["searcher"]} if report.changed and "searcher" in plan.meta else dict(plan.meta)
    winner.meta = {**kept, **ctx.describe(winner), "val_accuracy": _proxy(winner),
                   "rerank_accuracy": scores[best], "rerank_steps": steps,
                   **({"candidate": UNIFORM} if report.uniform_won else {})}
    report.accuracy = scores[best]
    report.seconds = time.perf_counter() - start
    log.info("rerank: %d plans, %d evaluations in %.1f s; %s (%.4f after %d steps)", report.candidates,
             report.evaluations, report.seconds,
             "the uniform plan won" if report.uniform_won else
             "a different plan won" if report.changed else "the searcher's plan won",
             scores[best], steps)
    return winner, report


def _score_round(ctx: SearchContext, pool: list[PruningPlan], steps: int, round_: int,
                 done: dict[tuple, float], report: RerankReport) -> list[float]:
    """Fine-tune-and-score ``pool`` at ``steps`` (reusing recorded rows); record the new ones."""
    todo = [p for p in pool if (p.key(ctx.graph), steps) not in done]
    results = ctx.evaluate_many([PruningPlan.from_dict(p.to_dict()) for p in todo], finetune_steps=steps)
    for i, (p, result) in enumerate(zip(todo, results, strict=True)):
        ctx.record(PruningPlan.from_dict(p.to_dict()), result, flush=i == len(todo) - 1, stage=STAGE,
                   rerank_round=round_, finetune_steps=steps, proxy_accuracy=_proxy(p))
        done[(p.key(ctx.graph), steps)] = result.accuracy
        report.evaluations += 0 if result.cached else 1
    return [done[(p.key(ctx.graph), steps)] for p in pool]


def _key(ctx: SearchContext, row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(row[f"channels/{n}"]) for n in ctx.graph.names)


def _proxy(plan: PruningPlan) -> float | None:
    value = plan.meta.get("val_accuracy")
    return float(value) if _finite(value) else None


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
