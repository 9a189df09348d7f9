"""Per-device latency lookup tables (LUTs): the format, loading, predicting.

A LUT is a JSON document (schema ``autoprune.lut/v2``, no pickle)::

    {"header": {"schema": "autoprune.lut/v2", "device": "Intel(R) Xeon(R) ... (2 cores)", "device_kind": "cpu",
                "runtime": "onnxruntime", "runtime_version": "1.32.0", "threads": 1, "batch": 1,
                "dtype": "float32", "input_shape": [3, 32, 32], "model_signature": "<sha256 or null>",
                "unit": "reference", "remainder": 2.1,
                "reference": {"op": "conv3x3 32->32 at 16x16", "ms": 0.11},
                "base_measured_ms": 2.5, "base_reference": 22.7,
                "calibration": {"scale": 0.5, "per_melement": 90.0, "offset": 3.1, ...}, ...},
     "modules": [{"name": "layer1.0.conv1", "kind": "conv", "in": [1, 8, 16], "out": [1, 8, 16],
                  "ms": [[...], ...], "rel": [[...], ...]}, ...]}

One table per conv/linear module (NetAdapt-style): ``ms[i][j]`` is the module's latency alone
with ``in[i]`` input and ``out[j]`` output channels (elements for a Linear after a flatten), and
``rel[i][j]`` the same latency divided by the fixed reference op's, timed in the same pass
(:func:`autoprune.latency.timing.time_interleaved`). A depthwise conv has one point on its ``in``
axis (``[1]``): its latency depends on its channel count only. An axis no unit can prune has one
point, the full width.

``unit`` says what the prediction is made from: ``"reference"`` (``rel`` tables, remainder and
calibration in reference-op units: what ``autoprune lut build`` and ``lut import`` write) or
``"ms"`` (``ms`` tables, everything in milliseconds: a LUT made by another tool, or a v1 file).

Prediction for a count vector: every module's kept (in, out) widths come from
:class:`~autoprune.core.cost.WidthModel`; each is looked up **bilinearly** between the four
surrounding grid points (exact on grid points, and always between the smallest and largest of
its neighbours); a width outside a table's grid is an error (never extrapolated). Then

    value = scale * sum + per_melement * elements / 1e6 + per_misaligned * misaligned / 1e6 + offset

with the header's ``calibration``, where ``elements`` is the number of output elements of every
conv/linear at the kept widths (the work of the norm, activation and residual-add layers between
them, which no table holds; ``per_melement`` is optional, default 0) and ``misaligned`` the output
elements of the convs whose kept width is not a multiple of the calibration's ``align`` (4, 8 or
16; absent: no such term): a runtime that lays channels out in blocks (ONNX Runtime's NCHWc)
reorders the activations around such a conv, which no layer alone shows. Without a calibration,
``scale = 1`` and ``offset = remainder`` (plain NetAdapt: sum plus the measured rest of the model).
The LUT predicts the **fraction** ``value(plan) / value(unpruned)``, which does not depend on how
fast the machine was while it was built; in ms it predicts that fraction times
``base_measured_ms`` (``value`` itself for an ``ms`` LUT).

``model_signature`` pins the LUT to one architecture and input shape; ``null`` skips that check (a
third-party LUT), but module names and full widths are still checked. Files with the old schema
``autoprune.lut/v1`` (``ms`` tables, ``remainder_ms``, calibration ``ms_per_melement`` /
``offset_ms``, PyTorch on the CPU) load as ``ms`` LUTs.
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

SCHEMA = "autoprune.lut/v2"
SCHEMA_V1 = "autoprune.lut/v1"
DENSE_KINDS = ("conv", "depthwise", "linear")
UNITS = ("ms", "reference")
ALIGNMENTS = (4, 8, 16)
"""Channel blocks the calibration may find a runtime to favour (see ``misaligned`` in the module docstring)."""
REQUIRED = {"schema": str, "device": str, "runtime": str, "runtime_version": str, "threads": int, "batch": int,
            "dtype": str, "input_shape": list, "unit": str, "remainder": (int, float)}


def model_signature(graph: UnitGraph) -> str:
    """sha256 of the input shape, every module's name/kind/widths/MACs and every unit's channels."""
    body = {"input_shape": list(graph.input_shape),
            "modules": [[m.name, m.kind, m.in_ch, m.out_ch, m.macs] for m in graph.modules],
            "units": [[u.name, u.out_channels] for u in graph.units]}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass
class FineAxis:
    """Latency along one axis at every reachable width, the other axis at its full width."""

    widths: list[int]
    ms: np.ndarray
    rel: np.ndarray | None = None

    def at(self, w: float, relative: bool = False) -> float:
        values = self.rel if relative and self.rel is not None else self.ms
        return float(np.interp(w, self.widths, values))

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
        """The grid's interpolation, times ``fine(w) / grid(w)`` along each axis that has a fine curve."""
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
    i = int(np.searchsorted(grid, x, side="right")) - 1
    i = min(max(i, 0), len(grid) - 1)
    if i == len(grid) - 1:
        return i, 0.0
    return i, float(min(1.0, max(0.0, (x - grid[i]) / (grid[i + 1] - grid[i]))))


