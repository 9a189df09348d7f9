"""Landing a searched plan on a latency budget by measuring it (``budget.verify``).

A LUT prices plans from tables timed once; on a machine whose state moved since, or for plans whose
latency the tables' sum misjudges, the plan a search returns can run 10-25% off the budget
(``benchmarks/results/speedup_2026-12-07.md``). :func:`verify_plan` times the plan here, interleaved
with the unpruned model in the LUT's runtime, batch and threads (the fraction ``summary.json`` reports
as ``kept_measured``; here the median of three timings), and when that fraction is more than
``tolerance`` off the budget:

1. re-levels the LUT on that plan (its level times measured / predicted: ``lut reanchor`` on one plan,
   the one that matters);
2. scales the plan's ratio vector by the largest factor whose plan meets the budget at that level
   (:meth:`~autoprune.core.budget_fit.BudgetFitter.fit`: the plan keeps its shape, which units the search
   pruned harder, and uses the budget; it shrinks when the plan ran slow and grows when it ran fast);
3. times the new plan, and so on for at most ``rounds`` rounds.

The returned plan is the one timed closest to the budget (the last, unless the re-fits overshot and the
rounds ran out); its budget carries the level it was fitted at, so the summary's predicted fraction is
the one the plan was fitted with. A LUT for another device cannot be verified here.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any

from torch import nn

from autoprune.core.budget_fit import BudgetFitter
from autoprune.core.cost import Budget
from autoprune.core.graph import UnitGraph
from autoprune.errors import AutopruneError
from autoprune.latency.lut import LutCost
from autoprune.latency.timing import default_device_name, model_device, time_plans

log = logging.getLogger(__name__)

TOLERANCE = 0.05
"""Default: a plan measured within +-5% of the budget is kept as it is (half the +-10% a latency budget is
held to, which leaves room for the noise between this timing and the next)."""


def verify_plan(budget: Budget, graph: UnitGraph, model: nn.Module, counts: Sequence[int], *, min_ratio: float,
                max_ratio: float = 1.0, round_to: int = 1, rounds: int = 3, tolerance: float = TOLERANCE,
                repeats: int = 15, timings: int = 3, progress: bool = False) -> tuple[list[int], Budget, dict[str, Any]]:
    """Time ``counts`` against the unpruned ``model`` here and fit it to ``budget`` by measurement (module
    docstring). Returns the plan's counts, the budget at the level they were fitted with, and the record:
    ``rounds`` (per timing: ``counts``, ``predicted`` and ``measured`` fractions, ``level``), ``chosen`` (the
    index of the plan returned: the one timed closest to the budget), ``stopped`` (why the rounds ended:
    ``met``, ``rounds`` spent, ``unreachable`` at the measured level, ``rounding`` left nothing to change,
    ``unpruned``), ``target`` (the budget as a fraction),
    ``measured`` and ``level`` (the returned plan's), ``met`` (within ``tolerance``), ``changed``.

    :param budget: a latency budget priced by a LUT (:class:`~autoprune.latency.lut.LutCost`).
    :param graph: the search's units (``pruning.skip``'s left out), in the order of ``counts``.
    :param model: the unpruned model.
    :param min_ratio, max_ratio, round_to: the search's ``pruning`` settings, which a fitted plan keeps to.
    :param rounds: at most this many re-fits (``rounds + 1`` timings at most).
    :param tolerance: ``|measured / budget - 1|`` a plan may be off and be kept.
    :param repeats: samples of each model per timing (interleaved with the unpruned model).
    :param timings: independent timings of each plan, one after another; their median fraction is the plan's
        (on the AMD EPYC VM two copies of one plan in one timing measured 0.433 and 0.582 of the unpruned model;
        two medians of three timings of one plan differed by 3-5%).
    """
    if rounds < 1 or not 0 < tolerance < 1:
        raise AutopruneError(f"budget.verify needs rounds >= 1 and 0 < tolerance < 1 (got {rounds}, {tolerance})")
    check_verifiable(budget, model)
    cost, target = budget.cost, budget.fraction
    counts, history, priced = [int(c) for c in counts], [], [budget]  # priced[i]: the budget plan i fits
    for step in range(rounds + 1):
        timed = time_plans(graph, model, [counts], cost.batch, cost.threads, repeats, cost.clock,
                           desc="verifying the plan", progress=progress, runtime=cost.runtime, timings=timings)
        measured, predicted = float(timed.relative[0]), float(cost.fraction(counts))
        history.append({"counts": list(counts), "predicted": predicted, "measured": measured, "level": cost.level})
        log.info("budget.verify: the plan runs at %.3f of the unpruned model here (LUT: %.3f, budget %.3f)",
                 measured, predicted, target)
        stop = ("met" if abs(measured / target - 1) <= tolerance else "rounds" if step == rounds
                else "unpruned" if list(counts) == list(graph.channels) else None)
        if stop:
            break
        cost = relevelled(cost, cost.level * measured / predicted, graph, round_to)
        refit = Budget(cost, budget.target)
        fitter = BudgetFitter(graph, refit, min_ratio, max_ratio, round_to)
        if not refit.fits(fitter.min_counts):
            log.warning("budget.verify: at the level measured on the plan (x%.3f) no plan of the search's range "
                        "meets the budget; keeping the plan timed closest to it", cost.level)
            stop = "unreachable"
            break
        fitted = fitter.fit(counts)
        if fitted == counts:  # the rounding leaves nothing to change: this plan is what the budget allows
            priced[-1], stop = refit, "rounding"
            break
        counts = fitted
        priced.append(refit)
    # the plan timed closest to the budget (the last one, unless the re-fits overshot and rounds ran out)
    best = min(range(len(history)), key=lambda i: (abs(history[i]["measured"] / target - 1), -i))
    chosen = history[best]
    record = {"target": target, "tolerance": tolerance, "measured": chosen["measured"],
              "level": float(priced[best].cost.level), "met": abs(chosen["measured"] / target - 1) <= tolerance,
              "changed": chosen["counts"] != history[0]["counts"], "chosen": best, "stopped": stop,
              "rounds": history}
    return list(chosen["counts"]), priced[best], record


def check_verifiable(budget: Budget, model: nn.Module) -> None:
    """Raise unless ``budget`` is priced by a LUT timed on this machine, where ``model`` runs (before a search,
    so that a LUT for another device fails at once)."""
    cost = budget.cost
    if not isinstance(cost, LutCost):
        raise AutopruneError("budget.verify fits a plan to a latency budget priced by a LUT (budget.lut or "
                             "budget.device); a budget measured on this machine is measured already")
    here = default_device_name(str(model_device(model)))
    if not cost.lut.timed_on(here):
        raise AutopruneError(f"budget.verify times the plan here ({here}), but the LUT was timed on "
                             f"{cost.lut.header.get('built_on') or cost.lut.header.get('device')!r}: verify on that "
                             "device, or leave budget.verify out")


def relevelled(cost: LutCost, level: float, graph: UnitGraph, round_to: int) -> LutCost:
    """``cost`` on a copy of its LUT whose level is ``level`` (measured on one plan; the file is not changed)."""
    lut = copy.deepcopy(cost.lut)
    lut.header["level"] = {"factor": round(float(level), 5), "plans": 1, "round_to": int(round_to),
                           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "previous": round(cost.level, 5),
                           "verified": True}
    return LutCost(lut, graph)
