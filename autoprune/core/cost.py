"""Cost models: the one counter of FLOPs (MACs of conv and linear layers) and parameters.

Every cost model maps a vector of kept channel counts (one per unit, in graph order) to a
number, *without building the pruned model*: the unit graph knows, for every module, how many of
its input and output elements each unit's channels account for, so widths and costs follow in
closed form. The search, the env, ``trials.parquet``, ``summary.json`` and the report all count
with these (:func:`plan_costs` / :func:`make_cost`): for ``channel`` granularity the kept widths
(:class:`FlopsCost`, :class:`ParamsCost`), for ``fine`` / ``nm`` the non-zero weights and MACs
(:class:`~autoprune.core.sparsity.SparseCost`), for ``latency`` a LUT or a timing.

Cost models are looked up by name in :data:`COST_MODELS`; a granularity prices budget kind ``k``
with the model named :func:`cost_kind` (``params`` -> ``params_fine`` for fine sparsity). The sparse
and latency cost models are lazy entry points, so importing this module imports neither.

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

from autoprune.config import GRANULARITIES, PruningConfig
from autoprune.core.graph import UnitGraph
from autoprune.core.tracing import attention_tokens, forward_with_hooks, in_projections
from autoprune.errors import BudgetError, ConfigError
from autoprune.registry import Registry

SPARSE_GRANULARITIES = tuple(g for g in GRANULARITIES if g != "channel")  # same shapes, zeros in the weights


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
        self.dense = np.array([k in ("conv", "linear", "attention") for k in kinds], dtype=np.float64)
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

    def check_reachable(self, min_counts: Sequence[int], hint: str = "lower pruning.min_ratio",
                        floor_counts: Sequence[int] | None = None) -> None:
        """Raise ``BudgetError`` when the plan at ``min_counts`` costs more than the budget.

        :param floor_counts: every unit at its smallest width; when even that misses the budget,
            lowering ``min_ratio`` cannot help and the message says what is fixed instead.
        """
        lowest = self.cost(min_counts)
        if lowest > self.target * (1 + 1e-9):
            floor = self.cost(floor_counts) if floor_counts is not None else 0.0
            note = getattr(self.cost, "budget_note", "")  # e.g. a LUT's re-anchored level
            if floor > self.target * (1 + 1e-9):
                raise BudgetError(
                    f"budget {self.kind}={self.fraction:.3g} is below what this model can reach: "
                    f"{floor / self.cost.base:.3g} of the base stays with every prunable unit at its smallest "
                    f"width (what no unit prunes stays: the classifier's outputs, units left out or in "
                    f"pruning.skip{', the time outside conv/linear layers' if self.kind == 'latency' else ''})"
                    f"{note}; raise the budget")
            slower = ("; those widths run slower than the base's (kernels that favour multiples of 4, 8 or 16): "
                      "set pruning.round_to" if self.kind == "latency" and lowest > self.cost.base else "")
            raise BudgetError(
                f"budget {self.kind}={self.fraction:.3g} is below the minimum reachable "
                f"({lowest / self.cost.base:.3g} of the base with every unit at min_ratio){note}; "
                f"raise the budget or {hint}{slower}"
            )


COST_MODELS: Registry = Registry("cost model", entry_points={
    "latency": "autoprune.latency.timing:latency_cost",
    **{f"{kind}_{gran}": f"autoprune.core.sparsity:{kind}_{gran}_cost"
       for kind in ("params", "flops") for gran in SPARSE_GRANULARITIES},
})
COST_MODELS.register("flops", lambda graph, **_: FlopsCost(graph))
COST_MODELS.register("params", lambda graph, **_: ParamsCost(graph))


def check_granularity(pruning: PruningConfig) -> None:
    """Raise ``ConfigError`` for an unknown granularity, scope or N:M pattern."""
    if pruning.granularity not in GRANULARITIES:
        raise ConfigError(f"pruning.granularity {pruning.granularity!r} is unknown; use one of "
                          f"{', '.join(GRANULARITIES)}")
    if pruning.scope not in ("layer", "global"):
        raise ConfigError(f"pruning.scope must be 'layer' or 'global' (got {pruning.scope!r})")
    if pruning.granularity == "nm" and not 0 < pruning.n < pruning.m:
        raise ConfigError(f"pruning: N:M needs 0 < n < m (got n={pruning.n}, m={pruning.m}), e.g. n: 2, m: 4")


def cost_kind(kind: str, pruning: PruningConfig) -> str:
    """The COST_MODELS name pricing budget ``kind`` at ``pruning.granularity``."""
    check_granularity(pruning)
    if pruning.granularity == "channel":
        return kind
    if kind not in ("params", "flops"):
        raise ConfigError(f"budget {kind!r} does not apply to granularity {pruning.granularity!r} "
                          "(zeroed weights do not make dense kernels faster); use budget params (non-zeros) "
                          "or flops (non-zero MACs), or pruning.granularity: channel")
    return f"{kind}_{pruning.granularity}"


def make_cost(graph: UnitGraph, kind: str, pruning: PruningConfig | None = None, **context) -> CostModel:
    """The cost model pricing ``kind`` (``flops``, ``params``, ``latency`` ...) of plans at
    ``pruning.granularity`` (channel when ``pruning`` is None).

    ``context`` reaches cost-model factories that need more than the graph (a LUT path, the model).
    """
    name = cost_kind(kind, pruning) if pruning is not None else kind
    return COST_MODELS.get(name)(graph, pruning=pruning, **context)


def plan_costs(graph: UnitGraph, pruning: PruningConfig | None = None) -> dict[str, CostModel]:
    """FLOPs and params of plans at ``pruning.granularity``: what every record, summary and report counts."""
    return {kind: make_cost(graph, kind, pruning) for kind in ("flops", "params")}


def make_budget(graph: UnitGraph, kind: str, value: float, absolute: bool = False,
                pruning: PruningConfig | None = None, **context) -> Budget:
    """A :class:`Budget` of ``kind`` (``flops``, ``params``, ``latency`` ...) at ``value``.

    ``value`` is the fraction of the base cost kept, or an absolute cost with ``absolute=True``;
    the cost model is :func:`make_cost`'s for ``pruning.granularity``.
    """
    cost = make_cost(graph, kind, pruning, **context)
    return Budget(cost, value if absolute else value * cost.base)


# ------------------------------------------------------------------------------------ a check
def measure_model(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int]:
    """(MACs, params) of a *built* model, counted with forward hooks (batch 1) - a check, not a counter.

    The pipeline never counts this way (a fine / N:M model has every weight, zeros included). It is
    the oracle the tests compare the plan-only counters with for channel pruning, and the way to
    count a model pruned by some other tool (benchmarks).
    """
    tokens = attention_tokens(model, input_shape)  # attention's projections are F.linear calls
    macs = [sum(n * (sum(w.numel() for w in in_projections(mha)) + mha.out_proj.weight.numel())
                for name, mha in model.named_modules() if (n := tokens.get(name)))]

    def count(name: str, mod: nn.Module, inp, out: torch.Tensor) -> None:
        if isinstance(mod, nn.modules.conv._ConvNd):
            macs[0] += (int(np.prod(out.shape[2:])) if out.dim() > 2 else 1) * mod.weight.numel()
        else:
            macs[0] += (int(np.prod(out.shape[1:-1])) if out.dim() > 2 else 1) * mod.weight.numel()

    forward_with_hooks(model, input_shape, count)
    return int(macs[0]), int(sum(p.numel() for p in model.parameters()))
