"""Per-device latency lookup tables (LUTs): the format, building, loading, predicting, checking.

A LUT is a JSON document (schema ``autoprune.lut/v1``, no pickle)::

    {"header": {"schema": "autoprune.lut/v1", "device": "...", "torch": "2.13.0", "threads": 1,
                "batch": 1, "dtype": "float32", "input_shape": [3, 32, 32],
                "model_signature": "<sha256 or null>", "remainder_ms": 0.41,
                "calibration": {"scale": 1.12, "ms_per_melement": 1.9, "offset_ms": 0.2}, ...},
     "modules": [{"name": "layer1.0.conv1", "kind": "conv", "in": [1, 8, 16], "out": [1, 8, 16],
                  "ms": [[...], [...], [...]]}, ...]}

One table per conv/linear module (NetAdapt-style): ``ms[i][j]`` is the module's latency alone
with ``in[i]`` input and ``out[j]`` output channels (elements for a Linear after a flatten). A
depthwise conv has one point on its ``in`` axis (``[1]``): its latency depends on its channel
count only. An axis no unit can prune has one point, the full width.

Prediction for a count vector: every module's kept (in, out) widths come from
:class:`~autoprune.cost.WidthModel`; each is looked up **bilinearly** between the four
surrounding grid points (exact on grid points, and always between the smallest and largest of
its neighbours); a width outside a table's grid is an error (never extrapolated). Then
``predicted = scale * sum + ms_per_melement * elements / 1e6 + offset_ms`` with the header's
``calibration``, where ``elements`` is the number of output elements of every conv/linear at the
kept widths (the work of the norm, activation and residual-add layers between them, which no
table holds; ``ms_per_melement`` is optional, default 0). Without a calibration, ``scale = 1``
and ``offset_ms = remainder_ms`` (plain NetAdapt: sum plus the measured rest of the model). ``model_signature`` pins the LUT to one architecture and input shape; ``null`` skips that
check (a third-party LUT), but module names and full widths are still checked.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.core.cost import WidthModel
from autoprune.core.graph import UnitGraph
from autoprune.errors import AutopruneError

SCHEMA = "autoprune.lut/v1"
DENSE_KINDS = ("conv", "depthwise", "linear")
REQUIRED = {"schema": str, "device": str, "torch": str, "threads": int, "batch": int, "dtype": str,
            "input_shape": list, "remainder_ms": (int, float)}


def model_signature(graph: UnitGraph) -> str:
    """sha256 of the input shape, every module's name/kind/widths/MACs and every unit's channels."""
    body = {"input_shape": list(graph.input_shape),
            "modules": [[m.name, m.kind, m.in_ch, m.out_ch, m.macs] for m in graph.modules],
            "units": [[u.name, u.out_channels] for u in graph.units]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class ModuleTable:
    """Latency (ms) of one module alone over a grid of kept (in, out) widths."""

    name: str
    kind: str
    in_grid: list[int]
    out_grid: list[int]
    ms: np.ndarray  # shape (len(in_grid), len(out_grid))

    def lookup(self, in_w: float, out_w: float) -> float:
        """Bilinear interpolation; a width outside the grid raises :class:`AutopruneError`."""
        if self.kind == "depthwise":
            in_w = self.in_grid[0]
        i, ti = _bracket(self.in_grid, in_w, self.name, "in")
        j, tj = _bracket(self.out_grid, out_w, self.name, "out")
        i2, j2 = min(i + 1, len(self.in_grid) - 1), min(j + 1, len(self.out_grid) - 1)
        m = self.ms
        top = m[i, j] * (1 - tj) + m[i, j2] * tj
        bottom = m[i2, j] * (1 - tj) + m[i2, j2] * tj
        return float(top * (1 - ti) + bottom * ti)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "in": list(self.in_grid), "out": list(self.out_grid),
                "ms": [[round(float(v), 6) for v in row] for row in self.ms]}


def _bracket(grid: Sequence[int], x: float, name: str, axis: str) -> tuple[int, float]:
    """Index of the grid point at or below ``x`` and the fraction towards the next one."""
    if x < grid[0] - 1e-6 or x > grid[-1] + 1e-6:
        raise AutopruneError(
            f"LUT: module {name!r} needs {axis}={x:g} but its table covers {grid[0]}..{grid[-1]}; "
            "rebuild the LUT (autoprune lut build) or raise pruning.min_ratio"
        )
    i = int(np.searchsorted(grid, x, side="right")) - 1
    i = min(max(i, 0), len(grid) - 1)
    if i == len(grid) - 1:
        return i, 0.0
    return i, float(min(1.0, max(0.0, (x - grid[i]) / (grid[i + 1] - grid[i]))))


@dataclass
class Lut:
    """A latency lookup table: header (device, threads, batch, calibration ...) and module tables."""

    header: dict[str, Any]
    tables: list[ModuleTable] = field(default_factory=list)

    @property
    def scale(self) -> float:
        return float((self.header.get("calibration") or {}).get("scale", 1.0))

    @property
    def ms_per_melement(self) -> float:
        return float((self.header.get("calibration") or {}).get("ms_per_melement", 0.0))

    @property
    def offset_ms(self) -> float:
        cal = self.header.get("calibration")
        return float(cal["offset_ms"]) if cal else float(self.header["remainder_ms"])

    def to_dict(self) -> dict[str, Any]:
        return {"header": self.header, "modules": [t.to_dict() for t in self.tables]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "LUT") -> Lut:
        if not isinstance(data, dict) or not isinstance(data.get("header"), dict) \
                or not isinstance(data.get("modules"), list):
            raise AutopruneError(f"{source}: not a LUT (expected a JSON object with 'header' and 'modules')")
        header = data["header"]
        if header.get("schema") != SCHEMA:
            raise AutopruneError(f"{source}: unsupported LUT schema {header.get('schema')!r} (expected {SCHEMA})")
        for key, typ in REQUIRED.items():
            if key not in header or not isinstance(header[key], typ) or isinstance(header[key], bool):
                raise AutopruneError(f"{source}: header field {key!r} is missing or has the wrong type")
        cal = header.get("calibration")
        if cal is not None and not (isinstance(cal, dict) and {"scale", "offset_ms"} <= set(cal)):
            raise AutopruneError(f"{source}: header 'calibration' must be {{\"scale\": a, \"offset_ms\": b}} or absent")
        numbers = [header["remainder_ms"]] + list((cal or {}).values())
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or \
                (cal and (cal["scale"] <= 0 or cal.get("ms_per_melement", 0) < 0)):
            raise AutopruneError(f"{source}: remainder_ms and calibration must be finite numbers "
                                 "(scale > 0, ms_per_melement >= 0)")
        return cls(header, [_table(raw, source) for raw in data["modules"]])

    def check(self, graph: UnitGraph, source: str = "LUT") -> None:
        """Raise unless this LUT describes ``graph``'s model (signature, modules, full widths)."""
        sig = self.header.get("model_signature")
        if list(self.header["input_shape"]) != list(graph.input_shape):
            raise AutopruneError(f"{source} was built for input shape {self.header['input_shape']}, "
                                 f"the model runs at {list(graph.input_shape)}; rebuild it for this model")
        if sig is not None and sig != model_signature(graph):
            raise AutopruneError(f"{source} was built for a different model (signature mismatch); "
                                 "rebuild it with autoprune lut build for this model")
        by_name = {t.name: t for t in self.tables}
        for m in dense_modules(graph):
            table = by_name.get(m.name)
            if table is None:
                raise AutopruneError(f"{source} has no table for module {m.name!r}; is it for this model?")
            full_in = table.in_grid[-1] if m.kind == "depthwise" else m.in_ch
            if table.in_grid[-1] != full_in or table.out_grid[-1] != m.out_ch:
                raise AutopruneError(
                    f"{source}: module {m.name!r} has {m.in_ch}->{m.out_ch} channels but its table ends at "
                    f"{table.in_grid[-1]}->{table.out_grid[-1]}; the LUT is for a different model")

    def raw_sum(self, graph: UnitGraph, widths: WidthModel, counts: Sequence[int]) -> float:
        """Sum of the module tables at the kept widths of ``counts`` (uncalibrated)."""
        in_k, out_k = widths.ratios(counts)
        by_name = {t.name: t for t in self.tables}
        total = 0.0
        for idx, m in enumerate(graph.modules):
            table = by_name.get(m.name)
            if table is not None and m.kind in DENSE_KINDS:
                total += table.lookup(round(in_k[idx] * m.in_ch, 6), round(out_k[idx] * m.out_ch, 6))
        return total


