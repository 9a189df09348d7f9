"""Crash safety (kill -9 + --resume), reproducibility, no listening sockets (bad input: test_bad_inputs.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TESTS, tiny_config, write_config

from autoprune.atomic import read_trials
from autoprune.cli import main

TIMING = ["seconds", "time"]


def test_two_runs_with_the_same_seed_give_identical_trials(tmp_path):
    cfg = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 4}))
    for out in ("a", "b"):
        assert main(["search", cfg, "--out", str(tmp_path / out), "--no-progress"]) == 0
    a = pd.read_parquet(tmp_path / "a" / "trials.parquet").drop(columns=TIMING)
    b = pd.read_parquet(tmp_path / "b" / "trials.parquet").drop(columns=TIMING)
    pd.testing.assert_frame_equal(a, b)
    sa = json.loads((tmp_path / "a" / "summary.json").read_text())
    sb = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert sa["pruned"] == sb["pruned"]


def test_a_run_started_before_a_config_key_existed_resumes(tmp_path):
    """A run dir's config.yaml holds every key with its default as of the version that started it; keys
    added since (here ``budget.reanchor``, ``evaluation.finetune_steps``) take their defaults, so
    ``--resume`` with or without the config goes on; a config that really differs is still refused."""
    import yaml

    cfg = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 3}))
    out = tmp_path / "run"
    assert main(["search", cfg, "--out", str(out), "--no-progress"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["budget"]["reanchor"], saved["evaluation"]["finetune_steps"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    (out / "summary.json").unlink()
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    assert main(["search", cfg, "--resume", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["evaluations"] == 3
    other = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 3}, seed=1), "other.yaml")
    assert main(["search", other, "--resume", str(out), "--no-progress"]) == 2


def test_kill_9_mid_search_then_resume_loses_and_duplicates_nothing(tmp_path):
    raw = tiny_config(searcher={"name": "random", "evaluations": 40})
    cfg = write_config(tmp_path, raw)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", cfg, "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = out / "trials.parquet"
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(read_trials(trials)) >= 5:
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


TINY_DDPG = {"name": "ddpg", "episodes": 6, "warmup": 2, "hidden": [8, 8], "batch_size": 4, "replay_episodes": 6,
             "checkpoint_every": 2}
TINY_NETADAPT = {"name": "netadapt", "initial_reduction": 0.15, "short_term_batches": 1}


def _trials_of_two_runs(tmp_path: Path, raw: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    cfg = write_config(tmp_path, raw)
    for out in ("a", "b"):
        assert main(["search", cfg, "--out", str(tmp_path / out), "--no-progress"]) == 0
    return tuple(pd.read_parquet(tmp_path / out / "trials.parquet").drop(columns=TIMING) for out in ("a", "b"))


def test_two_ddpg_runs_with_the_same_seed_give_identical_trials(tmp_path):
    raw = tiny_config(searcher=TINY_DDPG, train={"epochs": 0}, finetune={"epochs": 0})
    a, b = _trials_of_two_runs(tmp_path, raw)
    assert list(a["episode"]) == list(range(6)) and a["reward"].notna().all()
    assert a["sigma"].nunique() > 1 or a["warmup"].any()
    pd.testing.assert_frame_equal(a, b)


def test_two_netadapt_runs_with_the_same_seed_give_identical_trials(tmp_path):
    raw = tiny_config(searcher=TINY_NETADAPT, train={"epochs": 0}, finetune={"epochs": 0})
    a, b = _trials_of_two_runs(tmp_path, raw)
    assert a["iteration"].max() >= 2 and a["chosen"].sum() >= 2
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
def test_kill_9_mid_netadapt_then_resume_loses_and_duplicates_no_proposal(tmp_path):
    raw = tiny_config(searcher={"name": "netadapt", "initial_reduction": 0.02, "decay": 1.0,
                                "short_term_batches": 2},
                      train={"epochs": 1, "lr": 0.05, "batch_size": 64}, finetune={"epochs": 0})
    cfg = write_config(tmp_path, raw)
    ref = tmp_path / "ref"
    assert main(["search", cfg, "--out", str(ref), "--no-progress"]) == 0
    expected = pd.read_parquet(ref / "trials.parquet")
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", cfg, "--out", str(out),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = out / "trials.parquet"
    deadline = time.time() + 120
    while time.time() < deadline:  # kill once a few iterations are on disk
        if trials.exists() and read_trials(trials)["iteration"].max() >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = pd.read_parquet(trials)
    assert 3 <= before["iteration"].max() < expected["iteration"].max(), "the kill should land mid-search"
    assert not (out / "summary.json").exists() and not list(out.glob(".*.tmp"))
    assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    after = pd.read_parquet(trials)
    assert list(after["index"]) == list(range(len(after)))
    cols = [c for c in expected.columns if c.startswith("channels/")] + [
        "iteration", "chosen", "proposal_unit", "resource", "target", "val_accuracy"]
    pd.testing.assert_frame_equal(after[cols], expected[cols])  # nothing lost, nothing evaluated twice
    assert json.loads((out / "summary.json").read_text())["evaluations"] == len(expected)


def _listening_inodes() -> set[str]:
    """Inodes of listening TCP sockets (state 0A) in this network namespace."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A":
                    found.add(parts[9])
    return found


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_a_search_without_ray_opens_no_listening_socket(tmp_path):
    """workers: 0 never imports Ray, and the process never listens on a TCP port (sampled every 20 ms)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)):  # the probe sees a listening socket of ours
        assert _socket_inodes(os.getpid()) & _listening_inodes()
    assert not _socket_inodes(os.getpid()) & _listening_inodes()
    cfg = write_config(tmp_path, tiny_config(searcher={"name": "random", "evaluations": 3}, train={"epochs": 0},
                                       finetune={"epochs": 0}))
    driver = ("import sys; from autoprune.cli import main; code = main(sys.argv[1:]); "
              "print('ray imported' if 'ray' in sys.modules else 'no ray'); sys.exit(code)")
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", driver, "search", cfg, "--out", str(tmp_path / "run"),
                             "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    samples, listening = 0, set()
    while proc.poll() is None:
        try:
            listening |= _socket_inodes(proc.pid) & _listening_inodes()
            samples += 1
        except OSError:  # the process exited between the two reads
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert samples > 20 and not listening
    assert out.strip().splitlines()[-1] == "no ray"


@pytest.mark.slow
def test_ray_workers_evaluate_the_same_plans_as_in_process(tmp_path):
    """With a fixed seed, ``ray.workers: 2`` records the same rows as ``workers: 0`` (random, netadapt, ddpg)."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for searcher in ({"name": "random", "evaluations": 5}, TINY_NETADAPT, {**TINY_DDPG, "parallel_episodes": 2}):
            frames = []
            for workers in (0, 2):
                raw = tiny_config(searcher=searcher, train={"epochs": 1, "lr": 0.05, "batch_size": 64},
                                  finetune={"epochs": 0}, ray={"workers": workers})
                out = tmp_path / f"{searcher['name']}{workers}"
                assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
                frames.append(pd.read_parquet(out / "trials.parquet").drop(columns=TIMING))
            pd.testing.assert_frame_equal(frames[0], frames[1])
    finally:
        if started:
            ray.shutdown()
