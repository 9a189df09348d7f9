"""The split of a dataset into train / search-validation / test, by indices, and the bundle of splits.

Splits are index sets drawn with a fixed generator (``SPLIT_SEED``, independent of the experiment
seed, so every run compares on the same images); a split never copies the images it indexes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from autoprune.errors import AutopruneError

SPLIT_SEED = 20180802  # fixed: the split never depends on the experiment seed


@dataclass
class DataBundle:
    """The splits of one dataset.

    ``train`` is read for adaptive-BN statistics and calibration as it is (never augmented);
    ``train_augmented`` is what base training and fine-tuning read: ``train`` with ``data.augment``
    applied, or ``train`` itself when there is no augmentation.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    input_shape: tuple[int, int, int]
    num_classes: int
    name: str
    train_augmented: Dataset | None = None

    def __post_init__(self) -> None:
        if self.train_augmented is None:
            self.train_augmented = self.train


def split_indices(n: int, test_fraction: float | None, val_samples: int,
                  name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) positions of ``n`` samples: a fixed permutation, then ``test_fraction``
    of it for test (``None``: the data has its own test split, test is empty), then
    ``val_samples`` (at most half of what is left) for search-validation, the rest for training."""
    if n < 10:
        raise AutopruneError(f"dataset {name!r} has only {n} samples")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = 0 if test_fraction is None else max(1, int(round(test_fraction * n)))
    n_val = min(val_samples, (n - n_test) // 2)
    return perm[n_test + n_val:], perm[n_test:n_test + n_val], perm[:n_test]
