"""Image folders in the ImageNet layout, decoded with Pillow and streamed.

``data: {name: image_folder, root: DIR, image_size: 224}`` reads::

    DIR/train/<class>/<image>     the training images; class names are the sorted folder names
    DIR/val/<class>/<image>       optional: ImageNet's "val" folder, used as the *test* split

Without ``val/`` the fixed split generator keeps ``data.test_fraction`` of ``train/`` as the test
split. The search-validation split (``data.val_samples``) is always held out of ``train/``, so a
search never sees a test image. Images are found by extension (``.jpg``, ``.png``, ... as
torchvision's ``ImageFolder``; hidden files are skipped), in nested folders too.

**Decoding.** Pillow decodes, inside ``__getitem__``, so DataLoader workers do it in parallel and
only the file list is held in memory. Pillow is the decoder torchvision itself uses for its
folders; torchvision is not used because it does not import beside the CPU torch build on these
machines. Transforms are torch ops (:mod:`autoprune.data.transforms`): shorter side to
``data.resize_to`` and a centre ``data.image_size`` crop for scoring, BN statistics and test; a
random-resized crop (``data.crop_scale``) and a horizontal flip for training when ``data.augment``
asks for it; then ``data.mean``/``data.std`` normalisation (ImageNet's by default).

**Bad input** stops the run with one line naming the file or folder: a missing root or
``train/``, no class folders, a class folder without images, class folders that differ between
``train/`` and ``val/``. Labels come from folder names only, so no decoding problem can ever
give an image a wrong label. When the folders are indexed, every image's header is opened
(Pillow reads a few hundred bytes; about 20 us a file on a local disk), so a file that is not an
image at all (empty, an HTML page saved as .jpg) fails before any training. A file whose header is
fine but whose pixel data is damaged (a truncated JPEG) fails when it is first decoded, naming the
file; it is never skipped or replaced.
"""

from __future__ import annotations

import copy
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from autoprune.config import DataConfig
from autoprune.data.splits import DataBundle, split_indices
from autoprune.data.transforms import Normalize, ScoringTransform, TrainingTransform, Transform
from autoprune.errors import AutopruneError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224
DEFAULT_SCALE = (0.08, 1.0)


class FolderImages(Dataset):
    """Images at ``paths`` with class ``labels``, decoded by Pillow and transformed when read.

    :param paths: image files.
    :param labels: one class index per file.
    :param transform: applied to the decoded ``C x H x W`` uint8 tensor.
    :param mode: Pillow mode to convert to (``RGB`` or ``L``).
    :param training: the :class:`~autoprune.data.transforms.TrainingTransform` settings
        ``(size, scale, normalize)`` that :meth:`augmented` uses.
    """

    def __init__(self, paths: list[str], labels: np.ndarray, transform: Transform, mode: str,
                 training: tuple[int, tuple[float, float], Normalize]) -> None:
        self.paths, self.labels, self.transform, self.mode = paths, labels, transform, mode
        self.training = training

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(decode(self.paths[i], self.mode)), int(self.labels[i])

    @property
    def targets(self) -> torch.Tensor:
        return torch.from_numpy(self.labels)

    def augmented(self, flip: bool) -> FolderImages:
        """The same images read for training: random-resized crop (and flip) instead of resize + crop."""
        size, scale, normalize = self.training
        out = copy.copy(self)
        out.transform = TrainingTransform(size, scale, flip, normalize)
        return out


def decode(path: str, mode: str) -> torch.Tensor:
    """The image at ``path`` as a ``C x H x W`` uint8 tensor; unreadable -> one-line user error."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            array = np.array(img if img.mode == mode else img.convert(mode))
    except Exception as exc:
        raise AutopruneError(f"image_folder: cannot decode image {path!r} ({type(exc).__name__}: {exc})") from None
    tensor = torch.from_numpy(array)
    return tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _class_folders(split_dir: Path) -> list[str]:
    with os.scandir(split_dir) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images_in(folder: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f)]
    return found


def _header_problem(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 (the header is read; pixel data is not decoded)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_headers(paths: list[str]) -> None:
    """Open every image's header (threads: the cost is mostly waiting for the disk)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        for path, problem in zip(paths, pool.map(_header_problem, paths, chunksize=256), strict=True):
            if problem:
                raise AutopruneError(f"image_folder: {path!r} is not a readable image ({problem})")


def index_split(split_dir: Path, classes: list[str] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """(paths, labels, class names) of one split folder; ``classes`` must match when given."""
    found = _class_folders(split_dir)
    if not found:
        raise AutopruneError(f"image_folder: {str(split_dir)!r} has no class folders "
                             f"(expected {split_dir}/<class>/<image>)")
    if classes is not None and found != classes:
        only_train, only_here = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise AutopruneError(f"image_folder: the class folders of {str(split_dir)!r} differ from train/'s "
                             f"(only in train/: {', '.join(only_train) or '-'}; only in {split_dir.name}/: "
                             f"{', '.join(only_here) or '-'})")
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(found):
        images = _images_in(split_dir / name)
        if not images:
            raise AutopruneError(f"image_folder: class folder {str(split_dir / name)!r} has no images "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
        paths += images
        labels += [label] * len(images)
    return paths, np.asarray(labels, dtype=np.int64), found


def load_image_folder(cfg: DataConfig) -> DataBundle:
    """The splits of the image folder at ``data.root`` (see the module docstring)."""
    if not cfg.root:
        raise AutopruneError("image_folder needs data.root: the folder holding train/<class>/<image>")
    root = Path(cfg.root)
    if not root.is_dir():
        raise AutopruneError(f"image_folder: data.root {str(root)!r} is not a folder")
    if not (root / "train").is_dir():
        raise AutopruneError(f"image_folder: no train/ folder under {str(root)!r} "
                             f"(expected {root}/train/<class>/<image>)")
    paths, labels, classes = index_split(root / "train")
    has_val = (root / "val").is_dir()
    test_paths, test_labels = (index_split(root / "val", classes)[:2]) if has_val else ([], labels[:0])
    check_headers(paths + test_paths)
    train, val, test = split_indices(len(paths), None if has_val else cfg.test_fraction, cfg.val_samples,
                                     "image_folder")
    if not has_val:
        test_paths, test_labels = [paths[int(i)] for i in test], labels[test.numpy()]

    size = cfg.image_size or DEFAULT_SIZE
    channels = cfg.channels or 3
    mean, std = (cfg.mean, cfg.std) if cfg.mean is not None else (IMAGENET_MEAN, IMAGENET_STD)
    if channels == 1 and cfg.mean is None:
        mean, std = [sum(mean) / 3], [sum(std) / 3]
    normalize = Normalize(mean, std, channels=channels)
    scoring = ScoringTransform(size, cfg.resize_to or round(size / 0.875), normalize)
    training = (size, tuple(cfg.crop_scale or DEFAULT_SCALE), normalize)
    mode = "RGB" if channels == 3 else "L"

    def split(p: list[str], y: np.ndarray) -> FolderImages:
        return FolderImages(p, y, scoring, mode, training)

    def pick(idx: torch.Tensor) -> FolderImages:
        return split([paths[int(i)] for i in idx], labels[idx.numpy()])

    return DataBundle(pick(train), pick(val), split(test_paths, test_labels), (channels, size, size), len(classes),
                      "image_folder")
