"""Runtimes that latency is measured in: ``torch`` (eager), ``onnxruntime`` and ``openvino``.

A runtime turns a model and an example input into a :class:`Session`: a zero-argument callable
that runs one forward pass on that input, and knows the device it runs on. Everything that times
(:mod:`autoprune.latency.timing`) times sessions, so a LUT, a check, a measured-latency budget
and the speed-up benchmark measure the same thing in any runtime.

* ``torch``: the module as it is, on the example's device (CPU or CUDA), under
  ``torch.inference_mode``; the thread count is set by the timing code (``torch.set_num_threads``).
* ``onnxruntime``: the module exported to an in-memory ONNX graph with fixed shapes
  (:func:`autoprune.latency.onnx_export.export_onnx`), run by an ``InferenceSession`` on the CPU
  execution provider with ``threads`` intra-op threads, 1 inter-op thread, sequential execution
  and every graph optimisation (BatchNorm is folded into the convs there).
* ``openvino``: the same ONNX graph read by OpenVINO and compiled for its CPU plugin with
  ``threads`` inference threads, one stream, the latency hint and float32 precision (no bf16/int8
  down-casting, so the model timed is the model exported).

Add a runtime with ``RUNTIMES.register("name", factory)``; a factory takes no arguments and
returns an object with ``name``, ``version()`` and ``prepare(model, example, threads)`` (and
optionally ``stepped(device) -> bool``: whether its kernels' speed steps with channel counts, so
LUTs for it need fine curves; see :func:`autoprune.latency.build.build_lut`). A runtime that runs
the exported ONNX graph subclasses :class:`ExportedRuntime` and names its packages and session.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from autoprune.errors import AutopruneError
from autoprune.registry import Registry


class Session(Protocol):
    """One prepared forward pass: ``session()`` runs it; ``device`` is ``"cpu"`` or ``"cuda:N"``."""

    device: str

    def __call__(self) -> Any: ...


class Runtime(Protocol):
    name: str

    def version(self) -> str: ...

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1) -> Session: ...


class TorchSession:
    """``model(example)`` in eval mode under ``torch.inference_mode`` (the caller sets the threads)."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        self.model, self.example = model, example
        self.device = str(example.device)

    def __call__(self) -> Any:
        with torch.inference_mode():
            return self.model(self.example)


class TorchRuntime:
    """PyTorch eager on the example's device. The model is used as given (eval mode is the
    caller's business: :func:`~autoprune.latency.timing.time_models` sets it)."""

    name = "torch"

    def version(self) -> str:
        return torch.__version__.split("+")[0]

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1) -> Session:
        return TorchSession(model, example)

    def stepped(self, device: str) -> bool:
        """CUDA kernels (tensor cores) favour multiples of 8; CPU eager latency is smooth in the widths."""
        return str(device).startswith("cuda")


class OrtSession:
    """An ONNX Runtime ``InferenceSession`` bound to one input array."""

    device = "cpu"

    def __init__(self, onnx_bytes: bytes, example: torch.Tensor, threads: int = 1) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name: example.detach().cpu().numpy()}

    def __call__(self) -> Any:
        return self.session.run(None, self.feed)


class ExportedRuntime:
    """A runtime that runs the model exported to ONNX (fixed shapes, constants not folded: the
    runtime does its own graph optimisation): ``packages`` must be importable, ``extras`` names the
    pip extras that bring them, ``session`` builds the session from the ONNX bytes."""

    name: str
    packages: tuple[str, ...]
    extras: str
    session: Callable[[bytes, torch.Tensor, int], Session]

    def __init__(self) -> None:
        for package in self.packages:
            if importlib.util.find_spec(package) is None:
                raise AutopruneError(f"runtime '{self.name}' needs the {package} package: "
                                     f"pip install 'autoprune[{self.extras}]' ({', '.join(self.packages)})")

    def version(self) -> str:
        module = importlib.import_module(self.packages[-1])
        return str(module.__version__).split("-")[0]

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1) -> Session:
        from autoprune.latency.onnx_export import export_onnx

        return type(self).session(export_onnx(model, example, dynamic_batch=False, fold_constants=False), example,
                                  threads)


class OnnxRuntime(ExportedRuntime):
    """ONNX Runtime on the CPU (see the module docstring)."""

    name, packages, extras, session = "onnxruntime", ("onnx", "onnxruntime"), "onnx", OrtSession

    def stepped(self, device: str) -> bool:
        """MLAS convolutions slow down by up to 60% off multiples of 4 input channels and step in
        blocks of 16 output channels (measured on x86, 2026-11-30)."""
        return True


@functools.cache
def openvino_core() -> Any:
    """One OpenVINO ``Core`` for the process, never freed, so no compiled model outlives its core (the
    full test suite segfaulted twice while each session made its own core; not since, 2026-11-30)."""
    import openvino as ov

    return ov.Core()


class OpenVinoSession:
    """An OpenVINO compiled model's infer request with its input tensor set once."""

    device = "cpu"

    def __init__(self, onnx_bytes: bytes, example: torch.Tensor, threads: int = 1) -> None:
        import openvino as ov

        core = openvino_core()
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(core.read_model(onnx_bytes), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.request.set_input_tensor(ov.Tensor(example.detach().cpu().numpy()))

    def __call__(self) -> Any:
        self.request.infer()
        return self.request.get_output_tensor().data


class OpenVinoRuntime(ExportedRuntime):
    """OpenVINO's CPU plugin on the exported ONNX graph (see the module docstring)."""

    name, packages, extras, session = "openvino", ("onnx", "openvino"), "onnx,openvino", OpenVinoSession

    def stepped(self, device: str) -> bool:
        """The CPU plugin's convolutions work on channel blocks of 8 or 16 (blocked layouts)."""
        return True


RUNTIMES: Registry = Registry("runtime")
RUNTIMES.register("torch", TorchRuntime)
RUNTIMES.register("onnxruntime", OnnxRuntime)
RUNTIMES.register("openvino", OpenVinoRuntime)


def get_runtime(name: str | None) -> Runtime:
    """The runtime called ``name`` (``None``: ``torch``); a one-line error if unknown or not installed."""
    factory: Callable[[], Runtime] = RUNTIMES.get(name or "torch")
    return factory()


def runtime_names() -> list[str]:
    return sorted(RUNTIMES.names())
