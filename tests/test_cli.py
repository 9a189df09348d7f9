"""The CLI end to end, and bad input: one line on stderr, exit 2, no traceback, no run dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import TESTS, tiny_config

from autoprune import load_pruned
from autoprune.cli import main


def write_config(tmp_path: Path, raw: dict) -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_search_end_to_end_writes_a_complete_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, tiny_config()), "--out", str(out), "--no-progress"]) == 0
    assert "test acc" in capsys.readouterr().out
    for name in ("config.yaml", "trials.parquet", "best_plan.json", "pruned_model.pt", "summary.json"):
        assert (out / name).is_file(), name
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == 3 and {"val_accuracy", "flops_kept", "params", "seconds"} <= set(trials.columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pruned"]["flops_kept"] <= 0.5 + 1e-9
    assert summary["evaluations"] == 3
    model = load_pruned(out / "pruned_model.pt")
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == summary["pruned"]["params"] < summary["base"]["params"]
    assert not list(out.glob("*.tmp"))


def test_searcher_and_budget_flags_and_user_factories(tmp_path):
    raw = tiny_config(model={"factory": "factories:tiny_residual"},
                      data={"factory": "factories:digits_factory"})
    out = tmp_path / "run"
    code = main(["search", write_config(tmp_path, raw), "--searcher", "uniform", "--budget", "params=0.6",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["searcher"] == "uniform" and summary["budget"]["kind"] == "params"
    assert summary["pruned"]["params_kept"] <= 0.6 + 1e-9


BAD_INPUTS = [
    ("unknown key", {"pruning": {"critrion": "l1"}}, "critrion"),
    ("budget below reachable", {"budget": {"flops": 0.01}}, "below the minimum reachable"),
    ("unknown model", {"model": {"name": "resnet21"}}, "unknown model 'resnet21'"),
    ("factory does not import", {"model": {"factory": "no_such_pkg.models:net"}}, "cannot import module"),
    ("factory returns wrong type", {"model": {"factory": "factories:not_a_model"}}, "expected a torch.nn.Module"),
    ("no prunable layer", {"model": {"factory": "factories:linear_only"}}, "no prunable unit"),
    ("unknown searcher", {"searcher": {"name": "ddgp"}}, "unknown searcher"),
    ("unknown criterion", {"pruning": {"criterion": "l3"}}, "unknown criterion"),
    ("unknown dataset", {"data": {"name": "mnist6k"}}, "unknown dataset"),
    ("input shape rejected", {"model": {"factory": "factories:needs_28x28"}}, "rejects inputs"),
    ("input shape vs data", {"model": {"name": "mnist_cnn", "input_shape": [3, 8, 8]}}, "does not match the data"),
    ("missing checkpoint", {"model": {"name": "mnist_cnn", "checkpoint": "nope.pt"}}, "does not exist"),
    ("empty dataset", {"data": {"factory": "factories:empty_data_factory"}}, "empty"),
    ("budget > 1", {"budget": {"flops": 1.5}}, r"\(0, 1\]"),
]


@pytest.mark.parametrize("label,section,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_run_dir(tmp_path, capsys, label, section, message):
    import re

    raw = tiny_config()
    raw.update(section)
    out = tmp_path / "run"
    code = main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("autoprune: error:"), err
    assert re.search(message, err[0]), err[0]
    assert not out.exists()


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    raw = tiny_config(model={"factory": "no_such_pkg.models:net"})
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.run([sys.executable, "-m", "autoprune.cli", "search", write_config(tmp_path, raw),
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_checkpoint_mismatch_and_train_command(tmp_path, capsys):
    ckpt = tmp_path / "base.pt"
    assert main(["train", write_config(tmp_path, tiny_config()), "--out", str(ckpt), "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    ok = tiny_config(model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(ckpt)})
    assert main(["search", write_config(tmp_path, ok), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    bad = tiny_config(model={"name": "mnist_cnn", "kwargs": {"width": 16}, "checkpoint": str(ckpt)})
    assert main(["search", write_config(tmp_path, bad), "--out", str(tmp_path / "b"), "--no-progress"]) == 2
    assert "does not match the model" in capsys.readouterr().err
