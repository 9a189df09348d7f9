"""Channel importance criteria, chosen by name (``pruning.criterion``).

A criterion is a small strategy object: ``scores(group)`` returns one number per channel of a
unit (higher = more important; the lowest are removed). Data-driven criteria set
``needs_data = True`` and get calibration batches through ``prepare`` before any scoring.
Register your own with ``@CRITERIA.register("name")`` on a factory taking the
:class:`~autoprune.config.PruningConfig`.
"""

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

    def after_prune(self, model: nn.Module, batches: Sequence[Batch] | None) -> None:
        """Called once after all units were pruned (e.g. to re-fit weights)."""


class TorchPruningImportance(Criterion):
    """Wraps a torch-pruning ``Importance`` (they already score whole coupled groups)."""

    def __init__(self, importance: tp.importance.Importance) -> None:
        self.importance = importance

    def scores(self, group: tp.Group) -> torch.Tensor:
        with torch.no_grad():
            return self.importance(group).detach().float()


@CRITERIA.register("l1")
def l1(cfg: PruningConfig) -> Criterion:
    """L1 norm of each channel's weights, summed over the coupled group (Li et al. 2017)."""
    return TorchPruningImportance(tp.importance.GroupMagnitudeImportance(p=1, normalizer=None))


@CRITERIA.register("l2")
def l2(cfg: PruningConfig) -> Criterion:
    """L2 norm of each channel's weights over the coupled group."""
    return TorchPruningImportance(tp.importance.GroupMagnitudeImportance(p=2, normalizer=None))


def get_criterion(cfg: PruningConfig) -> Criterion:
    return CRITERIA.get(cfg.criterion)(cfg)