def _table(raw: Any, source: str) -> ModuleTable:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise AutopruneError(f"{source}: every module entry needs a 'name'")
    name = raw["name"]
    if raw.get("kind") not in DENSE_KINDS:
        raise AutopruneError(f"{source}: module {name!r} has kind {raw.get('kind')!r}; expected one of {DENSE_KINDS}")
    grids = []
    for axis in ("in", "out"):
        grid = raw.get(axis)
        if not isinstance(grid, list) or not grid or not all(isinstance(v, int) and v > 0 for v in grid) \
                or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
            raise AutopruneError(f"{source}: module {name!r}: '{axis}' must be a non-empty increasing list of positive ints")
        grids.append(grid)
    try:
        ms = np.array([[np.nan if v is None else float(v) for v in row] for row in raw.get("ms")], dtype=np.float64)
    except (TypeError, ValueError):
        ms = np.zeros(0)
    if ms.shape != (len(grids[0]), len(grids[1])):
        raise AutopruneError(f"{source}: module {name!r}: 'ms' must be a {len(grids[0])}x{len(grids[1])} "
                             "table (one row per 'in', one column per 'out'); entries are missing")
    bad = np.argwhere(~np.isfinite(ms) | (ms < 0))
    if len(bad):
        i, j = bad[0]
        raise AutopruneError(f"{source}: module {name!r} has a missing, NaN or negative entry ({ms[i, j]}) "
                             f"at in={grids[0][i]}, out={grids[1][j]}; rebuild or fix the table")
    return ModuleTable(name, raw["kind"], grids[0], grids[1], ms)