@dataclass
class Lut:
    """A latency lookup table: header (device, runtime, threads, batch, calibration ...) and module tables."""

    header: dict[str, Any]
    tables: list[ModuleTable] = field(default_factory=list)

    @property
    def relative(self) -> bool:
        """Whether the prediction uses the ``rel`` tables (reference-op units)."""
        return self.header.get("unit") == "reference"

    @property
    def scale(self) -> float:
        return float((self.header.get("calibration") or {}).get("scale", 1.0))

    @property
    def per_melement(self) -> float:
        return float((self.header.get("calibration") or {}).get("per_melement", 0.0))

    @property
    def offset(self) -> float:
        cal = self.header.get("calibration")
        return float(cal["offset"]) if cal else float(self.header["remainder"])

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
        if header.get("schema") == SCHEMA_V1:
            header = upgrade_v1_header(header)
        if header.get("schema") != SCHEMA:
            raise AutopruneError(f"{source}: unsupported LUT schema {header.get('schema')!r} (expected {SCHEMA}); "
                                 "rebuild it with autoprune lut build")
        for key, typ in REQUIRED.items():
            if key not in header or not isinstance(header[key], typ) or isinstance(header[key], bool):
                raise AutopruneError(f"{source}: header field {key!r} is missing or has the wrong type")
        if header["unit"] not in UNITS:
            raise AutopruneError(f"{source}: header 'unit' must be one of {UNITS} (got {header['unit']!r})")
        _check_calibration(header, source)
        tables = [_table(raw, source, header["unit"] == "reference") for raw in data["modules"]]
        return cls(header, tables)

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

    def check_target(self, runtime: str | None = None, device: str | None = None, source: str = "LUT") -> None:
        """Raise unless the LUT was built for ``runtime`` and ``device`` (each checked when given)."""
        h = self.header
        if runtime is not None and h["runtime"] != runtime:
            raise AutopruneError(f"{source} was built for runtime {h['runtime']!r}, the budget asks for {runtime!r}; "
                                 f"build one with autoprune lut build --runtime {runtime}")
        if device is not None and h["device"] != device:
            raise AutopruneError(f"{source} was built for device {h['device']!r}, the budget asks for {device!r}; "
                                 "use that device's LUT")

    def raw_sum(self, graph: UnitGraph, widths: WidthModel, counts: Sequence[int]) -> float:
        """Sum of the module tables at the kept widths of ``counts`` (uncalibrated)."""
        in_k, out_k = widths.ratios(counts)
        return self.sum_at({m.name: (round(in_k[idx] * m.in_ch, 6), round(out_k[idx] * m.out_ch, 6))
                            for idx, m in enumerate(graph.modules) if m.kind in DENSE_KINDS})

    def sum_at(self, module_widths: dict[str, tuple[float, float]]) -> float:
        """Sum of the module tables at the given (in, out) width of each module (uncalibrated)."""
        total = 0.0
        for table in self.tables:
            if table.name in module_widths:
                total += table.lookup(*module_widths[table.name], relative=self.relative)
        return total

    @property
    def align(self) -> int | None:
        return (self.header.get("calibration") or {}).get("align")

    @property
    def per_misaligned(self) -> float:
        return float((self.header.get("calibration") or {}).get("per_misaligned", 0.0))

    def value(self, raw: float, melements: float, misaligned: float = 0.0) -> float:
        """The calibrated prediction from a table sum and the kept output elements (millions)."""
        return self.scale * raw + self.per_melement * melements + self.per_misaligned * misaligned + self.offset


