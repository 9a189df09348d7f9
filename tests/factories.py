"""Tiny models and factories used by the tests (importable as ``factories:NAME``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class TinyResidual(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.a1 = nn.Conv2d(8, 12, 3, padding=1)
        self.a2 = nn.Conv2d(12, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 12, 3, padding=1)
        self.b2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.a2(torch.relu(self.a1(x)))
        x = x + self.b2(torch.relu(self.b1(x)))
        return self.fc(x.mean((2, 3)))


class TinyConcat(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.left = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.right = nn.Conv2d(in_channels, 10, 3, padding=1)
        self.merge = nn.Conv2d(16, 12, 1)
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x):
        x = torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1)
        return self.fc(torch.relu(self.merge(x)).mean((2, 3)))


def tiny_cnn(**kw):
    return TinyCNN(**kw)


def tiny_residual(**kw):
    return TinyResidual(**kw)


def linear_only(**kw):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def not_a_model(**kw):
    return "not a model"


def digits_factory(n: int = 300):
    """A user data factory: (train, val, test) TensorDatasets of random 1x8x8 images."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    return TensorDataset(x[:200], y[:200]), TensorDataset(x[200:250], y[200:250]), TensorDataset(x[250:], y[250:])


def empty_data_factory():
    from torch.utils.data import TensorDataset

    e = TensorDataset(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))
    return e, e, e


def needs_28x28(**kw):
    """A model that only accepts 1x28x28 inputs (flatten into a fixed-size Linear)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))


def big_labels_factory():
    """Labels 0..15 on 1x8x8 images: more classes than a 10-output model (e.g. tiny_cnn) has."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(120, 1, 8, 8, generator=g), torch.arange(120) % 16
    return TensorDataset(x[:80], y[:80]), TensorDataset(x[80:100], y[80:100]), TensorDataset(x[100:], y[100:])


def raising_factory(**kw):
    """A user factory with a bug: it raises while building the model."""
    raise RuntimeError("boom in the user's factory")


def float_labels_factory():
    """Labels stored as floats (e.g. read from a CSV): not class indices."""
    train, val, test = digits_factory()
    return tuple(type(ds)(ds.tensors[0], ds.tensors[1].float()) for ds in (train, val, test))


def digit_features(shape: str = "flat"):
    """sklearn's digits as feature vectors [64] (``flat``) or 1-d signals [1, 64] (``signal``)."""
    from sklearn.datasets import load_digits
    from torch.utils.data import TensorDataset

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    x = x if shape == "flat" else x[:, None, :]
    y = torch.tensor(d.target)
    return TensorDataset(x[:1200], y[:1200]), TensorDataset(x[1200:1500], y[1200:1500]), TensorDataset(x[1500:], y[1500:])


def feature_mlp(**kw):
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                         nn.Linear(32, kw.get("num_classes", 10)))


def signal_cnn(**kw):
    return nn.Sequential(nn.Conv1d(1, 16, 5, padding=2), nn.BatchNorm1d(16), nn.ReLU(), nn.MaxPool1d(2),
                         nn.Conv1d(16, 32, 3, padding=1), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, kw.get("num_classes", 10)))
