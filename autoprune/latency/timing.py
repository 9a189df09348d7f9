"""Measured latency, and the ``latency`` cost model (from a lookup table, or measured).

How latency is measured (:func:`measure_latency`): the model in eval mode under
``torch.inference_mode``, a fixed random input of ``(batch, *input_shape)``, a fixed thread count
(``torch.set_num_threads``, restored afterwards), ``warmup`` untimed forwards, then ``repeats``
timed samples with ``time.perf_counter`` (``clock="wall"``). A fast model runs several times per
sample (>= ``min_sample_ms``). Result: the median in ms and the spread (p10 to p90 / median).
``clock="cpu"`` (one thread) uses ``time.thread_time``: the timing thread's CPU time, leaving out
time given to other processes (for busy machines; not end-to-end latency).

On glibc the allocator is tuned first (:func:`tune_allocator`, the runtime equivalent of
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``): without it, forwards at batch 32 page-fault
thousands of times and run far slower than they need to. One thread is the default because on a
2-core CPU two threads do not give repeatable numbers; with more threads, start the process with
``OMP_WAIT_POLICY=ACTIVE`` (it is read when torch is imported, so it cannot be set afterwards).

:func:`time_against_base` times many models against a base model in interleaved passes (used by
LUT calibration and checks, :mod:`autoprune.latency.build`, and the speed-up benchmark).

The ``latency`` cost model prices channel counts in ms: from a LUT (:mod:`autoprune.latency.lut`), or by
pruning and timing each new count vector (slow; cached by counts).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import AutopruneError
from autoprune.latency.lut import LutCost, load_lut

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_tuned = False


def tune_allocator() -> bool:
    """Keep freed activations in the heap (glibc ``mallopt``); returns whether it applied.

    Equivalent to starting the process with ``MALLOC_MMAP_THRESHOLD_=33554432`` and a large
    ``MALLOC_TRIM_THRESHOLD_``; a no-op on other C libraries.
    """
    global _tuned
    if _tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok


def check_threads(threads: int) -> None:
    """Validate ``threads`` and warn when multi-threaded timing will be noisy."""
    if threads < 1:
        raise AutopruneError(f"threads must be >= 1 (got {threads})")
    if threads > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "ACTIVE":
        log.warning("timing with %d threads without OMP_WAIT_POLICY=ACTIVE set before start-up: "
                    "expect noisy numbers (1 thread is the reliable setting)", threads)


@contextlib.contextmanager
def thread_count(threads: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``, restoring the old value."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class LatencyStats:
    """Median and spread of one latency measurement."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    runs_per_sample: int
    batch: int
    threads: int
    clock: str = "wall"
    min_ms: float = float("nan")

    @property
    def spread(self) -> float:
        """(p90 - p10) / median."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread}


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    min_sample_ms: float = 1.0,
    inputs: torch.Tensor | None = None,
    clock: str = "wall",
) -> LatencyStats:
    """Median forward latency of ``model`` (ms) on ``(batch, *input_shape)`` inputs.

    :param model: any module; it is put in eval mode for the measurement and restored.
    :param input_shape: shape of one sample, e.g. ``(3, 32, 32)``.
    :param batch: batch size.
    :param threads: torch intra-op threads during the measurement.
    :param warmup: untimed forwards first.
    :param repeats: timed samples (the median of these is reported).
    :param min_sample_ms: one sample runs the forward enough times to last at least this long.
    :param inputs: a ready input tensor (overrides ``batch``/``input_shape``).
    :param clock: ``"wall"`` (perf_counter) or ``"cpu"`` (thread CPU time; needs ``threads=1``).
    """
    if repeats < 1 or batch < 1:
        raise AutopruneError(f"latency: repeats and batch must be >= 1 (got {repeats}, {batch})")
    now = clock_fn(clock, threads)
    tune_allocator()
    x = inputs if inputs is not None else torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with thread_count(threads), torch.inference_mode():
            for _ in range(max(warmup, 1)):
                model(x)
            start = now()
            model(x)
            once = now() - start
            runs = int(min(1000, max(1, np.ceil(min_sample_ms / 1e3 / max(once, 1e-7)))))
            samples = np.empty(repeats)
            for i in range(repeats):
                start = now()
                for _ in range(runs):
                    model(x)
                samples[i] = (now() - start) / runs * 1e3
    finally:
        model.train(was_training)
    p10, med, p90 = np.percentile(samples, [10, 50, 90])
    return LatencyStats(float(med), float(p10), float(p90), repeats, runs, int(x.shape[0]), threads, clock,
                        float(samples.min()))


def clock_fn(clock: str, threads: int):
    """The timer for ``clock``: ``time.perf_counter`` or ``time.thread_time``."""
    if clock == "wall":
        return time.perf_counter
    if clock == "cpu":
        if threads != 1:
            raise AutopruneError("the cpu clock times one thread; use --threads 1 or --clock wall")
        return time.thread_time
    raise AutopruneError(f"unknown clock {clock!r}; choose 'wall' or 'cpu'")


class MeasuredLatencyCost:
    """Latency (ms) of the real pruned model, timed for every new count vector (slow, cached).

    Each call with new counts prunes a copy of ``model`` with torch-pruning (the channels chosen
    do not matter for speed) and times it with :func:`measure_latency`. Expect 0.1-1 s per new
    plan, so searchers that probe many plans (bisection, NetAdapt) are much slower than with a
    LUT. Timing noise means two near-identical plans can come out in either order.
    """

    kind = "latency"
    source = "measured"

    def __init__(self, graph: UnitGraph, model: nn.Module, batch: int = 1, threads: int = 1,
                 repeats: int = 15) -> None:
        check_threads(threads)
        self.graph, self.model = graph, model
        self.batch, self.threads, self.repeats = batch, threads, repeats
        self.cache: dict[tuple[int, ...], float] = {}
        self._base = self(graph.channels)

    @property
    def base(self) -> float:
        return self._base

    def _time(self, model: nn.Module) -> float:
        return measure_latency(model, self.graph.input_shape, self.batch, self.threads,
                               repeats=self.repeats).median_ms

    def __call__(self, counts: Sequence[int]) -> float:
        key = tuple(int(c) for c in counts)
        if key not in self.cache:
            if key == tuple(self.graph.channels):
                self.cache[key] = self._time(self.model)
            else:
                pruned = apply_plan(self.model, self.graph, PruningPlan.from_counts(self.graph, key))
                self.cache[key] = self._time(pruned)
        return self.cache[key]


def latency_cost(graph: UnitGraph, model: nn.Module | None = None, lut: str | Path | None = None, **_: Any):
    """Factory of the ``latency`` cost model: from ``lut`` when given, else measured on ``model``.

    ``COST_MODELS`` names it with a lazy entry point (:mod:`autoprune.core.cost`), so nothing needs to
    import this module for a ``latency`` budget to work.
    """
    if lut:
        return LutCost(load_lut(lut, graph), graph)
    model = model if model is not None else graph.model
    if model is None:
        raise AutopruneError("a latency budget needs the model (or budget.lut: a lookup table)")
    log.info("no budget.lut: latency is measured on this machine for every plan (slow)")
    return MeasuredLatencyCost(graph, model)


def latency_summary(session: Any, pruned: nn.Module, plan: Any) -> dict[str, Any]:
    """``summary.json`` entry for latency budgets: base and pruned latency, predicted and measured.

    "Predicted" is the budget's cost model (the LUT, or the cached measurement used during the
    search); "measured" times the base and the final (fine-tuned) pruned model now, with the
    cost model's batch size and thread count.
    """
    cost = session.budget.cost
    if session.budget.kind != "latency":
        return {}
    batch, threads = int(getattr(cost, "batch", 1)), int(getattr(cost, "threads", 1))
    clock = str(getattr(cost, "clock", "wall"))
    base = measure_latency(session.model, session.input_shape, batch, threads, repeats=30, clock=clock)
    after = measure_latency(pruned, session.input_shape, batch, threads, repeats=30, clock=clock)
    predicted = float(cost(plan.counts(session.graph)))
    return {"latency": {
        "unit": "ms", "source": getattr(cost, "source", "lut"), "batch": batch, "threads": threads, "clock": clock,
        "budget_ms": float(session.budget.target),
        "base_predicted_ms": float(cost.base), "base_measured_ms": base.median_ms,
        "pruned_predicted_ms": predicted, "pruned_measured_ms": after.median_ms,
        "kept_predicted": predicted / float(cost.base), "kept_measured": after.median_ms / base.median_ms,
    }}


# ------------------------------------------------------------------------------ LUT build / check


def default_device_name() -> str:
    """CPU model name and core count, e.g. ``"Intel(R) Xeon(R) ... (2 cores)"``."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} cores)"


