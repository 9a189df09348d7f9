"""Fine-grained (unstructured) and N:M sparsity: masks, plan-only costs, storage accounting.

Granularities ``fine`` and ``nm`` keep the architecture and zero weights instead of removing
channels. A plan still holds one channel count per unit; for these granularities it is read as
the unit's *density* (weights kept): ``density = channels[unit] / out_channels``. The quantised
density (not the raw ratio) is used so that the plan-only cost models below price exactly what
is built, and so that plans the evaluator caches by channel counts are the same masks.

* ``fine``: per member layer of a unit (every conv/linear whose outputs belong to it) the
  ``max(1, round(density * numel))`` largest-magnitude weights are kept (``pruning.scope:
  layer``); with ``scope: global`` the same total number of weights is kept, chosen by one
  magnitude threshold over all member layers.
* ``nm``: a unit whose density is below 1 gets N:M sparsity in every member layer that allows it:
  in each group of ``m`` consecutive weights along the input-channel dimension (the layout sparse
  tensor cores use; conv weights are grouped per kernel position) the ``n`` smallest are zeroed.
  Layers whose input channels are not a multiple of ``m`` (the first conv, depthwise convs) stay
  dense. Units with density 1 stay dense.

Masks are kept through fine-tuning with ``torch.nn.utils.prune`` (``custom_from_mask``): the
layer computes ``weight = weight_orig * weight_mask`` on every forward, so a masked weight gets
no gradient and never comes back. :func:`make_permanent` folds the masks into plain weights
(used before saving and exporting). Biases, norm layers and the classifier stay dense.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from autoprune.config import PruningConfig
from autoprune.core.cost import (  # noqa: F401  (check_granularity, cost_kind, GRANULARITIES: re-exported)
    GRANULARITIES,
    SPARSE_GRANULARITIES,
    FlopsCost,
    ParamsCost,
    check_granularity,
    cost_kind,
)
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.tracing import PRUNABLE_TYPES

log = logging.getLogger(__name__)

INDEX_BYTES = 4  # int32 CSR column indices and row pointers


def kept_weights(numel: int, density: float) -> int:
    """Weights kept in a layer of ``numel`` weights at ``density`` (at least one)."""
    return int(min(numel, max(1, round(density * numel))))


def unit_members(graph: UnitGraph) -> dict[str, list[tuple[str, nn.Module]]]:
    """Unit name -> its member conv/linear layers (name, module) in ``graph.model``."""
    modules = dict(graph.model.named_modules())
    return {u.name: [(m, modules[m]) for m in u.members if isinstance(modules[m], PRUNABLE_TYPES)]
            for u in graph.units}


def densities(graph: UnitGraph, counts: Sequence[int] | PruningPlan) -> dict[str, float]:
    """Unit name -> density (kept count / channels) of a plan or count vector."""
    if isinstance(counts, PruningPlan):
        counts = counts.counts(graph)
    return {u.name: int(c) / u.out_channels for u, c in zip(graph.units, counts, strict=True)}


# ------------------------------------------------------------------------------------- masks
def magnitude_mask(weight: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask keeping the ``keep`` largest-magnitude entries of ``weight``."""
    flat = weight.detach().abs().flatten()
    mask = torch.zeros_like(flat)
    mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
    return mask.view_as(weight)


def nm_groups_view(weight: torch.Tensor, m: int) -> torch.Tensor | None:
    """``weight`` as rows of ``m`` consecutive input-channel weights, or None if not divisible.

    Conv weights ``[out, in, kh, kw]`` are permuted to ``[out, kh, kw, in]`` first, so every group
    holds ``m`` input channels at one kernel position.
    """
    if weight.dim() < 2 or weight.shape[1] % m:
        return None
    w = weight.permute(0, *range(2, weight.dim()), 1) if weight.dim() > 2 else weight
    return w.reshape(-1, m)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor | None:
    """N:M mask: the ``n`` smallest of every ``m`` input-channel weights are zeroed (None: not eligible)."""
    groups = nm_groups_view(weight.detach().abs(), m)
    if groups is None:
        return None
    mask = torch.ones_like(groups)
    mask.scatter_(1, torch.topk(groups, n, dim=1, largest=False).indices, 0.0)
    if weight.dim() > 2:
        shape = (weight.shape[0], *weight.shape[2:], weight.shape[1])
        return mask.reshape(shape).permute(0, weight.dim() - 1, *range(1, weight.dim() - 1)).contiguous()
    return mask.reshape(weight.shape)


def nm_eligible(module: nn.Module, m: int) -> bool:
    groups = getattr(module, "groups", 1)
    return groups == 1 and module.weight.shape[1] % m == 0


