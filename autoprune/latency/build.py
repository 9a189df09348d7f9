"""Building and checking latency lookup tables on this machine (``autoprune lut build|check``).

:func:`build_lut` times every conv/linear module alone over a grid of kept widths
(:class:`LayerProfiler`), each point interleaved with a fixed reference op (:func:`reference_op`), so
every table entry is stored in ms and as a ratio to that op. :func:`calibrate` then times the
unpruned model against the reference op, and random pruned variants against the unpruned model,
and fits the prediction in reference-op units (see :mod:`autoprune.latency.lut` for the format and
the formula). :func:`check_lut` times random plans interleaved with the unpruned model and compares
the measured fractions with the predicted ones (and the ms, for information). A machine that is
uniformly slower or faster at check time than at build time changes the ms but not the fractions.
Timing itself lives in :mod:`autoprune.latency.timing`, runtimes in :mod:`autoprune.latency.runtimes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import lsq_linear
from torch import nn

from autoprune.core.cost import WidthModel
from autoprune.core.graph import UnitGraph, build_unit_graph
from autoprune.core.tracing import execution_order
from autoprune.errors import AutopruneError
from autoprune.latency.clocks import Clock, clock_fn, clock_name, resolve_clock
from autoprune.latency.lut import Lut, LutCost, make_header
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
    random_counts,
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
        prediction (0: plain sum + remainder).
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
    header = make_header(graph, device=device or default_device_name(str(where)), device_kind=where.type,
                         runtime=rt.name, runtime_version=rt.version(), threads=threads, batch=batch, step=step,
                         repeats=repeats, clock=clock_name(clock), model=model_name, unit="reference", fine=fine,
                         reference={"op": REFERENCE_OP, "ms": float(np.median(profiler.reference_ms))})
    lut = Lut(header, tables)
    calibrate(lut, graph, model, calibration_plans, seed, repeats, progress, runtime=rt, clock=clock)
    lut.header["build_seconds"] = round(time.perf_counter() - start, 3)
    lut.header["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return lut


def calibrate(lut: Lut, graph: UnitGraph, model: nn.Module, plans: int = 12, seed: int = 0, repeats: int = 15,
              progress: bool = True, runtime: str | Runtime | None = None, clock: Clock | None = None) -> None:
    """Time the unpruned model against the reference op and ``plans`` random variants
    (:func:`~autoprune.latency.lut.calibration_counts`) against the unpruned model; store ``base_reference``, ``base_measured_ms``, the remainder and the calibration."""
    rt = resolve_runtime(runtime or lut.header["runtime"])
    h = lut.header
    batch, threads, clock = int(h["batch"]), int(h["threads"]), clock or h.get("clock", "wall")
    widths = WidthModel(graph)
    counts = calibration_counts(graph, plans, seed)
    base = time_base_against_reference(model, graph.input_shape, batch, threads, max(repeats, 30), clock, rt)
    timing = time_plans(graph, model, counts[1:], batch, threads, max(repeats, 30), clock, desc="calibrating",
                        progress=progress, runtime=rt) if plans > 0 else None
    relative = [1.0, *timing.relative] if timing else [1.0]
    fit_calibration(lut, counts, [lut.raw_sum(graph, widths, c) for c in counts],
                    [widths.activations(c) / 1e6 for c in counts], relative, base.relative[0],
                    {a: [misaligned_melements(graph, widths, c, a) for c in counts] for a in ALIGNMENTS},
                    {a: [padded_mmacs(graph, widths, c, a) for c in counts] for a in ALIGNMENTS},
                    {a: [padded_melements(graph, widths, c, a) for c in counts] for a in ALIGNMENTS},
                    {a: [padded_mmacs(graph, widths, c, a, inputs=False) for c in counts] for a in ALIGNMENTS})
    h["base_measured_ms"] = timing.base_ms if timing else base.ms[0]


def fit_calibration(lut: Lut, counts: Sequence[Sequence[int]], raw: Sequence[float], melements: Sequence[float],
                    relative: Sequence[float], base_reference: float,
                    misaligned: Mapping[int, Sequence[float]] | None = None,
                    padded: Mapping[int, Sequence[float]] | None = None,
                    padded_elements: Mapping[int, Sequence[float]] | None = None,
                    padded_out: Mapping[int, Sequence[float]] | None = None, measured_anchor: bool = True) -> None:
    """Fit ``value = scale * raw + per_melement * melements [+ per_misaligned * misaligned |
    + per_padded_mmac * padded] + offset`` to measured latencies (reference units).

    Candidate forms: with no third term, with the ``misaligned`` term (output elements of convs
    whose width is not a multiple of ``align``) or with the ``padded`` term (MACs with every width
    rounded up to a multiple of ``pad``), for each alignment given; and with every coefficient >= 0
    or with ``per_melement`` and ``offset`` free in sign (a layer timed alone can cost *more* than
    inside the model: ONNX Runtime reorders a lone conv's input and output to its blocked layout).
    With the padded term the tables' ``scale`` may fit to 0: OpenVINO's CPU plugin times lone
    layers at 2.3x their share of the model, and its latency follows the padded MACs instead
    (``benchmarks/results/lut_accuracy.md``); the padded forms are tried with ``melements`` and
    with ``padded_elements`` (the output elements with channels rounded up alike: activations
    stored in channel blocks) as the elements term, and with ``padded_out`` (MACs with only the output
    widths rounded up: OpenVINO's ``brgconv`` kernels on channels-last activations, which this machine's
    AVX-512/AMX CPU runs, block the output channels only; calibration key ``pad_inputs: false``)
    instead of ``padded``. The form kept predicts left-out calibration plans best
    (leave-one-out, mean abs % error of the fraction; each extra term must earn a quarter of a
    percentage point). Each form with a third term is also tried fitted to the pruned plans alone,
    their fractions then taken of the unpruned model's *measured* latency (``anchor: measured``; an
    extra quarter point): on OpenVINO the unpruned model, every width a multiple of 16, runs 15-20%
    faster than the trend of its pruned variants (``docs/latency.md``), and a fit forced through it
    is bent for every plan (``measured_anchor=False``: not offered).

    :param counts: the plans, the unpruned model first (stored in the header for later baselines).
    :param raw: each plan's table sum; ``melements``: its kept output elements (millions).
    :param relative: each plan's measured latency as a fraction of the unpruned model's (1.0 first).
    :param base_reference: the unpruned model's latency in reference-op units.
    :param misaligned: for each candidate ``align``, each plan's misaligned output elements (millions).
    """
    h = lut.header
    raw, relative = np.asarray(raw, float), np.asarray(relative, float)
    measured = relative * base_reference
    h.update(base_reference=float(base_reference), remainder=float(base_reference - raw[0]))
    h.pop("calibration", None)
    if len(raw) < 2 or np.ptp(raw) <= 0:
        return
    mel = np.asarray(melements, float)
    columns: dict[tuple[str, int] | None, list[np.ndarray]] = {None: [raw, mel]}
    columns |= {("misaligned", a): [raw, mel, np.asarray(m, float)] for a, m in (misaligned or {}).items()}
    columns |= {("padded", a): [raw, mel, np.asarray(p, float)] for a, p in (padded or {}).items()}
    columns |= {("padded_elements", a): [raw, np.asarray(padded_elements[a], float), np.asarray(p, float)]
                for a, p in (padded or {}).items() if a in (padded_elements or {})}
    columns |= {("padded_out", a): [raw, mel, np.asarray(p, float)] for a, p in (padded_out or {}).items()}
    columns |= {("padded_out_elements", a): [raw, np.asarray(padded_elements[a], float), np.asarray(p, float)]
                for a, p in (padded_out or {}).items() if a in (padded_elements or {})}
    forms = {(term, free, off): np.column_stack([*cols, np.ones_like(raw)])
             for term, cols in columns.items() for free in (0, 1) for off in (0, measured_anchor)
             if not off or term is not None}
    loo = {form: _leave_one_out(x, measured, relative, bool(form[1]), _padded(form), bool(form[2]))
           + 0.25 * ((form[0] is not None) + form[1] + form[2]) for form, x in forms.items()}
    enough = np.isfinite(min(loo.values()))  # too few plans to choose by leave-one-out: a line on the sum
    best = min(loo, key=loo.__getitem__) if enough else (None, 0, 0)
    term, free, off = best
    x = forms[best]
    rows = slice(1, None) if off else slice(None)
    coef = _fit(x[rows], measured[rows], bool(free), _padded(best)) if enough else _line(x, measured)
    if coef is None and raw[0] <= base_reference:
        log.warning("LUT calibration fit failed; using sum + remainder")
        return
    if coef is None:  # the tables sum to more than the model (lone layers timed slower): scale them to it
        log.warning("LUT calibration fit failed; the tables sum to more than the model, scaled down to it")
        coef = np.zeros(x.shape[1])
        coef[0] = base_reference / raw[0]
    fit = x @ coef
    cal: dict[str, Any] = {"scale": float(coef[0]), "per_melement": float(coef[1])}
    if off:
        cal["anchor"] = "measured"
    denominator = measured[0] if off else fit[0]
    if term is not None and term[0] == "misaligned":
        cal.update(align=int(term[1]), per_misaligned=float(coef[2]))
    elif term is not None:
        cal.update(pad=int(term[1]), per_padded_mmac=float(coef[2]))
        if term[0].endswith("_elements"):
            cal["padded_elements"] = True
        if term[0].startswith("padded_out"):
            cal["pad_inputs"] = False
    cal.update(offset=float(coef[-1]), plans=len(raw),
               fit_mape=float(np.mean(np.abs(fit[rows] / denominator - relative[rows]) / relative[rows]) * 100),
               loo_mape=float(loo[best]) if np.isfinite(loo[best]) else None, counts=[list(map(int, c)) for c in counts],
               relative=relative.tolist())
    h["calibration"] = cal


def _padded(form: tuple) -> bool:
    return form[0] is not None and form[0][0].startswith("padded")


def _fit(x: np.ndarray, y: np.ndarray, free: bool = False, padded: bool = False) -> np.ndarray | None:
    """Least squares with ``scale`` (column 0) and the third term >= 0, and the elements term
    (column 1) and the offset (last) >= 0 too unless ``free``. If the fit gives the tables no
    weight: a straight line on the sum, unless the padded MACs (column 2 with ``padded``) carry it."""
    low = np.zeros(x.shape[1])
    if free:
        low[1] = low[-1] = -np.inf
    coef = lsq_linear(x, y, bounds=(low, np.full(x.shape[1], np.inf))).x
    if padded and coef[0] * x[0, 0] < 0.01 * y[0] and coef[2] > 0:
        coef[0] = 0.0
    elif coef[0] * x[0, 0] < 0.01 * y[0]:  # the tables carry < 1% of the base: fit a plain line on the sum
        return _line(x, y)
    ok = coef[0] > 0 or (padded and coef[2] > 0)
    return coef if np.isfinite(coef).all() and ok else None


def _line(x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """``y ~ scale * sum + offset`` (the other terms 0); None unless ``scale > 0``. Row 0 is the base."""
    scale, offset = np.polyfit(x[:, 0], y, 1)
    coef = np.zeros(x.shape[1])
    coef[0], coef[-1] = scale, offset
    return coef if np.isfinite(coef).all() and scale > 0 else None


def _leave_one_out(x: np.ndarray, y: np.ndarray, relative: np.ndarray, free: bool, padded: bool = False,
                   off: bool = False) -> float:
    """Mean abs % error of each pruned plan's predicted fraction, fitted without that plan. With
    ``off`` the unpruned model (row 0) is left out of every fit and the fraction is taken of its
    measured latency instead of the fit's value there (``anchor: measured``)."""
    if len(y) - off < x.shape[1] + 2:
        return float("inf")
    errors = []
    for k in range(1, len(y)):
        keep = (np.arange(len(y)) != k) & ((np.arange(len(y)) > 0) if off else True)
        coef = _fit(x[keep], y[keep], free, padded)
        if coef is None:
            return float("inf")
        errors.append(abs((x[k] @ coef) / (y[0] if off else x[0] @ coef) - relative[k]) / relative[k])
    return float(np.mean(errors) * 100)


