"""Module tables of a latency LUT (grid, fine curves, interpolation, parsing) and the grid of widths
a LUT is built on (see :mod:`autoprune.latency.lut` for the format and the prediction)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autoprune.core.cost import WidthModel
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import resolve_count
from autoprune.errors import AutopruneError

DENSE_KINDS = ("conv", "depthwise", "linear")
ALIGNMENTS = (4, 8, 16)
"""Channel blocks the calibration may find a runtime to favour (``misaligned`` in :mod:`autoprune.latency.lut`)."""
MEMO_SIZE = 1 << 16
"""Width pairs a module table remembers its lookup for (then it starts over)."""


@dataclass
class FineAxis:
    """Latency along one axis at every reachable width, the other axis at its full width."""

    widths: list[int]
    ms: np.ndarray
    rel: np.ndarray | None = None

    def at(self, w: float, relative: bool = False) -> float:
        """Linear interpolation between the widths around ``w`` (clamped at the ends, as ``np.interp``)."""
        values = self.rel if relative and self.rel is not None else self.ms
        widths = self.widths
        if w <= widths[0]:
            return float(values[0])
        if w >= widths[-1]:
            return float(values[-1])
        i = bisect.bisect_right(widths, w) - 1
        t = (w - widths[i]) / (widths[i + 1] - widths[i])
        return float(values[i] * (1 - t) + values[i + 1] * t)

    def to_dict(self) -> dict[str, Any]:
        out = {"w": list(self.widths), "ms": _rounded([self.ms])[0]}
        if self.rel is not None:
            out["rel"] = _rounded([self.rel])[0]
        return out


@dataclass
class ModuleTable:
    """Latency of one module alone over a grid of kept (in, out) widths: ``ms`` and, when timed
    against a reference op, ``rel`` (both of shape ``(len(in_grid), len(out_grid))``); optionally
    ``fine`` curves along each axis at every width (the other axis full), which correct the grid's
    interpolation for widths between grid points (runtimes whose kernels favour multiples of 4 or 16)."""

    name: str
    kind: str
    in_grid: list[int]
    out_grid: list[int]
    ms: np.ndarray
    rel: np.ndarray | None = None
    fine: dict[str, FineAxis] = field(default_factory=dict)
    _memo: dict[tuple, float] = field(default_factory=dict, init=False, repr=False, compare=False)

    def grid_value(self, in_w: float, out_w: float, relative: bool = False) -> float:
        """Bilinear interpolation in the grid's ``rel`` (``relative``) or ``ms``; a width outside the
        grid raises :class:`AutopruneError`."""
        if self.kind == "depthwise":
            in_w = self.in_grid[0]
        i, ti = _bracket(self.in_grid, in_w, self.name, "in")
        j, tj = _bracket(self.out_grid, out_w, self.name, "out")
        i2, j2 = min(i + 1, len(self.in_grid) - 1), min(j + 1, len(self.out_grid) - 1)
        m = self.rel if relative and self.rel is not None else self.ms
        top = m[i, j] * (1 - tj) + m[i, j2] * tj
        bottom = m[i2, j] * (1 - tj) + m[i2, j2] * tj
        return float(top * (1 - ti) + bottom * ti)

    def lookup(self, in_w: float, out_w: float, relative: bool = False) -> float:
        """The grid's interpolation, times ``fine(w) / grid(w)`` along each axis that has a fine curve
        (remembered per width pair: a search prices plans that differ in one unit over and over)."""
        key = (in_w, out_w, relative, len(self.fine))
        cached = self._memo.get(key)
        if cached is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            cached = self._memo[key] = self._lookup(in_w, out_w, relative)
        return cached

    def _lookup(self, in_w: float, out_w: float, relative: bool) -> float:
        value = self.grid_value(in_w, out_w, relative)
        for axis, w in (("in", in_w), ("out", out_w)):
            curve = self.fine.get(axis)
            if curve is None or (axis == "in" and self.kind == "depthwise"):
                continue
            coarse = self.grid_value(w, self.out_grid[-1], relative) if axis == "in" else \
                self.grid_value(self.in_grid[-1], w, relative)
            if coarse > 0:
                value *= curve.at(w, relative) / coarse
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "in": list(self.in_grid),
                               "out": list(self.out_grid), "ms": _rounded(self.ms)}
        if self.rel is not None:
            out["rel"] = _rounded(self.rel)
        if self.fine:
            out["fine"] = {axis: curve.to_dict() for axis, curve in self.fine.items()}
        return out


def _rounded(table: Any) -> list[list[float]]:
    return [[float(f"{float(v):.6g}") for v in row] for row in table]


def _bracket(grid: Sequence[int], x: float, name: str, axis: str) -> tuple[int, float]:
    """Index of the grid point at or below ``x`` and the fraction towards the next one."""
    if x < grid[0] - 1e-6 or x > grid[-1] + 1e-6:
        raise AutopruneError(
            f"LUT: module {name!r} needs {axis}={x:g} but its table covers {grid[0]}..{grid[-1]}; "
            "rebuild the LUT (autoprune lut build) or raise pruning.min_ratio"
        )
    i = min(max(bisect.bisect_right(grid, x) - 1, 0), len(grid) - 1)  # a list: no array per call
    if i == len(grid) - 1:
        return i, 0.0
    return i, float(min(1.0, max(0.0, (x - grid[i]) / (grid[i + 1] - grid[i]))))


def _grid(raw: dict, axis: str, name: str, source: str) -> list[int]:
    grid = raw.get(axis)
    if not isinstance(grid, list) or not grid or not all(isinstance(v, int) and v > 0 for v in grid) \
            or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise AutopruneError(f"{source}: module {name!r}: '{axis}' must be a non-empty increasing list of positive ints")
    return grid


def _values(raw: dict, key: str, grids: list[list[int]], name: str, source: str) -> np.ndarray:
    try:
        table = np.array([[np.nan if v is None else float(v) for v in row] for row in raw.get(key)], dtype=np.float64)
    except (TypeError, ValueError):
        table = np.zeros(0)
    if table.shape != (len(grids[0]), len(grids[1])):
        raise AutopruneError(f"{source}: module {name!r}: '{key}' must be a {len(grids[0])}x{len(grids[1])} "
                             "table (one row per 'in', one column per 'out'); entries are missing")
    bad = np.argwhere(~np.isfinite(table) | (table < 0))
    if len(bad):
        i, j = bad[0]
        raise AutopruneError(f"{source}: module {name!r} has a missing, NaN or negative entry ({table[i, j]}) "
                             f"at in={grids[0][i]}, out={grids[1][j]}; rebuild or fix the table")
    return table


def parse_table(raw: Any, source: str, relative: bool) -> ModuleTable:
    """A module table from its JSON entry; one-line errors name ``source`` and the module."""
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise AutopruneError(f"{source}: every module entry needs a 'name'")
    name = raw["name"]
    if raw.get("kind") not in DENSE_KINDS:
        raise AutopruneError(f"{source}: module {name!r} has kind {raw.get('kind')!r}; expected one of {DENSE_KINDS}")
    grids = [_grid(raw, "in", name, source), _grid(raw, "out", name, source)]
    if relative and "rel" not in raw:
        raise AutopruneError(f"{source}: module {name!r} has no 'rel' table (the header's unit is 'reference')")
    rel = _values(raw, "rel", grids, name, source) if "rel" in raw else None
    table = ModuleTable(name, raw["kind"], grids[0], grids[1], _values(raw, "ms", grids, name, source), rel)
    fine = raw.get("fine") or {}
    if not isinstance(fine, dict) or not set(fine) <= {"in", "out"}:
        raise AutopruneError(f"{source}: module {name!r}: 'fine' must map 'in' and/or 'out' to a curve")
    for axis, curve in fine.items():
        grid = grids[0] if axis == "in" else grids[1]
        where = f"{name!r} fine {axis!r}"
        widths = _grid(curve if isinstance(curve, dict) else {}, "w", where, source)
        if widths[0] > grid[0] or widths[-1] != grid[-1]:
            raise AutopruneError(f"{source}: module {where}: widths must cover the grid {grid[0]}..{grid[-1]}")
        cols = [[1], widths]
        table.fine[axis] = FineAxis(widths, _values({"ms": [curve.get("ms")]}, "ms", cols, where, source)[0],
                                    _values({"rel": [curve["rel"]]}, "rel", cols, where, source)[0]
                                    if "rel" in curve else None)
        if relative and table.fine[axis].rel is None:
            raise AutopruneError(f"{source}: module {where} has no 'rel' curve (the header's unit is 'reference')")
    return table


def dense_modules(graph: UnitGraph) -> list:
    """The conv/linear modules of ``graph`` that ran in the forward pass (those with MACs)."""
    return [m for m in graph.modules if m.kind in DENSE_KINDS and m.macs > 0]


def misaligned_melements(graph: UnitGraph, widths: WidthModel, counts: Sequence[int], align: int) -> float:
    """Output elements (millions) of the convs whose kept width at ``counts`` is not a multiple of ``align``."""
    _in_k, out_k = widths.ratios(counts)
    total = 0
    for idx, m in enumerate(graph.modules):
        if m.kind in ("conv", "depthwise") and m.macs > 0:
            kept = round(out_k[idx] * m.out_ch)
            total += kept * m.out_spatial if kept % align else 0
    return total / 1e6


def padded_mmacs(graph: UnitGraph, widths: WidthModel, counts: Sequence[int], align: int,
                 inputs: bool = True) -> float:
    """MACs (millions) of the conv/linear layers at ``counts`` with each width rounded up to a
    multiple of ``align``: the work of kernels that compute in blocks of ``align`` channels, padding
    included (OpenVINO's CPU plugin computes convs in blocks of 16 channels). With ``inputs=False``
    only the output widths are rounded up: kernels on channels-last activations (OpenVINO's
    ``brgconv`` on AVX-512/AMX CPUs) block the output channels but reduce over the exact inputs."""
    in_k, out_k = widths.ratios(counts)
    total = 0.0
    for idx, m in enumerate(graph.modules):
        if m.kind in DENSE_KINDS and m.macs > 0:
            out = math.ceil(round(out_k[idx] * m.out_ch, 6) / align) * align / m.out_ch
            if m.kind == "depthwise":
                inp = 1.0
            elif inputs:
                inp = math.ceil(round(in_k[idx] * m.in_ch, 6) / align) * align / m.in_ch
            else:
                inp = in_k[idx]
            total += m.macs * inp * out
    return total / 1e6


def padded_melements(graph: UnitGraph, widths: WidthModel, counts: Sequence[int], align: int) -> float:
    """Output elements (millions) of every conv/linear at ``counts`` with the channels rounded up to a
    multiple of ``align``: the elementwise work on activations stored in ``align``-channel blocks."""
    _in_k, out_k = widths.ratios(counts)
    total = 0.0
    for idx, m in enumerate(graph.modules):
        if m.kind in DENSE_KINDS and m.macs > 0:
            total += math.ceil(round(out_k[idx] * m.out_ch, 6) / align) * align * m.out_spatial
    return total / 1e6


def grid_counts(n: int, step: int) -> list[int]:
    """Grid of channel counts for ``n`` channels: 1, the powers of two below ``step``, every
    multiple of ``step`` and ``n``.

    The powers of two close the grid's widest relative gap: between 1 and ``step`` a layer's time is
    far from linear in its width (eager torch on the CPU: a ResNet-20 plan with a stage cut to 3
    channels was predicted at 0.50 of the base by a 1-8-16 grid and measured at 0.59-0.61; with 2
    and 4 in the grid it is predicted at 0.60).
    """
    if step < 1:
        raise AutopruneError(f"LUT grid step must be >= 1 (got {step})")
    low = [1 << k for k in range(step.bit_length()) if 1 << k < min(step, n)]
    return sorted({1, n, *low, *range(step, n + 1, step)})


def module_axes(graph: UnitGraph, step: int) -> dict[str, tuple[list[int], list[int]]]:
    """Grid (in widths, out widths) of every dense module; an axis no unit prunes has one point."""
    gran: dict[tuple[int, str], int] = {}
    for coupling in graph.couplings:
        for m, dim, mult in coupling:
            gran[(m, dim)] = math.gcd(gran.get((m, dim), 0), int(mult))
    axes = {}
    for idx, m in enumerate(graph.modules):
        if m.kind not in DENSE_KINDS or m.macs <= 0:
            continue
        grid = []
        for dim, full in (("in", m.in_ch), ("out", m.out_ch)):
            g = gran.get((idx, dim), 0)
            if dim == "in" and m.kind == "depthwise":
                grid.append([1])
            elif g <= 0:
                grid.append([full])
            else:
                g = g if full % g == 0 else 1
                spacing = step
                if m.groups > 1:  # a grouped conv's widths are whole groups, about `step` channels apart
                    g = math.lcm(g, m.groups)
                    spacing = max(1, step // g)
                grid.append([c * g for c in grid_counts(full // g, spacing)])
        axes[m.name] = (grid[0], grid[1])
    return axes


def tabulate(graph: UnitGraph, fn: Callable[[str, int, int], Any], step: int = 8) -> list[ModuleTable]:
    """Tables for every dense module with ``fn(module name, in width, out width)``: ``ms``, or an
    ``(ms, rel)`` pair for a ``reference`` LUT.

    The LUT builder (:mod:`autoprune.latency.build`) measures the points itself; tests and users
    may pass any function (a synthetic LUT, numbers from another device ...).
    """
    kinds = {m.name: m.kind for m in graph.modules}
    tables = []
    for name, (in_grid, out_grid) in module_axes(graph, step).items():
        cells = [[fn(name, i, o) for o in out_grid] for i in in_grid]
        pairs = np.array(cells, dtype=np.float64).reshape(len(in_grid), len(out_grid), -1)
        rel = pairs[..., 1] if pairs.shape[-1] > 1 else None
        tables.append(ModuleTable(name, kinds[name], in_grid, out_grid, pairs[..., 0], rel))
    return tables


def fine_axes(graph: UnitGraph) -> dict[str, dict[str, list[int]]]:
    """Every reachable width of each prunable axis of every dense module (the fine curves' widths)."""
    out: dict[str, dict[str, list[int]]] = {}
    kinds = {m.name: m.kind for m in graph.modules}
    for name, (ins, outs) in module_axes(graph, 1).items():
        axes = {"in": ins, "out": outs} if kinds[name] != "depthwise" else {"out": outs}
        out[name] = {axis: widths for axis, widths in axes.items() if len(widths) > 1}
    return out


def fine_points(graph: UnitGraph) -> list[tuple[str, int, int]]:
    """The (module, in, out) points the fine curves need: each axis at every width, the other full."""
    full = {m.name: (m.in_ch, m.out_ch) for m in graph.modules}
    axes = module_axes(graph, 1)
    points = []
    for name, curves in fine_axes(graph).items():
        i_full, o_full = axes[name][0][-1], full[name][1]
        points += [(name, w, o_full) for w in curves.get("in", [])]
        points += [(name, i_full, w) for w in curves.get("out", [])]
    return points


def add_fine_curves(graph: UnitGraph, tables: list[ModuleTable], fn: Callable[[str, int, int], Any]) -> None:
    """Give every table its fine curves, from ``fn(module, in, out)`` (``ms`` or an ``(ms, rel)`` pair)."""
    by_name = {t.name: t for t in tables}
    for name, curves in fine_axes(graph).items():
        table = by_name[name]
        for axis, widths in curves.items():
            cells = [fn(name, w, table.out_grid[-1]) if axis == "in" else fn(name, table.in_grid[-1], w)
                     for w in widths]
            pairs = np.array(cells, dtype=np.float64).reshape(len(widths), -1)
            table.fine[axis] = FineAxis(list(widths), pairs[:, 0], pairs[:, 1] if pairs.shape[1] > 1 else None)


def calibration_counts(graph: UnitGraph, plans: int, seed: int = 0) -> list[list[int]]:
    """The unpruned model's counts, then ``plans`` random variants (:func:`random_counts`), then
    ``plans // 4`` near-full ones (:func:`near_full_counts`: a few units cut, the rest unpruned). Every
    second random variant is rounded to a multiple of 16, 8 or 4 channels in turn, so that a calibration sees
    aligned plans (what a search with ``pruning.round_to`` makes) as well as arbitrary ones. The
    variants' ratios are drawn up to 1.0, 0.7 or 0.45 in turn: searched plans sit at the budget,
    often far below the latency of a plan with ratios uniform on [0.2, 1] (about 0.6 of the base),
    and a calibration fitted only there extrapolates to them (it under-predicted a searched plan at
    0.5 of the base by 14%, ``benchmarks/results/speedup.md``)."""
    rng = np.random.default_rng([seed, 1])
    out = [list(graph.channels)]
    for k in range(plans):
        counts = random_counts(graph, rng, high=CALIBRATION_HIGHS[k % len(CALIBRATION_HIGHS)])
        align = (0, 16, 0, 8, 0, 4)[k % 6]
        if align:
            steps = [u.step(align) for u in graph.units]
            counts = [c if full < s else min(full, max(s, round(c / s) * s))
                      for c, full, s in zip(counts, graph.channels, steps, strict=True)]
        out.append(counts)
    near = np.random.default_rng([seed, 3])  # its own stream: the random plans above stay what they were
    return out + [near_full_counts(graph, near, NEAR_FULL_UNITS[k % len(NEAR_FULL_UNITS)]) for k in range(plans // 4)]


NEAR_FULL_UNITS = (1, 2, 4)
"""Units cut by the calibration's near-full plans, in turn (one such plan per four random ones). A greedy
search (NetAdapt) starts from the unpruned model and prices one-unit cuts first; on OpenVINO those run
at 1.0-1.06 of the unpruned model while the random plans' trend puts them at 1.15-1.27
(``benchmarks/results/lut_near_full.md``), so a calibration that never sees them cannot tell the forms apart."""


def near_full_counts(graph: UnitGraph, rng: np.random.Generator, units: int) -> list[int]:
    """The unpruned model with ``units`` random units cut to a ratio in [0.6, 0.95] (at least one step)."""
    counts = list(graph.channels)
    for i in rng.choice(len(counts), size=min(units, len(counts)), replace=False):
        u = graph.units[int(i)]
        if u.out_channels > u.step():
            counts[i] = min(u.out_channels - u.step(), resolve_count(rng.uniform(0.6, 0.95), u.out_channels, u.step()))
    return counts


CALIBRATION_HIGHS = (1.0, 0.7, 1.0, 0.45)
"""The upper ends of the calibration plans' ratio ranges, in turn (half of the plans are small ones)."""


def random_counts(graph: UnitGraph, rng: np.random.Generator, low: float = 0.2, high: float = 1.0,
                  round_to: int = 1) -> list[int]:
    """Kept channels per unit with preserve ratios drawn uniformly from [low, high], each count rounded
    as ``pruning.round_to`` rounds it (the same draws for any ``round_to``)."""
    return [resolve_count(rng.uniform(low, high), u.out_channels, u.step(round_to)) for u in graph.units]
