"""Building and checking latency lookup tables on this machine (``autoprune lut build|check``).

:func:`build_lut` times every conv/linear module alone over a grid of kept widths
(:class:`LayerProfiler`), then :func:`calibrate` times the unpruned model and random pruned
variants and fits the prediction (see :mod:`autoprune.latency.lut` for the format and the formula).
:func:`check_lut` compares a LUT's predictions with fresh timings. Timing itself lives in
:mod:`autoprune.latency.timing`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from autoprune.core.cost import WidthModel
from autoprune.core.graph import UnitGraph, build_unit_graph, execution_order
from autoprune.errors import AutopruneError
from autoprune.latency.lut import Lut, LutCost, make_header, module_axes, random_counts, tabulate
from autoprune.latency.timing import check_threads, clock_fn, default_device_name, measure_latency, time_plans

log = logging.getLogger(__name__)


class LayerProfiler:
    """Times a standalone copy of one of the model's conv/linear modules at given (in, out) widths.

    The copy has the module's type, kernel, stride, padding, dilation and bias, and gets a random
    input of the shape the module saw in the model (batch ``batch``). Modules of the same shape
    share measurements.
    """

    def __init__(self, graph: UnitGraph, batch: int = 1, threads: int = 1, repeats: int = 15,
                 clock: str = "wall") -> None:
        self.batch, self.threads, self.repeats, self.clock = batch, threads, repeats, clock
        self.kinds = {m.name: m.kind for m in graph.modules}
        self.seen = {name: (mod, ins) for name, mod, ins, _out in execution_order(graph.model, graph.input_shape)}
        self.cache: dict[tuple, float] = {}

    def _layer(self, name: str, i: int, o: int) -> tuple[nn.Module, torch.Tensor, tuple]:
        mod, ins = self.seen[name]
        if isinstance(mod, nn.Linear):
            key = ("linear", i, o, mod.bias is not None, ins[1:-1])
            return nn.Linear(i, o, bias=mod.bias is not None), torch.randn(self.batch, *ins[1:-1], i), key
        depthwise = self.kinds[name] == "depthwise"
        if mod.groups > 1 and not depthwise:
            raise AutopruneError(f"lut build: grouped convolution {name!r} (groups={mod.groups}) is not supported")
        cls = type(mod) if type(mod).__module__.startswith("torch.nn") else {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[
            len(mod.kernel_size)]
        cin = o if depthwise else i
        kwargs = dict(kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                      groups=o if depthwise else 1, bias=mod.bias is not None)
        key = (cls.__name__, cin, o, tuple(sorted((k, str(v)) for k, v in kwargs.items())), ins[2:])
        return cls(cin, o, **kwargs), torch.randn(self.batch, cin, *ins[2:]), key

    def __call__(self, name: str, i: int, o: int) -> float:
        layer, x, key = self._layer(name, i, o)
        if key not in self.cache:
            self.cache[key] = measure_latency(layer, (), threads=self.threads, warmup=3, repeats=self.repeats,
                                              min_sample_ms=0.5, inputs=x, clock=self.clock).median_ms
        return self.cache[key]


def build_lut(model: nn.Module, input_shape: Sequence[int], batch: int = 1, threads: int = 1, step: int = 8,
              device: str | None = None, repeats: int = 15, calibration_plans: int = 12, seed: int = 0,
              progress: bool = True, model_name: str | None = None, clock: str = "wall") -> Lut:
    """Profile ``model``'s modules over a (in, out) grid and calibrate: a ready :class:`Lut`.

    :param step: grid spacing in channels (1 = every channel count: slower, most accurate).
    :param calibration_plans: random pruned variants timed, with the unpruned model, to fit
        ``predicted = scale * sum + offset`` (0: plain sum + remainder).
    :param clock: ``"wall"`` or ``"cpu"`` (see :func:`measure_latency`); stored in the header.
    :param model_name: stored in the header as ``model`` (informative; the signature pins the model).
    """
    from tqdm.auto import tqdm

    check_threads(threads)
    clock_fn(clock, threads)
    start = time.perf_counter()
    graph = build_unit_graph(model, input_shape)
    total = sum(len(a) * len(b) for a, b in module_axes(graph, step).values())
    profiler = LayerProfiler(graph, batch, threads, repeats, clock)
    with tqdm(total=total, desc="profiling layers", unit="point", disable=not progress or None) as bar:
        def timed(name: str, i: int, o: int) -> float:
            bar.update(1)
            return profiler(name, i, o)

        tables = tabulate(graph, timed, step)
    lut = Lut(make_header(graph, device=device or default_device_name(), threads=threads, batch=batch,
                          step=step, repeats=repeats, clock=clock, model=model_name), tables)
    calibrate(lut, graph, model, calibration_plans, seed, repeats, progress)
    lut.header["build_seconds"] = round(time.perf_counter() - start, 3)
    lut.header["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return lut


def calibrate(lut: Lut, graph: UnitGraph, model: nn.Module, plans: int = 12, seed: int = 0, repeats: int = 15,
              progress: bool = True) -> None:
    """Time the unpruned model and ``plans`` random variants; store remainder and calibration."""
    widths = WidthModel(graph)
    rng = np.random.default_rng([seed, 1])
    counts = [list(graph.channels)] + [random_counts(graph, rng) for _ in range(plans)]
    h = lut.header
    timing = time_plans(graph, model, counts, int(h["batch"]), int(h["threads"]), max(repeats, 30),
                        h.get("clock", "wall"), desc="calibrating", progress=progress)
    measured = np.array(timing.ms)
    raw = np.array([lut.raw_sum(graph, widths, c) for c in counts])
    elements = np.array([widths.activations(c) / 1e6 for c in counts])
    lut.header["base_measured_ms"] = timing.base_ms
    lut.header["remainder_ms"] = float(timing.base_ms - raw[0])
    lut.header.pop("calibration", None)
    if plans < 1 or np.ptp(raw) <= 0:
        return
    # measured ~ scale * raw + ms_per_melement * elements + offset, every coefficient >= 0
    coef, _ = nnls(np.column_stack([raw, elements, np.ones_like(raw)]), measured)
    if coef[0] <= 0:  # the tables explain nothing: fall back to a plain linear fit on the sum
        scale, offset = np.polyfit(raw, measured, 1)
        coef = np.array([scale, 0.0, offset])
    scale, per_melement, offset = (float(c) for c in coef)
    if not (np.isfinite(coef).all() and scale > 0):
        log.warning("LUT calibration fit failed (scale %.3g); using sum + remainder", scale)
        return
    fit = scale * raw + per_melement * elements + offset
    lut.header["calibration"] = {"scale": scale, "ms_per_melement": per_melement, "offset_ms": offset,
                                 "plans": int(plans + 1),
                                 "fit_mape": float(np.mean(np.abs(fit - measured) / measured) * 100)}


def check_lut(lut: Lut, model: nn.Module, plans: int = 50, seed: int = 0, repeats: int = 15,
              progress: bool = True) -> dict[str, Any]:
    """Time ``plans`` random pruned variants of ``model`` and compare with the LUT's predictions.

    The plans come from a random stream separate from the build's calibration plans and are
    timed with :func:`time_plans` (against the base model). Returns ``plans``, ``mape`` (mean
    absolute % error), ``within_10pct`` (fraction), ``max_abs_pct``, the points, and the same
    three numbers ``*_drift_corrected``: measured latencies rescaled by ``drift`` (the base
    model's latency now / at build time), i.e. the check at the machine speed the LUT was built
    at. Fractional latency budgets depend only on those relative predictions.
    """
    if plans < 1:
        raise AutopruneError(f"--plans must be >= 1 (got {plans})")
    graph = build_unit_graph(model, lut.header["input_shape"])
    lut.check(graph)
    cost = LutCost(lut, graph)
    rng = np.random.default_rng([seed, 2])
    counts = [random_counts(graph, rng) for _ in range(plans)]
    predicted = np.array([cost(c) for c in counts])
    timing = time_plans(graph, model, counts, cost.batch, cost.threads, repeats, cost.clock, desc="checking",
                        progress=progress)
    measured = np.array(timing.ms)
    built = float(lut.header.get("base_measured_ms") or timing.base_ms)
    drift = timing.base_ms / built
    out: dict[str, Any] = {"plans": int(plans), "predicted_ms": predicted.tolist(), "measured_ms": measured.tolist(),
                           "base_ms_now": timing.base_ms, "base_ms_at_build": built, "drift": drift,
                           "batch": cost.batch, "threads": cost.threads, "clock": cost.clock}
    for suffix, m in (("", measured), ("_drift_corrected", measured / drift)):
        err = np.abs(predicted - m) / m
        out.update({f"mape{suffix}": float(err.mean() * 100), f"within_10pct{suffix}": float((err <= 0.10).mean()),
                    f"max_abs_pct{suffix}": float(err.max() * 100)})
    return out
