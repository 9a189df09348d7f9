"""The criterion interface, the ``CRITERIA`` registry and the torch-pruning adapter."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from autoprune.config import PruningConfig
from autoprune.registry import Registry

CRITERIA: Registry = Registry("criterion")

Batch = tuple[torch.Tensor, torch.Tensor]


class Criterion:
    """Base class: scores channels of one dependency group."""

    needs_data: bool = False

    def prepare(self, model: nn.Module, batches: Sequence[Batch]) -> None:
        """Called once on the model about to be pruned, before any ``scores`` call."""

    def scores(self, group: tp.Group) -> torch.Tensor:
        raise NotImplementedError

    def selected(self, group: tp.Group) -> None:
        """Told, before it is pruned, each group of channels about to be removed."""

    def after_prune(self, model: nn.Module, batches: Sequence[Batch] | None) -> None:
        """Called once after all units were pruned (e.g. to re-fit weights)."""


class TorchPruningImportance(Criterion):
    """Wraps a torch-pruning ``Importance`` (they already score whole coupled groups)."""

    def __init__(self, importance: tp.importance.Importance) -> None:
        self.importance = importance

    def scores(self, group: tp.Group) -> torch.Tensor:
        with torch.no_grad():
            imp = self.importance(group)
        if not isinstance(imp, torch.Tensor) or imp.numel() == 0:
            return None  # the group has no layer this importance can score
        return imp.detach().float()


def get_criterion(cfg: PruningConfig) -> Criterion:
    """The criterion named by ``cfg.criterion``, built from ``cfg``."""
    return CRITERIA.get(cfg.criterion)(cfg)
