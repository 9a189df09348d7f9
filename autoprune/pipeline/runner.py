"""One search, end to end: config -> base model -> search -> prune -> fine-tune -> test -> run dir.

Everything that can be checked is checked in :func:`prepare` *before* the run directory is
created, so bad input never leaves a half-written run dir behind.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.atomic import (
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
    check_writable,
    read_json,
)
from autoprune.config import ExperimentConfig, dump_config, from_dict
from autoprune.core.cost import Budget, CostModel, make_budget, measure_model
from autoprune.core.criteria import CRITERIA
from autoprune.core.graph import UnitGraph, build_unit_graph
from autoprune.core.iterative import check_recorded, recording, steps_per_epoch
from autoprune.core.iterative import long_term as iterative_long_term
from autoprune.core.iterative import validate as validate_toolbox
from autoprune.core.plan import PruningPlan
from autoprune.core.sparsity import (
    SPARSE_GRANULARITIES,
    cost_kind,
    make_permanent,
    sparse_layer_formats,
    storage_report,
)
from autoprune.core.train import dataset_accuracy, train_model
from autoprune.data.datasets import DataBundle, load_data
from autoprune.errors import AutopruneError, ConfigError
from autoprune.latency.timing import latency_summary  # also registers the "latency" cost model
from autoprune.models.zoo import build_model, check_input_shape, load_checkpoint
from autoprune.search.base import SEARCHERS, SearchContext, Searcher
from autoprune.search.evaluate import Evaluator
from autoprune.search.records import TrialRecorder

log = logging.getLogger(__name__)
PRUNED_FORMAT = "autoprune.pruned/v1"


def get_searcher(name: str) -> type[Searcher]:
    """Look a searcher up by name (importing ``autoprune.agents`` registers the built-ins)."""
    import autoprune.agents  # noqa: F401

    return SEARCHERS.get(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Session:
    """A validated experiment, ready to search: model, data, graph, costs and budget."""

    cfg: ExperimentConfig
    data: DataBundle
    model: nn.Module
    input_shape: tuple[int, ...]
    graph: UnitGraph
    costs: dict[str, CostModel]
    budget: Budget
    searcher_cls: type[Searcher]
    searcher_options: Any

    def evaluator(self) -> Evaluator:
        """In-process evaluator, or a Ray actor pool (same interface) when ``ray.workers > 0``."""
        c = self.cfg
        if c.ray.workers > 0:
            from autoprune.pipeline.pool import RayEvaluatorPool

            return RayEvaluatorPool.from_config(self.model, self.graph, self.data, c)
        return Evaluator(self.model, self.graph, self.data, c.evaluation, c.pruning, c.train, c.finetune, c.seed)

    def context(self, evaluator, recorder: TrialRecorder, run_dir: Path | None, resume: bool,
                progress: bool = True) -> SearchContext:
        return SearchContext(self.graph, evaluator, self.budget, self.costs, self.cfg.pruning, self.cfg.seed,
                             recorder, run_dir, resume, self.cfg.searcher_name, progress)


def model_spec(cfg: ExperimentConfig, data: DataBundle, input_shape) -> dict[str, Any]:
    return {"name": cfg.model.name, "factory": cfg.model.factory, "kwargs": dict(cfg.model.kwargs),
            "in_channels": int(input_shape[0]), "num_classes": int(data.num_classes),
            "input_shape": [int(s) for s in input_shape]}


def spec_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the (unpruned) model described by :func:`model_spec`."""
    return build_model(spec["name"], spec["factory"], spec["kwargs"],
                       in_channels=spec["in_channels"], num_classes=spec["num_classes"])


def base_model(cfg: ExperimentConfig, data: DataBundle, checkpoint: str | Path | None = None,
               progress: bool = True) -> tuple[nn.Module, tuple[int, ...], bool]:
    """Build the base model; load its checkpoint, or train it. Returns (model, input shape, trained)."""
    input_shape = tuple(cfg.model.input_shape or data.input_shape)
    if len(input_shape) != 3:
        raise ConfigError(f"model.input_shape must be [C, H, W] (got {list(input_shape)})")
    if input_shape != tuple(data.input_shape):
        raise ConfigError(
            f"model.input_shape {list(input_shape)} does not match the data's {list(data.input_shape)}; "
            "set data.resize / data.channels or drop model.input_shape"
        )
    spec = model_spec(cfg, data, input_shape)
    seed_everything(cfg.seed)  # the initial weights depend on the seed only
    model = spec_model(spec)
    check_input_shape(model, input_shape, data.num_classes)
    ckpt = checkpoint or cfg.model.checkpoint
    if ckpt:
        load_checkpoint(model, ckpt)
        return model.eval(), input_shape, False
    with recording(model, cfg.finetune.rewind, steps_per_epoch(len(data.train), cfg.train.batch_size)):
        train_model(model, data.train, cfg.train, seed=cfg.seed, desc="train base model", progress=progress)
    return model.eval(), input_shape, True


