"""Fine-tuning (and base training) on Ray Train: 2 DDP workers, 1 worker == in-process, per-epoch
checkpoints and ``--resume`` after ``kill -9`` (autoprune.pipeline.finetune)."""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TESTS, tiny_config, write_config

from autoprune.cli import main
from autoprune.config import load_config
from autoprune.core.plan import PruningPlan
from autoprune.data.datasets import load_data
from autoprune.errors import ConfigError
from autoprune.pipeline import finetune
from autoprune.pipeline.artifacts import load_pruned, model_spec
from autoprune.pipeline.session import prepare

pytest.importorskip("ray")


def _pruned(session):
    """Half the channels of every unit of the tiny session's model, and that plan."""
    plan = PruningPlan.from_counts(session.graph, {u.name: max(1, u.out_channels // 2) for u in session.graph.units})
    return session.evaluator().prune(plan), plan


def _tune(session, model, workers: int, ckpt_dir: Path | None, epochs: int = 3):
    cfg = session.cfg
    return finetune.train(copy.deepcopy(model), cfg, epochs=epochs, lr=cfg.train.lr * 0.1, workers=workers,
                          desc="fine-tune", spec=model_spec(cfg, session.data, session.input_shape),
                          plan=_pruned(session)[1], ckpt_dir=ckpt_dir, train_data=session.data.train_augmented,
                          progress=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize("override, message", [
    (["finetune.workers=-1"], "finetune.workers must be >= 0"),
    (["train.workers=-2"], "train.workers must be >= 0"),
    (["finetune.workers=2", "finetune.schedule={steps: 3}"],
     "finetune.workers > 0 with finetune.schedule is not supported yet"),
    (["finetune.workers=1", "finetune.rewind_epoch=1"],
     "finetune.workers > 0 with finetune.rewind_epoch is not supported yet"),
    (["train.workers=2", "finetune.rewind_epoch=1"], "set train.workers: 0 or drop finetune.rewind_epoch"),
])
def test_bad_worker_settings_are_one_line_config_errors(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as err:
        load_config(tiny_config(), override)
    assert "\n" not in str(err.value)


def test_more_workers_than_cpus_fails_before_anything_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = os.cpu_count() or 1
    cfg = write_config(tmp_path, tiny_config(finetune={"epochs": 1, "workers": cpus + 1}))
    started = time.time()
    assert main(["search", cfg, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert time.time() - started < 30 and not (tmp_path / "run").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"autoprune: error: finetune.workers={cpus + 1} but a local Ray has {cpus} CPUs (one per worker); "
                   f"set finetune.workers <= {cpus}"]
    with pytest.raises(ConfigError, match=f"train.workers={cpus + 1} but a local Ray has {cpus} CPUs"):
        prepare(load_config(tiny_config(), [f"train.workers={cpus + 1}"]))


def test_check_resources_names_the_cluster_size(local_ray):
    with pytest.raises(finetune.AutopruneError, match="need 64 CPUs .* but the Ray cluster has 2"):
        finetune.check_resources(64, gpu=False)
    with pytest.raises(finetune.AutopruneError, match="need 1 GPUs"):
        finetune.check_resources(1, gpu=True)


# -------------------------------------------------------------------------------- in-process


def test_in_process_finetune_resumes_from_its_last_epoch_bit_for_bit(tiny_session, tmp_path, monkeypatch, caplog):
    pruned, _ = _pruned(tiny_session)
    whole = _tune(tiny_session, pruned, 0, tmp_path / "whole").state_dict()
    assert [p.name for p in (tmp_path / "whole").iterdir()] == ["epoch_3.pt"]  # only the latest is kept

    save = finetune.EpochCheckpoints.save

    def killed_after_epoch_1(self, epoch, state):
        save(self, epoch, state)
        if epoch == 1:
            raise KeyboardInterrupt  # as if killed right after epoch 1 was saved

    monkeypatch.setattr(finetune.EpochCheckpoints, "save", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        _tune(tiny_session, pruned, 0, tmp_path / "cut")
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "cut").iterdir()] == ["epoch_1.pt"]
    with caplog.at_level(logging.INFO, logger="autoprune.pipeline.finetune"):
        resumed = _tune(tiny_session, pruned, 0, tmp_path / "cut").state_dict()
    assert "fine-tune: resuming from epoch 1 of 3" in caplog.text
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # a checkpoint of another fine-tune (other epochs) is not resumed from
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="autoprune.pipeline.finetune"):
        _tune(tiny_session, pruned, 0, tmp_path / "cut", epochs=4)
    assert "resuming" not in caplog.text and "from another fine-tune" in caplog.text


# ---------------------------------------------------------------------------------- Ray Train


def test_one_ray_worker_gives_the_in_process_weights(tiny_session, tmp_path, local_ray):
    """workers: 1 runs on Ray Train with the in-process loader: same seed, same weights (torch runs on 1
    thread there, so within float tolerance; measured max difference ~1e-7)."""
    pruned, _ = _pruned(tiny_session)
    local = _tune(tiny_session, pruned, 0, None).state_dict()
    ray_one = _tune(tiny_session, pruned, 1, tmp_path / "ckpt")
    assert _max_diff(local, ray_one.state_dict()) < 1e-5
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["epoch_3.pt"]  # Ray's own records removed


def test_two_ray_workers_finetune_a_fine_grained_search(tmp_path, local_ray):
    """End to end: base training and the fine-tune on 2 DDP workers; fine-grained masks are kept."""
    raw = tiny_config(train={"epochs": 3, "lr": 0.05, "batch_size": 64, "workers": 2},
                      finetune={"epochs": 2, "lr_scale": 0.1, "workers": 2}, pruning={"granularity": "fine"},
                      budget={"params": 0.4})
    out = tmp_path / "run"
    assert main(["search", write_config(tmp_path, raw), "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base"]["test_accuracy"] > 0.6  # trained on 2 workers
    after = summary["pruned"]["test_accuracy_after_finetune"]
    assert after > 0.6 and after >= summary["pruned"]["test_accuracy_before_finetune"] - 0.05
    assert not (out / finetune.CKPT_DIR).exists()  # a complete run drops its epoch checkpoints
    model = load_pruned(out / "pruned_model.pt")  # the masks held through DDP: pruned weights stayed zero
    assert sum(int((p != 0).sum()) for p in model.parameters()) == summary["pruned"]["params"]
    assert summary["pruned"]["params_kept"] <= 0.4


@pytest.mark.slow
def test_one_ray_worker_trains_the_in_process_base_model(local_ray):
    from autoprune.pipeline.session import base_model

    cfg = load_config(tiny_config(), ["train.epochs=2"])
    local, _, _ = base_model(cfg, _data(cfg), progress=False)
    cfg_ray = load_config(tiny_config(), ["train.epochs=2", "train.workers=1"])
    ray_one, _, trained = base_model(cfg_ray, _data(cfg_ray), progress=False)
    assert trained and _max_diff(local.state_dict(), ray_one.state_dict()) < 1e-5


def _data(cfg):
    return load_data(cfg.data)


def _finetune_epochs_on_disk(run_dir: Path) -> list[int]:
    folder = run_dir / finetune.CKPT_DIR
    return sorted(int(p.stem.split("_")[1]) for p in folder.glob("epoch_*.pt")) if folder.is_dir() else []


@pytest.mark.slow
def test_kill_9_during_a_ray_finetune_then_resume_continues_from_the_last_epoch(tmp_path, caplog):
    """The driver is killed during the 2-worker fine-tune; ``--resume`` skips the finished search, resumes
    the fine-tune after the last epoch on disk and ends with the weights of an uninterrupted run."""
    epochs = 12
    raw = tiny_config(finetune={"epochs": epochs, "lr_scale": 0.1, "workers": 2},
                      searcher={"name": "random", "evaluations": 2})
    cfg = write_config(tmp_path, raw)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "autoprune.cli", "search", cfg, "--out", str(out), "--no-progress"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(k >= 2 for k in _finetune_epochs_on_disk(out)):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5)  # the killed driver's Ray (and its train workers) go down with it
    on_disk = _finetune_epochs_on_disk(out)
    assert on_disk and 2 <= on_disk[-1] < epochs, f"the kill should land mid-fine-tune (epochs on disk: {on_disk})"
    assert (out / "best_plan.json").is_file() and not (out / "summary.json").exists()
    last = on_disk[-1]
    with caplog.at_level(logging.INFO, logger="autoprune.pipeline.finetune"):
        assert main(["search", "--resume", str(out), "--no-progress"]) == 0
    assert f"fine-tune: resuming from epoch {last} of {epochs}" in caplog.text
    assert _finetune_epochs_on_disk(out) == []  # the finished run dropped its epoch checkpoints
    ref = tmp_path / "ref"
    assert main(["search", cfg, "--out", str(ref), "--no-progress"]) == 0
    a, b = (torch.load(d / "pruned_model.pt", weights_only=True)["state_dict"] for d in (out, ref))
    assert _max_diff(a, b) < 1e-6  # resumed bit for bit (up to DDP's float reductions)
    s = json.loads((out / "summary.json").read_text())
    assert s["pruned"]["test_accuracy_after_finetune"] == pytest.approx(
        json.loads((ref / "summary.json").read_text())["pruned"]["test_accuracy_after_finetune"], abs=0.01)
