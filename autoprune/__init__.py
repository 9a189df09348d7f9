"""autoprune: automated per-layer pruning-ratio search for PyTorch models."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load_pruned", "__version__"]


def load_pruned(path):
    """Load a ``pruned_model.pt`` written by ``autoprune search`` (see :func:`autoprune.runner.load_pruned`)."""
    from autoprune.pipeline.runner import load_pruned as _load

    return _load(path)
