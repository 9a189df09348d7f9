"""One search, end to end: config -> base model -> search -> prune -> fine-tune -> test -> run dir.

:func:`run_search` checks the run dir and prepares the session (:mod:`autoprune.pipeline.session`)
before it writes anything, runs the searcher, then finishes: the best plan is pruned, fine-tuned
(long-term), tested and saved (:mod:`autoprune.pipeline.artifacts`) with ``summary.json``. A new run
that fails before a trial finished leaves no run dir behind (:mod:`autoprune.pipeline.rundir`).

The FLOPs and params in ``summary.json`` come from the session's plan-only cost models, the same
counter the search and ``trials.parquet`` use (for ``fine`` / ``nm``: non-zero weights and MACs).
Its ``timing`` (:func:`timing_summary`) counts the whole run over every ``--resume`` (the segments in
``run_state.json``, :class:`~autoprune.pipeline.rundir.RunClock`); ``wall_seconds`` is that total,
``timing.run_seconds``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import shutil
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
from autoprune.device import cpu_state
from autoprune.errors import AutopruneError
from autoprune.latency.timing import latency_summary
from autoprune.pipeline import finetune
from autoprune.pipeline.artifacts import model_spec, save_pruned
from autoprune.pipeline.rundir import (
    RunClock,
    check_run_dir,
    create_run_dir,
    default_run_dir,
    read_run_state,
    remove_new,
    saved_base_model,
)
from autoprune.pipeline.session import Session, prepare, seed_everything
from autoprune.pipeline.tracking import track
from autoprune.search.evaluate import Evaluator
from autoprune.search.records import TrialRecorder
from autoprune.search.rerank import rerank, search_rows, without_rerank_rows

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
    previous = read_run_state(run_dir, bool(resume))
    level_file = run_dir / "lut_level.json"
    level = json.loads(level_file.read_text()) if resume and level_file.is_file() else None
    rounding_file = run_dir / "round_to.json"
    rounding = json.loads(rounding_file.read_text()) if resume and rounding_file.is_file() else None
    session = prepare(cfg, saved_base_model(run_dir, bool(resume)), progress, lut_level=level, rounding=rounding)
    trials = run_dir / "trials.parquet"
    recorder = TrialRecorder.resume(trials) if resume else TrialRecorder(trials)
    clock = RunClock(run_dir, start, "resume" if resume else "start", lambda: len(recorder.rows), previous)
    clock.add("setup", time.time() - start)
    clock.add("base_training", session.base_training_seconds)
    created = create_run_dir(run_dir)
    status = "failed"
    try:
        if not resume:
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            if session.lut_level:  # budget.reanchor: a resumed run prices plans at the same level
                atomic_write_json(level_file, session.lut_level)
            if session.rounding and session.rounding["auto"]:  # a resumed run rounds as this one chose
                atomic_write_json(rounding_file, session.rounding)
            if not cfg.model.checkpoint:
                atomic_write_with(run_dir / "base_model.pt", lambda b: torch.save(cpu_state(session.model), b))
            clock.beat()
        recorder.heartbeat = clock.beat  # a resume writes run_state.json from its first saved trial
        with track(cfg, run_dir, recorder):  # MLflow / TensorBoard, when cfg.tracking turns them on
            with clock.phase("search"):
                plan, evaluator = search(session, run_dir, recorder, bool(resume), progress)
            clock.beat()
            done = finish(session, evaluator, plan, run_dir, recorder, clock, progress)
        status = "finished"
        return done
    except AutopruneError:
        if not resume and not recorder.rows:  # nothing finished: leave no half-written run dir
            clock.close("failed", write=False)
            remove_new(run_dir, created)
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        recorder.heartbeat = None
        clock.close(status)  # (finish closed it already when it wrote summary.json)


def searcher_options_record(options: Any) -> dict:
    """The searcher's options as it ran (its preset resolved), for the run's summary: a default that
    changes later cannot make a finished run's searcher ambiguous."""
    if dataclasses.is_dataclass(options):
        return json.loads(json.dumps(dataclasses.asdict(options), default=str))
    return {}


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
        with without_rerank_rows(recorder) if resume else contextlib.nullcontext():
            plan = searcher.search()
        if cfg.rerank.top_k:  # re-score the proxy's best plans after the same short fine-tune
            plan, report = rerank(ctx, plan, cfg.rerank)
            plan.meta["rerank"] = report.to_dict()
    finally:  # a Ray pool frees its actors (it keeps a local evaluator for what follows)
        getattr(evaluator, "close", lambda: None)()
    recorder.flush()
    if cfg.budget.verify:  # land the plan on the latency budget by timing it here (the pool's workers gone)
        plan = verified(session, plan, progress)
    if not session.budget.fits(plan.counts(session.graph)):
        raise AutopruneError(f"searcher {cfg.searcher_name!r} returned an over-budget plan (a bug)")
    plan.meta.setdefault("searcher", cfg.searcher_name)
    if run_dir is not None:
        atomic_write_text(run_dir / "best_plan.json", plan.to_json())
    return plan, evaluator


