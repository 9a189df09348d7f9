"""``data.augment``: applied to what base training and fine-tuning read, never to scoring, BN or test."""

from __future__ import annotations

import sys

import pytest
import torch
from conftest import tiny_config
from test_data_streaming import in_training

from autoprune.config import DataConfig, TrainConfig, load_config
from autoprune.core.train import train_model
from autoprune.data.datasets import load_data
from autoprune.data.folders import FolderImages
from autoprune.data.transforms import Augmented, RandomCrop, TrainingTransform
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models.zoo import build_model

CALLS = {"training": 0, "outside": 0}


def marking_augment(x: torch.Tensor) -> torch.Tensor:
    """A user augmentation that records whether it runs inside a training run."""
    CALLS["training" if in_training() else "outside"] += 1
    return x + 0.01 * torch.randn_like(x)


def test_augment_runs_in_training_and_fine_tuning_only(tmp_path):
    from autoprune.pipeline.run import run_search

    assert sys.modules[__name__].CALLS is CALLS
    raw = tiny_config(data={"name": "digits", "val_samples": 200, "augment": f"{__name__}:marking_augment"})
    cfg = load_config(raw)
    train_size = len(load_data(cfg.data).train)
    CALLS.update(training=0, outside=0)
    run_search(cfg, out=tmp_path / "run", progress=False)
    epochs = cfg.train.epochs + cfg.finetune.epochs
    assert CALLS["training"] == epochs * train_size
    assert CALLS["outside"] == 1  # the shape check when the data is loaded


def test_augmented_view_leaves_the_scoring_splits_alone():
    plain = load_data(DataConfig(name="digits", val_samples=200))
    data = load_data(DataConfig(name="digits", val_samples=200, augment="crop_flip", crop_padding=2))
    assert isinstance(data.train_augmented, Augmented) and data.train_augmented.base is data.train
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(plain, split).tensors[0], getattr(data, split).tensors[0])
    torch.manual_seed(0)
    samples = [data.train_augmented[0][0] for _ in range(20)]
    assert all(s.shape == (1, 8, 8) for s in samples)
    assert any(not torch.equal(s, plain.train[0][0]) for s in samples)


@pytest.mark.parametrize(("name", "flip"), [("digits", False), ("mnist5k", False)])
def test_standard_never_mirrors_digits(name, flip):
    data = load_data(DataConfig(name=name, val_samples=100, augment="standard"))
    fn = data.train_augmented.fn
    assert isinstance(fn, RandomCrop) and fn.flip is flip
    assert fn.padding == {"digits": 1, "mnist5k": 4}[name]  # side / 8


def test_image_folders_augment_with_a_random_resized_crop(tmp_path):
    from test_data_folders import write_folder

    write_folder(tmp_path, size=(20, 16))
    data = load_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, val_samples=2,
                                augment="standard", crop_scale=[0.3, 0.6]))
    aug = data.train_augmented
    assert isinstance(aug, FolderImages) and isinstance(aug.transform, TrainingTransform)
    assert aug.transform.flip and aug.transform.scale == (0.3, 0.6)
    assert not isinstance(data.train.transform, TrainingTransform)
    assert aug[0][0].shape == (3, 8, 8) and aug.paths == data.train.paths


def test_augmented_training_is_reproducible_from_the_seed():
    data = load_data(DataConfig(name="digits", val_samples=200, augment="crop"))
    cfg = TrainConfig(epochs=1, batch_size=64)

    def trained(seed: int) -> torch.Tensor:
        torch.manual_seed(123)
        model = build_model("mnist_cnn", None, {"width": 4}, in_channels=1, num_classes=10)
        torch.manual_seed(seed)  # the global state must not matter
        train_model(model, data.train_augmented, cfg, seed=0, max_steps=5, progress=False)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(trained(1), trained(2))


@pytest.mark.parametrize("bad", ["flipflop", "standard"])
def test_bad_augment_values(bad):
    raw = tiny_config(data={"factory": "factories:digits_factory", "augment": bad})
    with pytest.raises(ConfigError):
        load_config(raw).validate()


def test_an_augment_callable_that_changes_the_shape_is_refused():
    with pytest.raises(AutopruneError, match="must return a tensor of the sample's shape"):
        load_data(DataConfig(name="digits", val_samples=100, augment="torch:flatten"))


def test_training_streams_through_workers_reproducibly(tmp_path):
    from test_data_folders import write_folder

    from autoprune.core.train import LoaderSettings

    write_folder(tmp_path, per_class=6, size=(12, 12))
    data = load_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, val_samples=2,
                                augment="crop_flip"))
    cfg = TrainConfig(epochs=1, batch_size=4)

    def trained(workers: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("mnist_cnn", None, {"width": 4}, in_channels=3, num_classes=3)
        train_model(model, data.train_augmented, cfg, seed=3, progress=False, loader=LoaderSettings(workers))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(trained(2), trained(2))
    assert torch.isfinite(trained(0)).all()
