"""Datasets: built-ins, cifar10 and image folders from disk, user factories; deterministic index
splits; training-time augmentation."""

from autoprune.data.datasets import DATASETS, DataBundle, load_data

__all__ = ["DATASETS", "DataBundle", "load_data"]
