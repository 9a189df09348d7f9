"""``pruning.round_to: auto``: the rounding of kept channel counts a search under a latency budget should use.

Where a runtime's kernels favour multiples of 4, 8 or 16 channels, a LUT prices some counts higher than wider
ones, and random plans fitted to a latency budget keep far more FLOPs at a coarser rounding
(``benchmarks/budget_fit.py``; ``docs/latency.md``). :func:`rounding_gains` measures that for a search context,
:func:`auto_round_to` picks the rounding (what :class:`~autoprune.search.base.SearchContext` and
:func:`autoprune.prepare` do with ``auto``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from autoprune.errors import AutopruneError

if TYPE_CHECKING:
    from autoprune.search.base import SearchContext

log = logging.getLogger(__name__)

ROUNDING_GAIN = 1.1
"""A coarser ``pruning.round_to`` is chosen (``auto``) or suggested (a warning) when random plans fitted to the
budget keep this many times the FLOPs or more at it."""


def auto_round_to(ctx: SearchContext, gain: float = ROUNDING_GAIN, draws: int = 6) -> dict[str, Any]:
    """``pruning.round_to: auto`` for the search in ``ctx`` (at ``round_to`` 1): 1, unless its budget's cost is
    not monotone (a LUT whose runtime runs some wider layers faster) and random plans fitted to it keep ``gain``
    times the FLOPs or more at a coarser rounding (:func:`rounding_gains`), or reach the budget only there; then
    the smallest coarser rounding within 0.01 of the best. Returns ``{"value", "auto": True[, "flops_kept"]}``
    (summary.json's ``round_to``)."""
    record: dict[str, Any] = {"value": 1, "auto": True}
    if getattr(ctx.budget.cost, "monotone", True):
        return record
    kept = rounding_gains(ctx, draws)
    record["flops_kept"] = {str(k): round(v, 4) for k, v in kept.items()}
    coarser = {a: v for a, v in kept.items() if a > 1}
    if not coarser:  # no coarser rounding reaches the budget
        return record
    align = suggested_round_to(coarser)
    if 1 not in kept or coarser[align] >= gain * kept[1]:  # out of reach at 1, or worth it
        record["value"] = align
        log.info("pruning.round_to auto: %d (random plans fitted to the %s latency budget keep %.2f of the FLOPs "
                 "on average at %d, %s at 1)", align, getattr(ctx.budget.cost, "runtime", "?"), coarser[align],
                 align, f"{kept[1]:.2f}" if 1 in kept else "none: out of reach")
    return record


def rounding_gains(ctx: SearchContext, draws: int = 6) -> dict[int, float]:
    """Mean FLOPs kept (fraction of the base) by ``draws`` seeded random plans fitted to ``ctx``'s budget, as the
    searchers fit theirs, at ``pruning.round_to`` and at each coarser alignment a runtime's kernels may favour
    (4, 8, 16 channels; multiples of ``round_to``); an alignment whose plans miss the budget is left out."""
    from autoprune.latency.tables import ALIGNMENTS

    flops, r = ctx.costs.get("flops"), ctx.pruning.round_to
    if flops is None:
        return {}
    samples = np.random.default_rng(0).uniform(ctx.pruning.min_ratio, ctx.pruning.max_ratio, (draws, len(ctx.graph)))
    out = {}
    for round_to in [r] + [a for a in ALIGNMENTS if a > r and a % r == 0]:
        at = dataclasses.replace(ctx, pruning=dataclasses.replace(ctx.pruning, round_to=round_to))
        try:
            plans = [at.counts(at.fit_to_budget(x)) for x in samples]
        except AutopruneError:  # out of reach at that rounding
            continue
        if all(ctx.budget.fits(c) for c in plans):  # a rounding coarser than the units' widths keeps them whole
            out[round_to] = float(np.mean([flops(c) for c in plans])) / flops.base
    return out


def suggested_round_to(kept: dict[int, float]) -> int:
    """The smallest rounding whose plans keep within 0.01 of the most FLOPs in ``kept`` (:func:`rounding_gains`)."""
    best = max(kept.values())
    return min(a for a, v in kept.items() if v >= best - 0.01)