def time_base_against_reference(model: nn.Module, input_shape: Sequence[int], batch: int, threads: int,
                                repeats: int, clock: Clock, runtime: Runtime) -> TimedPlans:
    """The unpruned model timed interleaved with the reference op (``relative[0]``: in reference units)."""
    from autoprune.latency.timing import example_input

    where = model_device(model)
    with eval_mode(model), thread_count(threads):
        session = runtime.prepare(model, example_input(model, input_shape, batch), threads)
        ref = reference_session(runtime, batch, threads, where)
        return time_interleaved(ref, [session], threads, 5, max(3, -(-repeats // 5)), clock=clock, ref_every=1)


def check_lut(lut: Lut, model: nn.Module, plans: int = 50, seed: int = 0, repeats: int = 15,
              progress: bool = True, runtime: str | None = None) -> dict[str, Any]:
    """Time ``plans`` random pruned variants of ``model`` interleaved with the unpruned model and
    compare with the LUT's predictions, as fractions of the unpruned model (the target) and in ms.

    The plans come from a random stream separate from the build's calibration plans. Returns
    ``plans``, ``mape`` (mean absolute % error of the predicted fraction), ``within_10pct`` (share
    of plans within +-10%), ``max_abs_pct``, the same three for the ms predictions (``*_ms``; these
    move with the machine's speed), ``drift`` (the unpruned model's latency now / at build time),
    and the points (``counts``, ``predicted_rel``, ``measured_rel``, ``predicted_ms``, ``measured_ms``).

    :param runtime: the runtime to time in; must be the LUT's (the default).
    """
    if plans < 1:
        raise AutopruneError(f"--plans must be >= 1 (got {plans})")
    lut.check_target(runtime=runtime, source="the LUT")
    graph = build_unit_graph(model, lut.header["input_shape"])
    lut.check(graph)
    cost = LutCost(lut, graph)
    rng = np.random.default_rng([seed, 2])
    counts = [random_counts(graph, rng) for _ in range(plans)]
    predicted_rel = np.array([cost.fraction(c) for c in counts])
    predicted_ms = predicted_rel * cost.base
    timing = time_plans(graph, model, counts, cost.batch, cost.threads, repeats, lut.header.get("clock", "wall"),
                        desc="checking", progress=progress, runtime=cost.runtime)
    measured_rel, measured_ms = np.array(timing.relative), np.array(timing.ms)
    out: dict[str, Any] = {
        "plans": int(plans), "runtime": cost.runtime, "device": lut.header["device"], "counts": counts,
        "device_now": default_device_name(str(model_device(model))),
        "predicted_rel": predicted_rel.tolist(), "measured_rel": measured_rel.tolist(),
        "predicted_ms": predicted_ms.tolist(), "measured_ms": measured_ms.tolist(),
        "base_ms_now": timing.base_ms, "base_ms_at_build": cost.base, "drift": timing.base_ms / cost.base,
        "batch": cost.batch, "threads": cost.threads, "clock": cost.clock}
    for suffix, p, m in (("", predicted_rel, measured_rel), ("_ms", predicted_ms, measured_ms)):
        err = np.abs(p - m) / m
        out.update({f"mape{suffix}": float(err.mean() * 100), f"within_10pct{suffix}": float((err <= 0.10).mean()),
                    f"max_abs_pct{suffix}": float(err.max() * 100)})
    return out

