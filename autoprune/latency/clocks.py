"""Clocks that time a latency sample: the wall clock, the timing thread's CPU time, CUDA events.

``clock="auto"`` (every entry point's default) resolves to ``cpu`` for one thread on the CPU and
``wall`` otherwise (:func:`resolve_clock`); see :mod:`autoprune.latency.timing` for how samples are
taken and compared.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from autoprune.errors import AutopruneError

Clock = str | Callable[[], float]
"""``"auto"``, a name in :data:`CLOCKS` (``"wall"``, ``"cpu"``) or a function returning seconds."""

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
"""Clocks by name (tests add a fake one); ``cpu`` is the timing thread's CPU time (1 thread only)."""


def resolve_clock(clock: Clock, threads: int, device: str = "cpu") -> Clock:
    """``"auto"`` (the default of every entry point): ``"cpu"`` for one thread on the CPU, where a
    forward runs on the timing thread and its CPU time is its latency on an idle core (time the OS
    gives other processes left out: on a busy machine the wall clock is not repeatable, see
    ``docs/latency.md``), else ``"wall"``. Any other clock is returned as is."""
    if clock != "auto":
        return clock
    return "cpu" if threads == 1 and str(device).startswith("cpu") else "wall"


def clock_fn(clock: Clock, threads: int) -> Callable[[], float]:
    """The timer for ``clock``: ``time.perf_counter``, ``time.thread_time`` or ``clock`` itself."""
    clock = resolve_clock(clock, threads)
    if callable(clock):
        return clock
    if clock == "cpu" and threads != 1:
        raise AutopruneError("the cpu clock times one thread; use --threads 1 or --clock wall")
    if clock not in CLOCKS:
        raise AutopruneError(f"unknown clock {clock!r}; choose 'auto', 'wall' or 'cpu'")
    return CLOCKS[clock]


def clock_name(clock: Clock) -> str:
    return clock if isinstance(clock, str) else getattr(clock, "__name__", "custom")


class ClockTimer:
    """Times ``runs`` calls of a session with a clock function (ms per call); ``sync`` (if given)
    waits for queued device work before the start and the end are read (Apple MPS)."""

    def __init__(self, now: Callable[[], float], sync: Callable[[], Any] | None = None) -> None:
        self.now, self.sync = now, sync or (lambda: None)

    def sample(self, fn: Callable[[], Any], runs: int) -> float:
        self.sync()
        start = self.now()
        for _ in range(runs):
            fn()
        self.sync()
        return (self.now() - start) / runs * 1e3


class CudaTimer:
    """Times ``runs`` calls of a CUDA session with CUDA events (ms per call).

    The device is synchronised before the start event is recorded, and the end event is waited
    for, so the sample covers every kernel the calls launched and nothing before them.
    """

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)

    def sample(self, fn: Callable[[], Any], runs: int) -> float:
        stream = torch.cuda.current_stream(self.device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(self.device)
        start.record(stream)
        for _ in range(runs):
            fn()
        end.record(stream)
        end.synchronize()
        return float(start.elapsed_time(end)) / runs


def make_timer(device: str, clock: Clock, threads: int) -> ClockTimer | CudaTimer:
    """CUDA events for a CUDA device (``clock`` must be ``"wall"``), else ``clock``'s timer
    (synchronised on an MPS device)."""
    clock = resolve_clock(clock, threads, device)
    if str(device).startswith("cuda"):
        if clock != "wall":
            raise AutopruneError(f"clock {clock_name(clock)!r} cannot time a CUDA device; use --clock wall "
                                 "(CUDA events)")
        return CudaTimer(device)
    if str(device).startswith("mps"):
        return ClockTimer(clock_fn(clock, threads), torch.mps.synchronize)
    return ClockTimer(clock_fn(clock, threads))
