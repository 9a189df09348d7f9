"""Multi-run experiments (``autoprune run``): every (searcher, budget, seed) combination as one
Ray Tune trial.

Each trial is ``autoprune search`` for one combination: it writes the same run dir, under
``DIR/runs/<name>__<searcher>__<budget>__<seed>/``. Tune keeps its own records in ``DIR/tune``;
``--resume`` restores them with ``Tuner.restore`` and runs only the trials that did not finish
(unfinished or failed), each continuing its run dir where it stopped. A failed trial is retried
``ray.max_retries`` times (``FailureConfig``). With ``ray.workers: 0`` each trial evaluates
in-process on 1 CPU (trials run side by side); with ``ray.workers: N`` each trial reserves N CPUs
for its own evaluation actors (a placement group with an empty head bundle: the trial's driver
mostly waits for the actors, and fine-tunes the best plan after they are gone).
With ``ray.gpus_per_worker: g`` an in-process trial asks for ``g`` GPUs and each actor bundle for
``g`` GPUs; a trial that got a GPU runs on it (``runtime.device: cuda``), one that got none on the CPU.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_text, check_writable
from autoprune.config import ExperimentConfig, dump_config, load_config, parse_budget
from autoprune.device import cuda_available
from autoprune.errors import AutopruneError, ConfigError
from autoprune.pipeline.artifacts import read_summary
from autoprune.pipeline.pool import check_gpus, ensure_ray
from autoprune.pipeline.run import run_search
from autoprune.search.base import SEARCHERS

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ combinations


LATENCY_SOURCE = ("lut", "runtime", "device")
"""``budget`` keys that say where latency comes from: every ``budgets`` entry inherits them."""


def _budget(value: Any, inherited: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, str):
        value = parse_budget(value)
    if not isinstance(value, dict):
        raise ConfigError(f"budgets: {value!r} is not a budget; use {{flops: 0.5}} or \"flops=0.5\"")
    return {**{k: v for k, v in inherited.items() if v is not None}, **value}


def _label(budget: dict[str, Any]) -> str:
    kind = next(k for k in ("flops", "params", "latency", "latency_ms") if budget.get(k) is not None)
    return f"{kind}{float(budget[kind]):g}"


def combinations(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """One ``{"name", "config"}`` per (searcher, budget, seed), each config validated now."""
    if cfg.finetune.workers > 0 or cfg.train.workers > 0:
        raise ConfigError("autoprune run: set finetune.workers and train.workers to 0 (each Tune trial runs "
                          "on its own CPUs, so a Ray Train fit inside it would wait for CPUs the trials hold); "
                          "use autoprune search for a fine-tune on Ray Train")
    base = cfg.to_dict()
    for key in ("searchers", "budgets", "seeds"):
        base.pop(key, None)
    inherited = {k: getattr(cfg.budget, k) for k in LATENCY_SOURCE}  # e.g. budget: {lut: ..., runtime: ...}
    searchers = cfg.searchers or [cfg.searcher]
    budgets = cfg.budgets or [{k: v for k, v in base["budget"].items() if v is not None}]
    seeds = cfg.seeds or [cfg.seed]
    out, names = [], set()
    for i, searcher in enumerate(searchers):
        s = {"name": searcher} if isinstance(searcher, str) else dict(searcher)
        for budget in budgets:
            b = _budget(budget, inherited)
            for seed in seeds:
                raw = copy.deepcopy(base)
                raw.update(searcher=s, budget=b, seed=seed)
                trial_cfg = load_config(raw)
                cls = SEARCHERS.get(trial_cfg.searcher_name)
                cls.check(cls.parse_options(trial_cfg.searcher), trial_cfg.pruning)  # before any trial runs
                name = f"{cfg.name}__{trial_cfg.searcher_name}__{_label(b)}__{seed}"
                if name in names:
                    name = f"{cfg.name}__{trial_cfg.searcher_name}{i}__{_label(b)}__{seed}"
                names.add(name)
                out.append({"name": name, "config": trial_cfg.to_dict()})
    return out


# ------------------------------------------------------------------------------------- a trial


def run_trial(config: dict[str, Any]) -> None:
    """The Tune function trainable: one ``autoprune search`` into ``config["run_dir"]``."""
    import torch
    from ray import tune

    os.chdir(config["cwd"])  # Tune moves trials to their own dir; relative config paths mean the user's
    if config["cwd"] not in sys.path:
        sys.path.insert(0, config["cwd"])
    torch.set_num_threads(config["threads"])
    cfg = load_config(config["trial"]["config"])
    if cfg.ray.gpus_per_worker > 0:  # the device Ray assigned this trial (CUDA_VISIBLE_DEVICES), else the CPU
        cfg.runtime.device = "cuda" if cfg.ray.workers == 0 and cuda_available() else "cpu"
    run_dir = Path(config["runs"]) / config["trial"]["name"]
    if not (run_dir / "summary.json").is_file():
        resume = run_dir if (run_dir / "config.yaml").is_file() else None
        run_search(cfg, out=run_dir, resume=resume, progress=False)
    s = read_summary(run_dir)
    tune.report({"val_accuracy_before_finetune": s["pruned"]["val_accuracy_before_finetune"],
                 "test_accuracy_after_finetune": s["pruned"]["test_accuracy_after_finetune"],
                 "flops_kept": s["pruned"]["flops_kept"], "params_kept": s["pruned"]["params_kept"],
                 "evaluations": s["evaluations"], "run_dir": str(run_dir)})


def trial_resources(workers: int, gpus: float = 0.0):
    """1 CPU (and ``gpus`` GPUs) per in-process trial; else N actor bundles of 1 CPU (and ``gpus``
    GPUs) each (the driver itself reserves none)."""
    from ray import tune

    if workers <= 0:
        return {"cpu": 1, "gpu": gpus} if gpus > 0 else {"cpu": 1}
    bundle = {"CPU": 1, "GPU": gpus} if gpus > 0 else {"CPU": 1}
    return tune.PlacementGroupFactory([{}] + [dict(bundle) for _ in range(workers)])


# --------------------------------------------------------------------------------- experiment


def run_experiment(cfg: ExperimentConfig, out: str | Path, resume: bool = False) -> list[str]:
    """Run (or resume) the experiment in ``out``; return the names of failed trials."""
    from ray import tune

    out = Path(out).resolve()
    trials = combinations(cfg)
    tune_dir, saved = out / "tune", out / "experiment.yaml"
    if resume:
        if not tune.Tuner.can_restore(str(tune_dir)):
            raise AutopruneError(f"--resume: {str(out)!r} holds no experiment to resume; run without --resume")
        if saved.is_file() and saved.read_text() != dump_config(cfg):
            raise AutopruneError(f"--resume: {str(out)!r} was started with a different config; use another --out")
    elif tune_dir.exists() or saved.exists():
        raise AutopruneError(f"{str(out)!r} already holds an experiment; add --resume or choose another --out")
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, dump_config(cfg))
    started = ensure_ray(cfg.ray.address)
    try:
        _check_cpus(cfg.ray.workers)
        check_gpus(cfg.ray.gpus_per_worker, max(1, cfg.ray.workers), together=True)
        trainable = tune.with_resources(run_trial, trial_resources(cfg.ray.workers, cfg.ray.gpus_per_worker))
        if resume:
            tuner = tune.Tuner.restore(str(tune_dir), trainable=trainable, resume_unfinished=True,
                                       resume_errored=True)
        else:
            space = {"trial": tune.grid_search(trials), "runs": str(out / "runs"), "cwd": os.getcwd(),
                     "threads": max(1, cfg.ray.workers)}
            tuner = tune.Tuner(trainable, param_space=space,
                               tune_config=tune.TuneConfig(reuse_actors=True),
                               run_config=tune.RunConfig(
                                   name="tune", storage_path=str(out), verbose=0,
                                   failure_config=tune.FailureConfig(max_failures=cfg.ray.max_retries)))
        grid = tuner.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    return [str(r.config["trial"]["name"]) for r in grid if r.error is not None]


def _check_cpus(workers: int) -> None:
    import ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if workers > cpus:
        raise AutopruneError(f"ray.workers={workers} but the Ray cluster has {cpus:g} CPUs, so no trial could "
                             f"start; set ray.workers <= {cpus:g}")