@dataclass
class TimedPlans:
    """Latencies of models timed against a base model (see :func:`time_against_base`)."""

    ms: list[float]
    """Each model's latency (ms)."""
    relative: list[float]
    """Each model's latency as a fraction of the base model's, timed alongside it."""
    base_ms: float
    """The base model's latency, timed in the same passes."""


def time_plans(graph: UnitGraph, model: nn.Module, plans: list[list[int]], batch: int = 1, threads: int = 1,
               repeats: int = 15, clock: str = "wall", desc: str = "timing", progress: bool = False,
               **kwargs: Any) -> TimedPlans:
    """Prune ``model`` to each count vector of ``plans`` and time them with :func:`time_against_base`."""
    from tqdm.auto import tqdm

    models = [apply_plan(model, graph, PruningPlan.from_counts(graph, c)) if list(c) != list(graph.channels) else model
              for c in tqdm(plans, desc=f"{desc}: pruning", unit="plan", disable=not progress or None)]
    return time_against_base(model, models, graph.input_shape, batch, threads, repeats, clock, desc=desc,
                             progress=progress, **kwargs)


def time_against_base(base: nn.Module, models: Sequence[nn.Module], input_shape: Sequence[int], batch: int = 1,
                      threads: int = 1, repeats: int = 15, clock: str = "wall", rounds: int = 5,
                      desc: str = "timing", progress: bool = False) -> TimedPlans:
    """Time ``base`` and each of ``models`` in ``rounds`` interleaved passes; keep each one's fastest.

    Every pass times every model a few samples (their median), so a slow spell of the machine
    lands on one pass of many models instead of on every sample of a few; the fastest pass is
    the least disturbed one (on a shared machine interference only ever adds time). On this
    project's 2-core VM two timings of the same 50 plans agreed to 4.3% mean difference this way,
    against 7.4% for the median of all samples (README: Building a LUT). The base model is timed in the same
    passes, so ``relative`` compares models measured under the same conditions.
    """
    from tqdm.auto import tqdm

    per_round = max(3, -(-repeats // rounds))
    everything = [base, *models]
    medians = np.zeros((rounds, len(everything)))
    with tqdm(total=rounds * len(everything), desc=f"{desc}: timing", unit="run",
              disable=not progress or None) as bar:
        for r in range(rounds):
            for k, m in enumerate(everything):
                medians[r, k] = measure_latency(m, input_shape, batch, threads, warmup=5 if r == 0 else 2,
                                                repeats=per_round, clock=clock).median_ms
                bar.update(1)
    fastest = medians.min(axis=0)
    return TimedPlans(fastest[1:].tolist(), (fastest[1:] / fastest[0]).tolist(), float(fastest[0]))
