"""Apply a pruning plan: the one function every searcher's plan goes through.

``pruning.granularity`` picks how: ``channel`` removes channels for real with torch-pruning
(``Group.prune``); ``fine`` and ``nm`` attach weight masks (see :mod:`autoprune.core.sparsity`). The
caller's model is never modified (we prune a deep copy).

Channel pruning can record what it removed (``log``): a list of ``(unit name, removed channel
indices)`` in the pruned model's current numbering. :func:`replay` applies a recorded sequence of
removals to another model of the same architecture (lottery-ticket rewinding uses it to cut the
early weights exactly like the trained ones).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.config import PruningConfig
from autoprune.core.criteria import Batch, Criterion, get_criterion
from autoprune.core.graph import LayerSpec, UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.sparsity import SPARSE_GRANULARITIES, check_granularity, sparse_prune
from autoprune.core.tracing import build_dependency_graph
from autoprune.device import Device, model_device
from autoprune.errors import AutopruneError

Removal = tuple[str, list[int]]


def _select(criterion: Criterion, group, unit: LayerSpec, keep: int) -> list[int]:
    """The channels of ``unit`` to remove: the lowest-scoring ones, or, where the unit's channels
    form equal blocks (heads, groups), the lowest-scoring positions by their summed score, removed
    from every block alike."""
    channels, blocks = unit.out_channels, unit.blocks
    scores = criterion.scores(group)
    if scores is None or scores.numel() != channels:
        raise AutopruneError(f"criterion gave no per-channel scores for unit {unit.name!r}")
    scores = torch.nan_to_num(scores.float(), nan=0.0)
    if blocks == 1:
        return sorted(torch.argsort(scores, stable=True)[: channels - keep].tolist())
    if keep % blocks:
        raise AutopruneError(
            f"unit {unit.name!r} keeps {keep} channels: its {channels} channels are {blocks} heads or "
            f"groups, so it must keep a multiple of {blocks}")
    width = channels // blocks
    drop = torch.argsort(scores.view(blocks, width).sum(0), stable=True)[: width - keep // blocks]
    return sorted(b * width + int(p) for b in range(blocks) for p in drop)


def _whole_group(dg, modules: dict[str, nn.Module], unit: LayerSpec):
    """``(root module, its out-channel pruning function, the group of all its channels)`` of ``unit``."""
    root = modules[unit.name]
    prune_fn = dg.get_pruner_of_module(root).prune_out_channels
    return root, prune_fn, dg.get_pruning_group(root, prune_fn, idxs=list(range(unit.out_channels)))


def channel_scores(model: nn.Module, graph: UnitGraph, criterion: Criterion) -> dict[str, torch.Tensor]:
    """Each unit's per-channel scores by ``criterion`` on ``model`` (unpruned; higher = kept first).

    What :func:`channel_prune` ranks a unit's channels by, for every unit at once; a criterion that
    needs data must have been ``prepare``-d on ``model``. ``model`` is not modified.
    """
    dg = build_dependency_graph(model, graph.input_shape)
    modules = dict(model.named_modules())
    out = {}
    for unit in graph.units:
        scores = criterion.scores(_whole_group(dg, modules, unit)[2])
        if scores is None or scores.numel() != unit.out_channels:
            raise AutopruneError(f"criterion gave no per-channel scores for unit {unit.name!r}")
        out[unit.name] = torch.nan_to_num(scores.float(), nan=0.0)
    return out


def channel_prune(
    model: nn.Module,
    graph: UnitGraph,
    plan: PruningPlan,
    criterion: Criterion,
    calibration: Sequence[Batch] | None = None,
    log: list[Removal] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` with each unit cut to the plan's channel count.

    :param log: if given, ``(unit name, removed indices)`` of every pruned unit are appended.
    """
    plan.check(graph)
    pruned = copy.deepcopy(model)
    todo = [(u, plan.channels.get(u.name, u.out_channels)) for u in graph.units]
    todo = [(u, k) for u, k in todo if k < u.out_channels]
    if not todo:
        return pruned
    if calibration:  # the batches follow the model to its device
        calibration = Device(model_device(pruned)).batches(calibration)
    if criterion.needs_data:
        if not calibration:
            raise AutopruneError("this criterion needs calibration batches")
        criterion.prepare(pruned, calibration)
    dg = build_dependency_graph(pruned, graph.input_shape)
    modules = dict(pruned.named_modules())
    selections = []
    for unit, keep in todo:
        root, prune_fn, group = _whole_group(dg, modules, unit)
        selections.append((unit.name, root, prune_fn, _select(criterion, group, unit, keep)))
    for name, root, prune_fn, idxs in selections:
        group = dg.get_pruning_group(root, prune_fn, idxs=idxs)
        criterion.selected(group)
        group.prune()
        if log is not None:
            log.append((name, list(idxs)))
    criterion.after_prune(pruned, calibration)
    pruned.zero_grad(set_to_none=True)
    return pruned


def replay(model: nn.Module, input_shape: Sequence[int], steps: Sequence[Sequence[Removal]]) -> nn.Module:
    """Apply recorded removals (one list per pruning step) to a copy of ``model``."""
    pruned = copy.deepcopy(model)
    for removals in steps:
        dg = build_dependency_graph(pruned, input_shape)
        modules = dict(pruned.named_modules())
        for name, idxs in removals:
            root = modules[name]
            dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs=list(idxs)).prune()
    return pruned


def apply_plan(
    model: nn.Module,
    graph: UnitGraph,
    plan: PruningPlan,
    pruning: PruningConfig | None = None,
    calibration: Sequence[Batch] | None = None,
    criterion: Criterion | None = None,
    log: list[Removal] | None = None,
) -> nn.Module:
    """Prune a copy of ``model`` to ``plan`` at ``pruning.granularity`` with ``pruning.criterion``.

    ``fine`` / ``nm`` read each unit's kept count as a weight density and use weight magnitude
    (the criterion scores channels, so it only applies to ``channel``).
    """
    pruning = pruning or PruningConfig()
    check_granularity(pruning)
    if pruning.granularity in SPARSE_GRANULARITIES:
        return sparse_prune(model, graph, plan, pruning)
    return channel_prune(model, graph, plan, criterion or get_criterion(pruning), calibration, log)