def dense_modules(graph: UnitGraph) -> list:
    """The conv/linear modules of ``graph`` that ran in the forward pass (those with MACs)."""
    return [m for m in graph.modules if m.kind in DENSE_KINDS and m.macs > 0]


def load_lut(path: str | Path, graph: UnitGraph | None = None) -> Lut:
    """Read and validate a LUT; with ``graph``, also check that it describes that model."""
    path = Path(path)
    source = f"LUT {str(path)!r}"
    if not path.is_file():
        raise AutopruneError(f"{source} does not exist; build one with autoprune lut build")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutopruneError(f"{source} is not valid JSON ({type(exc).__name__})") from exc
    lut = Lut.from_dict(data, source)
    if graph is not None:
        lut.check(graph, source)
    return lut


class LutCost:
    """The ``latency`` cost model from a LUT: calibrated sum of interpolated module latencies (ms)
    plus the calibrated elementwise term (see the module docstring)."""

    kind = "latency"
    source = "lut"

    def __init__(self, lut: Lut, graph: UnitGraph, widths: WidthModel | None = None) -> None:
        self.lut, self.graph = lut, graph
        self.widths = widths or WidthModel(graph)
        self.batch, self.threads = int(lut.header["batch"]), int(lut.header["threads"])
        self.clock = str(lut.header.get("clock", "wall"))
        self._base = self(graph.channels)

    @property
    def base(self) -> float:
        return self._base

    def raw(self, counts: Sequence[int]) -> float:
        return self.lut.raw_sum(self.graph, self.widths, counts)

    def __call__(self, counts: Sequence[int]) -> float:
        lut = self.lut
        elementwise = lut.ms_per_melement * self.widths.activations(counts) / 1e6 if lut.ms_per_melement else 0.0
        return lut.scale * self.raw(counts) + elementwise + lut.offset_ms


# ------------------------------------------------------------------------------------ the grid


def grid_counts(n: int, step: int) -> list[int]:
    """Grid of channel counts for ``n`` channels: 1, every multiple of ``step`` and ``n``."""
    if step < 1:
        raise AutopruneError(f"LUT grid step must be >= 1 (got {step})")
    return sorted({1, n, *range(step, n + 1, step)})


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
                grid.append([c * g for c in grid_counts(full // g, step)])
        axes[m.name] = (grid[0], grid[1])
    return axes


def tabulate(graph: UnitGraph, fn: Callable[[str, int, int], float], step: int = 8) -> list[ModuleTable]:
    """Tables for every dense module with ``fn(module name, in width, out width) -> ms``.

    ``fn`` is the profiler in :func:`autoprune.lut_build.build_lut`; tests and users may pass any
    function (a synthetic LUT, numbers from another device ...).
    """
    kinds = {m.name: m.kind for m in graph.modules}
    tables = []
    for name, (in_grid, out_grid) in module_axes(graph, step).items():
        ms = np.array([[fn(name, i, o) for o in out_grid] for i in in_grid], dtype=np.float64)
        tables.append(ModuleTable(name, kinds[name], in_grid, out_grid, ms))
    return tables


def make_header(graph: UnitGraph, **fields: Any) -> dict[str, Any]:
    """A header for ``graph`` with defaults for every required field (overridden by ``fields``)."""
    import torch

    header = {"schema": SCHEMA, "device": "unknown", "torch": torch.__version__.split("+")[0], "threads": 1,
              "batch": 1, "dtype": "float32", "input_shape": list(graph.input_shape),
              "model_signature": model_signature(graph), "remainder_ms": 0.0}
    header.update(fields)
    return header


def random_counts(graph: UnitGraph, rng: np.random.Generator, low: float = 0.2) -> list[int]:
    """Kept channels per unit with preserve ratios drawn uniformly from [low, 1]."""
    return [max(1, min(c, round(rng.uniform(low, 1.0) * c))) for c in graph.channels]
