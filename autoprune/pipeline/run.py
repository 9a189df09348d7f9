"""One search, end to end: config -> base model -> search -> prune -> fine-tune -> test -> run dir.

:func:`run_search` checks the run dir and prepares the session (:mod:`autoprune.pipeline.session`)
before it writes anything, runs the searcher, then finishes: the best plan is pruned, fine-tuned
(long-term), tested and saved (:mod:`autoprune.pipeline.artifacts`) with ``summary.json``. A new run
that fails before a trial finished leaves no run dir behind (:mod:`autoprune.pipeline.rundir`).

The FLOPs and params in ``summary.json`` come from the session's plan-only cost models, the same
counter the search and ``trials.parquet`` use (for ``fine`` / ``nm``: non-zero weights and MACs).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.atomic import atomic_write_json, atomic_write_text, atomic_write_with
from autoprune.config import ExperimentConfig, dump_config
from autoprune.core.cost import SPARSE_GRANULARITIES
from autoprune.core.iterative import long_term as iterative_long_term
from autoprune.core.plan import PruningPlan
from autoprune.core.sparsity import make_permanent, sparse_layer_formats, storage_report
from autoprune.core.train import dataset_accuracy, train_model
from autoprune.errors import AutopruneError
from autoprune.latency.timing import latency_summary
from autoprune.pipeline.artifacts import model_spec, save_pruned
from autoprune.pipeline.rundir import (
    check_run_dir,
    create_run_dir,
    default_run_dir,
    remove_new,
    saved_base_model,
)
from autoprune.pipeline.session import Session, prepare, seed_everything
from autoprune.search.evaluate import Evaluator
from autoprune.search.records import TrialRecorder

log = logging.getLogger(__name__)


def run_search(
    cfg: ExperimentConfig,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Run one search end to end and return its run directory.

    :param cfg: the experiment.
    :param out: the run directory (default ``runs/<name>__<searcher>__<seed>__<time>``); must be empty.
    :param resume: an interrupted run directory to continue (same config).
    :param progress: show progress bars.
    """
    start = time.time()
    run_dir = Path(resume or out or default_run_dir(cfg))
    check_run_dir(run_dir, cfg, bool(resume))
    session = prepare(cfg, saved_base_model(run_dir, bool(resume)), progress)
    trials = run_dir / "trials.parquet"
    recorder = TrialRecorder.resume(trials) if resume else TrialRecorder(trials)
    created = create_run_dir(run_dir)
    try:
        if not resume:
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            if not cfg.model.checkpoint:
                atomic_write_with(run_dir / "base_model.pt", lambda b: torch.save(session.model.state_dict(), b))
        plan, evaluator = search(session, run_dir, recorder, bool(resume), progress)
        return finish(session, evaluator, plan, run_dir, len(recorder.rows), start, progress)
    except AutopruneError:
        if not resume and not recorder.rows:  # nothing finished: leave no half-written run dir
            remove_new(run_dir, created)
        raise


def search(session: Session, run_dir: Path | None, recorder: TrialRecorder, resume: bool = False,
           progress: bool = True) -> tuple[PruningPlan, Evaluator]:
    """Run the session's searcher; write ``best_plan.json``. Returns the plan and the evaluator."""
    cfg = session.cfg
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
    if run_dir is not None:
        atomic_write_text(run_dir / "best_plan.json", plan.to_json())
    return plan, evaluator


def finish(session: Session, evaluator: Evaluator, plan: PruningPlan, run_dir: Path, evaluations: int,
           start: float, progress: bool = True) -> Path:
    """Prune to ``plan``, fine-tune, test; write ``pruned_model.pt`` and ``summary.json``.

    ``evaluations`` (the search's) and the time since ``start`` go into the summary.
    """
    cfg, data = session.cfg, session.data
    pruned = evaluator.prune(plan)
    val_before = evaluator.score(pruned)
    test_before = dataset_accuracy(pruned, data.test)
    pruned, test_after, failure = _finetune_or_keep(session, evaluator, plan, pruned, progress)
    save_pruned(run_dir / "pruned_model.pt", pruned, model_spec(cfg, data, session.input_shape), plan,
                cfg.pruning.granularity)

    base, kept = plan_costs_summary(session, plan)
    summary = {
        "name": cfg.name, "searcher": cfg.searcher_name, "seed": cfg.seed,
        "budget": {"kind": session.budget.kind, "fraction": session.budget.fraction,
                   "target": session.budget.target},
        "base": {**base, "val_accuracy": evaluator.base_accuracy(),
                 "test_accuracy": dataset_accuracy(session.model, data.test)},
        "pruned": {**kept, "val_accuracy_before_finetune": val_before,
                   "test_accuracy_before_finetune": test_before, "test_accuracy_after_finetune": test_after},
        "evaluations": evaluations,
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


def plan_costs_summary(session: Session, plan: PruningPlan) -> tuple[dict[str, int], dict[str, Any]]:
    """FLOPs and params of the base model and of ``plan`` (with kept fractions), from the session's
    plan-only cost models: the counter the search used. For ``fine`` / ``nm`` these are non-zero weights
    and MACs; ``dense_flops`` / ``dense_params`` then give the built model's shapes (zeros included)."""
    counts = plan.counts(session.graph)
    base: dict[str, int] = {}
    pruned: dict[str, Any] = {}
    for kind in ("flops", "params"):
        cost = session.costs[kind]
        base[kind], pruned[kind] = int(round(cost.base)), int(round(cost(counts)))
    for kind in ("flops", "params"):
        pruned[f"{kind}_kept"] = pruned[kind] / base[kind]
    if session.cfg.pruning.granularity in SPARSE_GRANULARITIES:  # same architecture: every weight is stored
        pruned["dense_flops"], pruned["dense_params"] = base["flops"], base["params"]
    return base, pruned


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
    ``finetune.rewind_epoch`` (see :mod:`autoprune.core.iterative`); fine/N:M masks are kept throughout and
    folded into the weights at the end.
    """
    cfg = session.cfg

    def train(model: nn.Module, lr: float) -> nn.Module:
        return train_model(model, session.data.train_augmented, cfg.train, epochs=cfg.finetune.epochs, lr=lr,
                           seed=cfg.seed, desc="fine-tune", progress=progress)

    return iterative_long_term(cfg, session.model, session.graph, plan, pruned, train,
                               evaluator.calibration, evaluator.criterion)


def storage_summary(session: Session, pruned: nn.Module, plan: PruningPlan) -> dict[str, Any]:
    """``summary.json`` entry: dense vs sparse bytes of the pruned weights."""
    p = session.cfg.pruning
    return {"storage": storage_report(pruned, sparse_layer_formats(session.graph, plan, p), p.n, p.m)}


SUMMARY_EXTRAS: list[Callable[[Session, nn.Module, PruningPlan], dict[str, Any]]] = [latency_summary, storage_summary]
"""Functions (session, pruned model, plan) -> dict merged into ``summary.json`` (latency, storage, ...)."""