def prepare(cfg: ExperimentConfig, base_checkpoint: str | Path | None = None, progress: bool = True) -> Session:
    """Validate everything and build what a search needs (may train the base model)."""
    cfg.validate()
    searcher_cls = get_searcher(cfg.searcher_name)
    options = searcher_cls.parse_options(cfg.searcher)
    CRITERIA.get(cfg.pruning.criterion)
    validate_toolbox(cfg)  # granularity, finetune.schedule, finetune.rewind
    if cfg.ray.workers > 0:  # an unreachable cluster should fail before the base model is trained
        from autoprune.pipeline.pool import check_ray_address

        check_ray_address(cfg.ray.address)
    data = load_data(cfg.data)
    labels = data.train.tensors[1] if hasattr(data.train, "tensors") else None
    if labels is not None and len(labels) == 0:
        raise AutopruneError("the training split is empty")
    model, input_shape, _ = base_model(cfg, data, base_checkpoint, progress)
    check_recorded(cfg, model)
    graph = build_unit_graph(model, input_shape)
    budget_cfg = cfg.budget
    budget = make_budget(graph, cost_kind(budget_cfg.kind, cfg.pruning), budget_cfg.value,
                         absolute=budget_cfg.latency_ms is not None, model=model, lut=budget_cfg.lut,
                         pruning=cfg.pruning)
    costs: dict[str, CostModel] = {k: make_budget(graph, cost_kind(k, cfg.pruning), 1.0, pruning=cfg.pruning).cost
                                   for k in ("flops", "params")}
    costs[budget.kind] = budget.cost
    session = Session(cfg, data, model, input_shape, graph, costs, budget, searcher_cls, options)
    ctx = session.context(None, TrialRecorder(None), None, False)
    budget.check_reachable(ctx.min_counts())
    return session


def default_run_dir(cfg: ExperimentConfig, root: str | Path = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.name}__{cfg.searcher_name}__{cfg.seed}__{stamp}"


