"""The ``runtime:`` section and :mod:`autoprune.device` on a machine without CUDA (issue 13, parts 1
and 5): device resolution and refusals, mixed precision and channels-last runs, models and batches on
the chosen device, artifacts with CPU tensors, GPUs asked of a Ray cluster that has none."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import tiny_config

from autoprune.cli import main
from autoprune.config import RuntimeConfig, load_config
from autoprune.core.train import accuracy, make_loader, train_model
from autoprune.device import CPU, Device, cpu_state, resolve
from autoprune.errors import ConfigError
from autoprune.pipeline.artifacts import load_pruned
from autoprune.pipeline.run import run_search
from autoprune.pipeline.session import prepare

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


def _fast(**sections) -> dict:
    raw = tiny_config(train={"epochs": 1, "lr": 0.05, "batch_size": 64}, finetune={"epochs": 1, "lr_scale": 0.1},
                      searcher={"name": "random", "evaluations": 2})
    raw.update(sections)
    return raw


# ----------------------------------------------------------------------------- resolution


def test_cpu_and_auto_resolve_here():
    assert resolve("cpu") == torch.device("cpu")
    assert resolve("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert Device.from_config(RuntimeConfig()).device == torch.device("cpu")
    assert Device.from_config(None) == CPU and CPU.is_default


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_is_refused_without_cuda(name):
    with pytest.raises(ConfigError, match=rf"runtime.device: {name} requested but torch.cuda.is_available\(\) "
                                          "is False on this machine; use cpu or auto"):
        resolve(name)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the refusal on a machine without MPS")
def test_mps_is_refused_here():
    with pytest.raises(ConfigError, match="mps requested but"):
        resolve("mps")


@pytest.mark.parametrize(("device", "near"), [("cdua", "cuda"), ("atuo", "auto"), ("cpuu", "cpu")])
def test_bad_device_suggests_the_closest(device, near):
    with pytest.raises(ConfigError, match=rf"runtime.device '{device}' is not a valid value; did you mean {near}\?"):
        load_config(_fast(runtime={"device": device}))


def test_fp16_needs_a_gpu_and_pinned_memory_only_on_cuda():
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        Device.from_config(RuntimeConfig(amp="fp16"))
    assert not Device.from_config(RuntimeConfig(pin_memory=True)).pin_memory  # nothing to pin for on the CPU
    assert Device.from_config(RuntimeConfig(num_workers=2)).loader_kwargs() == {"num_workers": 2, "pin_memory": False}


@NO_CUDA
def test_cli_refuses_cuda_with_exit_2_and_writes_no_run_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump(_fast(runtime={"device": "cuda"})))
    out = tmp_path / "run"
    assert main(["search", str(cfg), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime.device: cuda requested but torch.cuda.is_available() is False" in err[0]
    assert not out.exists() and not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------- placement


def test_place_batches_autocast_and_scaler():
    dev = Device(torch.device("cpu"), amp="bf16", channels_last=True)
    model = dev.place(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 2)))
    x, y = dev.to_device((torch.randn(2, 1, 8, 8), torch.tensor([0, 1])))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.long
    with dev.autocast():
        out = model(x)
    assert out.dtype == torch.bfloat16
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(v.is_contiguous() and v.device.type == "cpu" for v in cpu_state(model).values())
    assert not dev.grad_scaler().is_enabled()  # bf16 needs no scaler
    assert dev.batches([(x, y)]) == [(x, y)]  # on the CPU the batches are read as they are


def test_train_model_and_accuracy_follow_the_runtime(tiny_session):
    import copy

    s = tiny_session
    dev = Device(torch.device("cpu"), amp="bf16", channels_last=True)
    model = train_model(copy.deepcopy(s.model), s.data.train_augmented, s.cfg.train, max_steps=3, progress=False,
                        runtime=dev)
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    assert any(p.is_contiguous(memory_format=torch.channels_last) and p.dim() == 4 for p in model.parameters())
    assert 0.0 <= accuracy(model, make_loader(s.data.val, 64), dev) <= 1.0


def test_evaluator_holds_its_model_on_the_device_and_leaves_the_session_model(tiny_session):
    from autoprune.search.evaluate import Evaluator

    s = tiny_session
    c = s.cfg
    dev = Device(torch.device("cpu"), amp="bf16", channels_last=True)
    ev = Evaluator(s.model, s.graph, s.data, evaluation=c.evaluation, pruning=c.pruning, train=c.train,
                   finetune=c.finetune, seed=c.seed, runtime=dev)
    assert ev.model is not s.model and ev.runtime is dev
    assert all(p.is_contiguous() for p in s.model.parameters())  # the session's model is untouched
    assert any(not p.is_contiguous() for p in ev.model.parameters())  # the evaluator's is channels-last
    plan = s.context().plan_from_ratios([0.5] * len(s.graph))
    pruned = ev.prune(plan)
    assert all(p.device == dev.device for p in pruned.parameters())
    result = ev.evaluate(plan, finetune_steps=2)
    assert 0.0 <= result.accuracy <= 1.0
    fp32 = Evaluator(s.model, s.graph, s.data, evaluation=c.evaluation, pruning=c.pruning, train=c.train,
                     finetune=c.finetune, seed=c.seed)
    assert fp32.model is s.model  # the CPU default keeps the old, copy-free behaviour
    assert abs(fp32.evaluate(plan).accuracy - ev.evaluate(plan).accuracy) < 0.1  # bf16 within noise


@pytest.mark.parametrize("criterion", ["taylor", "apoz", "reconstruction"])
def test_data_driven_criteria_run_under_the_runtime(tiny_session, criterion):
    from dataclasses import replace

    from autoprune.search.evaluate import Evaluator

    s = tiny_session
    c = s.cfg
    ev = Evaluator(s.model, s.graph, s.data, evaluation=c.evaluation, pruning=replace(c.pruning, criterion=criterion),
                   train=c.train, finetune=c.finetune, seed=c.seed,
                   runtime=Device(torch.device("cpu"), amp="bf16", channels_last=True))
    plan = s.context().plan_from_ratios([0.5] * len(s.graph))
    assert 0.0 <= ev.evaluate(plan).accuracy <= 1.0


# --------------------------------------------------------------------------- end to end


def test_bf16_channels_last_search_end_to_end_saves_cpu_artifacts(tmp_path, monkeypatch):
    cfg = load_config(_fast(runtime={"device": "auto", "amp": "bf16", "channels_last": True}))
    if torch.cuda.is_available():
        cfg.runtime.device = "cpu"
    session = prepare(cfg, progress=False)
    assert session.runtime.amp == "bf16" and session.runtime.channels_last
    assert all(p.device.type == "cpu" and p.is_contiguous() for p in session.model.parameters())
    from autoprune.pipeline.finetune import EpochCheckpoints

    written, write = [], EpochCheckpoints.write
    monkeypatch.setattr(EpochCheckpoints, "write", lambda self, record: (written.append(record), write(self, record)))
    run_dir = run_search(cfg, out=tmp_path / "run", progress=False)
    for name in ("base_model.pt", "pruned_model.pt"):
        payload = torch.load(run_dir / name, map_location=None, weights_only=True)
        state = payload.get("state_dict", payload)
        assert state and all(v.device.type == "cpu" and v.is_contiguous() for v in state.values()), name
    assert written and all(v.device.type == "cpu" for r in written for v in r["state"]["model"].values())
    assert not (run_dir / "finetune_ckpt").exists()  # dropped once the run is complete
    model = load_pruned(run_dir / "pruned_model.pt", map_location="cpu")
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_netadapt_checkpoints_hold_cpu_tensors(tmp_path):
    cfg = load_config(_fast(runtime={"amp": "bf16", "channels_last": True},
                            searcher={"name": "netadapt", "max_iterations": 2, "short_term_batches": 2,
                                      "initial_reduction": 0.3, "continue_weights": True},
                            finetune={"epochs": 0}))
    run_dir = run_search(cfg, out=tmp_path / "run", progress=False)
    saved = list((run_dir / "netadapt").glob("iter_*.pt"))
    assert saved
    for path in saved:
        state = torch.load(path, map_location=None, weights_only=True)["state_dict"]
        assert all(v.device.type == "cpu" for v in state.values())


# ---------------------------------------------------------------------------------- Ray


def test_gpus_per_worker_above_the_cluster_is_refused(tiny_session, local_ray):
    import ray

    from autoprune.pipeline.pool import RayEvaluatorPool, check_gpus

    have = ray.cluster_resources().get("GPU", 0)
    with pytest.raises(ConfigError, match=rf"ray.gpus_per_worker={have + 1:g} but the Ray cluster has {have:g} GPUs"):
        check_gpus(have + 1)
    with pytest.raises(ConfigError, match="x 3 workers per trial needs"):
        check_gpus(have / 2 + 0.5, 3, together=True) if have else check_gpus(0.5, 3, together=True)
    cfg = tiny_session.cfg
    with pytest.raises(ConfigError, match="ray.gpus_per_worker"):
        RayEvaluatorPool(tiny_session.model, tiny_session.graph, tiny_session.data, cfg.evaluation, cfg.pruning,
                         cfg.train, cfg.finetune, cfg.seed, workers=1, gpus_per_worker=have + 1)
    assert ray.is_initialized()  # the pool did not shut down the fixture's Ray


def test_prepare_refuses_gpus_before_training(tmp_path, monkeypatch):
    import autoprune.pipeline.session as session_mod

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    trained = []
    monkeypatch.setattr(session_mod, "base_model", lambda *a, **k: trained.append(1))
    cfg = load_config(_fast(ray={"workers": 1, "gpus_per_worker": 64}))
    with pytest.raises(ConfigError, match="ray.gpus_per_worker=64 but the Ray cluster has"):
        prepare(cfg, progress=False)
    assert not trained


def test_actors_open_the_data_from_its_config_and_run_on_the_cpu(tiny_session, local_ray):
    from dataclasses import replace

    import ray

    from autoprune.config import DataConfig
    from autoprune.pipeline.pool import RayEvaluatorPool

    s = tiny_session
    c = replace(s.cfg, ray=replace(s.cfg.ray, workers=1))
    pool = RayEvaluatorPool.from_config(s.model, s.graph, s.data, c)
    try:
        payload = ray.get(pool._payload)
        assert isinstance(payload["data"], DataConfig)  # no tensors of the splits in the object store
        assert ray.get(pool.actors[0].device.remote()) == "cpu"
        plan = s.context().plan_from_ratios([0.5] * len(s.graph))
        local = s.evaluator().evaluate(plan).accuracy
        assert pool.evaluate(plan).accuracy == pytest.approx(local)
    finally:
        pool.close()


def test_trial_resources_carry_gpus():
    from autoprune.pipeline.experiments import trial_resources

    assert trial_resources(0) == {"cpu": 1}
    assert trial_resources(0, 0.5) == {"cpu": 1, "gpu": 0.5}
    pgf = trial_resources(2, 0.25)
    assert pgf.required_resources == {"CPU": 2, "GPU": 0.5}  # the trial's driver reserves nothing
