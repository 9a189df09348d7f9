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

    value = scale * sum + per_melement * elements / 1e6 + per_misaligned * misaligned / 1e6
            + per_padded_mmac * padded_macs / 1e6 + offset

with the header's ``calibration``, where ``elements`` is the number of output elements of every
conv/linear at the kept widths (the work of the norm, activation and residual-add layers between
them, which no table holds; ``per_melement`` is optional, default 0) and ``misaligned`` the output
elements of the convs whose kept width is not a multiple of the calibration's ``align`` (4, 8 or
16; absent: no such term): a runtime that lays channels out in blocks (ONNX Runtime's NCHWc)
reorders the activations around such a conv, which no layer alone shows. ``padded_macs`` (instead
of ``misaligned``, or with it at the same alignment: the per-layer anchor; calibration key ``pad``) are the MACs with every kept width rounded up to a
multiple of ``pad``: OpenVINO's CPU plugin computes convs in blocks of 16 channels, and its latency
follows these rather than the tables of lone layers (``scale`` may then be 0); with
``padded_elements: true`` the elements are counted with padded channels too, and with
``pad_inputs: false`` only the output widths are rounded up (kernels that block output channels
and reduce over exact inputs). Without a calibration,
``scale = 1`` and ``offset = remainder`` (plain NetAdapt: sum plus the measured rest of the model).
The LUT predicts the **fraction** ``value(plan) / value(unpruned)``, which does not depend on how
fast the machine was while it was built; in ms it predicts that fraction times
``base_measured_ms`` (``value`` itself for an ``ms`` LUT). With calibration ``anchor: measured`` the
calibration was fitted to the pruned plans alone and the fraction is ``value(plan) /
base_reference`` (the unpruned model's measured latency in reference units; the unpruned model
itself: 1.0): for a runtime whose unpruned model is off the trend of its pruned variants.

``model_signature`` pins the LUT to one architecture and input shape; ``null`` skips that check (a
third-party LUT), but module names and full widths are still checked. Files with the old schema
``autoprune.lut/v1`` (``ms`` tables, ``remainder_ms``, calibration ``ms_per_melement`` /
``offset_ms``, PyTorch on the CPU) load as ``ms`` LUTs.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoprune.core.cost import WidthModel
from autoprune.core.graph import UnitGraph
from autoprune.errors import AutopruneError
from autoprune.latency.tables import (  # noqa: F401  (the grid and the tables are part of the LUT API)
    ALIGNMENTS,
    DENSE_KINDS,
    FineAxis,
    ModuleTable,
    add_fine_curves,
    calibration_counts,
    dense_modules,
    fine_axes,
    fine_points,
    grid_counts,
    misaligned_melements,
    module_axes,
    padded_melements,
    padded_mmacs,
    parse_table,
    random_counts,
    tabulate,
)

SCHEMA = "autoprune.lut/v2"
SCHEMA_V1 = "autoprune.lut/v1"
UNITS = ("ms", "reference")
REQUIRED = {"schema": str, "device": str, "runtime": str, "runtime_version": str, "threads": int, "batch": int,
            "dtype": str, "input_shape": list, "unit": str, "remainder": (int, float)}


def model_signature(graph: UnitGraph) -> str:
    """sha256 of the input shape, every module's name/kind/widths/MACs and every unit's channels."""
    body = {"input_shape": list(graph.input_shape),
            "modules": [[m.name, m.kind, m.in_ch, m.out_ch, m.macs] for m in graph.modules],
            "units": [list(u) for u in graph.discovered()]}  # pruning.skip does not change the model
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


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
        tables = [parse_table(raw, source, header["unit"] == "reference") for raw in data["modules"]]
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

    def timed_on(self, machine: str) -> bool:
        """Whether this LUT was timed on ``machine`` (a :func:`~autoprune.latency.timing.default_device_name`):
        its ``device``, or the ``built_on`` that ``lut build`` records beside a ``--device-name`` of the user's."""
        return machine in (self.header.get("device"), self.header.get("built_on"))

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

    @property
    def pad(self) -> int | None:
        return (self.header.get("calibration") or {}).get("pad")

    @property
    def per_padded(self) -> float:
        return float((self.header.get("calibration") or {}).get("per_padded_mmac", 0.0))

    def value(self, raw: float, melements: float, misaligned: float = 0.0, padded: float = 0.0) -> float:
        """The calibrated prediction from a table sum, the kept output elements (millions) and,
        where the calibration has those terms, the misaligned elements and the padded MACs."""
        return (self.scale * raw + self.per_melement * melements + self.per_misaligned * misaligned
                + self.per_padded * padded + self.offset)


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
    keys = ("scale", "offset", "per_melement", "per_misaligned", "per_padded_mmac")
    numbers = [header["remainder"]] + [(cal or {}).get(k, 0.0) for k in keys]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in numbers) or (cal and (
            cal["scale"] < 0 or cal.get("per_misaligned", 0) < 0 or cal.get("per_padded_mmac", 0) < 0
            or cal["scale"] == cal.get("per_padded_mmac", 0) == 0)):
        raise AutopruneError(f"{source}: remainder and calibration must be finite numbers "
                             "(scale > 0, or scale >= 0 with per_padded_mmac > 0; per_misaligned >= 0)")
    for key in ("align", "pad"):
        if cal and cal.get(key) not in (None, *ALIGNMENTS):
            raise AutopruneError(f"{source}: calibration {key!r} must be one of {ALIGNMENTS} or absent")
    for key in ("padded_elements", "pad_inputs"):
        if cal and not isinstance(cal.get(key, True), bool):
            raise AutopruneError(f"{source}: calibration {key!r} must be true or false or absent")
    if cal and cal.get("anchor", "model") not in ("model", "measured"):
        raise AutopruneError(f"{source}: calibration 'anchor' must be 'model' or 'measured' or absent")
    if cal and cal.get("anchor") == "measured" and not (
            isinstance(header.get("base_reference"), (int, float)) and header["base_reference"] > 0):
        raise AutopruneError(f"{source}: calibration 'anchor: measured' needs a positive header 'base_reference'")


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
    monotone = False
    """A wider layer can run faster (kernels that favour multiples of 4, 8 or 16 channels), so the
    budget fitting scans rather than bisects alone (:class:`~autoprune.core.budget_fit.BudgetFitter`)."""

    def __init__(self, lut: Lut, graph: UnitGraph, widths: WidthModel | None = None) -> None:
        self.lut, self.graph = lut, graph
        self.widths = widths or WidthModel(graph)
        h = lut.header
        self.batch, self.threads = int(h["batch"]), int(h["threads"])
        self.clock, self.runtime = str(h.get("clock", "wall")), str(h["runtime"])
        from autoprune.latency.calibration import smallest_calibrated

        self._low = smallest_calibrated(h, self.widths, len(graph.channels))  # the floor of value()
        self._full = self.value(graph.channels)
        if self._full <= 0:
            raise AutopruneError("LUT: the unpruned model's predicted latency is not positive; rebuild the LUT")
        measured = (h.get("calibration") or {}).get("anchor") == "measured"  # base_reference: in the LUT's unit
        self._denominator = float(h["base_reference"]) if measured else self._full
        self.level = float((h.get("level") or {}).get("factor", 1.0))
        """Every pruned plan's fraction is multiplied by this (``lut reanchor``: the LUT's level re-measured on
        the machine as it is now; 1.0 as built)."""
        self._full_key = tuple(int(c) for c in graph.channels) if measured or self.level != 1.0 else None
        self._base = self._denominator
        if lut.relative:
            ref_ms = float((h.get("reference") or {}).get("ms", 0.0))
            self._base = float(h.get("base_measured_ms") or self._denominator * ref_ms) or self._denominator

    @property
    def base(self) -> float:
        """The unpruned model's latency (ms) when the LUT was built."""
        return self._base

    @property
    def budget_note(self) -> str:
        """What a budget's unreachable-budget error adds: the re-anchored level, when there is one."""
        if self.level == 1.0:
            return ""
        level = self.lut.header.get("level") or {}
        return (f" (every pruned plan priced at the LUT's re-anchored level x{self.level:.3f}"
                f"{', measured ' + str(level['date'])[:10] if level.get('date') else ''}: pruned models ran that much "
                f"{'slower' if self.level > 1 else 'faster'} relative to the unpruned one than when the LUT was "
                "built (lut reanchor, budget.reanchor))")

    def raw(self, counts: Sequence[int]) -> float:
        return self.lut.raw_sum(self.graph, self.widths, counts)

    def value(self, counts: Sequence[int]) -> float:
        """The calibrated prediction in the LUT's unit (ms or reference-op units)."""
        align, pad = self.lut.align, self.lut.pad
        misaligned = misaligned_melements(self.graph, self.widths, counts, align) if align else 0.0
        cal = self.lut.header.get("calibration") or {}
        padded = padded_mmacs(self.graph, self.widths, counts, pad, inputs=cal.get("pad_inputs", True)) if pad else 0.0
        raw = self.raw(counts) if self.lut.scale > 0 else 0.0
        if pad and cal.get("padded_elements"):
            elements = padded_melements(self.graph, self.widths, counts, pad)
        else:
            elements = self.widths.activations(counts) / 1e6
        value = self.lut.value(raw, elements, misaligned, padded)
        if self._low is not None and value < self._low[1]:  # below the calibration plans: never under the
            macs = self.widths.flops(counts)  # smallest one's measured latency scaled by MACs (overhead >= 0)
            if macs < self._low[0]:
                value = max(value, self._low[1] * macs / self._low[0])
        return value

    def fraction(self, counts: Sequence[int]) -> float:
        """Predicted latency of ``counts`` as a fraction of the unpruned model's (drift-proof). With
        ``anchor: measured`` that is the calibrated value over the unpruned model's measured latency
        (the unpruned model itself: 1.0, measured), else over the calibrated value of the unpruned model;
        times :attr:`level` for every plan but the unpruned model."""
        if self._full_key is not None and tuple(int(c) for c in counts) == self._full_key:
            return 1.0
        return self.level * self.value(counts) / self._denominator

    def __call__(self, counts: Sequence[int]) -> float:
        return self.fraction(counts) * self._base


# ------------------------------------------------------------------------------------ the grid


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


