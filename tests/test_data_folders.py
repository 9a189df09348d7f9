"""Image folders (ImageNet layout, Pillow) and CIFAR-10 from its python batches, on tiny fake copies."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from autoprune.config import DataConfig, load_config
from autoprune.core.train import LoaderSettings, make_loader, read
from autoprune.data.datasets import load_data
from autoprune.data.folders import IMAGENET_MEAN, IMAGENET_STD
from autoprune.errors import AutopruneError, ConfigError

CLASSES = ["ant", "bee", "cat"]


def write_folder(root: Path, split: str = "train", per_class: int = 8, classes=CLASSES, size=(14, 10)) -> Path:
    """``root/split/<class>/i.png``: class k is filled with grey level 60 * k + 20, plus a stray file."""
    for k, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", size, (60 * k + 20,) * 3).save(folder / f"{i}.png")
        (folder / "notes.txt").write_text("not an image")
    return root


def grey_level(x: torch.Tensor) -> float:
    """Mean pixel value in 0..255 of a sample normalised with ImageNet's statistics."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1), torch.tensor(IMAGENET_STD).view(-1, 1, 1)
    return float(((x * std + mean) * 255).mean())


def folder_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(name="image_folder", root=str(root), image_size=8, val_samples=kw.pop("val_samples", 4), **kw)


def test_train_only_folder_is_split_with_labels_from_folder_names(tmp_path):
    data = load_data(folder_cfg(write_folder(tmp_path)))
    assert data.input_shape == (3, 8, 8) and data.num_classes == 3
    assert [len(data.train), len(data.val), len(data.test)] == [15, 4, 5]  # 24: test 0.2, then val 4
    paths = data.train.paths + data.val.paths + data.test.paths
    assert len(set(paths)) == 24 and not any(p.endswith(".txt") for p in paths)
    for ds in (data.train, data.val, data.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 8, 8)
            assert Path(ds.paths[i]).parent.name == CLASSES[y]
            assert grey_level(x) == pytest.approx(60 * y + 20, abs=0.5)
    again = load_data(folder_cfg(tmp_path))
    assert again.val.paths == data.val.paths  # the split is fixed


def test_val_folder_is_the_test_split_and_search_validation_comes_from_train(tmp_path):
    write_folder(tmp_path, "train")
    write_folder(tmp_path, "val", per_class=2)
    data = load_data(folder_cfg(tmp_path, val_samples=6))
    assert [len(data.train), len(data.val), len(data.test)] == [18, 6, 6]
    assert all("/val/" in p for p in data.test.paths)
    assert all("/train/" in p for p in data.train.paths + data.val.paths)
    assert data.test.targets.tolist() == [0, 0, 1, 1, 2, 2]


def test_scoring_transform_resizes_the_shorter_side_and_crops_the_centre(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    img = np.zeros((10, 30, 3), dtype=np.uint8)
    img[:, 10:20] = 255  # a white centre third
    for i in range(12):
        Image.fromarray(img).save(folder / f"{i}.png")
    data = load_data(DataConfig(name="image_folder", root=str(tmp_path), image_size=8, resize_to=8,
                                mean=[0.0], std=[1.0], val_samples=2))
    x, _ = data.val[0]
    assert x.shape == (3, 8, 8)
    assert x.min() > 0.9  # resized to 8 x 24, the centre 8 x 8 is all white


def test_grey_folders_and_custom_normalisation(tmp_path):
    write_folder(tmp_path)
    data = load_data(folder_cfg(tmp_path, channels=1, mean=[0.5], std=[0.25]))
    x, y = data.train[0]
    assert data.input_shape == (1, 8, 8) and x.shape == (1, 8, 8)
    assert float(x.mean() * 0.25 + 0.5) * 255 == pytest.approx(60 * y + 20, abs=0.5)


def test_decoding_in_workers_gives_the_same_batches(tmp_path):
    data = load_data(folder_cfg(write_folder(tmp_path)))
    settings = LoaderSettings(num_workers=2)
    serial = list(make_loader(data.train, 4))
    parallel = list(read(make_loader(data.train, 4, num_workers=settings.num_workers)))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(serial, parallel, strict=True))


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("case", ["missing_root", "no_train", "no_classes", "empty_class", "class_mismatch",
                                  "not_an_image", "no_root_key"])
