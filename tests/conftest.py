"""Shared fixtures: tiny models (plain, residual, concat, depthwise), a tiny trained session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
torch.set_num_threads(2)
TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))  # makes "factories:NAME" importable


def write_config(tmp_path: Path, raw: dict, name: str = "exp.yaml") -> str:
    """Write an experiment mapping as YAML under ``tmp_path``; returns the path."""
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def tiny_config(tmp_path=None, **sections) -> dict:
    """A config that runs end to end in seconds (8x8 digits, small CNN)."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": "mnist_cnn", "kwargs": {"width": 8}},
        "data": {"name": "digits", "val_samples": 200},
        "train": {"epochs": 2, "lr": 0.05, "batch_size": 64},
        "budget": {"flops": 0.5},
        "searcher": {"name": "random", "evaluations": 3},
        "evaluation": {"adaptive_bn_batches": 4, "batch_size": 256},
        "finetune": {"epochs": 1, "lr_scale": 0.1},
    }
    for key, value in sections.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="session")
def tiny_session():
    """A prepared session on digits with a briefly trained small CNN (shared across tests)."""
    from autoprune.config import load_config
    from autoprune.pipeline.session import prepare

    return prepare(load_config(tiny_config(), ["model.kwargs.width=16", "train.epochs=4"]), progress=False)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray (2 CPUs) for one test module; left running if something else started it."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()