def verified(session: Session, plan: PruningPlan, progress: bool = True) -> PruningPlan:
    """``budget.verify``: ``plan`` timed here and fitted to the latency budget by measurement
    (:func:`~autoprune.latency.verify.verify_plan`); the session's budget takes the level it was fitted at.
    A plan that changes loses weights a searcher carried to it (NetAdapt's ``continue_weights``: they are
    the old plan's shape); ``meta["verify"]`` records the rounds, the searched plan first."""
    from autoprune.latency.verify import verify_plan

    p, b = session.cfg.pruning, session.cfg.budget
    counts, budget, record = verify_plan(session.budget, session.graph, session.model, plan.counts(session.graph),
                                         min_ratio=p.min_ratio, max_ratio=p.max_ratio, round_to=p.round_to,
                                         rounds=b.verify, tolerance=b.verify_tolerance, progress=progress)
    session.budget = budget
    session.costs[budget.kind] = budget.cost
    if not record["changed"]:
        plan.meta["verify"] = record
        return plan
    log.info("budget.verify: the plan was fitted to the budget by measurement (%.3f of the unpruned model, "
             "searched plan %.3f)", record["measured"], record["rounds"][0]["measured"])
    meta = {k: v for k, v in plan.meta.items() if k != "weights"}
    return PruningPlan.from_counts(session.graph, counts, **{**meta, "verify": record})


def finish(session: Session, evaluator: Evaluator, plan: PruningPlan, run_dir: Path, recorder: TrialRecorder,
           clock: RunClock, progress: bool = True) -> Path:
    """Prune to ``plan``, fine-tune, test; write ``pruned_model.pt`` and ``summary.json``.

    The search's trials (``recorder``) and the times of every segment of the run (``clock``, which
    this closes as ``finished``) go into the summary: :func:`timing_summary`.
    """
    cfg, data = session.cfg, session.data
    pruned = _pruned_start(session, evaluator, plan, run_dir)
    val_before = evaluator.score(pruned)
    with clock.phase("test"):
        test_before = dataset_accuracy(pruned, data.test, runtime=session.runtime)
        test_base = dataset_accuracy(session.model, data.test, runtime=session.runtime)
    pruned, test_after, failure = _finetune_or_keep(session, evaluator, plan, pruned, progress, clock, run_dir)
    pruned.to("cpu", memory_format=torch.contiguous_format)  # saved, measured and returned like the base model
    save_pruned(run_dir / "pruned_model.pt", pruned, model_spec(cfg, data, session.input_shape), plan,
                cfg.pruning.granularity)

    base, kept = plan_costs_summary(session, plan)
    summary = {
        "name": cfg.name, "searcher": cfg.searcher_name, "seed": cfg.seed,
        "budget": {"kind": session.budget.kind, "fraction": session.budget.fraction,
                   "target": session.budget.target, **({"lut_level": session.lut_level} if session.lut_level else {})},
        "base": {**base, "val_accuracy": evaluator.base_accuracy(), "test_accuracy": test_base},
        "pruned": {**kept, "val_accuracy_before_finetune": val_before,
                   "test_accuracy_before_finetune": test_before, "test_accuracy_after_finetune": test_after},
        "evaluations": len(search_rows(recorder.rows)),
        "units": len(session.graph),
        "round_to": session.rounding or {"value": session.cfg.pruning.round_to, "auto": False},
        "searcher_options": searcher_options_record(session.searcher_options),
    }
    for key in ("rerank", "verify"):
        if key in plan.meta:
            summary[key] = plan.meta[key]
    if failure:
        summary["finetune_failed"] = failure
    for extra in SUMMARY_EXTRAS:
        summary.update(extra(session, pruned, plan))
    now = time.time()
    summary["timing"] = timing_summary(clock, recorder.rows, now)
    summary["wall_seconds"] = summary["timing"]["run_seconds"]
    atomic_write_json(run_dir / "summary.json", summary)
    shutil.rmtree(run_dir / finetune.CKPT_DIR, ignore_errors=True)  # the run is complete: epoch checkpoints go
    clock.close("finished", now)
    if failure:
        raise AutopruneError(f"{failure}; the run dir {str(run_dir)!r} is complete with the pruned weights from "
                             "before the failed fine-tune (summary.json: finetune_failed)")
    return run_dir


def _pruned_start(session: Session, evaluator: Evaluator, plan: PruningPlan, run_dir: Path) -> nn.Module:
    """The network the long-term fine-tune starts from: the base model pruned to ``plan``, or the weights
    the searcher carried to it (NetAdapt's ``continue_weights``: ``plan.meta["weights"]`` in the run dir).

    Carried weights are not used with ``finetune.schedule`` or ``finetune.rewind_epoch``: both restart
    from the base model's (or the early) weights by definition.
    """
    weights = plan.meta.get("weights")
    ft = session.cfg.finetune
    if weights and ft.schedule is None and ft.rewind_epoch is None and (run_dir / weights).is_file():
        from autoprune.agents.netadapt import load_weights

        return load_weights(evaluator, session.graph, plan, run_dir / weights)
    return evaluator.prune(plan)


