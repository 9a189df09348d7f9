"""Scoring candidate plans: prune -> (short-term fine-tune) -> adaptive BN -> val accuracy.

Adaptive BatchNorm (EagleEye, Li et al. 2020): after pruning, the running statistics of every
BN layer are stale. We reset them and re-estimate them as a cumulative average over a fixed set
of ``adaptive_bn_batches`` training batches in train mode (no gradients), then score in eval mode
on the search-validation split. The batches are drawn once, so every plan is scored on exactly
the same data, and identical channel-count plans are evaluated once (cache).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from autoprune.config import EvaluationConfig, FinetuneConfig, PruningConfig, TrainConfig
from autoprune.core.criteria import Batch, get_criterion
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.core.train import accuracy, train_model
from autoprune.data.datasets import DataBundle, materialize

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    accuracy: float
    seconds: float
    forward_seconds: float = 0.0
    cached: bool = False
    extra: dict = field(default_factory=dict)


def fixed_batches(ds, n_batches: int, batch_size: int, seed: int) -> list[Batch]:
    """``n_batches`` random training batches drawn once with ``seed``."""
    x, y = materialize(ds) if n_batches else (torch.empty(0), torch.empty(0))
    if n_batches == 0 or len(x) == 0:
        return []
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)
    out = []
    for b in range(n_batches):
        sel = idx[(b * batch_size) % len(x):][:batch_size]
        if len(sel) < 2:
            sel = idx[:batch_size]
        out.append((x[sel], y[sel]))
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[Batch]) -> None:
    """Reset BN running stats and re-estimate them on ``batches`` (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [(bn, bn.momentum) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x, _ in batches:
        model(x)
    for bn, momentum in saved:
        bn.momentum = momentum
    model.eval()


class Evaluator:
    """Scores plans on the search-validation split; holds the base model and data once.

    :param model: the trained base model (never modified).
    :param graph: its unit graph.
    :param data: the dataset splits.
    :param evaluation: adaptive-BN batches, batch size, val sample cap.
    :param pruning: criterion and granularity used to apply plans.
    :param train: training settings (batch size and lr for short-term fine-tuning).
    :param finetune: ``lr_scale`` for short-term fine-tuning.
    :param seed: seeds the fixed BN/calibration batches.
    """

    def __init__(
        self,
        model: nn.Module,
        graph: UnitGraph,
        data: DataBundle,
        evaluation: EvaluationConfig | None = None,
        pruning: PruningConfig | None = None,
        train: TrainConfig | None = None,
        finetune: FinetuneConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model.eval()
        self.graph = graph
        self.data = data
        self.evaluation = evaluation or EvaluationConfig()
        self.pruning = pruning or PruningConfig()
        self.train_cfg = train or TrainConfig()
        self.finetune_cfg = finetune or FinetuneConfig()
        self.seed = seed
        self.criterion = get_criterion(self.pruning)
        self.val_x, self.val_y = materialize(data.val, self.evaluation.val_samples)
        bn_batch = min(64, self.train_cfg.batch_size)
        n_bn = max(self.evaluation.adaptive_bn_batches, self.pruning.calibration_batches)
        batches = fixed_batches(data.train, n_bn, bn_batch, seed)
        self.bn_batches = batches[: self.evaluation.adaptive_bn_batches]
        self.calibration = batches[: self.pruning.calibration_batches]
        self.cache: dict[tuple, EvalResult] = {}
        self.evaluations = 0

    def prune(self, plan: PruningPlan) -> nn.Module:
        """The pruned copy of the base model for ``plan`` (weights as pruned, BN not recalibrated)."""
        return apply_plan(self.model, self.graph, plan, self.pruning, self.calibration, self.criterion)

    def score(self, model: nn.Module) -> float:
        """Adaptive BN, then val accuracy."""
        recalibrate_bn(model, self.bn_batches)
        return accuracy(model, self.val_x, self.val_y, self.evaluation.batch_size)

    def short_term_finetune(self, model: nn.Module, steps: int, seed: int | None = None) -> nn.Module:
        lr = self.train_cfg.lr * self.finetune_cfg.lr_scale
        return train_model(model, self.data.train, self.train_cfg, lr=lr, max_steps=steps,
                           seed=self.seed if seed is None else seed, desc="short-term", progress=False)

    def evaluate(self, plan: PruningPlan, finetune_steps: int = 0) -> EvalResult:
        """Accuracy of ``plan`` on the search-validation split (cached by channel counts)."""
        key = (plan.key(self.graph), finetune_steps)
        if key in self.cache:
            hit = self.cache[key]
            return EvalResult(hit.accuracy, 0.0, 0.0, True, dict(hit.extra))
        start = time.perf_counter()
        model = self.prune(plan)
        if finetune_steps:
            self.short_term_finetune(model, finetune_steps)
        fwd = time.perf_counter()
        acc = self.score(model)
        end = time.perf_counter()
        result = EvalResult(acc, end - start, end - fwd)
        self.cache[key] = result
        self.evaluations += 1
        return result

    def evaluate_many(self, plans: Sequence[PruningPlan], finetune_steps: int = 0) -> list[EvalResult]:
        """Evaluate independent plans (the Ray pool runs these in parallel)."""
        return [self.evaluate(p, finetune_steps) for p in plans]

    def base_accuracy(self) -> float:
        return accuracy(self.model, self.val_x, self.val_y, self.evaluation.batch_size)
