"""The CLI end to end (bad input: tests/test_bad_inputs.py)."""

from __future__ import annotations

import json

import pandas as pd
import torch
from conftest import tiny_config, write_config

from autoprune import load_pruned
from autoprune.cli import main


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


def test_global_ranking_on_a_residual_factory_model_end_to_end_and_resumed(tmp_path):
    """``--searcher global`` on a user's residual model under a params budget: one evaluation, the plan
    within the budget, a loadable pruned model; ``--resume`` of the finished run repeats nothing."""
    raw = tiny_config(model={"factory": "factories:tiny_residual"}, data={"factory": "factories:digits_factory"})
    out = tmp_path / "run"
    argv = ["search", write_config(tmp_path, raw), "--searcher", "global", "--budget", "params=0.5", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["searcher"] == "global" and summary["evaluations"] == 1
    assert summary["pruned"]["params_kept"] <= 0.5 + 1e-9
    plan = json.loads((out / "best_plan.json").read_text())
    assert load_pruned(out / "pruned_model.pt")(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    trials = (out / "trials.parquet").read_bytes()
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "best_plan.json").read_text())["channels"] == plan["channels"]
    assert (out / "trials.parquet").read_bytes() == trials


def test_train_command_writes_a_checkpoint_search_can_load(tmp_path, capsys):
    ckpt = tmp_path / "base.pt"
    # one config for both: it names the checkpoint search reads, which train writes (not read by train)
    cfg = write_config(tmp_path, tiny_config(model={"name": "mnist_cnn", "kwargs": {"width": 8}, "checkpoint": str(ckpt)}))
    assert main(["train", cfg, "--out", str(ckpt), "--no-progress"]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["search", cfg, "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    torch.save({k: torch.zeros_like(v) for k, v in torch.load(ckpt).items()}, ckpt)  # train again: trains, not loads
    assert main(["train", cfg, "--out", str(ckpt), "--no-progress"]) == 0
    assert any(v.abs().sum() > 0 for v in torch.load(ckpt).values())
    # a checkpoint that does not match the model: tests/test_bad_inputs.py


def test_a_factory_in_the_working_directory_imports_without_pythonpath(tmp_path):
    """`autoprune search` run from a project dir finds `mynets:fn` there (as `python -m` would), and
    hands the directory on to subprocesses (Ray and DataLoader workers) through PYTHONPATH."""
    import os
    import subprocess
    import sys

    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n"
        "def net(num_classes=10, **kw):\n"
        "    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, num_classes))\n")
    cfg = write_config(tmp_path, tiny_config(model={"factory": "mynets:net"}))
    code = ("import os, sys; sys.path = [p for p in sys.path if p not in ('', os.getcwd())]; "
            "from autoprune.cli import main; rc = main(sys.argv[1:]); "
            "print('PYTHONPATH=' + os.environ['PYTHONPATH']); sys.exit(rc)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, "search", cfg, "--out", "run", "--no-progress"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "summary.json").exists()
    assert f"PYTHONPATH={tmp_path}" in proc.stdout
