"""Building latency lookup tables on this machine (``autoprune lut build``).

:func:`build_lut` times every conv/linear module alone over a grid of kept widths
(:class:`LayerProfiler`), each point interleaved with a fixed reference op (:func:`reference_op`), so
every table entry is stored in ms and as a ratio to that op. :func:`calibrate` then times the
unpruned model against the reference op, and random pruned variants against the unpruned model,
and fits the prediction in reference-op units (see :mod:`autoprune.latency.lut` for the format and
the formula). Checking and re-anchoring a LUT are in :mod:`autoprune.latency.check`.
Timing itself lives in :mod:`autoprune.latency.timing`, runtimes in :mod:`autoprune.latency.runtimes`.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.core.cost import WidthModel
from autoprune.core.graph import UnitGraph, build_unit_graph
from autoprune.core.tracing import execution_order
from autoprune.latency.calibration import LOO_WARN_PCT, fit_calibration
from autoprune.latency.clocks import Clock, clock_fn, clock_name, resolve_clock
from autoprune.latency.lut import Lut, make_header
from autoprune.latency.runtimes import Runtime, Session
from autoprune.latency.tables import (
    ALIGNMENTS,
    add_fine_curves,
    calibration_counts,
    fine_points,
    misaligned_melements,
    module_axes,
    padded_melements,
    padded_mmacs,
    tabulate,
)
from autoprune.latency.timing import (
    TimedPlans,
    check_threads,
    default_device_name,
    eval_mode,
    model_device,
    resolve_runtime,
    thread_count,
    time_interleaved,
    time_plans,
)

log = logging.getLogger(__name__)

REFERENCE_OP = "conv3x3 32->32 channels at 16x16, no bias"
"""The fixed op every LUT entry is timed against (:func:`reference_op`)."""


def reference_op(batch: int = 1, device: str | torch.device = "cpu") -> tuple[nn.Module, torch.Tensor]:
    """The reference op (:data:`REFERENCE_OP`, fixed weights) and its input at ``batch``."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1, bias=False).eval()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.05)
    return conv.to(device), torch.randn(batch, 32, 16, 16, generator=gen).to(device)


def reference_session(runtime: Runtime, batch: int, threads: int, device: str | torch.device = "cpu") -> Session:
    op, x = reference_op(batch, device)
    return runtime.prepare(op, x, threads)