def test_bad_folders_fail_with_one_line_naming_the_place(tmp_path, case):
    root = tmp_path / "data"
    expect = str(root)
    if case == "no_train":
        root.mkdir()
        expect = "no train/ folder"
    elif case == "no_classes":
        (root / "train").mkdir(parents=True)
        expect = "has no class folders"
    elif case == "empty_class":
        write_folder(root)
        (root / "train" / "dog").mkdir()
        (root / "train" / "dog" / "readme.txt").write_text("x")
        expect = "class folder '" + str(root / "train" / "dog") + "' has no images"
    elif case == "class_mismatch":
        write_folder(root)
        write_folder(root, "val", classes=["ant", "bee", "cow"])
        expect = "only in train/: cat; only in val/: cow"
    elif case == "not_an_image":
        write_folder(root)
        (root / "train" / "bee" / "broken.jpg").write_bytes(b"<html>not found</html>")
        expect = str(root / "train" / "bee" / "broken.jpg")
    cfg = folder_cfg(root) if case != "no_root_key" else DataConfig(name="image_folder")
    if case == "no_root_key":
        expect = "needs data.root"
    with pytest.raises(AutopruneError) as exc:
        load_data(cfg)
    assert expect in _one_line(exc)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_truncated_image_fails_at_its_first_read_naming_the_file(tmp_path, workers):
    write_folder(tmp_path, size=(40, 40))
    bad = tmp_path / "train" / "ant" / "3.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:300])  # the header survives, the pixel data does not
    data = load_data(folder_cfg(tmp_path, test_fraction=0.5, val_samples=1))
    everything = [data.train, data.val, data.test]
    with pytest.raises(AutopruneError) as exc:
        for ds in everything:
            for _ in read(make_loader(ds, 4, num_workers=workers)):
                pass
    assert f"cannot decode image {str(bad)!r}" in _one_line(exc)


def test_a_search_runs_end_to_end_on_an_image_folder(tmp_path):
    from autoprune.pipeline.run import run_search

    root = write_folder(tmp_path / "imgs", per_class=20, size=(12, 12))
    raw = tiny_config(data={"name": "image_folder", "root": str(root), "image_size": 8, "resize_to": 10,
                            "val_samples": 10, "augment": "standard"},
                      model={"name": "mnist_cnn", "kwargs": {"width": 4}})
    run_dir = run_search(load_config(raw), out=tmp_path / "run", progress=False)
    assert (run_dir / "summary.json").is_file()


@pytest.mark.parametrize("bad", [{"image_size": 8}, {"name": "image_folder", "resize": 8},
                                 {"name": "image_folder", "image_size": 64, "resize_to": 32},
                                 {"name": "image_folder", "channels": 2},
                                 {"name": "image_folder", "crop_scale": [0.5, 0.2]},
                                 {"mean": [0.5]}, {"mean": [0.5, 0.5], "std": [0.2]}])
def test_bad_data_settings_are_config_errors(bad):
    raw = tiny_config(data={"name": "digits", **bad})
    with pytest.raises(ConfigError):
        load_config(raw).validate()


# ------------------------------------------------------------------------------------------ cifar10


def write_cifar(root: Path, per_batch: int = 20, test: int = 30) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in [*[(f"data_batch_{i}", per_batch) for i in range(1, 6)], ("test_batch", test)]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        batches[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels,
                         b"batch_label": name.encode()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batches[name], fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, fh)
    return batches


def test_cifar10_reads_the_python_batches_and_uses_test_batch_as_test(tmp_path):
    batches = write_cifar(tmp_path)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path), val_samples=10, mean=[0.0], std=[1.0]))
    assert [len(data.train), len(data.val), len(data.test)] == [90, 10, 30]
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    x, y = data.test[4]
    expect = torch.from_numpy(batches["test_batch"][b"data"][4].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x, expect) and y == batches["test_batch"][b"labels"][4]
    assert data.test.targets.tolist() == batches["test_batch"][b"labels"]
    assert not set(data.train.indices.tolist()) & set(data.val.indices.tolist())
    pooled = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    j = int(data.val.indices[0])
    assert torch.allclose(data.val[0][0], torch.from_numpy(pooled[j].reshape(3, 32, 32)).float() / 255)


def test_cifar10_default_normalisation_resize_and_grey(tmp_path):
    write_cifar(tmp_path)
    data = load_data(DataConfig(name="cifar10", root=str(tmp_path / "cifar-10-batches-py"), val_samples=10,
                                resize=16, channels=1))
    xs = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert xs.shape == (90, 1, 16, 16) and data.input_shape == (1, 16, 16)
    assert abs(float(xs.mean())) < 0.05  # normalised with the training split's own statistics


def test_cifar10_missing_or_corrupt_files_are_one_line_errors(tmp_path):
    with pytest.raises(AutopruneError) as exc:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    assert "cifar-10-batches-py" in _one_line(exc)
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(AutopruneError) as exc:
        load_data(DataConfig(name="cifar10", root=str(tmp_path)))
    assert "data_batch_3" in _one_line(exc)


@pytest.mark.parametrize("case", ["corrupt", "mismatch"])
def test_the_cli_reports_a_bad_folder_in_one_line_and_writes_nothing(tmp_path, capsys, case):
    import yaml

    from autoprune.cli import main

    root = write_folder(tmp_path / "imgs", per_class=6)
    if case == "corrupt":
        (root / "train" / "cat" / "zero.png").write_bytes(b"")
        expect = str(root / "train" / "cat" / "zero.png")
    else:
        write_folder(root, "val", classes=["ant", "bee"])
        expect = "only in train/: cat"
    raw = tiny_config(data={"name": "image_folder", "root": str(root), "image_size": 8, "val_samples": 4})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "run"
    capsys.readouterr()
    code = main(["search", str(tmp_path / "exp.yaml"), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and expect in err and len(err.splitlines()) == 1
    assert not out.exists()
