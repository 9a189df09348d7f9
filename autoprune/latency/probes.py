"""LUTs for devices without Python autoprune: write the probe models, time them there, import the timings.

:func:`write_probes` (``autoprune lut probes``) writes, into one directory:

* ``reference.onnx``: the fixed reference op (:func:`autoprune.latency.build.reference_op`);
* ``pNNNN.onnx``: one small ONNX model per distinct layer shape of the LUT grid (a conv or linear
  at given widths, the input shape it sees in the model);
* ``base.onnx`` and ``calNN.onnx``: the unpruned model and the random pruned calibration plans;
* ``manifest.json`` (schema ``autoprune.lut-probes/v1``): which probe is which grid point of which
  module, the calibration plans' kept widths, and the LUT header fields known here;
* ``time_probes.py``: a standalone script (numpy and onnxruntime, or openvino with ``--runtime
  openvino``;
  :mod:`autoprune.latency.probe_timer`) that times every probe interleaved with the reference
  probe, the calibration plans interleaved with the unpruned model, and writes ``timings.json``.

:func:`import_probes` (``autoprune lut import``) reads ``manifest.json`` and ``timings.json`` back
into a ``reference`` LUT calibrated exactly as ``autoprune lut build`` calibrates (no model needed).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from autoprune.atomic import atomic_write_bytes, atomic_write_json
from autoprune.core.cost import WidthModel
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import AutopruneError
from autoprune.latency.build import REFERENCE_OP, LayerShapes, fit_calibration, reference_op
from autoprune.latency.lut import Lut, make_header
from autoprune.latency.onnx_export import export_onnx
from autoprune.latency.tables import (
    ALIGNMENTS,
    DENSE_KINDS,
    FineAxis,
    ModuleTable,
    calibration_counts,
    fine_axes,
    misaligned_melements,
    module_axes,
    padded_melements,
    padded_mmacs,
)
from autoprune.latency.timing import example_input

PROBES_SCHEMA = "autoprune.lut-probes/v1"
TIMINGS_SCHEMA = "autoprune.lut-timings/v1"
SCRIPT = "time_probes.py"


def _export(model: nn.Module, example: Any, path: Path) -> None:
    atomic_write_bytes(path, export_onnx(model, example.cpu(), dynamic_batch=False, fold_constants=False))


def write_probes(model: nn.Module, input_shape: Sequence[int], out_dir: str | Path, batch: int = 1, step: int = 8,
                 calibration_plans: int = 12, seed: int = 0, model_name: str | None = None,
                 fine: bool = True) -> dict[str, Any]:
    """Write the probes of a LUT build of ``model`` (see the module docstring, and ``fine`` in
    :func:`~autoprune.latency.build.build_lut`); returns the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    graph = build_unit_graph(model, input_shape)
    shapes = LayerShapes(graph, batch)
    op, x = reference_op(batch)
    _export(op, x, out / "reference.onnx")
    files: dict[tuple, str] = {}

    def probe(name: str, i: int, o: int) -> str:
        key = shapes.spec(name, i, o)[0]
        if key not in files:
            files[key] = f"p{len(files):04d}.onnx"
            _export(*shapes.layer(name, i, o), out / files[key])
        return files[key]

    points: dict[str, Any] = {}
    for name, (ins, outs) in module_axes(graph, step).items():
        points[name] = {"kind": shapes.kinds[name], "in": ins, "out": outs,
                        "probes": [[probe(name, i, o) for o in outs] for i in ins]}
    if fine:
        for name, curves in fine_axes(graph).items():
            ins, outs = points[name]["in"], points[name]["out"]
            points[name]["fine"] = {axis: {"w": w, "probes": [probe(name, x, outs[-1]) if axis == "in" else
                                                              probe(name, ins[-1], x) for x in w]}
                                    for axis, w in curves.items()}
    widths = WidthModel(graph)
    plans = calibration_counts(graph, calibration_plans, seed)
    example = example_input(model, input_shape, batch)
    _export(model, example, out / "base.onnx")
    calibration = []
    for k, counts in enumerate(plans):
        file = "base.onnx" if k == 0 else f"cal{k:02d}.onnx"
        if k:
            _export(apply_plan(model, graph, PruningPlan.from_counts(graph, counts)).eval(), example, out / file)
        calibration.append({"file": file, "counts": [int(c) for c in counts], "widths": module_widths(graph, widths, counts),
                            "melements": widths.activations(counts) / 1e6,
                            "misaligned": {str(a): misaligned_melements(graph, widths, counts, a) for a in ALIGNMENTS},
                            "padded": {str(a): padded_mmacs(graph, widths, counts, a) for a in ALIGNMENTS},
                            "padded_out": {str(a): padded_mmacs(graph, widths, counts, a, inputs=False)
                                           for a in ALIGNMENTS},
                            "padded_elements": {str(a): padded_melements(graph, widths, counts, a)
                                                for a in ALIGNMENTS}})
    header = make_header(graph, batch=batch, step=step, model=model_name, unit="reference", runtime="onnxruntime",
                         runtime_version="unknown", device="unknown", calibration_seed=seed, fine=fine)
    manifest = {"schema": PROBES_SCHEMA, "header": header,
                "reference": {"file": "reference.onnx", "op": REFERENCE_OP},
                "probes": [{"file": f} for f in files.values()], "modules": points,
                "base": {"file": "base.onnx"}, "calibration": calibration[1:], "full": calibration[0]}
    atomic_write_json(out / "manifest.json", manifest)
    shutil.copyfile(Path(__file__).with_name("probe_timer.py"), out / SCRIPT)
    return manifest


