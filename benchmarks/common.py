"""Shared pieces of the benchmarks: the base experiment, its cached checkpoint, result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from autoprune.atomic import atomic_write_json, atomic_write_text
from autoprune.config import ExperimentConfig, load_config

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CHECKPOINT = ROOT / "checkpoints" / "resnet20_mnist5k_3x32.pt"
CHECKPOINTS = {"resnet20": CHECKPOINT, "resnet56": ROOT / "checkpoints" / "resnet56_mnist5k_3x32.pt"}
"""Cached base models per benchmark task: ``resnet20`` (the first task), ``resnet56`` (the harder one)."""

# ResNet-20 on 3x32x32 MNIST-5k: a model with headroom where aggressive pruning hurts.
BASE = {
    "name": "bench",
    "seed": 0,
    "model": {"name": "resnet20"},
    "data": {"name": "mnist5k", "val_samples": 1000, "resize": 32, "channels": 3},
    "train": {"epochs": 30, "lr": 0.1, "batch_size": 128},
    "budget": {"flops": 0.5},
    "pruning": {"criterion": "l1", "min_ratio": 0.2, "max_ratio": 1.0},
    "searcher": {"name": "uniform"},
    "evaluation": {"adaptive_bn_batches": 10, "batch_size": 256},
    "finetune": {"epochs": 2, "lr_scale": 0.1},
}


def base_config(overrides: list[str] | None = None, task: str = "resnet20", **sections: Any) -> ExperimentConfig:
    """The benchmark experiment on ``task``'s base model (its cached checkpoint when there is one)."""
    raw = json.loads(json.dumps(BASE))
    raw["model"] = {"name": task}
    raw.update(sections)
    checkpoint = CHECKPOINTS[task]
    if checkpoint.exists() and raw["model"] == {"name": task}:
        raw["model"] = {**raw["model"], "checkpoint": str(checkpoint)}
    return load_config(raw, overrides)


def finished(out: Path, searcher: dict) -> bool:
    """Whether ``out`` holds a finished run of ``searcher`` as it resolves today: a run whose summary
    recorded other options (a preset default changed since) counts as not finished, so it is rerun.
    Runs from before summaries recorded options are taken as they are."""
    path = out / "summary.json"
    if not path.exists():
        return False
    recorded = json.loads(path.read_text()).get("searcher_options")
    if not recorded:
        print(f"{out.name}: ran before summaries recorded searcher options: reused as it is (delete it to rerun "
              "with today's options)", flush=True)
        return True
    from autoprune.pipeline.run import searcher_options_record
    from autoprune.search.base import SEARCHERS

    now = searcher_options_record(SEARCHERS.get(searcher["name"]).parse_options(searcher))
    if recorded != now:
        changed = sorted(k for k in now if recorded.get(k) != now[k])
        print(f"{out.name}: searcher options changed since it ran ({', '.join(changed)}): rerunning", flush=True)
        return False
    return True


def ensure_checkpoint(task: str = "resnet20") -> Path:
    """Train ``task``'s benchmark base model once (deterministic, seed 0, 30 epochs) and cache it."""
    checkpoint = CHECKPOINTS[task]
    if checkpoint.exists():
        return checkpoint
    from autoprune.atomic import atomic_write_with
    from autoprune.data.datasets import load_data
    from autoprune.pipeline.session import base_model

    raw = json.loads(json.dumps(BASE))
    raw["model"] = {"name": task}
    cfg = load_config(raw)
    model, _, _ = base_model(cfg, load_data(cfg.data))
    atomic_write_with(checkpoint, lambda buf: torch.save(model.state_dict(), buf))
    return checkpoint


def cpu_model() -> str:
    """The CPU's model name and its widest vector extensions (from /proc/cpuinfo; ``platform.processor()`` where it cannot be read):
    timing results differ between CPUs that the same 'x86_64 2 cores' hides."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wide = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile") if f in flags]
    return f"{fields.get('model name', platform.processor())} ({' '.join(wide) or 'no AVX2'})"


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores, {cpu_model()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


def target(name: str, goal: str, measured: Any, met: bool) -> dict[str, Any]:
    return {"name": name, "target": goal, "measured": measured, "met": bool(met)}


def write_results(name: str, table_md: str, data: dict[str, Any], targets: list[dict[str, Any]],
                  command: str) -> None:
    stamp = time.strftime("%Y-%m-%d")
    payload = {"benchmark": name, "date": stamp, "machine": machine(), "command": command,
               "targets": targets, **data}
    atomic_write_json(RESULTS / f"{name}.json", payload)
    lines = [f"# {name}", "", f"{stamp}, {machine()}, `{command}`", "", table_md, "", "## Targets", "",
             "| target | goal | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['name']} | {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |" for t in targets]
    atomic_write_text(RESULTS / f"{name}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


LOAD_SCRIPT = """
import numpy as np
a = np.random.rand(512, 512).astype(np.float32)
big = np.random.rand(1 << 23).astype(np.float32)
while True:
    a = a @ a
    a /= a.max()
    big += 1.0
"""
"""One busy process: one-thread float32 matmuls (compute, cache) and a 32 MB streaming add (memory traffic)."""


@contextlib.contextmanager
def cpu_load(processes: int) -> Iterator[None]:
    """Run ``processes`` busy processes (:data:`LOAD_SCRIPT`, one BLAS thread each) for the block:
    a loaded machine, made on purpose, for the latency benchmarks' drift checks."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", LOAD_SCRIPT], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(processes)]
    try:
        time.sleep(1.0 if procs else 0.0)  # let them reach their loop
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
