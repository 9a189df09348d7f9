"""NetAdapt (Yang et al. 2018): greedy, resource-driven pruning, one unit per iteration.

Iteration ``i`` sets a target ``resource - initial_reduction * base * decay**(i-1)`` (never below
the budget), where *resource* is the budget's cost model (a latency LUT, measured latency, FLOPs
or params) and ``initial_reduction`` is a fraction of the base model's resource. For every unit
it proposes the largest channel count that meets the target with all other units unchanged
(bisection on the cost model), short-term fine-tunes each proposal for ``short_term_batches``
batches, scores it (adaptive BN + val accuracy), and keeps the most accurate one. It stops when
the budget is met; the run's usual fine-tune stage is NetAdapt's long-term fine-tune.

``continue_weights: true`` (the default) is the published algorithm: each iteration prunes the
*previous iteration's short-term fine-tuned network* further (filters chosen by
``pruning.criterion`` on its weights) and fine-tunes from there, so the fine-tuning accumulates
along the chosen path. The proposals are scored in this process, one after another (a Ray pool's
actors hold the base weights only), and each iteration's fine-tune reads its own batches. The
chosen network's weights are saved atomically in the run dir (``netadapt/iter_NNNN.pt``: the
``state_dict`` of the model pruned to that iteration's counts) before its rows are written, so
``--resume`` continues from them; the result's ``meta["weights"]`` names the last one (relative to
the run dir; :func:`load_weights` builds the model from it), to start the long-term fine-tune from.
``continue_weights: false`` prunes every proposal from the *base* model instead: proposals are
independent, cached and parallel (``ctx.evaluate_many``, the Ray pool's interface), and the result
is a plan alone. Channel granularity only: with ``fine`` / ``nm`` the base-model path is used.

Also on purpose:

- Filters are chosen by the project's ``pruning.criterion`` (default ``l1``); set
  ``pruning.criterion: l2`` for the paper's choice.
- If no single unit can reach an iteration's target, each unit proposes its smallest count.
  After ``max_iterations`` the last plan is scaled to the budget (``ctx.fit_to_budget``) and that
  plan, evaluated and recorded as chosen, is the result.

Rows in ``trials.parquet``: one per proposal with ``iteration``, ``chosen``, ``resource`` (the
budget's cost), ``target`` and ``proposal_unit``. ``--resume`` replays the chosen path.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from autoprune.atomic import atomic_write_with
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan, resolve_count
from autoprune.core.prune import apply_plan
from autoprune.device import cpu_state
from autoprune.errors import AutopruneError, BudgetError, ConfigError
from autoprune.search.base import Searcher, plan_from_row, positive, register_searcher
from autoprune.search.evaluate import EvalResult
from autoprune.search.rerank import search_rows

log = logging.getLogger(__name__)
WEIGHTS_DIR = "netadapt"
"""Where in the run dir ``continue_weights`` keeps the chosen network's weights."""


