"""Image transforms written with torch ops, and training-time augmentation.

All transforms take and return one ``C x H x W`` tensor. Randomness comes from torch's global
generator, which :func:`autoprune.core.train.train_model` seeds with the run's seed and which
DataLoader workers seed from the loader's generator, so augmented training is reproducible.

Augmentation (``data.augment``) is one mechanism for every dataset: the training split that base
training and fine-tuning read (``DataBundle.train_augmented``) is the training split with a
per-sample function applied. A dataset that can augment better itself (an image folder crops
*before* resizing) offers ``augmented(flip) -> Dataset``; any other dataset is wrapped in
:class:`Augmented`. What scores plans, re-estimates BatchNorm statistics or tests reads the
un-augmented splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from autoprune.errors import AutopruneError

Transform = Callable[[torch.Tensor], torch.Tensor]


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize to ``size`` (antialiased when shrinking, as Pillow does); float output."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x.float()
    return F.interpolate(x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def resize_shorter(x: torch.Tensor, side: int) -> torch.Tensor:
    """Resize so that the shorter side is ``side``, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    scale = side / min(h, w)
    return resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))


def center_crop(x: torch.Tensor, side: int) -> torch.Tensor:
    """The centre ``side x side`` square (the image must be at least that large)."""
    h, w = x.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return x[..., top:top + side, left:left + side]


def _randint(high: int) -> int:
    """Uniform integer in [0, high] from torch's global generator."""
    return int(torch.randint(high + 1, (1,)).item())


def random_resized_crop_box(h: int, w: int, scale: Sequence[float],
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering ``scale`` of the area at an aspect ratio
    in ``ratio`` (Inception-style; 10 tries, then the largest centred crop within ``ratio``)."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1]))
        aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return _randint(h - ch), _randint(w - cw), ch, cw
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Mirror left-right with probability 1/2."""
    return x.flip(-1) if torch.rand(1).item() < 0.5 else x


class Normalize:
    """``(x / 255 - mean) / std`` for uint8-range input (``from_uint8``), else ``(x - mean) / std``;
    one fused multiply-add per sample."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], from_uint8: bool = True,
                 channels: int | None = None) -> None:
        if channels is not None and len(mean) not in (1, channels):
            raise AutopruneError(f"data.mean/data.std have {len(mean)} values for {channels}-channel images; "
                                 f"give 1 or {channels}")
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        std_t = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self.scale = 1.0 / (std_t * (255.0 if from_uint8 else 1.0))
        self.shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


class ScoringTransform:
    """Scoring, BN statistics and test: shorter side to ``resize_to``, centre ``size`` crop, normalise."""

    def __init__(self, size: int, resize_to: int, normalize: Normalize) -> None:
        self.size, self.resize_to, self.normalize = size, resize_to, normalize

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(center_crop(resize_shorter(x, self.resize_to), self.size))


class TrainingTransform:
    """Training: a random-resized crop to ``size`` (area share in ``scale``), optional flip, normalise."""

    def __init__(self, size: int, scale: Sequence[float], flip: bool, normalize: Normalize) -> None:
        self.size, self.scale, self.flip, self.normalize = size, tuple(scale), flip, normalize

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = random_resized_crop_box(x.shape[-2], x.shape[-1], self.scale)
        x = resize(x[..., top:top + h, left:left + w], (self.size, self.size))
        return self.normalize(random_flip(x) if self.flip else x)


class RandomCrop:
    """A random ``H x W`` crop of the image padded by ``padding`` zeros on each side; optional flip."""

    def __init__(self, padding: int, flip: bool) -> None:
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding:
            h, w, p = x.shape[-2], x.shape[-1], self.padding
            top, left = _randint(2 * p), _randint(2 * p)
            x = F.pad(x, (p, p, p, p))[..., top:top + h, left:left + w]
        return random_flip(x) if self.flip else x


class Augmented(Dataset):
    """``base`` with ``fn`` applied to each sample's image (labels and ``targets`` unchanged)."""

    def __init__(self, base: Dataset, fn: Transform) -> None:
        self.base, self.fn = base, fn

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y = self.base[i]
        return self.fn(x), y

    @property
    def targets(self):
        return self.base.targets  # AttributeError when the base has none, like the base itself