def fine_masks(graph: UnitGraph, model: nn.Module, plan: PruningPlan, scope: str = "layer") -> dict[str, torch.Tensor]:
    """Magnitude masks of every member layer of a unit with density < 1 (module name -> mask)."""
    dens = densities(graph, plan)
    modules = dict(model.named_modules())
    layers = [(name, modules[name].weight, dens[unit]) for unit, members in unit_members(graph).items()
              for name, _ in members if dens[unit] < 1.0]
    if not layers:
        return {}
    if scope == "layer":
        return {name: magnitude_mask(w, kept_weights(w.numel(), d)) for name, w, d in layers}
    total = sum(kept_weights(w.numel(), d) for _, w, d in layers)
    flat = torch.cat([w.detach().abs().flatten() for _, w, _ in layers])
    keep = torch.zeros_like(flat)
    keep[torch.topk(flat, total, sorted=False).indices] = 1.0
    masks, start = {}, 0
    for name, w, _ in layers:
        masks[name] = keep[start:start + w.numel()].view_as(w).clone()
        start += w.numel()
    return masks


def nm_masks(graph: UnitGraph, model: nn.Module, plan: PruningPlan, n: int, m: int) -> dict[str, torch.Tensor]:
    """N:M masks of every eligible member layer of a unit with density < 1."""
    dens = densities(graph, plan)
    modules = dict(model.named_modules())
    masks = {}
    for unit, members in unit_members(graph).items():
        if dens[unit] >= 1.0:
            continue
        for name, _ in members:
            if nm_eligible(modules[name], m):
                masks[name] = nm_mask(modules[name].weight, n, m)
            else:
                log.info("N:M: %s has %d input channels per group (not a multiple of %d); left dense",
                         name, modules[name].weight.shape[1], m)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach ``masks`` with ``torch.nn.utils.prune`` (kept through training); in place."""
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules[name]
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
        torch_prune.custom_from_mask(module, "weight", mask.to(module.weight.dtype))
    return model


def copy_masked(model: nn.Module) -> nn.Module:
    """Deep copy of a model that may carry masks (their cached ``weight`` may hold autograd history)."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_mask"):
                module.weight = module.weight_orig.detach() * module.weight_mask
    return copy.deepcopy(model)


def sparse_prune(model: nn.Module, graph: UnitGraph, plan: PruningPlan, pruning: PruningConfig) -> nn.Module:
    """A copy of ``model`` with fine or N:M masks for ``plan`` attached."""
    plan.check(graph)
    pruned = copy_masked(model)
    if pruning.granularity == "fine":
        masks = fine_masks(graph, pruned, plan, pruning.scope)
    else:
        masks = nm_masks(graph, pruned, plan, pruning.n, pruning.m)
    return apply_masks(pruned, masks)


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks currently attached (module name -> mask)."""
    return {name: mod.weight_mask.detach().clone() for name, mod in model.named_modules()
            if hasattr(mod, "weight_mask")}


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold attached masks into the weights (plain parameters with zeros); in place."""
    for module in model.modules():
        if hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


# -------------------------------------------------------------------------------- cost models
class SparseCost:
    """Non-zero params (or MACs with zero weights skipped) of a fine / N:M plan, from counts alone.

    :param graph: the unit graph of the dense model.
    :param kind: ``params`` or ``flops``.
    :param granularity: ``fine`` or ``nm``.
    :param n: zeros per group (``nm``).
    :param m: group size (``nm``).
    """

    def __init__(self, graph: UnitGraph, kind: str, granularity: str, n: int = 2, m: int = 4) -> None:
        self.kind, self.granularity, self.n, self.m = kind, granularity, n, m
        self.graph = graph
        info = {mi.name: mi for mi in graph.modules}
        dense = ParamsCost(graph) if kind == "params" else FlopsCost(graph)
        self._base = dense.base
        self.layers: list[list[tuple[int, float, bool]]] = []  # per unit: (numel, cost per weight, nm ok)
        for members in unit_members(graph).values():
            rows = []
            for name, module in members:
                numel = module.weight.numel()
                per = 1.0 if kind == "params" else info[name].macs / numel
                rows.append((numel, per, nm_eligible(module, m)))
            self.layers.append(rows)

    @property
    def base(self) -> float:
        return self._base

    def __call__(self, counts: Sequence[int]) -> float:
        removed = 0.0
        for unit, c, rows in zip(self.graph.units, counts, self.layers, strict=True):
            density = int(c) / unit.out_channels
            if density >= 1.0:
                continue
            for numel, per, ok in rows:
                if self.granularity == "fine":
                    removed += (numel - kept_weights(numel, density)) * per
                elif ok:
                    removed += numel * self.n // self.m * per
        return float(np.rint(self._base - removed))


