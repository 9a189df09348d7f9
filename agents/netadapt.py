"""NetAdapt (Yang et al. 2018): greedy, resource-driven pruning, one unit per iteration.

Iteration ``i`` sets a target ``resource - initial_reduction * base * decay**(i-1)`` (never below
the budget), where *resource* is the budget's cost model (a latency LUT, measured latency, FLOPs
or params) and ``initial_reduction`` is a fraction of the base model's resource. For every unit
it proposes the largest channel count that meets the target with all other units unchanged
(bisection on the cost model), short-term fine-tunes each proposal for ``short_term_batches``
batches, scores it (adaptive BN + val accuracy), and keeps the most accurate one. It stops when
the budget is met; the run's usual fine-tune stage is NetAdapt's long-term fine-tune.

Differences from the paper, on purpose:

- Every proposal is pruned from the *base* model (its filters chosen by ``pruning.criterion``
  on the base weights) and short-term fine-tuned from there; the chosen proposal's fine-tuned
  weights are not carried into the next iteration. This keeps proposals independent, cacheable
  and parallel (they go through ``ctx.evaluate_many``, the Ray pool's interface), and makes a
  resumed search replay exactly. The paper prunes the previous iteration's fine-tuned network.
- Filters are chosen by the project's ``pruning.criterion`` (default ``l1``); set
  ``pruning.criterion: l2`` for the paper's choice. The evaluator (possibly a Ray pool) owns the
  criterion, so the searcher does not override it.
- If no single unit can reach an iteration's target, each unit proposes its smallest count.
  After ``max_iterations`` the last plan is scaled to the budget (``ctx.fit_to_budget``) and that
  plan, evaluated and recorded as chosen, is the result.

Rows in ``trials.parquet``: one per proposal with ``iteration``, ``chosen``, ``resource`` (the
budget's cost), ``target`` and ``proposal_unit``. ``--resume`` replays the chosen path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from autoprune.core.plan import PruningPlan, resolve_count
from autoprune.errors import BudgetError, ConfigError
from autoprune.search.base import Searcher, plan_from_row, positive, register_searcher

log = logging.getLogger(__name__)


@register_searcher
class NetAdaptSearcher(Searcher):
    """Greedy per-unit proposals with a shrinking resource target (see the module docstring)."""

    name = "netadapt"

    @dataclass
    class Options:
        initial_reduction: float = 0.05
        """Resource cut of the first iteration, as a fraction of the base model's resource."""
        decay: float = 0.96
        """The cut of iteration i is initial_reduction * decay**(i-1)."""
        short_term_batches: int = 10
        """Fine-tuning batches given to each proposal before it is scored (0 = none)."""
        max_iterations: int = 50
        """After this many iterations the plan is scaled straight to the budget."""

        def validate(self) -> None:
            if not 0 < self.initial_reduction < 1:
                raise ConfigError(f"searcher.initial_reduction must be in (0, 1) (got {self.initial_reduction})")
            if not 0 < self.decay <= 1:
                raise ConfigError(f"searcher.decay must be in (0, 1] (got {self.decay})")
            positive("short_term_batches", self.short_term_batches, allow_zero=True)
            positive("max_iterations", self.max_iterations)

    # ---------------------------------------------------------------------------- search
    def search(self) -> PruningPlan:
        ctx, opt = self.ctx, self.options
        cost = ctx.budget.cost
        counts, iteration, accuracy = self._replay()
        bar = tqdm(total=opt.max_iterations, initial=min(iteration - 1, opt.max_iterations), desc="netadapt",
                   unit="iter", disable=not ctx.progress or None)
        while not ctx.budget.fits(counts) and iteration <= opt.max_iterations:
            resource = cost(counts)
            cut = opt.initial_reduction * cost.base * opt.decay ** (iteration - 1)
            target = max(resource - cut, ctx.budget.target)
            counts, accuracy = self._iterate(iteration, counts, resource, target)
            bar.update(1)
            bar.set_postfix(resource=f"{cost(counts) / cost.base:.3f}", acc=f"{accuracy:.3f}")
            iteration += 1
        bar.close()
        if not ctx.budget.fits(counts) or accuracy is None:
            counts, accuracy = self._finish(iteration, counts)
        plan = PruningPlan.from_counts(ctx.graph, counts, searcher=self.name)
        plan.meta.update(ctx.describe(plan), val_accuracy=accuracy, iterations=iteration - 1)
        return plan

    def _replay(self) -> tuple[list[int], int, float | None]:
        """Counts, next iteration and accuracy after the chosen rows already on record."""
        chosen = [r for r in self.ctx.recorder.rows if bool(r.get("chosen"))]
        if not chosen:
            return list(self.ctx.graph.channels), 1, None
        last = max(chosen, key=lambda r: int(r["iteration"]))
        counts = plan_from_row(self.ctx.graph, last).counts(self.ctx.graph)
        log.info("netadapt: resuming after iteration %d", int(last["iteration"]))
        return counts, int(last["iteration"]) + 1, float(last["val_accuracy"])

    def _iterate(self, iteration: int, counts: list[int], resource: float, target: float) -> tuple[list[int], float]:
        """One NetAdapt iteration: propose per unit, evaluate together, record, keep the best."""
        ctx, cost = self.ctx, self.ctx.budget.cost
        proposals = self.propose(counts, target, resource)
        plans = [PruningPlan.from_counts(ctx.graph, c, searcher=self.name) for _u, c in proposals]
        results = ctx.evaluate_many(plans, finetune_steps=self.options.short_term_batches)
        costs = [cost(c) for _u, c in proposals]
        best = max(range(len(plans)), key=lambda k: (results[k].accuracy, -costs[k]))
        for k, (plan, result) in enumerate(zip(plans, results, strict=True)):
            ctx.record(plan, result, flush=k == len(plans) - 1, iteration=iteration, chosen=k == best,
                       resource=costs[k], target=target, proposal_unit=ctx.graph.names[proposals[k][0]])
        log.info("netadapt iteration %d: %s -> %d channels, resource %.4g (target %.4g), acc %.4f", iteration,
                 ctx.graph.names[proposals[best][0]], proposals[best][1][proposals[best][0]], costs[best], target,
                 results[best].accuracy)
        return proposals[best][1], results[best].accuracy

    def _finish(self, iteration: int, counts: list[int]) -> tuple[list[int], float]:
        """Scale the current plan to the budget (max_iterations reached, or nothing to prune)."""
        ctx = self.ctx
        ratios = [c / n for c, n in zip(counts, ctx.graph.channels, strict=True)]
        final = ctx.counts(ctx.fit_to_budget(ratios)) if not ctx.budget.fits(counts) else list(counts)
        plan = PruningPlan.from_counts(ctx.graph, final, searcher=self.name)
        result = ctx.evaluate(plan, finetune_steps=self.options.short_term_batches)
        ctx.record(plan, result, iteration=iteration, chosen=True, resource=ctx.budget.cost(final),
                   target=ctx.budget.target, proposal_unit="")
        return final, result.accuracy

    # ------------------------------------------------------------------------- proposals
    def candidates(self, unit: int, current: int) -> list[int]:
        """Channel counts a unit may drop to (below ``current``, at least the min ratio, rounded)."""
        ctx = self.ctx
        n = ctx.graph.units[unit].out_channels
        floor = ctx.min_counts()[unit]
        values = {resolve_count(k / n, n, ctx.pruning.round_to) for k in range(floor, current)}
        return sorted(v for v in values if floor <= v < current)

    def largest_fitting(self, counts: Sequence[int], unit: int, target: float) -> int | None:
        """Largest candidate count of ``unit`` whose plan costs <= ``target`` (bisection)."""
        cost = self.ctx.budget.cost
        options = self.candidates(unit, counts[unit])

        def fits(k: int) -> bool:
            trial = list(counts)
            trial[unit] = k
            return cost(trial) <= target * (1 + 1e-9)

        if not options or not fits(options[0]):
            return None
        lo, hi = 0, len(options) - 1  # options[lo] fits; find the last fitting index
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(options[mid]):
                lo = mid
            else:
                hi = mid - 1
        return options[lo]

    def propose(self, counts: Sequence[int], target: float, resource: float) -> list[tuple[int, list[int]]]:
        """(unit, counts) proposals meeting ``target``; else each unit at its smallest count."""
        cost = self.ctx.budget.cost
        out = []
        for u in range(len(counts)):
            k = self.largest_fitting(counts, u, target)
            if k is not None:
                out.append((u, [k if i == u else c for i, c in enumerate(counts)]))
        if not out:
            for u in range(len(counts)):
                options = self.candidates(u, counts[u])
                trial = [options[0] if i == u and options else c for i, c in enumerate(counts)]
                if options and cost(trial) < resource:
                    out.append((u, trial))
        if not out:
            raise BudgetError("netadapt: no unit can be pruned further and the budget is not met; "
                              "lower pruning.min_ratio or raise the budget")
        return out