def upgrade_v1_header(header: dict[str, Any]) -> dict[str, Any]:
    """A v1 header as a v2 ``ms`` header (PyTorch on the CPU); the v1 file itself is not changed."""
    new = {k: v for k, v in header.items() if k not in ("remainder_ms", "calibration")}
    new.update(schema=SCHEMA, upgraded_from=SCHEMA_V1, unit="ms", runtime="torch", device_kind="cpu",
               runtime_version=str(header.get("torch", "unknown")))
    if "remainder_ms" in header:
        new["remainder"] = header["remainder_ms"]
    cal = header.get("calibration")
    if isinstance(cal, dict):
        renamed = {"offset_ms": "offset", "ms_per_melement": "per_melement"}
        new["calibration"] = {renamed.get(k, k): v for k, v in cal.items()}
    elif cal is not None:
        new["calibration"] = cal
    return new


def _check_calibration(header: dict[str, Any], source: str) -> None:
    cal = header.get("calibration")
    if cal is not None and not (isinstance(cal, dict) and {"scale", "offset"} <= set(cal)):
        raise AutopruneError(f"{source}: header 'calibration' must be {{\"scale\": a, \"offset\": b, ...}} or absent")
    keys = ("scale", "offset", "per_melement", "per_misaligned")
    numbers = [header["remainder"]] + [(cal or {}).get(k, 0.0) for k in keys]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or \
            (cal and (cal["scale"] <= 0 or cal.get("per_misaligned", 0) < 0)):
        raise AutopruneError(f"{source}: remainder and calibration must be finite numbers "
                             "(scale > 0, per_misaligned >= 0)")
    if cal and cal.get("align") not in (None, *ALIGNMENTS):
        raise AutopruneError(f"{source}: calibration 'align' must be one of {ALIGNMENTS} or absent")


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


def _table(raw: Any, source: str, relative: bool) -> ModuleTable:
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


def read_lut_json(path: str | Path) -> tuple[Any, str]:
    """The parsed JSON of a LUT file and the ``source`` prefix for its error messages."""
    path = Path(path)
    source = f"LUT {str(path)!r}"
    if not path.is_file():
        raise AutopruneError(f"{source} does not exist; build one with autoprune lut build")
    try:
        return json.loads(path.read_text()), source
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutopruneError(f"{source} is not valid JSON ({type(exc).__name__})") from exc


def load_lut(path: str | Path, graph: UnitGraph | None = None) -> Lut:
    """Read and validate a LUT; with ``graph``, also check that it describes that model."""
    data, source = read_lut_json(path)
    lut = Lut.from_dict(data, source)
    if graph is not None:
        lut.check(graph, source)
    return lut