def _sparse_cost_factory(kind: str, granularity: str):
    """The ``COST_MODELS`` factory of ``{kind}_{granularity}`` (named by an entry point in
    :mod:`autoprune.core.cost`); N:M reads ``n`` and ``m`` from ``pruning`` (2:4 without it)."""

    def factory(graph: UnitGraph, pruning: PruningConfig | None = None, **_) -> SparseCost:
        n, m = (pruning.n, pruning.m) if pruning is not None else (2, 4)
        return SparseCost(graph, kind, granularity, n, m)

    factory.__name__ = factory.__qualname__ = f"{kind}_{granularity}_cost"
    return factory


params_fine_cost = _sparse_cost_factory("params", "fine")
params_nm_cost = _sparse_cost_factory("params", "nm")
flops_fine_cost = _sparse_cost_factory("flops", "fine")
flops_nm_cost = _sparse_cost_factory("flops", "nm")


# ------------------------------------------------------------------------------------ storage
def tensor_storage(t: torch.Tensor, fmt: str = "dense", n: int = 2, m: int = 4, value_bytes: int = 4) -> dict[str, int]:
    """Bytes to store ``t`` as ``dense``, ``csr`` (rows = first dim) or ``nm`` (values + metadata).

    CSR: values and int32 column indices for every non-zero, int32 row pointers (rows + 1).
    N:M: the ``m - n`` kept values of every group plus ``ceil(log2(m))`` bits of position
    metadata per kept value (2 bits for 2:4, as sparse tensor cores store it).
    """
    numel, nnz = t.numel(), int(torch.count_nonzero(t))
    dense = numel * value_bytes
    if fmt == "dense":
        return {"dense_bytes": dense, "value_bytes": dense, "index_bytes": 0, "nonzeros": nnz, "params": numel}
    if fmt == "csr":
        rows = t.shape[0] if t.dim() > 1 else 1
        index = nnz * INDEX_BYTES + (rows + 1) * INDEX_BYTES
        return {"dense_bytes": dense, "value_bytes": nnz * value_bytes, "index_bytes": index,
                "nonzeros": nnz, "params": numel}
    if fmt == "nm":
        kept = numel // m * (m - n)
        index = math.ceil(kept * math.ceil(math.log2(m)) / 8)
        return {"dense_bytes": dense, "value_bytes": kept * value_bytes, "index_bytes": index,
                "nonzeros": nnz, "params": numel}
    raise ValueError(f"unknown storage format {fmt!r}")


def storage_report(model: nn.Module, sparse_layers: dict[str, str], n: int = 2, m: int = 4,
                   value_bytes: int = 4) -> dict[str, float | int | str]:
    """Dense vs sparse bytes of all parameters; ``sparse_layers`` maps layer name -> csr|nm.

    Weights of listed layers are stored sparse (index overhead included), everything else dense.
    """
    totals = {"dense_bytes": 0, "value_bytes": 0, "index_bytes": 0, "nonzeros": 0, "params": 0}
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            fmt = sparse_layers.get(mod_name, "dense") if p_name in ("weight", "weight_orig") else "dense"
            tensor = module.weight if p_name == "weight_orig" else p
            for key, val in tensor_storage(tensor.detach(), fmt, n, m, value_bytes).items():
                totals[key] += val
    sparse = totals["value_bytes"] + totals["index_bytes"]
    return {**totals, "sparse_bytes": sparse, "compression": totals["dense_bytes"] / max(sparse, 1),
            "density": totals["nonzeros"] / max(totals["params"], 1), "value_bits": value_bytes * 8,
            "index": "int32 CSR" if "csr" in sparse_layers.values() else
            (f"{math.ceil(math.log2(m))}-bit N:M metadata" if sparse_layers else "none")}


def sparse_layer_formats(graph: UnitGraph, plan: PruningPlan, pruning: PruningConfig) -> dict[str, str]:
    """Layer name -> storage format for the layers a plan sparsifies at ``pruning.granularity``."""
    if pruning.granularity not in SPARSE_GRANULARITIES:
        return {}
    dens = densities(graph, plan)
    out = {}
    for unit, members in unit_members(graph).items():
        if dens[unit] >= 1.0:
            continue
        for name, module in members:
            if pruning.granularity == "fine":
                out[name] = "csr"
            elif nm_eligible(module, pruning.m):
                out[name] = "nm"
    return out
