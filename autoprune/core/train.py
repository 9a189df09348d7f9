"""Training, fine-tuning and accuracy.

Training and (long-term) fine-tuning use SGD with momentum and a cosine schedule; fine-tuning
runs at ``train.lr x finetune.lr_scale`` (1/10 to 1/100 of the training lr, as the lectures say).
A non-finite loss stops training, restores the last good weights and raises a user error.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from autoprune.config import TrainConfig
from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)


def make_loader(ds: Dataset, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=False)


def train_model(
    model: nn.Module,
    train: Dataset,
    cfg: TrainConfig,
    *,
    epochs: int | None = None,
    lr: float | None = None,
    seed: int = 0,
    desc: str = "train",
    max_steps: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """Train ``model`` in place for ``epochs`` (or ``max_steps`` batches); returns it."""
    epochs = cfg.epochs if epochs is None else epochs
    lr = cfg.lr if lr is None else lr
    if len(train) == 0:  # type: ignore[arg-type]
        raise AutopruneError("the training split is empty")
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=seed)
    total = max_steps if max_steps is not None else epochs * len(loader)
    if total <= 0:
        return model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss()
    good = copy.deepcopy(model.state_dict())
    model.train()
    step = 0
    bar = tqdm(total=total, desc=desc, unit="batch", leave=False, disable=not progress or None)
    try:
        while step < total:
            for x, y in loader:
                loss = loss_fn(model(x), y)
                if not torch.isfinite(loss):
                    model.load_state_dict(good)
                    raise AutopruneError(
                        f"{desc}: loss became {loss.item()} at step {step}; the last good weights were kept. "
                        "Lower the learning rate (train.lr or finetune.lr_scale)"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step % max(1, len(loader)) == 0:
                    good = copy.deepcopy(model.state_dict())
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                if step >= total:
                    break
    finally:
        bar.close()
    model.eval()
    return model


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on tensors ``x``, ``y``."""
    if len(x) == 0:
        raise AutopruneError("cannot score on an empty split")
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    model.train(was_training)
    return correct / len(x)


def dataset_accuracy(model: nn.Module, ds: Dataset, batch_size: int = 256) -> float:
    correct = total = 0
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for x, y in make_loader(ds, batch_size, shuffle=False):
            correct += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    model.train(was_training)
    if total == 0:
        raise AutopruneError("cannot score on an empty split")
    return correct / total
