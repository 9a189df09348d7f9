"""Cost models: FLOPs (counted as MACs of conv and linear layers) and parameters.

Every cost model maps a vector of kept channel counts (one per unit, in graph order) to a
number, *without building the pruned model*: the unit graph knows, for every module, how many of
its input and output elements each unit's channels account for, so widths and costs follow in
closed form. :func:`measure_model` counts the same quantities on a built model.

Convention: "FLOPs" in autoprune are multiply-accumulates (MACs) of Conv and Linear layers;
parameters are all trainable parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from autoprune.core.graph import UnitGraph, forward_with_hooks
from autoprune.errors import BudgetError
from autoprune.registry import Registry


@runtime_checkable
class CostModel(Protocol):
    """Anything that prices a channel-count vector: FLOPs, params, latency (LUT or measured)."""

    kind: str

    @property
    def base(self) -> float:
        """Cost of the unpruned model."""

    def __call__(self, counts: Sequence[int]) -> float:
        """Cost of the model with ``counts[i]`` channels kept in unit ``i``."""


class WidthModel:
    """Kept input/output widths of every module for a channel-count vector (vectorised)."""

    def __init__(self, graph: UnitGraph) -> None:
        n_mod, n_unit = len(graph.modules), len(graph.units)
        self.graph = graph
        self.full = np.array(graph.channels, dtype=np.float64)
        self.in_base = np.array([max(m.in_ch, 1) for m in graph.modules], dtype=np.float64)
        self.out_base = np.array([max(m.out_ch, 1) for m in graph.modules], dtype=np.float64)
        self.r_in = np.zeros((n_mod, n_unit))
        self.r_out = np.zeros((n_mod, n_unit))
        for u, coupling in enumerate(graph.couplings):
            for m, dim, mult in coupling:
                (self.r_out if dim == "out" else self.r_in)[m, u] = mult
        kinds = [m.kind for m in graph.modules]
        self.dense = np.array([k in ("conv", "linear") for k in kinds], dtype=np.float64)
        self.macs = np.array([m.macs for m in graph.modules], dtype=np.float64)
        self.weight_params = np.array([m.weight_params for m in graph.modules], dtype=np.float64)
        self.out_params = np.array([m.out_params for m in graph.modules], dtype=np.float64)
        self.fixed_params = float(sum(m.fixed_params for m in graph.modules))
        self.out_elements = np.array([m.out_ch * m.out_spatial for m in graph.modules], dtype=np.float64)

    def ratios(self, counts: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        removed = self.full - np.asarray(counts, dtype=np.float64)
        in_keep = (self.in_base - self.r_in @ removed) / self.in_base
        out_keep = (self.out_base - self.r_out @ removed) / self.out_base
        return in_keep, out_keep

    def flops(self, counts: Sequence[int]) -> float:
        in_k, out_k = self.ratios(counts)
        scale = np.where(self.dense > 0, in_k * out_k, out_k)
        return float(np.rint(self.macs @ scale))

    def activations(self, counts: Sequence[int]) -> float:
        """Output elements (per sample) of every conv/linear at the kept widths: the work of the
        elementwise layers that follow them (norm, activation, residual add) scales with it."""
        _, out_k = self.ratios(counts)
        return float(self.out_elements @ out_k)

    def params(self, counts: Sequence[int]) -> float:
        in_k, out_k = self.ratios(counts)
        return float(np.rint(self.weight_params @ (in_k * out_k) + self.out_params @ out_k + self.fixed_params))


class FlopsCost:
    """MACs of conv and linear layers, from the plan alone."""

    kind = "flops"

    def __init__(self, graph: UnitGraph, widths: WidthModel | None = None) -> None:
        self.widths = widths or WidthModel(graph)
        self._base = self.widths.flops(graph.channels)

    @property
    def base(self) -> float:
        return self._base

    def __call__(self, counts: Sequence[int]) -> float:
        return self.widths.flops(counts)


class ParamsCost:
    """Trainable parameters, from the plan alone."""

    kind = "params"

    def __init__(self, graph: UnitGraph, widths: WidthModel | None = None) -> None:
        self.widths = widths or WidthModel(graph)
        self._base = self.widths.params(graph.channels)

    @property
    def base(self) -> float:
        return self._base

    def __call__(self, counts: Sequence[int]) -> float:
        return self.widths.params(counts)


@dataclass
class Budget:
    """An absolute cost target on one cost model (``kind`` is the cost model's)."""

    cost: CostModel
    target: float

    @property
    def kind(self) -> str:
        return self.cost.kind

    @property
    def fraction(self) -> float:
        return self.target / self.cost.base

    def fits(self, counts: Sequence[int], tol: float = 1e-9) -> bool:
        return self.cost(counts) <= self.target * (1 + tol)

    def check_reachable(self, min_counts: Sequence[int], hint: str = "lower pruning.min_ratio") -> None:
        lowest = self.cost(min_counts)
        if lowest > self.target * (1 + 1e-9):
            raise BudgetError(
                f"budget {self.kind}={self.fraction:.3g} is below the minimum reachable "
                f"({lowest / self.cost.base:.3g} of the base with every unit at min_ratio); "
                f"raise the budget or {hint}"
            )


def measure_model(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) of a built model, counted with forward hooks (batch 1)."""
    macs = [0]

    def count(name: str, mod: nn.Module, inp, out: torch.Tensor) -> None:
        if isinstance(mod, nn.modules.conv._ConvNd):
            macs[0] += (int(np.prod(out.shape[2:])) if out.dim() > 2 else 1) * mod.weight.numel()
        else:
            macs[0] += (int(np.prod(out.shape[1:-1])) if out.dim() > 2 else 1) * mod.weight.numel()

    forward_with_hooks(model, input_shape, count)
    return int(macs[0]), int(sum(p.numel() for p in model.parameters()))


COST_MODELS: Registry = Registry("cost model")
COST_MODELS.register("flops", lambda graph, **_: FlopsCost(graph))
COST_MODELS.register("params", lambda graph, **_: ParamsCost(graph))


def make_budget(graph: UnitGraph, kind: str, value: float, absolute: bool = False, **context) -> Budget:
    """A :class:`Budget` of ``kind`` (``flops``, ``params``, ``latency`` ...) at ``value``.

    ``value`` is the fraction of the base cost kept, or an absolute cost with ``absolute=True``.
    ``context`` reaches cost-model factories that need more than the graph (a LUT path, ...).
    """
    cost = COST_MODELS.get(kind)(graph, **context)
    return Budget(cost, value if absolute else value * cost.base)