def timing_summary(clock: RunClock, rows: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """``summary.json``'s ``timing``: seconds summed over every segment of the run (its start and each
    ``--resume``, killed ones up to their last heartbeat), and the segments themselves.

    ``run_seconds`` is the whole run (``wall_seconds`` repeats it); ``setup_seconds`` loading data and
    preparing the base model, of which ``base_training_seconds`` training it; ``search_seconds`` the
    searcher's wall time (its evaluator included), of which ``evaluation_seconds`` is the sum of the
    trials' ``seconds`` (scoring plans; with Ray workers they overlap, so the sum may exceed it);
    ``finetune_seconds`` the long-term fine-tune; ``test_seconds`` the test-set accuracies;
    ``other_seconds`` the rest (pruning and scoring the best plan, latency, saving).
    """
    t = clock.totals(now, "finished")
    seconds = [float(r["seconds"]) for r in rows if _number(r.get("seconds"))]
    cached = sum(1 for r in rows if _number(r.get("cached")) and bool(r["cached"]))
    other = t["run_seconds"] - sum(t[f"{p}_seconds"] for p in ("setup", "search", "finetune", "test"))
    return {"run_seconds": t["run_seconds"], "setup_seconds": t["setup_seconds"],
            "base_training_seconds": t["base_training_seconds"], "search_seconds": t["search_seconds"],
            "evaluation_seconds": float(sum(seconds)), "evaluations": len(rows), "cached_evaluations": cached,
            "finetune_seconds": t["finetune_seconds"], "test_seconds": t["test_seconds"],
            "other_seconds": max(0.0, other), "segments": t["segments"]}


def _number(value: Any) -> bool:
    """A present, non-NaN number (or bool) in a trial row."""
    try:
        return value is not None and not math.isnan(float(value))
    except (TypeError, ValueError):
        return False


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
                      progress: bool, clock: RunClock, run_dir: Path | None = None,
                      ) -> tuple[nn.Module, float | None, str | None]:
    """Long-term fine-tune; if it fails (e.g. a NaN loss), keep the pruned weights from before it.
    With ``run_dir`` it is checkpointed every epoch there, and resumed from its last finished epoch.

    Returns (model to save, its test accuracy after the fine-tune or None, the failure or None).
    """
    kept = copy.deepcopy(pruned)
    seed_everything(session.cfg.seed)
    try:
        with clock.phase("finetune"):
            tuned = long_term_finetune(session, evaluator, plan, pruned, progress, run_dir)
    except AutopruneError as exc:
        log.info("the fine-tune failed (%s); keeping the pruned weights from before it", exc)
        return make_permanent(kept), None, str(exc)
    with clock.phase("test"):
        return tuned, dataset_accuracy(tuned, session.data.test, runtime=session.runtime), None


def long_term_finetune(session: Session, evaluator: Evaluator, plan: PruningPlan, pruned: nn.Module,
                       progress: bool = True, run_dir: Path | None = None) -> nn.Module:
    """The final fine-tune of the best plan (NetAdapt's long-term fine-tune).

    One-shot, or iterative with ``finetune.schedule``, with optional lottery-ticket
    ``finetune.rewind_epoch`` (see :mod:`autoprune.core.iterative`); fine/N:M masks are kept throughout and
    folded into the weights at the end. A one-shot fine-tune runs in-process or on Ray Train
    (``finetune.workers``) and, with ``run_dir``, is checkpointed every epoch into
    ``run_dir/finetune_ckpt`` and resumed from there (:mod:`autoprune.pipeline.finetune`); an iterative
    one runs in-process and starts over when resumed.
    """
    cfg = session.cfg
    ft = cfg.finetune
    one_shot = (ft.schedule is None or ft.schedule.steps == 1) and ft.rewind_epoch is None

    def train(model: nn.Module, lr: float) -> nn.Module:
        if one_shot:  # called once, with the pruned model
            return finetune.train(model, cfg, epochs=ft.epochs, lr=lr, workers=ft.workers, desc="fine-tune",
                                  spec=model_spec(cfg, session.data, session.input_shape), plan=plan,
                                  ckpt_dir=None if run_dir is None else run_dir / finetune.CKPT_DIR,
                                  train_data=session.data.train_augmented, progress=progress,
                                  runtime=session.runtime)
        return train_model(model, session.data.train_augmented, cfg.train, epochs=ft.epochs, lr=lr,
                           seed=cfg.seed, desc="fine-tune", progress=progress, runtime=session.runtime)

    return iterative_long_term(cfg, session.model, session.graph, plan, pruned, train,
                               evaluator.calibration, evaluator.criterion)


def storage_summary(session: Session, pruned: nn.Module, plan: PruningPlan) -> dict[str, Any]:
    """``summary.json`` entry: dense vs sparse bytes of the pruned weights."""
    p = session.cfg.pruning
    return {"storage": storage_report(pruned, sparse_layer_formats(session.graph, plan, p), p.n, p.m)}


SUMMARY_EXTRAS: list[Callable[[Session, nn.Module, PruningPlan], dict[str, Any]]] = [latency_summary, storage_summary]
"""Functions (session, pruned model, plan) -> dict merged into ``summary.json`` (latency, storage, ...)."""
