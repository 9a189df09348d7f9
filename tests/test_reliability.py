"""Crash safety (kill -9 + --resume), reproducibility, and a few more bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from conftest import TESTS, tiny_config

from autoprune.cli import main

TIMING = ["seconds", "time"]


def _write(tmp_path: Path, raw: dict, name: str = "exp.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_two_runs_with_the_same_seed_give_identical_trials(tmp_path):
    cfg = _write(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 4}))
    for out in ("a", "b"):
        assert main(["search", cfg, "--out", str(tmp_path / out), "--no-progress"]) == 0
    a = pd.read_parquet(tmp_path / "a" / "trials.parquet").drop(columns=TIMING)
    b = pd.read_parquet(tmp_path / "b" / "trials.parquet").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["pruned"] == sb["pruned"]


def test_kill_9_mid_search_then_resume_loses_and_duplicates_nothing(tmp_path):
    raw = tiny_config(searcher={"name": "random", "evaluations": 40})
    cfg = _write(tmp_path, raw)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", cfg, "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = out / "trials.parquet"
    deadline = time.time() + 120
    while time.time() < deadline:
        if trials.exists() and len(pd.read_parquet(trials)) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(pd.read_parquet(trials))
    assert 5 <= done_before < 40, "the kill should land mid-search"
    assert not (out / "summary.json").exists()
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    after = pd.read_parquet(trials)
    assert len(after) == 40
    assert list(after["sample"]) == list(range(40))
    assert after["index"].is_unique
    # the resumed run evaluated exactly the plans an uninterrupted run evaluates
    ref = tmp_path / "ref"
    assert main(["search", cfg, "--out", str(ref), "--no-progress"]) == 0
    expected = pd.read_parquet(ref / "trials.parquet")
    cols = [c for c in expected.columns if c.startswith("channels/")] + ["val_accuracy"]
    pd.testing.assert_frame_equal(after[cols], expected[cols])
    assert (out / "summary.json").is_file()


def test_resume_with_a_different_config_is_refused(tmp_path, capsys):
    cfg = _write(tmp_path, tiny_config())
    out = tmp_path / "run"
    assert main(["search", cfg, "--out", str(out), "--no-progress"]) == 0
    other = _write(tmp_path, tiny_config(seed=1), "other.yaml")
    assert main(["search", other, "--resume", str(out), "--no-progress"]) == 2
    assert "different config" in capsys.readouterr().err


def test_corrupted_trials_in_resume_dir_is_a_clear_error(tmp_path, capsys):
    cfg = _write(tmp_path, tiny_config())
    out = tmp_path / "run"
    assert main(["search", cfg, "--out", str(out), "--no-progress"]) == 0
    (out / "trials.parquet").write_bytes(b"not parquet at all")
    before = sorted(p.name for p in out.iterdir())
    assert main(["search", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "corrupted" in err[0]
    assert sorted(p.name for p in out.iterdir()) == before


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = _write(tmp_path, tiny_config())
    assert main(["search", cfg, "--out", str(blocker / "run"), "--no-progress"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_nan_loss_in_training_is_a_clear_error(tmp_path, capsys):
    cfg = _write(tmp_path, tiny_config(train={"epochs": 1, "lr": 1e30, "batch_size": 64}))
    assert main(["search", cfg, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "loss became" in err and "learning rate" in err
    assert not (tmp_path / "run").exists()
