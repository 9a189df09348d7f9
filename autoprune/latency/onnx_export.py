"""Exporting a module to an in-memory ONNX graph (used by the ``onnxruntime`` latency runtime, the LUT
probes and ``autoprune export --format onnx``).

:func:`export_onnx` runs the TorchScript exporter on an eval-mode copy of the model (made
:func:`onnx_friendly` first): input ``input``, output ``logits``, the batch dimension dynamic unless
``dynamic_batch=False`` (timing sessions use fixed shapes).
"""

from __future__ import annotations

import copy
import importlib.util
import io
import warnings

import torch
from torch import nn

from autoprune.errors import AutopruneError


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
    """An eval-mode copy of ``model`` on ``example``'s device with non-divisible adaptive average
    pools replaced by :class:`PoolAsMatmul`."""
    model = copy.deepcopy(model).eval().to(example.device)
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


def check_onnx() -> None:
    """Raise a one-line error unless ``onnx`` is installed."""
    if importlib.util.find_spec("onnx") is None:
        raise AutopruneError("ONNX export needs the onnx extra: pip install 'autoprune[onnx]' (onnx, onnxruntime)")


def export_onnx(model: nn.Module, example: torch.Tensor, dynamic_batch: bool = True,
                fold_constants: bool = True) -> bytes:
    """``model`` as ONNX bytes (TorchScript exporter), traced on ``example``.

    :param dynamic_batch: make the batch dimension symbolic (a deployable file); ``False`` fixes
        every shape (what a timing session wants).
    :param fold_constants: fold constant subgraphs while exporting (slow for small graphs; ONNX
        Runtime folds them again when it loads the graph).
    """
    check_onnx()
    example = example.detach().cpu()
    model = onnx_friendly(model, example)
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=axes, do_constant_folding=fold_constants)
    return buf.getvalue()
