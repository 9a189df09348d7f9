"""LUTs for devices without Python autoprune: probes -> standalone timing script -> import.

The "device" here is this machine: the script runs in a subprocess with onnxruntime, as it would on
a phone or a board, on a tiny model with a coarse grid.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from factories import TinyResidual

from autoprune.cli import main
from autoprune.core.graph import build_unit_graph
from autoprune.errors import AutopruneError
from autoprune.latency.lut import LutCost, load_lut, model_signature
from autoprune.latency.timing import default_device_name

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SHAPE = (1, 8, 8)


def run_script(folder, *args):
    return subprocess.run([sys.executable, str(folder / "time_probes.py"), "--rounds", "2", "--samples", "2", *args],
                          capture_output=True, text=True, timeout=300, cwd=folder)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """``autoprune lut probes`` on the tiny residual net, timed by the standalone script."""
    folder = tmp_path_factory.mktemp("probes")
    assert main(["lut", "probes", "--model", "factories:tiny_residual", "--input-shape", "1,8,8", "--step", "8",
                 "--calibration-plans", "3", "--out", str(folder)]) == 0
    done = run_script(folder, "--device-name", "board-ort")
    assert done.returncode == 0, done.stderr
    return folder


def test_probes_directory_holds_one_model_per_grid_point_and_a_manifest(probed):
    manifest = json.loads((probed / "manifest.json").read_text())
    assert manifest["schema"] == "autoprune.lut-probes/v1"
    files = {p["file"] for p in manifest["probes"]}
    assert files and all((probed / f).is_file() for f in files)
    used = {f for m in manifest["modules"].values() for row in m["probes"] for f in row}
    used |= {f for m in manifest["modules"].values() for c in (m.get("fine") or {}).values() for f in c["probes"]}
    assert used == files  # every probe is some grid or fine point; same-shaped points share one
    assert (probed / "reference.onnx").is_file() and (probed / "base.onnx").is_file()
    assert len(manifest["calibration"]) == 3
    graph = build_unit_graph(TinyResidual().eval(), SHAPE)
    assert manifest["header"]["model_signature"] == model_signature(graph)


def test_timing_script_needs_only_onnxruntime_numpy_and_the_standard_library(probed):
    tree = ast.parse((probed / "time_probes.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported <= {"argparse", "json", "os", "platform", "time", "numpy", "onnxruntime", "openvino"}
    timings = json.loads((probed / "timings.json").read_text())
    assert timings["device"] == "board-ort" and timings["runtime"] == "onnxruntime"
    assert timings["clock"] == "cpu"  # --clock auto at 1 thread
    assert all(ms > 0 and rel > 0 for ms, rel in timings["probes"].values())
    assert not list(probed.glob("*.tmp"))  # written whole, then renamed


def test_import_reads_the_timings_back_into_a_lut_that_prices_plans(probed, tmp_path, capsys):
    out = tmp_path / "board.json"
    assert main(["lut", "import", str(probed), "--out", str(out)]) == 0
    assert "board-ort" in capsys.readouterr().out
    graph = build_unit_graph(TinyResidual().eval(), SHAPE)
    lut = load_lut(out, graph)
    h = lut.header
    assert h["device"] == "board-ort" and h["runtime"] == "onnxruntime" and h["unit"] == "reference"
    assert h["built_on"] == default_device_name()  # the script ran here: the "device" is this machine
    assert h["base_measured_ms"] > 0 and h["base_reference"] > 0 and h["reference"]["ms"] > 0
    assert all(t.rel is not None and (t.rel > 0).all() for t in lut.tables)
    assert any(t.fine for t in lut.tables)
    cost = LutCost(lut, graph)
    assert cost.fraction(graph.channels) == pytest.approx(1.0)
    # every table cell and fine-curve point is the device's timing of its probe (ms, and relative to the reference)
    manifest = json.loads((probed / "manifest.json").read_text())
    timed = json.loads((probed / "timings.json").read_text())["probes"]
    tables = {t.name: t for t in lut.tables}
    for name, point in manifest["modules"].items():
        cells = np.array([[timed[f] for f in row] for row in point["probes"]])
        assert np.allclose(tables[name].ms, cells[..., 0]) and np.allclose(tables[name].rel, cells[..., 1])
        for axis, curve in (point.get("fine") or {}).items():
            assert np.allclose(tables[name].fine[axis].ms, [timed[f][0] for f in curve["probes"]])
    # priced plans are finite and positive (which of two microsecond plans runs faster is timing noise: the
    # 1-channel plan came out slower than the unpruned one in two whole-suite runs, by the tables and calibrated)
    assert 0 < cost.fraction([1, 1, 1]) < 2 and cost.base == pytest.approx(h["base_measured_ms"])
    if "calibration" in h:
        assert h["calibration"]["plans"] == 4 and np.isfinite(h["calibration"]["fit_mape"])
    # the imported LUT is found by its device name
    budget_lut = tmp_path / "luts"
    budget_lut.mkdir()
    (budget_lut / "board.json").write_text(out.read_text())
    from autoprune.core.cost import make_budget

    budget = make_budget(graph, "latency", 0.7, device="board-ort", runtime="onnxruntime", luts=str(budget_lut))
    assert budget.target == pytest.approx(0.7 * cost.base)


def test_the_script_times_in_openvino_and_the_import_records_that_runtime(probed, tmp_path):
    ov = pytest.importorskip("openvino")
    out = tmp_path / "ov_timings.json"
    done = run_script(probed, "--runtime", "openvino", "--device-name", "board-ov", "--out", str(out),
                      "--clock", "wall")
    assert done.returncode == 0, done.stderr
    timings = json.loads(out.read_text())
    assert timings["clock"] == "wall"
    refused = run_script(probed, "--threads", "2", "--clock", "cpu", "--out", str(tmp_path / "no.json"))
    assert refused.returncode == 2 and "--clock cpu times one thread" in refused.stderr
    assert timings["runtime"] == "openvino" and timings["runtime_version"] == ov.__version__.split("-")[0]
    assert all(ms > 0 and rel > 0 for ms, rel in timings["probes"].values())
    folder = tmp_path / "ov_probes"
    shutil.copytree(probed, folder)
    (folder / "timings.json").write_text(out.read_text())
    assert main(["lut", "import", str(folder), "--out", str(tmp_path / "ov.json")]) == 0
    lut = load_lut(tmp_path / "ov.json", build_unit_graph(TinyResidual().eval(), SHAPE))
    assert (lut.header["runtime"], lut.header["device"]) == ("openvino", "board-ov")


def test_import_without_timings_or_with_missing_probes_is_a_one_line_error(probed, tmp_path):
    from autoprune.latency.probes import import_probes

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.json").write_text((probed / "manifest.json").read_text())
    with pytest.raises(AutopruneError, match="run python time_probes.py on the device first"):
        import_probes(bare)
    timings = json.loads((probed / "timings.json").read_text())
    timings["probes"].pop(sorted(timings["probes"])[0])
    (bare / "timings.json").write_text(json.dumps(timings))
    with pytest.raises(AutopruneError, match="no timing for 1 probe"):
        import_probes(bare)
    with pytest.raises(AutopruneError, match="not a probe manifest"):
        (bare / "manifest.json").write_text("{}")
        import_probes(bare)
