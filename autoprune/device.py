"""The one place that decides where and how a model runs (the ``runtime:`` config section).

:func:`resolve` turns ``runtime.device`` into a :class:`torch.device` (``auto``: CUDA when available,
else the CPU) and refuses, with a one-line :class:`~autoprune.errors.ConfigError`, a device this
machine does not have. A :class:`Device` then does everything placement needs: move a model
(:meth:`Device.place`, channels-last when asked), move a batch (:meth:`Device.to_device`), mixed
precision (:meth:`Device.autocast`, :meth:`Device.grad_scaler`) and the DataLoader settings
(:meth:`Device.loader_kwargs`). Nothing else in autoprune moves a model or a tensor to CUDA.

The default :class:`Device` is the CPU in fp32 with nothing changed, so code given none behaves as
before. Artifacts are always saved with CPU tensors (:func:`cpu_state`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.errors import ConfigError

if TYPE_CHECKING:
    from autoprune.config import RuntimeConfig

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cuda_available() -> bool:
    return torch.cuda.is_available()


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve(name: str = "cpu") -> torch.device:
    """``runtime.device`` as a device of this machine (``auto``: ``cuda`` when available, else ``cpu``).

    Raises a one-line ``ConfigError`` for a device this machine lacks.
    """
    name = str(name or "cpu")
    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_available():
            raise ConfigError("runtime.device: mps requested but torch.backends.mps.is_available() is False "
                              "on this machine; use cpu or auto")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not cuda_available():
            raise ConfigError(f"runtime.device: {name} requested but torch.cuda.is_available() is False on "
                              "this machine; use cpu or auto")
        device = torch.device(name)
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"runtime.device: {name} requested but this machine has {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1})")
        return device
    raise ConfigError(f"runtime.device {name!r} is not a valid value; set it to auto, cpu, cuda, cuda:N or mps")


def actor_device(gpus: float) -> torch.device:
    """The device of a Ray actor or trial that asked for ``gpus``: ``cuda`` (Ray sets
    ``CUDA_VISIBLE_DEVICES`` to the GPU it assigned, so that is ``cuda:0`` inside) or the CPU."""
    if gpus > 0 and cuda_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


@dataclass(frozen=True)
class Device:
    """Where a model runs and how: device, autocast dtype, memory format, DataLoader settings.

    :param device: a resolved device (see :func:`resolve`).
    :param amp: ``off`` | ``bf16`` | ``fp16``.
    :param channels_last: 4-D weights and image batches in channels-last memory format.
    :param num_workers: DataLoader worker processes.
    :param pin_memory: page-locked host memory; batches are then copied non-blocking.
    """

    device: torch.device = torch.device("cpu")
    amp: str = "off"
    channels_last: bool = False
    num_workers: int = 0
    pin_memory: bool = False

    @classmethod
    def from_config(cls, runtime: RuntimeConfig | None, device: torch.device | str | None = None) -> Device:
        """The :class:`Device` of ``runtime`` (None: the CPU default); ``device`` overrides
        ``runtime.device`` (e.g. the GPU Ray assigned to an actor)."""
        if runtime is None:
            return cls(torch.device(device or "cpu"))
        where = torch.device(device) if device is not None else resolve(runtime.device)
        if runtime.amp == "fp16" and where.type == "cpu":
            raise ConfigError("runtime.amp: fp16 needs a GPU (runtime.device: cuda); use bf16 on the CPU or amp: off")
        return cls(where, runtime.amp, runtime.channels_last, runtime.num_workers,
                   runtime.pin_memory and where.type == "cuda")

    @property
    def type(self) -> str:
        return self.device.type

    @property
    def is_default(self) -> bool:
        """On the CPU and contiguous: placing a model changes nothing (``amp`` may still be on)."""
        return self.device.type == "cpu" and not self.channels_last

    def following(self, model: nn.Module) -> Device:
        """This device, or the same settings on the device ``model``'s parameters are on (batches
        then go where the model is)."""
        where = next((p.device for p in model.parameters()), self.device)
        if where == self.device or (where.type == self.device.type and self.device.index is None
                                    and where.index in (None, 0)):
            return self
        return replace(self, device=where, pin_memory=self.pin_memory and where.type == "cuda")

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` (in place) to the device, channels-last when asked; returns it."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, batch: Any) -> Any:
        """``batch`` (a tensor, or a tuple/list/dict of them) on the device; 4-D float tensors in
        channels-last when asked. Copies are non-blocking from pinned memory."""
        if isinstance(batch, torch.Tensor):
            out = batch.to(self.device, non_blocking=self.pin_memory)
            if self.channels_last and out.dim() == 4 and out.is_floating_point():
                out = out.contiguous(memory_format=torch.channels_last)
            return out
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch

    def batches(self, batches: Sequence[Any]) -> Sequence[Any]:
        """A view of ``batches`` whose items arrive on the device (the originals stay where they are);
        on the CPU, the batches as read (a DataLoader's are on the CPU)."""
        source = batches.source if isinstance(batches, OnDevice) else batches
        return source if self.device.type == "cpu" else OnDevice(source, self)

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at ``amp``'s dtype on the device, or a no-op with ``amp: off``."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler for training: enabled with ``fp16`` only (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")

    def loader_kwargs(self) -> dict[str, Any]:
        """``num_workers`` and ``pin_memory`` for a DataLoader."""
        return {"num_workers": self.num_workers, "pin_memory": self.pin_memory}

    def synchronize(self) -> None:
        """Wait for queued GPU work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def describe(self) -> dict[str, Any]:
        """For logs and summaries: device, its name, amp, channels_last."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"device": str(self.device), "name": name, "amp": self.amp, "channels_last": self.channels_last}


CPU = Device()
"""The default: CPU, fp32, contiguous, in-process data loading."""


class OnDevice(Sequence[Any]):
    """``batches`` (any sequence of batches, e.g. fixed adaptive-BN batches) moved to a device as
    they are read; slicing gives another view."""

    def __init__(self, batches: Sequence[Any], device: Device) -> None:
        self.source, self.device = batches, device

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.source:
            yield self.device.to_device(batch)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return OnDevice(self.source[i], self.device)
        return self.device.to_device(self.source[i])


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_cpu(obj: Any) -> Any:
    """``obj`` (tensors in dicts, lists, tuples) with every tensor detached on the CPU (checkpoints
    load on any machine)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state_dict as contiguous CPU tensors (what every artifact saves)."""
    return {k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else v
            for k, v in model.state_dict().items()}
