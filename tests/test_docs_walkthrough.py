"""The latency walkthrough at the top of docs/latency.md ("In short") runs as written: every command of
its bash block, in order, through the CLI, in a fresh directory (smaller sizes appended to the last two
commands only, so it runs in a test's time; the commands' flags and paths are the page's)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from autoprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKER = {"check": ["--plans", "8", "--no-progress"],
           "search": ["--set", "searcher.evaluations=4", "--set", "train.epochs=1", "--set", "finetune.epochs=1",
                      "--no-progress"]}


def walkthrough_commands() -> list[list[str]]:
    """The ``autoprune`` commands of the first bash block under "## In short" in docs/latency.md."""
    text = (ROOT / "docs" / "latency.md").read_text()
    section = text.split("## In short", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(line) for line in lines]


def test_the_walkthrough_is_four_autoprune_commands():
    commands = walkthrough_commands()
    assert [c[:3] for c in commands] == [["autoprune", "lut", "build"], ["autoprune", "lut", "check"],
                                         ["autoprune", "lut", "list"], ["autoprune", "search",
                                                                        "experiments/quickstart.yaml"]]


@pytest.mark.slow
def test_the_latency_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    (tmp_path / "experiments").mkdir()
    shutil.copy(ROOT / "experiments" / "quickstart.yaml", tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AUTOPRUNE_LUT_DIR", raising=False)
    for command in walkthrough_commands():
        args = command[1:] + QUICKER.get(command[1] if command[1] == "search" else command[2], [])
        assert main(args) == 0, command
    printed = capsys.readouterr().out
    assert "my-laptop-ort" in printed and "onnxruntime" in printed
    assert "this machine is" not in printed  # timed here, under a name of the user's: lut check knows
    lut = json.loads((tmp_path / "luts" / "cnn-ort.json").read_text())
    assert lut["header"]["runtime"] == "onnxruntime" and lut["header"]["last_check"]["plans"] == 8
    [run] = list((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    latency = summary["latency"]
    assert latency["kept_predicted"] <= 0.6 + 1e-6  # the LUT found by device priced the plan within the budget
    assert 0 < latency["kept_measured"] < 1
    assert f"{latency['kept_measured']:.3f} of the base, timed against it" in printed  # the CLI prints the fractions
    verify = summary["verify"]  # budget.verify: the searched plan timed here, fitted to 0.6 where it ran off
    assert verify["target"] == pytest.approx(0.6) and verify["rounds"] and "verify   the searched plan ran at" in printed
    plan = json.loads((run / "best_plan.json").read_text())  # the plan run on is the one verify chose
    assert list(plan["channels"].values()) == verify["rounds"][verify["chosen"]]["counts"]
