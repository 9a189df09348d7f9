"""The loop shared by the ask/tell searchers (``tpe``, ``cmaes``): batches, budget, records, resume.

An optimiser proposes raw per-unit preserve-ratio vectors in ``[min_ratio, max_ratio]``. Each is
scaled to use the budget fully, as ``random`` does (:meth:`SearchContext.fit_to_budget`), and the
fitted plan is evaluated; the optimiser is told the accuracy of the point *it asked for* (so the
fitting is part of the objective it learns), and the fitted plan is recorded. ``parallel`` asks
go to ``ctx.evaluate_many`` together, so a Ray pool scores them at once.

Each row of ``trials.parquet`` carries ``sample`` and the raw proposal as ``ask/<unit>`` columns.
A batch's rows are written together, so a killed run leaves whole batches on record; ``--resume``
tells the optimiser those rows again (:meth:`AskTellSearcher.replay`) before it asks for more, and
every optimiser draws its randomness from the seed and the number of trials so far, so a resumed
search proposes what the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from autoprune.core.plan import PruningPlan
from autoprune.errors import ConfigError
from autoprune.search.base import Searcher, best_of, plan_from_row, positive
from autoprune.search.rerank import search_rows

log = logging.getLogger(__name__)
DEFAULT_PARALLEL = 4
"""Asks per batch when the evaluator is in-process (a Ray pool: one per worker)."""


def derived_seed(seed: int, *parts: int) -> int:
    """A 32-bit seed from the run's seed and ``parts`` (numpy's SeedSequence: no collisions by accident)."""
    return int(np.random.SeedSequence([seed % 2**63, *parts]).generate_state(1)[0])


def check_common(evaluations: int, parallel: int) -> None:
    positive("evaluations", evaluations)
    positive("parallel", parallel, allow_zero=True)


class AskTellSearcher(Searcher):
    """Base of the ask/tell searchers; subclasses set up an optimiser and ask, tell and replay.

    Their ``Options`` have ``evaluations`` and ``parallel`` (0: the pool's workers, or 4).
    """

    def search(self) -> PruningPlan:
        ctx, opt = self.ctx, self.options
        lo, hi = ctx.pruning.min_ratio, ctx.pruning.max_ratio
        self.start(len(ctx.graph), lo, hi)
        done = self._replay()
        batch = opt.parallel or getattr(ctx.evaluator, "workers", 0) or DEFAULT_PARALLEL
        bar = tqdm(total=opt.evaluations, initial=done, desc=f"{self.name} search", unit="plan",
                   disable=not ctx.progress or None)
        while done < opt.evaluations:
            handles, raws = self.ask(min(batch, opt.evaluations - done))
            plans = [ctx.plan_from_ratios(ctx.fit_to_budget(x), searcher=self.name) for x in raws]
            results = ctx.evaluate_many(plans)
            for i, (plan, x, result) in enumerate(zip(plans, raws, results, strict=True)):
                ctx.record(plan, result, flush=i == len(plans) - 1, sample=done + i,
                           **{f"ask/{n}": float(v) for n, v in zip(ctx.graph.names, x, strict=True)})
            self.tell(handles, [self.value(r.accuracy) for r in results])
            done += len(plans)
            bar.update(len(plans))
            bar.set_postfix(best=f"{best_of(search_rows(ctx.recorder.rows))['val_accuracy']:.3f}")
        bar.close()
        best = best_of(search_rows(ctx.recorder.rows))
        plan = plan_from_row(ctx.graph, best)
        plan.meta.update(ctx.describe(plan), val_accuracy=best["val_accuracy"], searcher=self.name)
        return plan

    def _replay(self) -> int:
        """Tell the optimiser the rows on record (a resumed search); return how many."""
        rows = search_rows(self.ctx.recorder.rows)[: self.options.evaluations]
        if not rows:
            return 0
        names = self.ctx.graph.names
        missing = [n for n in names if f"ask/{n}" not in rows[0]]
        if missing:
            raise ConfigError(f"{self.name}: the trials on record have no ask/ columns for {', '.join(missing)}; "
                              "they were not written by this searcher: start a new run")
        xs = [np.array([float(r[f"ask/{n}"]) for n in names]) for r in rows]
        self.replay(xs, [self.value(r["val_accuracy"]) for r in rows])
        log.info("%s: resumed after %d evaluations on record", self.name, len(rows))
        return len(rows)

    @staticmethod
    def value(accuracy: Any) -> float:
        """What the optimiser is told (maximised): the accuracy, or 0 for a failed score."""
        acc = float(accuracy) if accuracy is not None else math.nan
        return acc if math.isfinite(acc) else 0.0

    # ------------------------------------------------------------------------- subclasses
    @abstractmethod
    def start(self, dims: int, lo: float, hi: float) -> None:
        """Set up the optimiser over ``dims`` ratios in ``[lo, hi]``, seeded from ``self.ctx.seed``."""

    @abstractmethod
    def ask(self, k: int) -> tuple[list[Any], list[np.ndarray]]:
        """Up to ``k`` (at least one) proposals: opaque handles and raw ratio vectors."""

    @abstractmethod
    def tell(self, handles: Sequence[Any], values: Sequence[float]) -> None:
        """The values (higher is better) of the proposals ``handles`` came with."""

    @abstractmethod
    def replay(self, xs: Sequence[np.ndarray], values: Sequence[float]) -> None:
        """Bring the optimiser to where it was after proposing ``xs`` in order and hearing ``values``."""