class LayerShapes:
    """Standalone copies of a model's conv/linear modules at given (in, out) widths.

    The copy has the module's type, kernel, stride, padding, dilation and bias, and gets a random
    input of the shape the module saw in the model (batch ``batch``, on the model's device).
    Modules of the same shape share a key (and so a measurement).
    """

    def __init__(self, graph: UnitGraph, batch: int = 1) -> None:
        self.batch = batch
        self.device = model_device(graph.model)
        self.kinds = {m.name: m.kind for m in graph.modules}
        self.seen = {name: (mod, ins) for name, mod, ins, _out in execution_order(graph.model, graph.input_shape)}

    def spec(self, name: str, i: int, o: int) -> tuple[tuple, type[nn.Module], tuple, dict, tuple]:
        """(cache key, module class, args, kwargs, input shape) of module ``name`` at widths (i, o)."""
        mod, ins = self.seen[name]
        if isinstance(mod, nn.Linear):
            bias = mod.bias is not None
            return ("linear", i, o, bias, ins[1:-1]), nn.Linear, (i, o), {"bias": bias}, (*ins[1:-1], i)
        depthwise = self.kinds[name] == "depthwise"
        cls = type(mod) if type(mod).__module__.startswith("torch.nn") else {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[
            len(mod.kernel_size)]
        cin = o if depthwise else i
        kwargs = dict(kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                      groups=o if depthwise else mod.groups, bias=mod.bias is not None)
        key = (cls.__name__, cin, o, tuple(sorted((k, str(v)) for k, v in kwargs.items())), ins[2:])
        return key, cls, (cin, o), kwargs, (cin, *ins[2:])

    def layer(self, name: str, i: int, o: int) -> tuple[nn.Module, torch.Tensor]:
        """A standalone copy of module ``name`` at widths (i, o) and a random input for it."""
        _key, cls, args, kwargs, shape = self.spec(name, i, o)
        return cls(*args, **kwargs).eval().to(self.device), torch.randn(self.batch, *shape).to(self.device)

class LayerProfiler(LayerShapes):
    """Times standalone copies of the model's conv/linear modules at given (in, out) widths, each
    interleaved with the reference op: ``profiler(name, i, o) -> (ms, rel)``.

    Modules of the same shape share measurements (:class:`LayerShapes`). :meth:`measure` times many points in blocks of ``block`` (each block's
    sessions are prepared, timed in ``rounds`` interleaved passes with the reference, and freed).
    """

    def __init__(self, graph: UnitGraph, batch: int = 1, threads: int = 1, repeats: int = 15,
                 clock: Clock = "auto", runtime: str | Runtime | None = None, rounds: int = 5,
                 block: int = 16) -> None:
        super().__init__(graph, batch)
        self.threads, self.repeats, self.clock, self.rounds, self.block = threads, repeats, clock, rounds, block
        self.runtime = resolve_runtime(runtime)
        self.cache: dict[tuple, tuple[float, float]] = {}
        self.reference = reference_session(self.runtime, batch, threads, self.device)
        self.reference_ms: list[float] = []

    def measure(self, points: Sequence[tuple[str, int, int]], progress: bool = False) -> None:
        """Time every point of ``points`` not yet measured (see the class docstring)."""
        from tqdm.auto import tqdm

        todo: dict[tuple, tuple[str, int, int]] = {}
        for point in points:
            key = self.spec(*point)[0]
            if key not in self.cache:
                todo.setdefault(key, point)
        keys = list(todo)
        samples = max(3, -(-self.repeats // self.rounds))
        with tqdm(total=len(keys), desc=f"profiling layers ({self.runtime.name})", unit="point",
                  disable=not progress or None) as bar:
            for start in range(0, len(keys), self.block):
                chunk = keys[start:start + self.block]
                with thread_count(self.threads):
                    sessions = [self.runtime.prepare(layer, x, self.threads)
                                for layer, x in (self.layer(*todo[k]) for k in chunk)]
                timed = time_interleaved(self.reference, sessions, self.threads, self.rounds, samples,
                                         min_sample_ms=0.5, clock=self.clock, ref_every=4)
                self.reference_ms.append(timed.base_ms)
                for k, ms, rel in zip(chunk, timed.ms, timed.relative, strict=True):
                    self.cache[k] = (ms, rel)
                bar.update(len(chunk))

    def __call__(self, name: str, i: int, o: int) -> tuple[float, float]:
        key = self.spec(name, i, o)[0]
        if key not in self.cache:
            self.measure([(name, i, o)])
        return self.cache[key]


def build_lut(model: nn.Module, input_shape: Sequence[int], batch: int = 1, threads: int = 1, step: int = 8,
              device: str | None = None, repeats: int = 15, calibration_plans: int = 12, seed: int = 0,
              progress: bool = True, model_name: str | None = None, clock: Clock = "auto",
              runtime: str | Runtime | None = None, fine: bool | None = None) -> Lut:
    """Profile ``model``'s modules over a (in, out) grid and calibrate: a ready :class:`Lut`.

    :param step: grid spacing in channels (1 = every channel count: slower, most accurate).
    :param device: the device name stored in the header (default: the CPU's or GPU's model name).
    :param calibration_plans: random pruned variants timed, with the unpruned model, to fit the
        prediction, plus ``calibration_plans // 4`` near-full ones (0: plain sum + remainder).
    :param clock: ``"auto"``, ``"wall"`` or ``"cpu"`` (see :func:`~autoprune.latency.clocks.resolve_clock`);
        the clock used is stored in the header.
    :param model_name: stored in the header as ``model`` (informative; the signature pins the model).
    :param runtime: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"`` (or a runtime object).
    :param fine: also time each axis of every module at every width (the other axis full): the
        fine curves that correct the grid between its points (ONNX Runtime's kernels are much
        slower at widths that are not multiples of 4 or 16, a step no coarse grid can see).
        Default: when the runtime says its kernels are stepped there (onnxruntime, openvino; torch on CUDA).
    """
    check_threads(threads)
    where = model_device(model)
    clock = resolve_clock(clock, threads, str(where))
    clock_fn(clock, threads)
    rt = resolve_runtime(runtime)
    start = time.perf_counter()
    graph = build_unit_graph(model, input_shape)
    profiler = LayerProfiler(graph, batch, threads, repeats, clock, rt)
    if fine is None:
        fine = bool(getattr(rt, "stepped", lambda device: False)(str(where)))
    axes = module_axes(graph, step)
    points = [(name, i, o) for name, (ins, outs) in axes.items() for i in ins for o in outs]
    profiler.measure(points + (fine_points(graph) if fine else []), progress)
    tables = tabulate(graph, profiler, step)
    if fine:
        add_fine_curves(graph, tables, profiler)
    here = default_device_name(str(where))  # kept beside a --device-name: where the LUT was timed
    header = make_header(graph, device=device or here, built_on=here, device_kind=where.type,
                         runtime=rt.name, runtime_version=rt.version(), threads=threads, batch=batch, step=step,
                         repeats=repeats, clock=clock_name(clock), model=model_name, unit="reference", fine=fine,
                         reference={"op": REFERENCE_OP, "ms": float(np.median(profiler.reference_ms))})
    lut = Lut(header, tables)
    calibrate(lut, graph, model, calibration_plans, seed, repeats, progress, runtime=rt, clock=clock)
    lut.header["build_seconds"] = round(time.perf_counter() - start, 3)
    lut.header["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return lut


CALIBRATION_REPEATS = 30
"""Timed samples per calibration plan and for the unpruned model against the reference op (6 a pass; at least
``repeats``). Twice that, or twice the plans, did not measurably help: the same tables recalibrated on fresh
timings and scored on the same check, the share of check plans within +-10% moved as much between refits of
one setting as between settings, and a poor refit came with every setting
(``python -m benchmarks.calibration_repeats``, ``docs/latency.md``)."""
CALIBRATION_RETRIES = 2
"""Times a calibration is timed again when its leave-one-out error is above
:data:`~autoprune.latency.calibration.LOO_WARN_PCT`; the attempt with the lowest error is kept. In that
benchmark every refit above 5% (2 of 32, torch ResNet-20) scored 0.50 and 0.66 of the check plans within +-10%
and none of the 30 below it under 0.86: a calibration that cannot predict its own left-out plans was
likely disturbed while it was timed, and the next timing usually is not. With the retries, on the same
tables and checks: mean 0.996 vs 0.984 without, worst 0.90 vs 0.78 (32 refits each, 3 of them retried;
``calibration_retries_torch_resnet20``). It does not catch a calibration timed in another load state of a
busy host than the check, which fits its own plans well (ONNX Runtime ResNet-20: no difference shown)."""


def calibrate(lut: Lut, graph: UnitGraph, model: nn.Module, plans: int = 12, seed: int = 0, repeats: int = 15,
              progress: bool = True, runtime: str | Runtime | None = None, clock: Clock | None = None,
              calibration_repeats: int = CALIBRATION_REPEATS, retries: int = CALIBRATION_RETRIES) -> None:
    """Time the unpruned model against the reference op and ``plans`` random variants
    (:func:`~autoprune.latency.lut.calibration_counts`) against the unpruned model, each with
    ``max(repeats, calibration_repeats)`` samples; store ``base_reference``, ``base_measured_ms``, the
    remainder and the calibration. A calibration whose leave-one-out error is above ``LOO_WARN_PCT`` is
    timed again, up to ``retries`` times, and the attempt with the lowest error kept (``calibration.attempts``
    in the header: how many were made)."""
    rt = resolve_runtime(runtime or lut.header["runtime"])
    h = lut.header
    batch, threads, clock = int(h["batch"]), int(h["threads"]), clock or h.get("clock", "wall")
    widths = WidthModel(graph)
    counts = calibration_counts(graph, plans, seed)
    repeats = max(repeats, calibration_repeats)
    terms = ([lut.raw_sum(graph, widths, c) for c in counts], [widths.activations(c) / 1e6 for c in counts])
    aligned = ({a: [misaligned_melements(graph, widths, c, a) for c in counts] for a in ALIGNMENTS},
               {a: [padded_mmacs(graph, widths, c, a) for c in counts] for a in ALIGNMENTS},
               {a: [padded_melements(graph, widths, c, a) for c in counts] for a in ALIGNMENTS},
               {a: [padded_mmacs(graph, widths, c, a, inputs=False) for c in counts] for a in ALIGNMENTS})
    keys = ("base_reference", "remainder", "calibration", "base_measured_ms")
    best: tuple[float, dict[str, Any]] | None = None
    for attempt in range(1 + max(retries, 0)):
        base = time_base_against_reference(model, graph.input_shape, batch, threads, repeats, clock, rt)
        timing = time_plans(graph, model, counts[1:], batch, threads, repeats, clock, desc="calibrating",
                            progress=progress, runtime=rt) if plans > 0 else None
        relative = [1.0, *timing.relative] if timing else [1.0]
        fit_calibration(lut, counts, *terms, relative, base.relative[0], *aligned)
        h["base_measured_ms"] = timing.base_ms if timing else base.ms[0]
        if timing and "calibration" in h:
            h["calibration"]["pass_shift"] = round(timing.pass_shift, 4)
        loo = (h.get("calibration") or {}).get("loo_mape")
        # a fit that failed (no calibration kept) is the worst attempt; too few plans to leave one out: final
        error = math.inf if timing and "calibration" not in h else float(loo) if loo is not None else 0.0
        if best is None or error < best[0]:
            best = (error, {k: copy.deepcopy(h[k]) for k in keys if k in h})
        if error <= LOO_WARN_PCT or attempt == retries:
            break
        log.info("calibration: %s, timing it again (%d of %d)", "fit failed" if math.isinf(error) else
                 f"leave-one-out {error:.1f}% (> {LOO_WARN_PCT:g}%)", attempt + 1, retries)
    assert best is not None
    for k in keys:
        h.pop(k, None)
    h.update(best[1])
    if attempt and "calibration" in h:
        h["calibration"]["attempts"] = attempt + 1


def time_base_against_reference(model: nn.Module, input_shape: Sequence[int], batch: int, threads: int,
                                repeats: int, clock: Clock, runtime: Runtime) -> TimedPlans:
    """The unpruned model timed interleaved with the reference op (``relative[0]``: in reference units)."""
    from autoprune.latency.timing import example_input

    where = model_device(model)
    with eval_mode(model), thread_count(threads):
        session = runtime.prepare(model, example_input(model, input_shape, batch), threads)
        ref = reference_session(runtime, batch, threads, where)
        return time_interleaved(ref, [session], threads, 5, max(3, -(-repeats // 5)), clock=clock, ref_every=1)
