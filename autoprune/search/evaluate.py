"""Scoring candidate plans: prune -> (short-term fine-tune) -> adaptive BN -> val accuracy.

Adaptive BatchNorm (EagleEye, Li et al. 2020): after pruning, the running statistics of every
BN layer are stale. We reset them and re-estimate them as a cumulative average over a fixed set
of ``adaptive_bn_batches`` training batches in train mode (no gradients), then score in eval mode
on the search-validation split. The batches are drawn once, so every plan is scored on exactly
the same data, and identical channel-count plans are evaluated once (cache).

Nothing here holds a whole split: the BN/calibration batches are fixed index lists read through a
DataLoader (:class:`FixedBatches`, kept in memory only while they fit ``evaluation.cache_mb``),
and the search-validation subset (the first ``evaluation.score_samples`` of the split) is scored
batch by batch through a DataLoader. Any map-style Dataset works, not only tensors.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from autoprune.config import EvaluationConfig, FinetuneConfig, PruningConfig, TrainConfig
from autoprune.core.criteria import Batch, get_criterion
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.core.train import LoaderSettings, accuracy, make_loader, read, train_model
from autoprune.data.datasets import DataBundle
from autoprune.device import CPU, Device

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    accuracy: float
    seconds: float
    forward_seconds: float = 0.0
    cached: bool = False
    extra: dict = field(default_factory=dict)


class FixedBatches(Sequence[Batch]):
    """Batches of ``ds`` at fixed index lists, read through a DataLoader in order.

    Kept in memory once read if all of them take at most ``cache_bytes`` (judged from the first
    batch); otherwise every iteration reads the same images again, one batch at a time.
    """

    def __init__(self, ds: Dataset, index_lists: Sequence[Sequence[int]], cache_bytes: float = 0,
                 loader: LoaderSettings | None = None, _cache: list[Batch] | None = None) -> None:
        self.ds, self.index_lists, self.loader = ds, [list(b) for b in index_lists], loader or LoaderSettings()
        self.cache = _cache
        if _cache is None and self.index_lists and cache_bytes > 0:
            first = next(iter(self._read(self.index_lists[:1])))
            size = sum(t.element_size() * t.nelement() for t in first)
            if size * len(self.index_lists) <= cache_bytes:
                self.cache = [first, *self._read(self.index_lists[1:])]
            else:
                log.info("the %d fixed batches (about %.0f MB) exceed evaluation.cache_mb; they are read again "
                         "for every plan", len(self.index_lists), size * len(self.index_lists) / 2**20)

    def _read(self, lists: list[list[int]]) -> Iterator[Batch]:
        if not lists:
            return iter(())
        return read(make_loader(self.ds, num_workers=self.loader.num_workers, pin_memory=self.loader.pin_memory,
                                batches=lists))

    def __len__(self) -> int:
        return len(self.index_lists)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.cache) if self.cache is not None else self._read(self.index_lists)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return FixedBatches(self.ds, self.index_lists[i], loader=self.loader,
                                _cache=None if self.cache is None else self.cache[i])
        if self.cache is not None:
            return self.cache[i]
        return next(self._read([self.index_lists[i]]))


def fixed_batches(ds: Dataset, n_batches: int, batch_size: int, seed: int, cache_mb: float = 0,
                  loader: LoaderSettings | None = None) -> FixedBatches:
    """``n_batches`` random training batches whose indices are drawn once with ``seed``."""
    n = len(ds)  # type: ignore[arg-type]
    if n_batches == 0 or n == 0:
        return FixedBatches(ds, [], loader=loader)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    lists = []
    for b in range(n_batches):
        sel = idx[(b * batch_size) % n:][:batch_size]
        if len(sel) < 2:
            sel = idx[:batch_size]
        lists.append(sel.tolist())
    return FixedBatches(ds, lists, cache_mb * 2**20, loader)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence[Batch], runtime: Device | None = None) -> None:
    """Reset BN running stats and re-estimate them on ``batches`` (cumulative average), moved to the
    device ``model`` is on and run under ``runtime``'s autocast."""
    dev = (runtime or CPU).following(model)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [(bn, bn.momentum) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for x, _ in batches:
        with dev.autocast():
            model(dev.to_device(x))
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
    :param loader: DataLoader settings (workers, pinned memory) for everything the evaluator reads
        (default: ``runtime``'s).
    :param runtime: where plans are pruned, fine-tuned and scored (:class:`~autoprune.device.Device`;
        default the CPU in fp32). The evaluator holds its own copy of ``model`` there (``self.model``;
        the caller's stays where it is) and the pruned models it returns are there too.
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
        loader: LoaderSettings | None = None,
        runtime: Device | None = None,
    ) -> None:
        self.runtime = runtime or CPU
        self.model = (model if self.runtime.is_default else self.runtime.place(copy.deepcopy(model))).eval()
        self.graph = graph
        self.data = data
        self.evaluation = evaluation or EvaluationConfig()
        self.pruning = pruning or PruningConfig()
        self.train_cfg = train or TrainConfig()
        self.finetune_cfg = finetune or FinetuneConfig()
        self.seed = seed
        self.criterion = get_criterion(self.pruning)
        self.loader = loader or LoaderSettings(**self.runtime.loader_kwargs())
        cap = self.evaluation.score_samples
        self.val = data.val if cap is None or cap >= len(data.val) else Subset(data.val, range(cap))
        bn_batch = min(64, self.train_cfg.batch_size)
        n_bn = max(self.evaluation.adaptive_bn_batches, self.pruning.calibration_batches)
        batches = fixed_batches(data.train, n_bn, bn_batch, seed, self.evaluation.cache_mb, self.loader)
        self.bn_batches = self.runtime.batches(batches[: self.evaluation.adaptive_bn_batches])
        self.calibration = self.runtime.batches(batches[: self.pruning.calibration_batches])
        self.cache: dict[tuple, EvalResult] = {}
        self.evaluations = 0

    def prune(self, plan: PruningPlan) -> nn.Module:
        """The pruned copy of the base model for ``plan`` (weights as pruned, BN not recalibrated)."""
        pruned = apply_plan(self.model, self.graph, plan, self.pruning, self.calibration, self.criterion)
        return pruned if self.runtime.is_default else self.runtime.place(pruned)  # pruning drops channels_last

    def val_batches(self) -> DataLoader:
        """The search-validation subset, in order, as a DataLoader."""
        return make_loader(self.val, self.evaluation.batch_size, num_workers=self.loader.num_workers,
                           pin_memory=self.loader.pin_memory)

    def score(self, model: nn.Module) -> float:
        """Adaptive BN, then val accuracy."""
        recalibrate_bn(model, self.bn_batches, self.runtime)
        return accuracy(model, self.val_batches(), self.runtime)

    def short_term_finetune(self, model: nn.Module, steps: int, seed: int | None = None) -> nn.Module:
        lr = self.train_cfg.lr * self.finetune_cfg.lr_scale
        return train_model(model, self.data.train_augmented, self.train_cfg, lr=lr, max_steps=steps,
                           seed=self.seed if seed is None else seed, desc="short-term", progress=False,
                           loader=self.loader, runtime=self.runtime)

    def steps(self, finetune_steps: int | None) -> int:
        """Short-term fine-tuning batches of an evaluation: ``evaluation.finetune_steps`` unless given."""
        return self.evaluation.finetune_steps if finetune_steps is None else int(finetune_steps)

    def evaluate(self, plan: PruningPlan, finetune_steps: int | None = None) -> EvalResult:
        """Accuracy of ``plan`` on the search-validation split (cached by channel counts), after
        ``finetune_steps`` short-term fine-tuning batches (default ``evaluation.finetune_steps``)."""
        finetune_steps = self.steps(finetune_steps)
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

    def evaluate_many(self, plans: Sequence[PruningPlan], finetune_steps: int | None = None) -> list[EvalResult]:
        """Evaluate independent plans (the Ray pool runs these in parallel)."""
        return [self.evaluate(p, finetune_steps) for p in plans]

    def base_accuracy(self) -> float:
        return accuracy(self.model, self.val_batches(), self.runtime)
