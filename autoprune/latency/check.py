"""Checking a latency lookup table on this machine, and re-anchoring its level (``autoprune lut
check|reanchor``).

:func:`check_lut` times random plans interleaved with the unpruned model and compares the measured
fractions with the predicted ones (and the ms, for information). A machine that is uniformly slower or
faster at check time than at build time changes the ms but not the fractions; a busy machine whose
state moved since the build moves the fractions of all pruned plans together (the LUT's *level*),
which :func:`reanchor_lut` re-measures on a few plans and stores in the LUT (docs/latency.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import nn

from autoprune.core.graph import UnitGraph, build_unit_graph
from autoprune.core.plan import resolve_count
from autoprune.errors import AutopruneError
from autoprune.latency.lut import Lut, LutCost
from autoprune.latency.tables import random_counts
from autoprune.latency.timing import default_device_name, model_device, time_plans


def check_lut(lut: Lut, model: nn.Module, plans: int = 50, seed: int = 0, repeats: int = 15,
              progress: bool = True, runtime: str | None = None, round_to: int = 1,
              timings: int = 1, reanchor: int = 0) -> dict[str, Any]:
    """Time ``plans`` random pruned variants of ``model`` interleaved with the unpruned model and
    compare with the LUT's predictions, as fractions of the unpruned model (the target) and in ms.

    The plans come from a random stream separate from the build's calibration plans. Returns
    ``plans``, ``mape`` (mean absolute % error of the predicted fraction), ``within_10pct`` (share
    of plans within +-10%), ``max_abs_pct``, the same three for the ms predictions (``*_ms``; these
    move with the machine's speed), ``drift`` (the unpruned model's latency now / at build time),
    ``pass_shift`` (how far one timing pass moved every fraction at once: :class:`TimedPlans`),
    and the points (``counts``, ``predicted_rel``, ``measured_rel``, ``predicted_ms``, ``measured_ms``).
    Also ``offset_pct``, the median of predicted over measured fraction minus 1 (%), and
    ``within_10pct_offset_removed``, the share within +-10% once every prediction is divided by that median:
    a LUT whose level moved with the machine's state (docs/latency.md) shows a large offset and a high share.

    :param runtime: the runtime to time in; must be the LUT's (the default).
    :param round_to: round the plans' counts to multiples of this (the plans a search with
        ``pruning.round_to`` makes; the same draws as with 1). In ONNX Runtime the fractions of unaligned
        plans move with the host's load while those of plans at multiples of 16 hold (docs/latency.md).
    :param timings: time the plans this many times, one whole timing after another; the measured
        fractions are then the median over the timings, and the result adds ``repeatability`` (the share
        of plans whose fractions in two timings agree within +-10%: what the machine lets any prediction
        score) and ``within_10pct_each`` (the LUT's share against each timing alone).
    :param reanchor: also time this many other random plans (:func:`anchor_counts`) in the same timing and
        score the LUT re-anchored on them (:func:`reanchor_lut`'s level, measured alongside): the result adds
        ``level_now`` and ``mape_reanchored``, ``within_10pct_reanchored``, ``max_abs_pct_reanchored``. The
        headline figures stay those of the LUT as it is.
    """
    if plans < 1 or round_to < 1 or timings < 1 or reanchor < 0:
        raise AutopruneError(f"--plans, --round-to and --timings must be >= 1 and --reanchor >= 0 (got {plans}, "
                             f"{round_to}, {timings}, {reanchor})")
    lut.check_target(runtime=runtime, source="the LUT")
    graph = build_unit_graph(model, lut.header["input_shape"])
    lut.check(graph)
    cost = LutCost(lut, graph)
    rng = np.random.default_rng([seed, 2])
    counts = [random_counts(graph, rng, round_to=round_to) for _ in range(plans)]
    anchors = anchor_counts(graph, reanchor, seed, round_to) if reanchor else []
    predicted_rel = np.array([cost.fraction(c) for c in counts])
    predicted_ms = predicted_rel * cost.base
    timing = time_plans(graph, model, counts + anchors, cost.batch, cost.threads, repeats,
                        lut.header.get("clock", "wall"), desc="checking", progress=progress, runtime=cost.runtime,
                        timings=timings)
    measured_rel, measured_ms = np.array(timing.relative[:plans]), np.array(timing.ms[:plans])
    here = default_device_name(str(model_device(model)))
    out: dict[str, Any] = {
        "plans": int(plans), "round_to": int(round_to), "runtime": cost.runtime, "device": lut.header["device"],
        "counts": counts,
        "device_now": here, "timed_here": lut.timed_on(here),
        "predicted_rel": predicted_rel.tolist(), "measured_rel": measured_rel.tolist(),
        "predicted_ms": predicted_ms.tolist(), "measured_ms": measured_ms.tolist(),
        "base_ms_now": timing.base_ms, "base_ms_at_build": cost.base, "drift": timing.base_ms / cost.base,
        "pass_shift": timing.pass_shift, "timings": int(timings), "repeatability": timing.repeatability,
        "within_10pct_each": [float((np.abs(predicted_rel - np.array(t[:plans])) / np.array(t[:plans]) <= 0.10).mean())
                              for t in timing.timings],
        "level": cost.level,
        # the LUT's common offset: how far its predictions sit from the measurements as a whole, and its share
        # within +-10% with that offset divided out (in-sample: a diagnosis of the level, not a score)
        "offset_pct": float((np.median(predicted_rel / measured_rel) - 1) * 100),
        "within_10pct_offset_removed": float((np.abs(predicted_rel / measured_rel / np.median(predicted_rel / measured_rel)
                                                     - 1) <= 0.10).mean()),
        "batch": cost.batch, "threads": cost.threads, "clock": cost.clock}
    scored = [("", predicted_rel, measured_rel), ("_ms", predicted_ms, measured_ms)]
    if reanchor:
        out["level_now"] = level_of(cost, anchors, timing.relative[plans:])
        scored.append(("_reanchored", np.array([fraction_at(cost, c, out["level_now"]) for c in counts]), measured_rel))
    for suffix, p, m in scored:
        err = np.abs(p - m) / m
        out.update({f"mape{suffix}": float(err.mean() * 100), f"within_10pct{suffix}": float((err <= 0.10).mean()),
                    f"max_abs_pct{suffix}": float(err.max() * 100)})
    return out


def anchor_counts(graph: UnitGraph, plans: int, seed: int = 0, round_to: int = 1) -> list[list[int]]:
    """``plans`` random plans to re-anchor a LUT on: a random stream of their own (not the calibration's or
    ``lut check``'s plans), drawn like ``lut check``'s, rounded to ``round_to``; never the unpruned model."""
    rng = np.random.default_rng([seed, 3])
    out: list[list[int]] = []
    while len(out) < plans:
        counts = random_counts(graph, rng, round_to=round_to)
        if list(counts) != list(graph.channels):
            out.append(counts)
    return out


def near_counts(graph: UnitGraph, cost: LutCost, plans: int, fraction: float, rng: np.random.Generator,
                round_to: int = 1, tolerance: float = 0.03, floor: float = 0.05) -> list[list[int]]:
    """``plans`` plans the LUT (as built, level 1) prices just under ``fraction`` of the unpruned model (within
    ``tolerance``): random ratio vectors (uniform in [0.2, 1]) each scaled by one factor (bisection), clipped to
    [``floor``, 1] and rounded to ``round_to``: plans of the size a search under that budget returns. Where too
    few draws land there (a budget near the smallest plans), the closest draws below ``fraction`` fill up."""
    def counts(ratios: np.ndarray, factor: float) -> list[int]:
        return [resolve_count(float(np.clip(r * factor, floor, 1.0)), u.out_channels, u.step(round_to))
                for r, u in zip(ratios, graph.units, strict=True)]

    out, spare = [], []
    for _ in range(50 * plans):
        ratios, lo, hi = rng.uniform(0.2, 1.0, len(graph.units)), 0.0, 5.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fraction_at(cost, counts(ratios, mid), 1.0) <= fraction else (lo, mid)
        c = counts(ratios, lo)
        priced = fraction_at(cost, c, 1.0)
        if list(c) == list(graph.channels) or priced > fraction:
            continue
        (out if priced >= fraction - tolerance else spare).append((priced, c))
        if len(out) == plans:
            break
    out += sorted(spare, key=lambda p: -p[0])[:plans - len(out)]
    if not out:
        raise AutopruneError(f"no plan of this model is priced at or below {fraction:.3g} of the unpruned model by "
                             f"the LUT as built: a latency budget of {fraction:.3g} is out of its reach; raise it "
                             "(lut reanchor: --near a larger fraction)")
    return [c for _p, c in out]


def fraction_at(cost: LutCost, counts: Sequence[int], level: float) -> float:
    """``cost``'s fraction of ``counts`` with the LUT's level replaced by ``level``."""
    return cost.fraction(counts) / cost.level * level if list(counts) != list(cost.graph.channels) else 1.0


def level_of(cost: LutCost, anchors: Sequence[Sequence[int]], measured: Sequence[float]) -> float:
    """The level that re-anchors ``cost`` on ``anchors`` timed now: the median of measured over predicted
    (as built, level 1) fractions."""
    return float(np.median([m / fraction_at(cost, c, 1.0) for c, m in zip(anchors, measured, strict=True)]))


def reanchor_lut(lut: Lut, model: nn.Module, plans: int = 8, seed: int = 0, round_to: int = 1, repeats: int = 15,
                 progress: bool = True, graph: UnitGraph | None = None, near: float | None = None) -> dict[str, Any]:
    """Re-measure a LUT's level on this machine as it is now: time ``plans`` random plans
    (:func:`anchor_counts`) interleaved with the unpruned model and store in the header the median of
    measured over predicted fraction (``level``: ``factor``, ``plans``, ``round_to``, ``date``), by which
    :class:`~autoprune.latency.lut.LutCost` multiplies every pruned plan's fraction.

    On a busy machine the fractions of all plans move together between the build and later use (the state of
    the machine, not the plan, sets how much faster the unpruned model runs: docs/latency.md); the tables'
    shape holds. Draw the plans as the search will (``round_to``: its ``pruning.round_to``; ``graph``: its units,
    e.g. without those ``pruning.skip`` keeps whole; default every unit of ``model``). ``near``: a latency budget
    as a fraction of the unpruned model; the plans are then drawn where a search under it ends (:func:`near_counts`)
    instead of over the whole range (``benchmarks/reanchor_near``: on a contended host plans at the budget slowed
    down more than the range's, and a level measured there priced searched plans better). Returns the level with
    the plans' predicted and measured fractions.
    """
    if plans < 1 or round_to < 1:
        raise AutopruneError(f"--plans and --round-to must be >= 1 (got {plans}, {round_to})")
    if near is not None and not 0 < near < 1:
        raise AutopruneError(f"--near is a fraction of the unpruned model's latency in (0, 1) (got {near})")
    graph = graph or build_unit_graph(model, lut.header["input_shape"])
    lut.check(graph)
    cost = LutCost(lut, graph)
    anchors = (anchor_counts(graph, plans, seed, round_to) if near is None
               else near_counts(graph, cost, plans, near, np.random.default_rng([seed, 4]), round_to))
    timing = time_plans(graph, model, anchors, cost.batch, cost.threads, repeats, lut.header.get("clock", "wall"),
                        desc="re-anchoring", progress=progress, runtime=cost.runtime)
    factor = level_of(cost, anchors, timing.relative)
    lut.header["level"] = {"factor": round(factor, 5), "plans": int(plans), "round_to": int(round_to),
                           "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "previous": round(cost.level, 5)}
    if near is not None:
        lut.header["level"]["near"] = float(near)
    return {"level": factor, "previous": cost.level, "counts": anchors,
            "predicted_rel": [fraction_at(cost, c, 1.0) for c in anchors], "measured_rel": list(timing.relative)}
