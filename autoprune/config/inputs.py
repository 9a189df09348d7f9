"""What a search runs on: the ``model`` and ``data`` sections of an experiment file."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from autoprune.config.checks import check_choice
from autoprune.errors import ConfigError


@dataclass
class ModelConfig:
    name: str | None = None
    """Built-in model name (``mnist_cnn``, ``resnet20``, ``resnet56``, ``vgg_small``, ``mobilenetv2_small``)."""
    factory: str | None = None
    """User model factory ``"package.module:function"`` (executes the user's code)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the built-in constructor or the factory."""
    checkpoint: str | None = None
    """A state_dict file, loaded with ``weights_only=True``; without it the model is trained first."""
    input_shape: list[int] | None = None
    """One input's shape (``[C, H, W]`` for images, ``[C, L]`` for 1-d signals, ``[F]`` for feature
    vectors); defaults to the dataset's shape."""


AUGMENTS = ("none", "crop", "crop_flip", "standard")


@dataclass
class DataConfig:
    name: str | None = None
    """Built-in dataset (``mnist5k``, ``digits``, ``cifar10``, ``image_folder``); ``mnist5k`` when no
    factory is set."""
    factory: str | None = None
    """User data factory ``"package.module:function"`` returning ``(train, val, test)`` Datasets."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the factory."""
    val_samples: int = 1000
    """Size of the search-validation split, held out of the training data (the search never sees
    test); ``evaluation.score_samples`` caps how many of them score a plan."""
    test_fraction: float = 0.2
    """Share of a built-in dataset kept as the test split (not used where the data has its own test
    split: cifar10's ``test_batch``, an image folder's ``val/``)."""
    resize: int | None = None
    """Tensor datasets: resize images to ``resize x resize`` (e.g. 32 for CIFAR-style networks)."""
    channels: int | None = None
    """Repeat grey images to this many channels (e.g. 3); ``image_folder``: 3 (RGB, default) or 1 (grey)."""
    root: str | None = None
    """Where on-disk datasets live, never downloaded: ``cifar10``, the folder holding
    ``cifar-10-batches-py/`` (or that folder); ``image_folder``, the folder holding ``train/<class>/``
    and optionally ``val/<class>/``."""
    image_size: int | None = None
    """``image_folder``: side of the square image the model sees (default 224)."""
    resize_to: int | None = None
    """``image_folder``, scoring, BN statistics and test: the shorter side is resized to this, then the
    centre ``image_size`` square is cut out (default ``image_size / 0.875``: 256 for 224)."""
    crop_scale: list[float] | None = None
    """``image_folder`` with ``augment``: the random-resized crop covers this range of the image's area
    (default ``[0.08, 1.0]``), at an aspect ratio between 3/4 and 4/3."""
    crop_padding: int | None = None
    """Tensor datasets with ``augment``: the random crop's zero padding, in pixels (default: the image
    side / 8, 4 at 32x32)."""
    mean: list[float] | None = None
    """Per-channel normalisation mean, of pixel values in [0, 1] (one number, or one per channel).
    Default: ImageNet's for ``image_folder``; the training split's own mean for the other built-ins."""
    std: list[float] | None = None
    """Per-channel normalisation standard deviation (as ``mean``)."""
    augment: str = "none"
    """Augmentation of the training samples that base training and fine-tuning read (never of what
    scores a plan, re-estimates BatchNorm or tests): ``none``; ``crop`` (a random crop of the padded
    image; image folders: a random-resized crop); ``crop_flip`` (and a random horizontal flip);
    ``standard`` (the dataset's usual one: ``crop`` for the digit sets mnist5k and digits, where a flip
    changes the digit; ``crop_flip`` for cifar10 and image folders); or ``"pkg.module:callable"``,
    called on each training sample (a normalised CHW tensor) and returning it augmented. A data
    factory's samples get ``crop``, ``crop_flip`` or a callable the same way (``standard`` is not
    defined for them)."""

    def validate(self) -> None:
        """Checks of this section alone (the name/factory choice is checked with the experiment)."""
        folder = self.name == "image_folder"
        for key in ("image_size", "resize_to", "crop_scale"):
            if getattr(self, key) is not None and not folder:
                raise ConfigError(f"data.{key} applies to data.name: image_folder only")
        for key in ("resize", "channels"):
            if self.factory and getattr(self, key) is not None:
                raise ConfigError(f"data.{key} applies to the built-in datasets; a data factory's samples are "
                                  "used as it returns them (resize them there)")
        if folder and self.resize is not None:
            raise ConfigError("data.resize does not apply to image folders; set data.image_size (and data.resize_to)")
        if folder and (self.resize_to or 10**9) < (self.image_size or 224):
            raise ConfigError(f"data.resize_to ({self.resize_to}) must be >= data.image_size ({self.image_size or 224}): "
                              "the centre crop is cut from the resized image")
        if folder and self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels must be 1 or 3 for image folders (got {self.channels})")
        for key in ("image_size", "resize_to", "crop_padding"):
            low = 0 if key == "crop_padding" else 1
            if getattr(self, key) is not None and getattr(self, key) < low:
                raise ConfigError(f"data.{key} must be >= {low} (got {getattr(self, key)})")
        if self.crop_scale is not None and not (len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            raise ConfigError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1 (got {self.crop_scale})")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("data.mean and data.std go together: set both or neither")
        if self.mean is not None and (len(self.mean) != len(self.std) or not self.mean
                                      or not all(s > 0 for s in self.std)):
            raise ConfigError(f"data.mean and data.std need the same length (1 or one per channel) and std > 0 "
                              f"(got {self.mean}, {self.std})")
        self._check_augment()

    def _check_augment(self) -> None:
        if ":" in self.augment:
            return  # a callable, imported when the data is loaded
        check_choice("data.augment", self.augment, AUGMENTS)
        if self.factory is not None and self.augment == "standard":
            raise ConfigError("data.augment: standard is defined for the built-in datasets only; for a data factory "
                              "choose crop, crop_flip or \"pkg.module:callable\"")
