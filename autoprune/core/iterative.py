"""Iterative pruning schedules and lottery-ticket rewinding (the long-term fine-tune).

``finetune.schedule: {steps: k, kind: cubic|linear}`` reaches the plan in ``k`` pruning steps
with fine-tuning (``finetune.epochs`` at ``train.lr x finetune.lr_scale``) after each. At step
``i`` every unit keeps ``round(full - (full - final) * g(i / k))`` channels (or that many
``/ full`` as its density for ``fine``), with ``g(t) = t`` (linear) or ``g(t) = 1 - (1 - t)^3``
(cubic, Zhu & Gupta 2017: prune fast while the network is still redundant, slowly near the end);
step ``k`` is the plan exactly.

``finetune.rewind_epoch: N`` is lottery-ticket rewinding (Frankle & Carbin 2019; Renda et al.
2020): after each pruning step the surviving weights are reset to the values they had after
epoch ``N`` of base training (``0``: at its start) and retrained for ``finetune.epochs`` at the
original ``train.lr``. The early weights are recorded in memory while the run trains its base
model (:func:`recording`); a base model loaded from a checkpoint (or a resumed run) has no record,
and asking to rewind it is a configuration error.

Both settings are typed and checked when the config is loaded
(:class:`~autoprune.config.ScheduleConfig`, :meth:`~autoprune.config.ExperimentConfig.validate`).
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from autoprune.config import ExperimentConfig, PruningConfig, ScheduleConfig
from autoprune.core.criteria import Batch, Criterion
from autoprune.core.graph import UnitGraph, build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import Removal, apply_plan, replay
from autoprune.core.skip import skip_units
from autoprune.core.sparsity import apply_masks, make_permanent, masks_of
from autoprune.errors import ConfigError

log = logging.getLogger(__name__)

_RECORDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NO_RECORD = ("finetune.rewind_epoch needs the early weights recorded while this run trains its base model, but "
              "the base model was loaded from a checkpoint (model.checkpoint, or a resumed run); "
              "drop finetune.rewind_epoch or let the run train its base model")


# ----------------------------------------------------------------------------------- recording
@contextmanager
def recording(model: nn.Module, rewind_epoch: int | None, steps_per_epoch: int) -> Iterator[None]:
    """Record ``model``'s weights after ``rewind_epoch`` epochs while it trains inside this block."""
    if rewind_epoch is None:
        yield
        return
    if rewind_epoch == 0:
        _RECORDS[model] = _snapshot(model)
        yield
        return
    first = next(model.parameters())
    seen = {"steps": 0}

    def hook(optimizer, args, kwargs) -> None:
        if not any(p is first for g in optimizer.param_groups for p in g["params"]):
            return
        seen["steps"] += 1
        if seen["steps"] == rewind_epoch * steps_per_epoch:
            _RECORDS[model] = _snapshot(model)

    handle = register_optimizer_step_post_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def recorded(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The weights recorded for ``model`` by :func:`recording` (None if none)."""
    return _RECORDS.get(model)


def check_recorded(cfg: ExperimentConfig, model: nn.Module) -> None:
    if cfg.finetune.rewind_epoch is not None and recorded(model) is None:
        raise ConfigError(_NO_RECORD)


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return max(1, math.ceil(n_train / batch_size))


# ------------------------------------------------------------------------------------ schedule
def progress(t: float, kind: str) -> float:
    """Share of the pruning done at time ``t`` in [0, 1]."""
    return t if kind == "linear" else 1.0 - (1.0 - t) ** 3


def schedule_counts(full: Sequence[int], final: Sequence[int], schedule: ScheduleConfig) -> list[list[int]]:
    """Channel counts after each of the ``schedule.steps`` steps (the last is ``final``)."""
    steps = []
    for i in range(1, schedule.steps + 1):
        g = progress(i / schedule.steps, schedule.kind)
        steps.append([int(f) if i == schedule.steps else int(round(a - (a - f) * g))
                      for a, f in zip(full, final, strict=True)])
    return steps


def rewound(early: nn.Module, pruned: nn.Module, granularity: str, input_shape: Sequence[int],
            removals: Sequence[Sequence[Removal]]) -> nn.Module:
    """The early weights cut like ``pruned``: replayed channel removals, or ``pruned``'s masks."""
    if granularity == "channel":
        return replay(early, input_shape, removals)
    return apply_masks(copy.deepcopy(early), masks_of(pruned))


@dataclass
class IterativeResult:
    model: nn.Module
    widths: list[list[int]]  # measured kept channels (or kept-count densities x channels) per step
    removals: list[list[Removal]]


def iterative_prune(
    base: nn.Module,
    graph: UnitGraph,
    plan: PruningPlan,
    schedule: ScheduleConfig,
    pruning: PruningConfig,
    calibration: Sequence[Batch],
    criterion: Criterion,
    retrain: Callable[[nn.Module], nn.Module],
    early: nn.Module | None = None,
) -> IterativeResult:
    """Prune ``base`` to ``plan`` in ``schedule.steps`` steps, retraining after each step.

    With ``early`` (the base architecture holding recorded early weights), each step's survivors
    are rewound to ``early`` before ``retrain``.
    """
    model, removals, widths = base, [], []
    for counts in schedule_counts(graph.channels, plan.counts(graph), schedule):
        current = (skip_units(build_unit_graph(model, graph.input_shape), graph.skip)
                   if pruning.granularity == "channel" else graph)
        step_plan = PruningPlan.from_counts(current, dict(zip(graph.names, counts, strict=True)))
        step_log: list[Removal] = []
        model = apply_plan(model, current, step_plan, pruning, calibration, criterion, step_log)
        removals.append(step_log)
        if early is not None:
            model = rewound(early, model, pruning.granularity, graph.input_shape, removals)
        widths.append(measure_widths(model, graph, pruning.granularity))
        model = retrain(model)
    return IterativeResult(model, widths, removals)


def measure_widths(model: nn.Module, graph: UnitGraph, granularity: str) -> list[int]:
    """Kept channels per unit (``fine``: kept weights of the unit's first layer as channels)."""
    modules = dict(model.named_modules())
    out = []
    for unit in graph.units:
        module = modules[unit.name]
        if granularity == "channel":
            out.append(int(module.weight.shape[0]))
        else:
            mask = getattr(module, "weight_mask", None)
            kept = 1.0 if mask is None else float(mask.mean())
            out.append(int(round(kept * unit.out_channels)))
    return out


def long_term(cfg: ExperimentConfig, base: nn.Module, graph: UnitGraph, plan: PruningPlan, pruned: nn.Module,
              train_fn: Callable[[nn.Module, float], nn.Module], calibration: Sequence[Batch],
              criterion: Criterion) -> nn.Module:
    """The final fine-tune of ``plan``: one-shot or scheduled, with or without rewinding.

    :param train_fn: ``(model, lr) -> model`` trains ``finetune.epochs`` at ``lr``.
    :returns: the fine-tuned model with masks folded into plain weights.
    """
    schedule = cfg.finetune.schedule or ScheduleConfig(1, "linear")
    early = None
    if cfg.finetune.rewind_epoch is not None:
        state = recorded(base)
        if state is None:
            raise ConfigError(_NO_RECORD)
        early = copy.deepcopy(base)
        early.load_state_dict(state)
        lr = cfg.train.lr
    else:
        lr = cfg.train.lr * cfg.finetune.lr_scale
    if schedule.steps == 1 and early is None:
        return make_permanent(train_fn(pruned, lr))
    result = iterative_prune(base, graph, plan, schedule, cfg.pruning, calibration, criterion,
                             lambda m: train_fn(m, lr), early)
    log.info("iterative pruning widths per step: %s", result.widths)
    return make_permanent(result.model)