def load_weights(evaluator: Any, graph: UnitGraph, plan: PruningPlan, path: str | Path) -> nn.Module:
    """The network NetAdapt carried to ``plan``: the base model pruned to the plan's counts (for the
    shapes), with the weights saved at ``path`` (a ``netadapt/iter_NNNN.pt`` of the run dir)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if list(state["counts"]) != plan.counts(graph):
        raise AutopruneError(f"{str(path)!r} holds weights for other channel counts than the plan's")
    model = evaluator.prune(plan)
    model.load_state_dict(state["state_dict"])
    return model.eval()


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
        continue_weights: bool = True
        """Each iteration prunes the previous iteration's fine-tuned network (the paper); false: every
        proposal is pruned from the base model (independent, parallel on a Ray pool)."""

        def validate(self) -> None:
            if not 0 < self.initial_reduction < 1:
                raise ConfigError(f"searcher.initial_reduction must be in (0, 1) (got {self.initial_reduction})")
            if not 0 < self.decay <= 1:
                raise ConfigError(f"searcher.decay must be in (0, 1] (got {self.decay})")
            positive("short_term_batches", self.short_term_batches, allow_zero=True)
            positive("max_iterations", self.max_iterations)

    model: nn.Module | None = None
    """With ``continue_weights``: the network carried to the current (after search: the final) plan."""

    # ---------------------------------------------------------------------------- search
    def search(self) -> PruningPlan:
        ctx, opt = self.ctx, self.options
        cost = ctx.budget.cost
        self.carry = self._carries()
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
        plan.meta.update(ctx.describe(plan), val_accuracy=accuracy, iterations=iteration - 1,
                         continue_weights=self.carry)
        if self.carry and ctx.run_dir is not None:
            plan.meta["weights"] = str(self._weights_path(self._last_saved).relative_to(ctx.run_dir))
        return plan

    def _carries(self) -> bool:
        """Whether this search carries weights (``continue_weights`` and an evaluator that can)."""
        ev = self.ctx.evaluator
        if not self.options.continue_weights:
            return False
        if not all(hasattr(ev, a) for a in ("prune", "score", "short_term_finetune", "criterion", "calibration")):
            log.warning("netadapt: continue_weights needs an Evaluator (prune, score, short_term_finetune); "
                        "pruning every proposal from the base model instead")
            return False
        if ev.pruning.granularity != "channel":
            log.info("netadapt: continue_weights applies to channel pruning; with %s granularity every "
                     "proposal is pruned from the base model", ev.pruning.granularity)
            return False
        return True

    def _replay(self) -> tuple[list[int], int, float | None]:
        """Counts, next iteration and accuracy after the chosen rows already on record."""
        chosen = [r for r in search_rows(self.ctx.recorder.rows) if bool(r.get("chosen"))]
        if not chosen:
            self.model, self._last_saved = (self.ctx.evaluator.model if self.carry else None), 0
            return list(self.ctx.graph.channels), 1, None
        last = max(chosen, key=lambda r: int(r["iteration"]))
        counts = plan_from_row(self.ctx.graph, last).counts(self.ctx.graph)
        log.info("netadapt: resuming after iteration %d", int(last["iteration"]))
        if self.carry:
            self.model = self._restore(int(last["iteration"]), counts)
        return counts, int(last["iteration"]) + 1, float(last["val_accuracy"])

    def _iterate(self, iteration: int, counts: list[int], resource: float, target: float) -> tuple[list[int], float]:
        """One NetAdapt iteration: propose per unit, evaluate, keep the best, record (weights first)."""
        ctx, cost = self.ctx, self.ctx.budget.cost
        proposals = self.propose(counts, target, resource)
        plans = [PruningPlan.from_counts(ctx.graph, c, searcher=self.name) for _u, c in proposals]
        costs = [cost(c) for _u, c in proposals]
        if self.carry:
            results, model = self._evaluate_carried([c for _u, c in proposals], costs, counts, iteration)
        else:
            results = ctx.evaluate_many(plans, finetune_steps=self.options.short_term_batches)
        best = max(range(len(plans)), key=lambda k: (results[k].accuracy, -costs[k]))
        if self.carry:
            self.model = model
            self._save(iteration, proposals[best][1])
        for k, (plan, result) in enumerate(zip(plans, results, strict=True)):
            ctx.record(plan, result, flush=k == len(plans) - 1, iteration=iteration, chosen=k == best,
                       resource=costs[k], target=target, proposal_unit=ctx.graph.names[proposals[k][0]],
                       finetune_steps=self.options.short_term_batches)
        self._prune_saved(iteration)
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
        if self.carry:
            [result], self.model = self._evaluate_carried([final], [ctx.budget.cost(final)], counts, iteration)
            self._save(iteration, final)
        else:
            result = ctx.evaluate(plan, finetune_steps=self.options.short_term_batches)
        ctx.record(plan, result, iteration=iteration, chosen=True, resource=ctx.budget.cost(final),
                   target=ctx.budget.target, proposal_unit="", finetune_steps=self.options.short_term_batches)
        self._prune_saved(iteration)
        return final, result.accuracy

    # ------------------------------------------------------------------- carried weights
    def _evaluate_carried(self, proposals: Sequence[list[int]], costs: Sequence[float], counts: Sequence[int],
                          iteration: int) -> tuple[list[EvalResult], nn.Module]:
        """Prune the carried network to each proposal, fine-tune, score; return the results and the
        best proposal's network (the most accurate, then the cheapest, as the caller chooses)."""
        ev, steps = self.ctx.evaluator, self.options.short_term_batches
        graph = dataclasses.replace(self.ctx.graph, units=[dataclasses.replace(u, out_channels=c) for u, c in
                                                           zip(self.ctx.graph.units, counts, strict=True)])
        results: list[EvalResult] = []
        best: tuple[float, float, nn.Module] | None = None
        for proposal, resource in zip(proposals, costs, strict=True):
            start = time.perf_counter()
            model = apply_plan(self.model, graph, PruningPlan.from_counts(graph, proposal), ev.pruning,
                               ev.calibration, ev.criterion)
            if steps:  # an iteration's proposals read the same batches; the next iteration new ones
                ev.short_term_finetune(model, steps, seed=ev.seed + iteration - 1)
            forward = time.perf_counter()
            acc = ev.score(model)
            end = time.perf_counter()
            results.append(EvalResult(acc, end - start, end - forward))
            if best is None or (acc, -resource) > best[:2]:
                best = (acc, -resource, model)
        assert best is not None
        return results, best[2]

    def _weights_path(self, iteration: int) -> Path:
        assert self.ctx.run_dir is not None
        return self.ctx.run_dir / WEIGHTS_DIR / f"iter_{iteration:04d}.pt"

    def _save(self, iteration: int, counts: Sequence[int]) -> None:
        """Write the carried network of ``iteration`` (before its rows: a resume finds it)."""
        self._last_saved = iteration
        if self.ctx.run_dir is None or self.model is None:
            return
        state = {"iteration": iteration, "counts": list(counts), "state_dict": cpu_state(self.model)}  # loads anywhere
        atomic_write_with(self._weights_path(iteration), lambda buf: torch.save(state, buf))

    def _prune_saved(self, iteration: int) -> None:
        """After ``iteration``'s rows are written: drop the weights of the other iterations."""
        if self.ctx.run_dir is None or not self.carry:
            return
        for path in (self.ctx.run_dir / WEIGHTS_DIR).glob("iter_*.pt"):
            if path != self._weights_path(iteration):
                path.unlink(missing_ok=True)

    def _restore(self, iteration: int, counts: list[int]) -> nn.Module:
        """The carried network of a resumed ``iteration``: its saved weights, else base-pruned ones."""
        self._last_saved = iteration
        plan = PruningPlan.from_counts(self.ctx.graph, counts)
        path = self._weights_path(iteration) if self.ctx.run_dir is not None else None
        if path is not None and path.is_file():
            return load_weights(self.ctx.evaluator, self.ctx.graph, plan, path)
        log.warning("netadapt: no saved weights for iteration %d; continuing from the base model pruned to "
                    "its counts (the fine-tuning so far is lost)", iteration)
        model = self.ctx.evaluator.prune(plan)
        self._save(iteration, counts)
        return model

    # ------------------------------------------------------------------------- proposals
    def candidates(self, unit: int, current: int) -> list[int]:
        """Channel counts a unit may drop to (below ``current``, at least the min ratio, rounded)."""
        ctx = self.ctx
        spec = ctx.graph.units[unit]
        n, step = spec.out_channels, spec.step(ctx.pruning.round_to)
        floor = ctx.min_counts()[unit]
        values = {resolve_count(k / n, n, step) for k in range(floor, current)}
        return sorted(v for v in values if floor <= v < current)

    def largest_fitting(self, counts: Sequence[int], unit: int, target: float) -> int | None:
        """Largest candidate count of ``unit`` whose plan costs <= ``target``: bisection, or, for a cost that is not
        monotone (a LUT's, where a wider layer can run faster), the first that fits going down from the top (the
        schedule's small cuts make that a few lookups), as NetAdapt's lookup does."""
        cost = self.ctx.budget.cost
        options = self.candidates(unit, counts[unit])

        def fits(k: int) -> bool:
            trial = list(counts)
            trial[unit] = k
            return cost(trial) <= target * (1 + 1e-9)

        if not getattr(cost, "monotone", True):
            return next((k for k in reversed(options) if fits(k)), None)
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