class LutCost:
    """The ``latency`` cost model from a LUT (see the module docstring): ``fraction(counts)`` of the
    unpruned model's latency, and ``counts -> ms`` (that fraction times the base latency)."""

    kind = "latency"
    source = "lut"

    def __init__(self, lut: Lut, graph: UnitGraph, widths: WidthModel | None = None) -> None:
        self.lut, self.graph = lut, graph
        self.widths = widths or WidthModel(graph)
        h = lut.header
        self.batch, self.threads = int(h["batch"]), int(h["threads"])
        self.clock, self.runtime = str(h.get("clock", "wall")), str(h["runtime"])
        self._full = self.value(graph.channels)
        if self._full <= 0:
            raise AutopruneError("LUT: the unpruned model's predicted latency is not positive; rebuild the LUT")
        self._base = self._full
        if lut.relative:
            ref_ms = float((h.get("reference") or {}).get("ms", 0.0))
            self._base = float(h.get("base_measured_ms") or self._full * ref_ms) or self._full

    @property
    def base(self) -> float:
        """The unpruned model's latency (ms) when the LUT was built."""
        return self._base

    def raw(self, counts: Sequence[int]) -> float:
        return self.lut.raw_sum(self.graph, self.widths, counts)

    def value(self, counts: Sequence[int]) -> float:
        """The calibrated prediction in the LUT's unit (ms or reference-op units)."""
        align = self.lut.align
        misaligned = misaligned_melements(self.graph, self.widths, counts, align) if align else 0.0
        return self.lut.value(self.raw(counts), self.widths.activations(counts) / 1e6, misaligned)

    def fraction(self, counts: Sequence[int]) -> float:
        """Predicted latency of ``counts`` as a fraction of the unpruned model's (drift-proof)."""
        return self.value(counts) / self._full

    def __call__(self, counts: Sequence[int]) -> float:
        return self.fraction(counts) * self._base


# ------------------------------------------------------------------------------------ the grid


def misaligned_melements(graph: UnitGraph, widths: WidthModel, counts: Sequence[int], align: int) -> float:
    """Output elements (millions) of the convs whose kept width at ``counts`` is not a multiple of ``align``."""
    _in_k, out_k = widths.ratios(counts)
    total = 0
    for idx, m in enumerate(graph.modules):
        if m.kind in ("conv", "depthwise") and m.macs > 0:
            kept = round(out_k[idx] * m.out_ch)
            total += kept * m.out_spatial if kept % align else 0
    return total / 1e6


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


def make_header(graph: UnitGraph, **fields: Any) -> dict[str, Any]:
    """A header for ``graph`` with defaults for every required field (overridden by ``fields``).

    The defaults describe an ``ms`` LUT for PyTorch on the CPU; ``remainder_ms`` is accepted for
    ``remainder``.
    """
    import torch

    version = torch.__version__.split("+")[0]
    header = {"schema": SCHEMA, "device": "unknown", "device_kind": "cpu", "runtime": "torch",
              "runtime_version": version, "torch": version, "threads": 1, "batch": 1, "dtype": "float32",
              "input_shape": list(graph.input_shape), "model_signature": model_signature(graph), "unit": "ms",
              "remainder": 0.0}
    if "remainder_ms" in fields:
        fields["remainder"] = fields.pop("remainder_ms")
    header.update(fields)
    return header


def calibration_counts(graph: UnitGraph, plans: int, seed: int = 0) -> list[list[int]]:
    """The unpruned model's counts, then ``plans`` random variants (:func:`random_counts`); every
    second one is rounded to a multiple of 16, 8 or 4 channels in turn, so that a calibration sees
    aligned plans (what a search with ``pruning.round_to`` makes) as well as arbitrary ones."""
    rng = np.random.default_rng([seed, 1])
    out = [list(graph.channels)]
    for k in range(plans):
        counts = random_counts(graph, rng)
        align = (0, 16, 0, 8, 0, 4)[k % 6]
        if align:
            counts = [c if full < align else min(full, max(align, round(c / align) * align))
                      for c, full in zip(counts, graph.channels, strict=True)]
        out.append(counts)
    return out


def random_counts(graph: UnitGraph, rng: np.random.Generator, low: float = 0.2) -> list[int]:
    """Kept channels per unit with preserve ratios drawn uniformly from [low, 1]."""
    return [max(1, min(c, round(rng.uniform(low, 1.0) * c))) for c in graph.channels]