def save_pruned(path: Path, model: nn.Module, spec: dict[str, Any], plan: PruningPlan, granularity: str) -> None:
    payload = {"format": PRUNED_FORMAT, "model": spec, "plan": plan.to_dict(), "granularity": granularity,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_write_with(path, lambda buf: torch.save(payload, buf))


def load_pruned(path: str | Path) -> nn.Module:
    """Load ``pruned_model.pt`` written by a search: the physically smaller model, in eval mode.

    The file holds the base model's spec, the plan and the weights (``weights_only=True``); the
    architecture is rebuilt from the spec (a user factory must be importable) and cut to the plan.
    """
    from autoprune.core.prune import apply_plan

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AutopruneError(f"{str(path)!r} is not a readable pruned model ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        raise AutopruneError(f"{str(path)!r} is not an autoprune pruned model")
    spec = payload["model"]
    model = spec_model(spec).eval()
    graph = build_unit_graph(model, spec["input_shape"])
    plan = PruningPlan.from_dict(payload["plan"])
    sparse = payload.get("granularity") in SPARSE_GRANULARITIES  # same architecture, zeros in the weights
    pruned = model if sparse else apply_plan(model, graph, plan)
    pruned.load_state_dict(payload["state_dict"])
    return pruned.eval()


def run_search(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Run one search end to end and return its run directory."""
    start = time.time()
    run_dir = Path(resume or out or default_run_dir(cfg))
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise AutopruneError(f"--resume {str(run_dir)!r}: not a run directory (no config.yaml)")
        saved = (run_dir / "config.yaml").read_text()
        if saved != dump_config(cfg):
            raise AutopruneError(
                f"--resume {str(run_dir)!r}: the run was started with a different config; "
                "resume without a config (or with the same one), or start a new run"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise AutopruneError(f"output directory {str(run_dir)!r} is not empty; choose another with --out")
    check_writable(run_dir)
    base_ckpt = run_dir / "base_model.pt" if resume and (run_dir / "base_model.pt").exists() else None
    session = prepare(cfg, base_ckpt, progress)
    recorder = TrialRecorder.resume(run_dir / "trials.parquet") if resume else TrialRecorder(run_dir / "trials.parquet")

    created = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        if not resume:
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            if not cfg.model.checkpoint:
                atomic_write_with(run_dir / "base_model.pt", lambda b: torch.save(session.model.state_dict(), b))
        return _search_and_finish(session, run_dir, recorder, bool(resume), progress, start)
    except AutopruneError:
        if not resume and not recorder.rows:  # nothing finished: leave no half-written run dir
            _remove_new(run_dir, created)
        raise


def _remove_new(run_dir: Path, created: Path | None) -> None:
    """Delete what a failed new run wrote: its run dir and the parents it created (if still empty), or
    everything in the empty ``--out`` dir it was given."""
    import shutil

    if created is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:
            if parent != created and created not in parent.parents:
                break
            try:
                parent.rmdir()  # only if empty: another run may have started in it meanwhile
            except OSError:
                break
        return
    for path in run_dir.iterdir():  # the dir was empty before (run_search refuses a non-empty one)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _search_and_finish(session: Session, run_dir: Path, recorder: TrialRecorder, resume: bool,
                       progress: bool, start: float) -> Path:
    cfg, data = session.cfg, session.data
    seed_everything(cfg.seed)
    evaluator = session.evaluator()
    try:
        ctx = session.context(evaluator, recorder, run_dir, resume, progress)
        searcher = session.searcher_cls(ctx, session.searcher_options)
        log.info("searching with %s over %d units", cfg.searcher_name, len(session.graph))
        plan = searcher.search()
    finally:  # a Ray pool frees its actors (it keeps a local evaluator for what follows)
        getattr(evaluator, "close", lambda: None)()
    recorder.flush()
    if not session.budget.fits(plan.counts(session.graph)):
        raise AutopruneError(f"searcher {cfg.searcher_name!r} returned an over-budget plan (a bug)")
    plan.meta.setdefault("searcher", cfg.searcher_name)
    atomic_write_text(run_dir / "best_plan.json", plan.to_json())

    pruned = evaluator.prune(plan)
    val_before = evaluator.score(pruned)
    test_before = dataset_accuracy(pruned, data.test)
    pruned, test_after, failure = _finetune_or_keep(session, evaluator, plan, pruned, progress)
    spec = model_spec(cfg, data, session.input_shape)
    save_pruned(run_dir / "pruned_model.pt", pruned, spec, plan, cfg.pruning.granularity)

    base_macs, base_params = measure_model(session.model, session.input_shape)
    macs, params = measure_model(pruned, session.input_shape)
    summary = {
        "name": cfg.name, "searcher": cfg.searcher_name, "seed": cfg.seed,
        "budget": {"kind": session.budget.kind, "fraction": session.budget.fraction,
                   "target": session.budget.target},
        "base": {"flops": base_macs, "params": base_params, "val_accuracy": evaluator.base_accuracy(),
                 "test_accuracy": dataset_accuracy(session.model, data.test)},
        "pruned": {"flops": macs, "params": params, "flops_kept": macs / base_macs,
                   "params_kept": params / base_params, "val_accuracy_before_finetune": val_before,
                   "test_accuracy_before_finetune": test_before, "test_accuracy_after_finetune": test_after},
        "evaluations": len(recorder.rows),
        "wall_seconds": time.time() - start,
        "units": len(session.graph),
    }
    if failure:
        summary["finetune_failed"] = failure
    for extra in SUMMARY_EXTRAS:
        summary.update(extra(session, pruned, plan))
    atomic_write_json(run_dir / "summary.json", summary)
    if failure:
        raise AutopruneError(f"{failure}; the run dir {str(run_dir)!r} is complete with the pruned weights from "
                             "before the failed fine-tune (summary.json: finetune_failed)")
    return run_dir


def _finetune_or_keep(session: Session, evaluator: Evaluator, plan: PruningPlan, pruned: nn.Module,
                      progress: bool) -> tuple[nn.Module, float | None, str | None]:
    """Long-term fine-tune; if it fails (e.g. a NaN loss), keep the pruned weights from before it.

    Returns (model to save, its test accuracy after the fine-tune or None, the failure or None).
    """
    kept = copy.deepcopy(pruned)
    seed_everything(session.cfg.seed)
    try:
        tuned = long_term_finetune(session, evaluator, plan, pruned, progress)
    except AutopruneError as exc:
        log.info("the fine-tune failed (%s); keeping the pruned weights from before it", exc)
        return make_permanent(kept), None, str(exc)
    return tuned, dataset_accuracy(tuned, session.data.test), None


def long_term_finetune(session: Session, evaluator: Evaluator, plan: PruningPlan, pruned: nn.Module,
                       progress: bool = True) -> nn.Module:
    """The final fine-tune of the best plan (NetAdapt's long-term fine-tune).

    One-shot, or iterative with ``finetune.schedule``, with optional lottery-ticket
    ``finetune.rewind`` (see :mod:`autoprune.core.iterative`); fine/N:M masks are kept throughout and
    folded into the weights at the end.
    """
    cfg = session.cfg

    def train(model: nn.Module, lr: float) -> nn.Module:
        return train_model(model, session.data.train, cfg.train, epochs=cfg.finetune.epochs, lr=lr,
                           seed=cfg.seed, desc="fine-tune", progress=progress)

    return iterative_long_term(cfg, session.model, session.graph, plan, pruned, train,
                               evaluator.calibration, evaluator.criterion)


# Functions (session, pruned model, plan) -> dict merged into summary.json (latency, storage, ...).
SUMMARY_EXTRAS: list[Callable[[Session, nn.Module, PruningPlan], dict[str, Any]]] = []
SUMMARY_EXTRAS.append(latency_summary)
SUMMARY_EXTRAS.append(lambda session, pruned, plan: {"storage": storage_report(
    pruned, sparse_layer_formats(session.graph, plan, session.cfg.pruning), session.cfg.pruning.n,
    session.cfg.pruning.m)})


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / "summary.json")


def parse_searcher_options(cfg: ExperimentConfig) -> Any:
    return get_searcher(cfg.searcher_name).parse_options(cfg.searcher)


__all__ = ["Session", "prepare", "run_search", "load_pruned", "read_summary", "from_dict"]