def module_widths(graph, widths: WidthModel, counts: Sequence[int]) -> dict[str, list[float]]:
    """Kept (in, out) width of every conv/linear module at ``counts``."""
    in_k, out_k = widths.ratios(counts)
    return {m.name: [round(in_k[i] * m.in_ch, 6), round(out_k[i] * m.out_ch, 6)]
            for i, m in enumerate(graph.modules) if m.kind in DENSE_KINDS}


def _read(path: Path, schema: str, what: str) -> dict[str, Any]:
    if not path.is_file():
        hint = f"run python {SCRIPT} on the device first" if what == "timings" else "write it with autoprune lut probes"
        raise AutopruneError(f"{str(path)!r} does not exist; {hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutopruneError(f"{str(path)!r} is not valid JSON ({type(exc).__name__})") from exc
    if not isinstance(data, dict) or data.get("schema") != schema:
        raise AutopruneError(f"{str(path)!r} is not a {what} file (expected schema {schema})")
    return data


def import_probes(probe_dir: str | Path, device: str | None = None) -> Lut:
    """A LUT from ``manifest.json`` and the device's ``timings.json`` in ``probe_dir``."""
    folder = Path(probe_dir)
    manifest = _read(folder / "manifest.json", PROBES_SCHEMA, "probe manifest")
    timings = _read(folder / "timings.json", TIMINGS_SCHEMA, "timings")
    probes = timings.get("probes") or {}
    missing = [p["file"] for p in manifest["probes"] if p["file"] not in probes]
    if missing:
        raise AutopruneError(f"timings.json has no timing for {len(missing)} probe(s) (first: {missing[0]}); "
                             f"run python {SCRIPT} again")
    tables = []
    for name, point in manifest["modules"].items():
        cells = np.array([[probes[f] for f in row] for row in point["probes"]], dtype=np.float64)
        table = ModuleTable(name, point["kind"], point["in"], point["out"], cells[..., 0], cells[..., 1])
        for axis, curve in (point.get("fine") or {}).items():
            values = np.array([probes[f] for f in curve["probes"]], dtype=np.float64)
            table.fine[axis] = FineAxis(curve["w"], values[:, 0], values[:, 1])
        tables.append(table)
    header = dict(manifest["header"])
    header.update(runtime=timings["runtime"], runtime_version=timings["runtime_version"],
                  device=device or timings["device"], built_on=timings.get("built_on"),
                  device_kind=timings.get("device_kind", "cpu"),
                  threads=int(timings["threads"]), clock=timings.get("clock", "wall"),
                  reference={"op": manifest["reference"]["op"], "ms": timings.get("reference_ms")},
                  base_measured_ms=float(timings["base"]["ms"]), imported_from=str(folder),
                  created=timings.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S"))
    lut = Lut(header, tables)
    plans = [manifest["full"], *manifest["calibration"]]
    cal = timings.get("calibration") or {}
    relative = [1.0] + [float(cal[p["file"]][1]) for p in plans[1:] if p["file"] in cal]
    plans = plans[:len(relative)]
    fit_calibration(lut, [p["counts"] for p in plans],
                    [lut.sum_at({k: tuple(v) for k, v in p["widths"].items()}) for p in plans],
                    [p["melements"] for p in plans], relative, float(timings["base"]["reference"]),
                    {a: [p["misaligned"][str(a)] for p in plans] for a in ALIGNMENTS},
                    {a: [p["padded"][str(a)] for p in plans] for a in ALIGNMENTS}
                    if all("padded" in p for p in plans) else None,
                    {a: [p["padded_elements"][str(a)] for p in plans] for a in ALIGNMENTS}
                    if all("padded_elements" in p for p in plans) else None,
                    {a: [p["padded_out"][str(a)] for p in plans] for a in ALIGNMENTS}
                    if all("padded_out" in p for p in plans) else None)
    return Lut.from_dict(json.loads(lut.to_json()), f"LUT imported from {str(folder)!r}")
