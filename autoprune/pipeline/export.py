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
import importlib.util
import io
import warnings
from pathlib import Path

import torch
from torch import nn

from autoprune.atomic import atomic_write_bytes, check_writable
from autoprune.errors import AutopruneError
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


class PoolAsMatmul(nn.Module):
    """``AdaptiveAvgPool2d`` at a fixed input size as two matrix products (exact, ONNX-exportable).

    The TorchScript ONNX exporter rejects adaptive pooling whose output size does not divide the
    input size (e.g. a 2x2 map pooled to 4x4); the pooling is a fixed linear map, so we write it
    as one.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("ph", _pool_matrix(in_hw[0], out_hw[0]))
        self.register_buffer("pw", _pool_matrix(in_hw[1], out_hw[1]).t().contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(self.ph, x), self.pw)


def _pool_matrix(size: int, out: int) -> torch.Tensor:
    m = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def onnx_friendly(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """A copy of ``model`` with non-divisible adaptive average pools replaced by :class:`PoolAsMatmul`."""
    model = copy.deepcopy(model)
    sizes: dict[str, tuple[int, int]] = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, (tuple(i[0].shape[-2:]),
                                                                                     tuple(o.shape[-2:]))))
               for n, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    with torch.no_grad():
        model(example)
    for h in handles:
        h.remove()
    for name, (in_hw, out_hw) in sizes.items():
        if any(i % o for i, o in zip(in_hw, out_hw, strict=True)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, PoolAsMatmul(in_hw, out_hw))
    return model


def export_onnx(model: nn.Module, example: torch.Tensor) -> bytes:
    if importlib.util.find_spec("onnx") is None:
        raise AutopruneError("ONNX export needs the onnx extra: pip install 'autoprune[onnx]' (onnx, onnxruntime)")
    model = onnx_friendly(model, example)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()
