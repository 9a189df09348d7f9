"""Datasets: built-ins shipped inside packages, user factories, deterministic splits."""

from autoprune.data.datasets import DATASETS, DataBundle, load_data

__all__ = ["DATASETS", "DataBundle", "load_data"]
