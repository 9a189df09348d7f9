"""Weight-only criteria: ``l1``, ``l2``, ``lp`` and ``bn_scale``."""

from __future__ import annotations

import torch
import torch_pruning as tp

from autoprune.config import PruningConfig
from autoprune.core.criteria.base import CRITERIA, Criterion, TorchPruningImportance
from autoprune.errors import AutopruneError, ConfigError


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
