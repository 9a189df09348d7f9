"""Training, fine-tuning, accuracy, and the one place DataLoaders are made.

Training and (long-term) fine-tuning use SGD with momentum and a cosine schedule; fine-tuning
runs at ``train.lr x finetune.lr_scale`` (1/10 to 1/100 of the training lr, as the lectures say).
A non-finite loss stops training, restores the last good weights and raises a user error.

Data is always streamed: :func:`make_loader` is the only function that builds a DataLoader
(worker processes and pinned memory are its arguments, :class:`LoaderSettings` carries them), and
accuracy is counted batch by batch over any iterable of ``(x, y)`` batches. Randomness inside a
training run (shuffling, data augmentation in the dataset, dropout) comes from ``seed`` alone, so a
short-term fine-tune gives the same weights in any process.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from autoprune.config import TrainConfig
from autoprune.config.checks import check_choice
from autoprune.config.sections import OPTIMIZERS
from autoprune.device import CPU, Device
from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class LoaderSettings:
    """How every DataLoader reads data (one object, to be filled from the runtime config).

    :param num_workers: DataLoader worker processes (0 reads in the calling process).
    :param pin_memory: page-locked host memory for faster copies to an accelerator.
    """

    num_workers: int = 0
    pin_memory: bool = False


@dataclass
class TrainHooks:
    """Optional hooks into :func:`train_model` for distributed and resumable training (used by
    :mod:`autoprune.pipeline.finetune`); the loop, optimizer and lr schedule stay the same.

    :param sampler: the indices to read (e.g. a ``DistributedSampler`` shard; its ``set_epoch`` is
        called at the start of every epoch) instead of all of them shuffled with ``seed``.
    :param wrap: ``model -> module`` to train through (e.g. DDP); the optimizer holds ``model``'s
        parameters and checkpoints hold ``model``'s state.
    :param device: where batches are moved before the forward pass (None: where they are).
    :param resume: a state from ``on_epoch_end``: training continues after that epoch, bit for bit.
    :param on_epoch_end: ``(epochs finished, state)`` after every full epoch; ``state`` holds
        ``model``, ``optimizer``, ``scheduler``, ``scaler`` (state dicts), ``step``, ``rng`` and ``loader_rng``;
        the optimizer's tensors are live, so save (or copy) the state before returning.
    """

    sampler: Sampler | None = None
    wrap: Callable[[nn.Module], nn.Module] | None = None
    device: torch.device | None = None
    resume: dict[str, Any] | None = None
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None


def make_loader(
    ds: Dataset,
    batch_size: int = 1,
    shuffle: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    batches: Sequence[Sequence[int]] | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """The DataLoader for ``ds``: ``batch_size`` batches (shuffled with ``seed``), or exactly the
    index lists ``batches`` in order, or ``batch_size`` batches of ``sampler``'s indices (e.g. a
    ``DistributedSampler``'s shard). ``seed`` also seeds the workers' random streams."""
    gen = torch.Generator().manual_seed(seed)
    common = {"num_workers": num_workers, "pin_memory": pin_memory, "generator": gen}
    if batches is not None:
        return DataLoader(ds, batch_sampler=[list(b) for b in batches], **common)
    if sampler is not None:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=False, **common)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=False, **common)


def read(loader: Iterable[Batch]) -> Iterator[Batch]:
    """Iterate ``loader``; a user error raised in a DataLoader worker (e.g. an unreadable image)
    comes back as its own one-line message instead of the worker's traceback."""
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except AutopruneError as exc:
            text = str(exc)
            if "Original Traceback" not in text:
                raise
            last = text.strip().splitlines()[-1]
            raise type(exc)(last.split(": ", 1)[-1]) from None
        yield batch


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
    loader: LoaderSettings | None = None,
    hooks: TrainHooks | None = None,
    runtime: Device | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``epochs`` (or ``max_steps`` batches) on ``train``, streamed
    (shuffled with ``seed``) through :func:`make_loader` with ``loader``'s settings; returns it.
    ``hooks`` (:class:`TrainHooks`): a data shard, a wrapper (DDP), epoch checkpoints, resuming.
    ``runtime`` (:class:`~autoprune.device.Device`, default the CPU in fp32): the model is moved there
    (and stays there), batches follow, the forward pass runs under its autocast (fp16 with a
    GradScaler), and its DataLoader settings apply unless ``loader`` is given."""
    epochs = cfg.epochs if epochs is None else epochs
    lr = cfg.lr if lr is None else lr
    if len(train) == 0:  # type: ignore[arg-type]
        raise AutopruneError("the training split is empty")
    hooks = hooks or TrainHooks()
    if runtime is None and hooks.device is not None:
        runtime = Device(torch.device(hooks.device))
    if runtime is not None:
        runtime.place(model)
    opts = loader or (LoaderSettings(**runtime.loader_kwargs()) if runtime is not None else LoaderSettings())
    batches = make_loader(train, cfg.batch_size, shuffle=True, seed=seed, num_workers=opts.num_workers,
                          pin_memory=opts.pin_memory, sampler=hooks.sampler)
    total = max_steps if max_steps is not None else epochs * len(batches)
    if total <= 0:
        return model
    with torch.random.fork_rng(devices=[]):  # augmentation and dropout draw from ``seed`` only
        torch.manual_seed(seed)
        return _train_loop(model, batches, cfg, lr, total, desc, progress, hooks, runtime)


def make_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``model``'s parameters: SGD with momentum, or AdamW (decoupled weight decay)."""
    check_choice("train.optimizer", cfg.optimizer, OPTIMIZERS)  # a TrainConfig built in code skips validate()
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _train_loop(model: nn.Module, loader: DataLoader, cfg: TrainConfig, lr: float, total: int, desc: str,
                progress: bool, hooks: TrainHooks, runtime: Device | None = None) -> nn.Module:
    resume = hooks.resume
    if resume is not None:
        model.load_state_dict(resume["model"])
    net = hooks.wrap(model) if hooks.wrap is not None else model
    opt = make_optimizer(model, cfg, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = nn.CrossEntropyLoss()
    dev = runtime or CPU
    scaler = dev.grad_scaler()
    good = copy.deepcopy(model.state_dict())
    net.train()
    step = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        step = int(resume["step"])
        torch.set_rng_state(resume["rng"])
        loader.generator.set_state(resume["loader_rng"])
        if resume.get("scaler"):  # fp16's loss scale (empty when the scaler is off)
            scaler.load_state_dict(resume["scaler"])
    per_epoch = max(1, len(loader))
    bar = tqdm(total=total, initial=step, desc=desc, unit="batch", leave=False, disable=not progress or None)
    try:
        while step < total:
            if hasattr(loader.sampler, "set_epoch"):  # a DistributedSampler reshuffles per epoch
                loader.sampler.set_epoch(step // per_epoch)
            for x, y in read(loader):
                if runtime is not None:
                    x, y = runtime.to_device((x, y))
                with dev.autocast():
                    loss = loss_fn(net(x), y)
                if not torch.isfinite(loss):
                    model.load_state_dict(good)
                    raise AutopruneError(
                        f"{desc}: loss became {loss.item()} at step {step}; the last good weights were kept. "
                        "Lower the learning rate (train.lr or finetune.lr_scale)"
                    )
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                bar.update(1)
                if step % per_epoch == 0:
                    good = copy.deepcopy(model.state_dict())
                    bar.set_postfix(loss=f"{loss.item():.3f}")
                    if hooks.on_epoch_end is not None:
                        hooks.on_epoch_end(step // per_epoch, {
                            "model": good, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "scaler": scaler.state_dict(), "step": step, "rng": torch.get_rng_state(),
                            "loader_rng": loader.generator.get_state()})
                if step >= total:
                    break
    finally:
        bar.close()
    model.eval()
    return model


@torch.inference_mode()
def accuracy(model: nn.Module, batches: Iterable[Batch], runtime: Device | None = None) -> float:
    """Top-1 accuracy of ``model`` (eval mode) over ``batches`` of ``(x, y)``: a DataLoader or any
    iterable, counted batch by batch (nothing is stacked). Batches are moved to the device ``model``
    is on; ``runtime`` adds its autocast and memory format."""
    dev = (runtime or CPU).following(model)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for x, y in read(batches):
            x, y = dev.to_device((x, y))
            with dev.autocast():
                out = model(x)
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise AutopruneError("cannot score on an empty split")
    return correct / total


def dataset_accuracy(model: nn.Module, ds: Dataset, batch_size: int = 256, loader: LoaderSettings | None = None,
                     runtime: Device | None = None) -> float:
    """Top-1 accuracy of ``model`` on the whole of ``ds``, streamed in order (see :func:`accuracy`)."""
    opts = loader or (LoaderSettings(**runtime.loader_kwargs()) if runtime is not None else LoaderSettings())
    return accuracy(model, make_loader(ds, batch_size, num_workers=opts.num_workers, pin_memory=opts.pin_memory),
                    runtime)
