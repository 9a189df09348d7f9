"""Exporting a run's pruned model as a standalone file (``autoprune export``).

* ``torch``: a ``torch.export`` program (``.pt2``); load it with
  ``torch.export.load(path).module()`` - no autoprune or model code needed.
* ``onnx``: an ONNX graph (needs the ``onnx`` extra: ``onnx`` + ``onnxruntime`` to run it), input
  ``input`` and output ``logits``, dynamic batch dimension.

Both hold the physically smaller model for ``channel`` granularity; for ``fine`` / ``nm`` the
weights are dense tensors with zeros (no sparse kernels are exported).

``--fold-bn`` folds every eval-mode BatchNorm that follows a conv into the conv's weights and bias
(torch.fx's ``fuse``; the model must be fx-traceable): one layer less per conv at inference, with
the same outputs up to float rounding. After pruning the BatchNorm/activation work is a larger
share of the remaining time, so folding is what lets latency fall with FLOPs (README: speedup).
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import torch
from torch import nn

from autoprune.atomic import atomic_write_bytes, check_writable
from autoprune.errors import AutopruneError
from autoprune.latency import onnx_export
from autoprune.latency.onnx_export import PoolAsMatmul, onnx_friendly  # noqa: F401  (their old home)
from autoprune.pipeline.artifacts import read_pruned

FORMATS = {"torch": "pt2", "onnx": "onnx"}
"""Export format -> file suffix."""


def export_run(run_dir: str | Path, fmt: str, out: str | Path, fold_bn: bool = False) -> Path:
    """Export ``RUN_DIR/pruned_model.pt`` to ``out`` in ``fmt`` (BatchNorm folded if ``fold_bn``)."""
    run_dir, out = Path(run_dir), Path(out)
    source = run_dir / "pruned_model.pt"
    if not source.is_file():
        raise AutopruneError(f"{str(run_dir)!r} has no pruned_model.pt; give a finished run directory")
    if fmt not in FORMATS:
        raise AutopruneError(f"--format {fmt!r} is unknown; use one of {', '.join(sorted(FORMATS))}")
    check_writable(out.parent)
    model, spec = read_pruned(source)
    if fold_bn:
        model = fold_batchnorm(model)
    shape = tuple(spec["input_shape"])
    example = torch.randn(2, *shape)
    data = export_torch(model, example) if fmt == "torch" else export_onnx(model, example)
    atomic_write_bytes(out, data)
    return out


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each conv -> BatchNorm pair folded into one conv."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(copy.deepcopy(model).eval())
    except Exception as exc:  # fx tracing fails on data-dependent control flow
        raise AutopruneError(f"cannot fold BatchNorm: the model is not traceable by torch.fx "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); export without --fold-bn"
                             ) from exc


def export_torch(model: nn.Module, example: torch.Tensor) -> bytes:
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    """A deployable ONNX file's bytes: dynamic batch, constants folded (see :mod:`autoprune.latency.onnx_export`)."""
    return onnx_export.export_onnx(model, example, dynamic_batch=True, fold_constants=True)
