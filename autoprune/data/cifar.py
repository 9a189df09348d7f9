"""CIFAR-10 from disk, in the official "python version" layout, read with pickle and numpy.

``data.root`` holds ``cifar-10-batches-py/`` (or is that folder), with ``data_batch_1`` ..
``data_batch_5``, ``test_batch`` and ``batches.meta``: pickled dicts whose ``b"data"`` is a uint8
``(N, 3072)`` array (3 x 32 x 32, channel-major) and ``b"labels"`` a list of class indices. Nothing
is downloaded and torchvision is not needed (it does not import beside the CPU torch on these
machines). ``test_batch`` is the test split; the search-validation split is held out of the
training batches. The images stay uint8 in memory (180 MB for all 60,000) and each sample is
converted to a normalised float tensor when it is read.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from autoprune.config import DataConfig
from autoprune.data.splits import DataBundle, split_indices
from autoprune.data.transforms import Normalize, resize
from autoprune.errors import AutopruneError

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]


class ArrayImages(Dataset):
    """Samples ``indices`` of uint8 images ``(N, C, H, W)`` held in memory, converted when read."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                 normalize: Normalize, size: int | None = None, channels: int | None = None) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        self.normalize, self.size, self.channels = normalize, size, channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        j = int(self.indices[i])
        x = self.images[j].float()
        if self.size:
            x = resize(x, (self.size, self.size))
        if self.channels == 1 and x.shape[0] != 1:
            x = x.mean(0, keepdim=True)
        return self.normalize(x), int(self.labels[j])

    @property
    def targets(self) -> torch.Tensor:
        return self.labels[self.indices]


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise AutopruneError(f"cifar10: {str(path)!r} is missing (expected the official python version "
                             f"under data.root: {FOLDER}/data_batch_1..5, test_batch)")
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="bytes")
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.int64)
    except Exception as exc:
        raise AutopruneError(f"cifar10: cannot read {str(path)!r} ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise AutopruneError(f"cifar10: {str(path)!r} is not a CIFAR-10 batch (data {data.shape}, "
                             f"{len(labels)} labels)")
    return data, labels


def _folder(root: str | None) -> Path:
    base = Path(root or "data")
    if (base / FOLDER).is_dir():
        return base / FOLDER
    if (base / "data_batch_1").is_file():
        return base
    raise AutopruneError(f"cifar10 not found under data.root={str(base)!r}: expected {FOLDER}/ there "
                         "(the official python version; nothing is downloaded)")


def _channel_stats(images: torch.Tensor, indices: torch.Tensor) -> tuple[float, float]:
    """Mean and standard deviation (one number each) of the pixels of ``indices``, in [0, 1]."""
    total = square = 0.0
    for chunk in indices.split(4096):
        x = images[chunk].to(torch.float64) / 255.0
        total += float(x.sum())
        square += float((x * x).sum())
    count = len(indices) * images[0].numel()
    mean = total / count
    return mean, max(math.sqrt(max(square / count - mean * mean, 0.0) * count / (count - 1)), 1e-6)


def load_cifar10(cfg: DataConfig) -> DataBundle:
    """CIFAR-10 (3 x 32 x 32, 10 classes) from ``data.root``; see the module docstring."""
    if cfg.channels not in (None, 1, 3):
        raise AutopruneError(f"cifar10: data.channels must be 1 (grey) or 3 (got {cfg.channels})")
    folder = _folder(cfg.root)
    parts = [_read_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = _read_batch(folder / "test_batch")
    train_x = torch.from_numpy(np.concatenate([p[0] for p in parts])).view(-1, 3, 32, 32)
    train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    train, val, _ = split_indices(len(train_x), None, cfg.val_samples, "cifar10")
    if cfg.mean is not None:
        norm = Normalize(cfg.mean, cfg.std, channels=cfg.channels or 3)
    else:
        mean, std = _channel_stats(train_x, train)
        norm = Normalize([mean], [std])
    channels = cfg.channels or 3
    size = cfg.resize or 32

    def split(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> ArrayImages:
        return ArrayImages(images, labels, idx, norm, cfg.resize, cfg.channels)

    test = torch.from_numpy(test_x).view(-1, 3, 32, 32)
    labels = torch.cat([train_y, torch.from_numpy(test_y)])
    return DataBundle(split(train_x, train_y, train), split(train_x, train_y, val),
                      split(test, torch.from_numpy(test_y), torch.arange(len(test))),
                      (channels, size, size), int(labels.max()) + 1, "cifar10")
