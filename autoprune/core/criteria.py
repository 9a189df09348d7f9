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
from autoprune.errors import AutopruneError, ConfigError
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


@CRITERIA.register("l1")
def l1(cfg: PruningConfig) -> Criterion:
    """L1 norm of each channel's weights, summed over the coupled group (Li et al. 2017)."""
    return TorchPruningImportance(tp.importance.GroupMagnitudeImportance(p=1, normalizer=None))


@CRITERIA.register("l2")
def l2(cfg: PruningConfig) -> Criterion:
    """L2 norm of each channel's weights over the coupled group."""
    return TorchPruningImportance(tp.importance.GroupMagnitudeImportance(p=2, normalizer=None))


@CRITERIA.register("lp")
def lp(cfg: PruningConfig) -> Criterion:
    """Lp norm (``pruning.p``) of each channel's weights over the coupled group."""
    if not cfg.p > 0:
        raise ConfigError(f"pruning.p must be > 0 for the lp criterion (got {cfg.p})")
    return TorchPruningImportance(tp.importance.GroupMagnitudeImportance(p=cfg.p, normalizer=None))


class BNScale(TorchPruningImportance):
    """Network slimming: |gamma| of the BatchNorm following each channel."""

    def __init__(self) -> None:
        super().__init__(tp.importance.BNScaleImportance(normalizer=None))

    def scores(self, group: tp.Group) -> torch.Tensor:
        imp = super().scores(group)
        if imp is None:
            raise AutopruneError(
                f"criterion bn_scale: unit {group[0].dep.target.name!r} has no BatchNorm to read gammas from; "
                "use pruning.criterion: l1 (or a model with BN after every pruned layer)"
            )
        return imp


@CRITERIA.register("bn_scale")
def bn_scale(cfg: PruningConfig) -> Criterion:
    """BatchNorm scaling factors |gamma| (Liu et al. 2017, network slimming)."""
    return BNScale()


def get_criterion(cfg: PruningConfig) -> Criterion:
    return CRITERIA.get(cfg.criterion)(cfg)


from autoprune.core import criteria_data  # noqa: E402,F401  (registers apoz, taylor, hessian, reconstruction)
