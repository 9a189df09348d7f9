"""The ``latency`` cost model: from a LUT (a file, or found by device name in a LUT directory), or
measured on this machine; and the ``latency`` entry of a run's ``summary.json``.

Both price a channel-count vector in ms as *a fraction of the unpruned model* times the unpruned
model's latency, so a fractional budget (``latency: 0.6``) only ever compares fractions, which a
faster or slower machine does not change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import AutopruneError
from autoprune.latency.clocks import resolve_clock
from autoprune.latency.lut import LutCost, load_lut, model_signature
from autoprune.latency.lutdir import find_lut, lut_dir
from autoprune.latency.runtimes import Runtime
from autoprune.latency.timing import (
    check_threads,
    default_device_name,
    eval_mode,
    example_input,
    model_device,
    resolve_runtime,
    thread_count,
    time_against_base,
    time_interleaved,
)

log = logging.getLogger(__name__)


class MeasuredLatencyCost:
    """Latency of the real pruned model, timed for every new count vector (slow, cached).

    Each call with new counts prunes a copy of ``model`` with torch-pruning (the channels chosen
    do not matter for speed) and times it in ``runtime`` interleaved with the unpruned model
    (:func:`~autoprune.latency.timing.time_interleaved`); the price is that fraction times the
    unpruned model's latency measured when the cost model was made. Expect 0.2-2 s per new plan
    (more in ``onnxruntime``: every plan is exported), so searchers that probe many plans
    (bisection, NetAdapt) are much slower than with a LUT. Timing noise means two near-identical
    plans can come out in either order.
    """

    kind = "latency"
    source = "measured"

    def __init__(self, graph: UnitGraph, model: nn.Module, batch: int = 1, threads: int = 1,
                 repeats: int = 9, runtime: str | Runtime | None = None, clock: str = "auto") -> None:
        check_threads(threads)
        self.graph, self.model = graph, model
        self.batch, self.threads, self.repeats = batch, threads, repeats
        self.clock = resolve_clock(clock, threads, str(model_device(model)))
        self.rt = resolve_runtime(runtime)
        self.runtime = self.rt.name
        self.example = example_input(model, graph.input_shape, batch)
        with eval_mode(model), thread_count(threads):
            self.session = self.rt.prepare(model, self.example, threads)
        self._base = self._interleaved(self.session).base_ms
        self.cache: dict[tuple[int, ...], float] = {tuple(graph.channels): self._base}

    @property
    def base(self) -> float:
        return self._base

    def _interleaved(self, session):
        with eval_mode(self.model):
            return time_interleaved(self.session, [session], self.threads, rounds=3,
                                    samples=max(3, -(-self.repeats // 3)), clock=self.clock, ref_every=1)

    def fraction(self, counts: Sequence[int]) -> float:
        return self(counts) / self._base

    def __call__(self, counts: Sequence[int]) -> float:
        key = tuple(int(c) for c in counts)
        if key not in self.cache:
            pruned = apply_plan(self.model, self.graph, PruningPlan.from_counts(self.graph, key)).eval()
            with thread_count(self.threads):
                session = self.rt.prepare(pruned, self.example, self.threads)
            self.cache[key] = self._interleaved(session).relative[0] * self._base
        return self.cache[key]


def make_latency_cost(graph: UnitGraph, model: nn.Module | None = None, lut: str | Path | None = None,
                      runtime: str | None = None, device: str | None = None, luts: str | Path | None = None,
                      **_: Any) -> LutCost | MeasuredLatencyCost:
    """The ``latency`` cost model for a budget.

    :param lut: a LUT file; its runtime and device must be the budget's (``runtime``, ``device``)
        when those are given.
    :param device: without ``lut``, the LUT for this device name is looked up in ``luts`` (or
        ``$AUTOPRUNE_LUT_DIR``) by device, runtime and model signature (:func:`find_lut`).
    :param runtime: the runtime a LUT must be for, or the one plans are measured in (``torch``).
    :param model: the model to time when there is no LUT.
    """
    if lut is None and device is not None:
        folder = lut_dir(luts)
        if folder is None:
            raise AutopruneError(f"budget.device {device!r} needs a LUT directory to look it up in: set luts: DIR "
                                 "in the config or AUTOPRUNE_LUT_DIR, or give budget.lut")
        lut = find_lut(folder, device, runtime, model_signature(graph))
        log.info("latency budget: using the LUT %s for device %r", lut, device)
    if lut:
        table = load_lut(lut, graph)
        table.check_target(runtime, device, source=f"LUT {str(lut)!r}")
        return LutCost(table, graph)
    model = model if model is not None else graph.model
    if model is None:
        raise AutopruneError("a latency budget needs the model (or budget.lut: a lookup table)")
    log.info("no budget.lut: latency is measured on this machine for every plan (slow)")
    return MeasuredLatencyCost(graph, model, runtime=runtime)


def latency_summary(session: Any, pruned: nn.Module, plan: Any) -> dict[str, Any]:
    """``summary.json`` entry for latency budgets: base and pruned latency, predicted and measured.

    "Predicted" is the budget's cost model (the LUT, or the cached measurement used during the
    search); "measured" times the final (fine-tuned) pruned model now, interleaved with the base
    model, in the cost model's runtime, batch size and thread count (where that runtime is installed
    here; a LUT for a runtime that is not is not measured). ``kept_*`` are the fractions of the base
    model's latency: the numbers a fractional budget is about. A LUT for this machine (its header's
    device is this machine's name) whose prediction is off the measurement by more than
    :data:`MISPRICED` is logged as a warning; a LUT for another device (``lut import``) is measured
    here too but not compared.
    """
    cost = session.budget.cost
    if session.budget.kind != "latency":
        return {}
    batch, threads = int(getattr(cost, "batch", 1)), int(getattr(cost, "threads", 1))
    clock, runtime = str(getattr(cost, "clock", "wall")), str(getattr(cost, "runtime", "torch"))
    predicted = float(cost(plan.counts(session.graph)))
    out = {"unit": "ms", "source": getattr(cost, "source", "lut"), "runtime": runtime, "batch": batch,
           "threads": threads, "clock": clock, "budget_ms": float(session.budget.target),
           "base_predicted_ms": float(cost.base), "pruned_predicted_ms": predicted,
           "kept_predicted": predicted / float(cost.base)}
    try:
        timed = time_against_base(session.model, [pruned], session.input_shape, batch, threads, repeats=30,
                                  clock=clock, runtime=runtime)
    except AutopruneError as exc:  # e.g. a LUT for a runtime that is not installed here
        log.warning("latency summary: not measured here (%s)", exc)
        return {"latency": out}
    out.update(base_measured_ms=timed.base_ms, pruned_measured_ms=timed.ms[0], kept_measured=timed.relative[0])
    off = timed.relative[0] / out["kept_predicted"] - 1 if out["kept_predicted"] > 0 else float("inf")
    here = default_device_name(str(model_device(pruned)))
    lut = getattr(cost, "lut", None)
    if out["source"] == "lut" and lut is not None and lut.timed_on(here) and abs(off) > MISPRICED:
        log.warning("latency: the plan runs at %.3f of the base model here, its LUT predicted %.3f (%+.0f%%): the LUT "
                    "misprices plans like this one; rebuild it (autoprune lut build; lut check shows its accuracy) "
                    "or budget with measured latency (no budget.lut)", timed.relative[0], out["kept_predicted"],
                    off * 100)
    return {"latency": out}


MISPRICED = 0.10
"""A LUT whose predicted fraction of the final plan is off the measured one by more than this (relative to the
prediction: 0.10 = 10%) gets a warning."""
