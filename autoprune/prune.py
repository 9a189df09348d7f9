"""Apply a pruning plan: the one function every searcher's plan goes through.

Channels are removed for real by torch-pruning (``Group.prune``); the caller's model is never
modified (we prune a deep copy).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.config import PruningConfig
from autoprune.criteria import Batch, Criterion, get_criterion
from autoprune.errors import AutopruneError
from autoprune.graph import UnitGraph, build_dependency_graph
from autoprune.plan import PruningPlan


def channel_prune(
    model: nn.Module,
    graph: UnitGraph,
    plan: PruningPlan,
    criterion: Criterion,
    calibration: Sequence[Batch] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with each unit cut to the plan's channel count."""
    plan.check(graph)
    pruned = copy.deepcopy(model)
    todo = [(u, plan.channels.get(u.name, u.out_channels)) for u in graph.units]
    todo = [(u, k) for u, k in todo if k < u.out_channels]
    if not todo:
        return pruned
    if criterion.needs_data:
        if not calibration:
            raise AutopruneError("this criterion needs calibration batches")
        criterion.prepare(pruned, calibration)
    dg = build_dependency_graph(pruned, graph.input_shape)
    modules = dict(pruned.named_modules())
    selections = []
    for unit, keep in todo:
        root = modules[unit.name]
        prune_fn = dg.get_pruner_of_module(root).prune_out_channels
        group = dg.get_pruning_group(root, prune_fn, idxs=list(range(unit.out_channels)))
        scores = criterion.scores(group)
        if scores is None or scores.numel() != unit.out_channels:
            raise AutopruneError(f"criterion gave no per-channel scores for unit {unit.name!r}")
        scores = torch.nan_to_num(scores.float(), nan=0.0)
        order = torch.argsort(scores, stable=True)
        selections.append((root, prune_fn, sorted(order[: unit.out_channels - keep].tolist())))
    for root, prune_fn, idxs in selections:
        dg.get_pruning_group(root, prune_fn, idxs=idxs).prune()
    criterion.after_prune(pruned, calibration)
    pruned.zero_grad(set_to_none=True)
    return pruned


def apply_plan(
    model: nn.Module,
    graph: UnitGraph,
    plan: PruningPlan,
    pruning: PruningConfig | None = None,
    calibration: Sequence[Batch] | None = None,
    criterion: Criterion | None = None,
) -> nn.Module:
    """Prune a copy of ``model`` to ``plan`` at ``pruning.granularity`` with ``pruning.criterion``."""
    pruning = pruning or PruningConfig()
    if pruning.granularity != "channel":
        raise AutopruneError(
            f"pruning.granularity {pruning.granularity!r} is not supported; use 'channel'"
        )
    return channel_prune(model, graph, plan, criterion or get_criterion(pruning), calibration)
