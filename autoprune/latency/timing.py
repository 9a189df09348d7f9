"""Measuring latency: sessions, clocks, and timing interleaved with a reference.

What is timed is a *session* (:mod:`autoprune.latency.runtimes`): one forward pass of a model on a
fixed input, in ``torch``, ``onnxruntime`` or ``openvino``. A sample runs the session enough times to last at
least ``min_sample_ms`` and is timed with

* ``clock="wall"``: ``time.perf_counter`` (end-to-end latency), or
* ``clock="cpu"``: ``time.thread_time``, the timing thread's CPU time (one thread only; leaves out
  time the OS gave to other processes: for busy machines, but not end-to-end latency), or
* CUDA events with synchronisation when the session runs on a CUDA device (``clock`` must then be
  ``"wall"``; the events time the GPU stream from before the first run to after the last).

The default, ``clock="auto"``, is ``cpu`` for one thread on the CPU and ``wall`` otherwise
(:func:`autoprune.latency.clocks.resolve_clock`): on a busy machine the wall clock charges a forward for the time slices
other processes took (a MobileNetV2 LUT built and checked on a 2-core VM running a 2-worker
benchmark alongside: 63% of 30 plans within +-10% in onnxruntime and 67% in openvino with ``wall``,
100% in onnxruntime with ``cpu``; ``mobilenetv2_small`` in openvino beside two CPU-bound processes:
77% with ``wall``, 93% with ``cpu``; 2026-12-05).

**Drift-proof comparisons.** Every timing that is compared with another is taken interleaved with a
*reference* (:func:`time_interleaved`): in each of ``rounds`` passes the reference is timed before the
first candidate, after every ``ref_every`` candidates and at the end; a session's timing in a pass is
the fastest of a few samples taken after one untimed sample (on a shared machine interference only ever
adds time), and each candidate's ratio in a pass is its timing over the geometric mean of the reference
timings on either side of it. (Both were once otherwise: no untimed sample, and the *faster* of the two
reference timings. The reference runs every ``ref_every`` candidates and is likely warmer, the faster of two is
a minimum over twice the candidate's samples, and both biased every ratio up, the more so the fewer the
samples: identical copies of the unpruned model timed as candidates came out at 1.018-1.058 with 3
samples a pass (``repeats`` 15, what ``lut check`` uses) and 1.001-1.015 with 6 (30, the calibration's),
so a LUT under-predicted its own checks by a few percent. Now 0.994-1.009 and 0.996-1.004:
``benchmarks/results/timing_bias.md``.) A candidate's ``relative`` latency is the median of those
per-pass ratios; its ``ms`` is its fastest pass. A machine that runs uniformly faster or slower changes
``ms`` but not ``relative``, and a slow spell lands on one pass of a candidate and its neighbouring
references alike. Passes alternate direction, so a steady drift over a pass cancels out. (On the loaded
2-core VM, four repeats of the ratios of 8 ResNet-20 plans spread by 1.6-2.3% this way, against 2.3-27%
with the median of samples instead of the fastest, 2026-11-30, with the estimator of then.) The reference is the unpruned model
(calibration, checks, measured budgets, the speed-up benchmark) or a fixed reference op (LUT entries,
:mod:`autoprune.latency.build`).

On glibc the allocator is tuned first (:func:`tune_allocator`, the runtime equivalent of
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``): without it, forwards at batch 32 page-fault
thousands of times and run far slower than they need to. One thread is the default because on a
2-core CPU two threads do not give repeatable numbers; with more threads, start the process with
``OMP_WAIT_POLICY=ACTIVE`` (it is read when torch is imported, so it cannot be set afterwards).

The ``latency`` cost model (:func:`latency_cost`, a LUT or measured) lives in
:mod:`autoprune.latency.costs`; ``COST_MODELS`` names it here through a lazy entry point.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.errors import AutopruneError
from autoprune.latency.clocks import Clock, ClockTimer, CudaTimer, clock_name, make_timer, resolve_clock
from autoprune.latency.runtimes import Runtime, Session, get_runtime

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
    runtime: str = "torch"

    @property
    def spread(self) -> float:
        """(p90 - p10) / median."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "spread": self.spread}


def runs_per_sample(fn: Callable[[], Any], timer: ClockTimer | CudaTimer, warmup: int,
                    min_sample_ms: float) -> int:
    """Run ``warmup`` untimed calls, time one, and return how many calls last ``min_sample_ms``."""
    for _ in range(max(warmup, 1)):
        fn()
    once = timer.sample(fn, 1)
    return int(min(1000, max(1, np.ceil(min_sample_ms / max(once, 1e-4)))))


def resolve_runtime(runtime: str | Runtime | None) -> Runtime:
    """A runtime object from its name (``None``: torch), or the object itself."""
    return runtime if runtime is not None and not isinstance(runtime, str) else get_runtime(runtime)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def example_input(model: nn.Module, input_shape: Sequence[int], batch: int) -> torch.Tensor:
    """A fixed random input of ``(batch, *input_shape)`` on ``model``'s device."""
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    return x.to(model_device(model))


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block, restoring each one's training flag."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch: int = 1,
    threads: int = 1,
    warmup: int = 5,
    repeats: int = 20,
    min_sample_ms: float = 1.0,
    inputs: torch.Tensor | None = None,
    clock: Clock = "auto",
    runtime: str | Runtime | None = None,
) -> LatencyStats:
    """Median forward latency of ``model`` (ms) on ``(batch, *input_shape)`` inputs, alone.

    Use :func:`time_against_base` for numbers that are compared with each other.

    :param model: any module; it is put in eval mode for the measurement and restored.
    :param input_shape: shape of one sample, e.g. ``(3, 32, 32)``.
    :param batch: batch size.
    :param threads: intra-op threads during the measurement.
    :param warmup: untimed forwards first.
    :param repeats: timed samples (the median of these is reported).
    :param min_sample_ms: one sample runs the forward enough times to last at least this long.
    :param inputs: a ready input tensor (overrides ``batch``/``input_shape``).
    :param clock: ``"auto"`` (:func:`resolve_clock`), ``"wall"`` (perf_counter) or ``"cpu"`` (thread
        CPU time; needs ``threads=1``).
    :param runtime: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"`` or a runtime object.
    """
    if repeats < 1 or batch < 1:
        raise AutopruneError(f"latency: repeats and batch must be >= 1 (got {repeats}, {batch})")
    rt = resolve_runtime(runtime)
    x = inputs if inputs is not None else example_input(model, input_shape, batch)
    clock = resolve_clock(clock, threads, str(x.device))
    timer = make_timer(str(x.device), clock, threads)
    tune_allocator()
    with eval_mode(model), thread_count(threads):
        session = rt.prepare(model, x, threads)
        runs = runs_per_sample(session, timer, warmup, min_sample_ms)
        samples = np.array([timer.sample(session, runs) for _ in range(repeats)])
    p10, med, p90 = np.percentile(samples, [10, 50, 90])
    return LatencyStats(float(med), float(p10), float(p90), repeats, runs, int(x.shape[0]), threads,
                        clock_name(clock), float(samples.min()), rt.name)


# ------------------------------------------------------------------------ interleaved with a reference


@dataclass
class TimedPlans:
    """Latencies of candidates timed interleaved with a reference (see :func:`time_interleaved`)."""

    ms: list[float]
    """Each candidate's latency (ms, its fastest pass)."""
    relative: list[float]
    """Each candidate's latency as a fraction of the reference's, timed alongside it (median over passes)."""
    base_ms: float
    """The reference's latency (ms, its fastest timing), from the same passes."""
    pass_shift: float = 0.0
    """How far one pass moved every candidate's fraction at once: the largest ``|median over candidates
    of (the pass's fraction / the median fraction) - 1|`` over the passes (0 with one pass or one
    candidate). A machine whose load changes mid-timing moves the fractions of a whole pass together,
    which the interleaving does not cancel; :func:`~autoprune.latency.check.check_lut` reports it."""
    timings: list[list[float]] = field(default_factory=list)
    """With several independent timings of the same sessions (``timings`` > 1 in :func:`time_against_base`):
    each timing's ``relative``; ``relative`` is then their median, ``ms`` and ``base_ms`` the fastest."""

    @property
    def repeatability(self) -> float | None:
        """The share of (candidate, ordered pair of timings) whose fractions agree within +-10% (``|a / b - 1|
        <= 0.1``, the criterion a LUT's prediction is held to), or None with fewer than two timings.

        What the machine allows: a prediction equal to one timing scores this against another.
        """
        if len(self.timings) < 2:
            return None
        t = np.array(self.timings)
        pairs = [np.abs(t[a] / t[b] - 1) <= 0.10 for a in range(len(t)) for b in range(len(t)) if a != b]
        return float(np.mean(pairs))


def time_interleaved(reference: Session, candidates: Sequence[Session], threads: int = 1, rounds: int = 5,
                     samples: int = 3, warmup: int = 2, min_sample_ms: float = 1.0, clock: Clock = "auto",
                     ref_every: int = 2, desc: str = "timing", progress: bool = False) -> TimedPlans:
    """Time ``candidates`` interleaved with ``reference`` in ``rounds`` passes (see the module docstring).

    :param reference: the session every candidate is compared with.
    :param candidates: prepared sessions, all on the reference's device.
    :param samples: timed samples per session per pass (the fastest is the pass's timing), after one untimed sample.
    :param ref_every: candidates between two timings of the reference.
    """
    from tqdm.auto import tqdm

    if rounds < 1 or samples < 1 or ref_every < 1:
        raise AutopruneError(f"timing: rounds, samples and ref_every must be >= 1 (got {rounds}, {samples}, "
                             f"{ref_every})")
    devices = {str(s.device) for s in (reference, *candidates)}
    if len(devices) > 1:
        raise AutopruneError(f"timing: sessions on different devices ({', '.join(sorted(devices))})")
    timer = make_timer(str(reference.device), clock, threads)
    tune_allocator()
    n = len(candidates)
    ms, rel, ref_ms = np.full((rounds, n), np.inf), np.ones((rounds, n)), []
    with thread_count(threads), tqdm(total=rounds * n, desc=desc, unit="run", disable=not progress or None) as bar:
        runs = [runs_per_sample(s, timer, warmup, min_sample_ms) for s in (reference, *candidates)]

        def timed(k: int) -> float:  # the fastest of ``samples`` samples after an untimed one (caches warm)
            session = reference if k < 0 else candidates[k]
            timer.sample(session, runs[k + 1])
            return min(timer.sample(session, runs[k + 1]) for _ in range(samples))

        for r in range(rounds):
            order = list(range(n)) if r % 2 == 0 else list(reversed(range(n)))
            before = timed(-1)
            ref_ms.append(before)
            for start in range(0, n, ref_every):
                block = [(k, timed(k)) for k in order[start:start + ref_every]]
                after = timed(-1)
                ref_ms.append(after)
                for k, t in block:
                    ms[r, k], rel[r, k] = t, t / max(math.sqrt(before * after), 1e-12)
                before = after
                bar.update(len(block))
    median = np.median(rel, axis=0)
    shift = float(np.max(np.abs(np.median(rel / median, axis=1) - 1))) if rounds > 1 and n > 1 else 0.0
    return TimedPlans(ms.min(axis=0).tolist(), median.tolist(), float(min(ref_ms)), shift)


def time_against_base(base: nn.Module, models: Sequence[nn.Module], input_shape: Sequence[int], batch: int = 1,
                      threads: int = 1, repeats: int = 15, clock: Clock = "auto", rounds: int = 5,
                      desc: str = "timing", progress: bool = False, runtime: str | Runtime | None = None,
                      ref_every: int = 2, timings: int = 1) -> TimedPlans:
    """Time each of ``models`` interleaved with ``base`` (:func:`time_interleaved`) in ``runtime``.

    ``repeats`` samples per model in all, spread over ``rounds`` passes (at least 3 per pass). The
    models are put in eval mode for the timing (and restored); the input is a fixed random
    ``(batch, *input_shape)`` tensor on ``base``'s device. With ``timings`` > 1 the same sessions are
    timed that many times, one whole timing after another (:attr:`TimedPlans.timings`,
    :attr:`TimedPlans.repeatability`).
    """
    from tqdm.auto import tqdm

    if timings < 1:
        raise AutopruneError(f"timing: timings must be >= 1 (got {timings})")
    rt = resolve_runtime(runtime)
    x = example_input(base, input_shape, batch)
    with eval_mode(base, *models), thread_count(threads):
        sessions = {}
        for m in tqdm([base, *models], desc=f"{desc}: preparing ({rt.name})", unit="model",
                      disable=not progress or rt.name == "torch" or None):
            if id(m) not in sessions:
                sessions[id(m)] = rt.prepare(m, x, threads)
        runs = [time_interleaved(sessions[id(base)], [sessions[id(m)] for m in models], threads, rounds,
                                 max(3, -(-repeats // rounds)), clock=clock, ref_every=ref_every,
                                 desc=desc if timings == 1 else f"{desc} ({t + 1}/{timings})", progress=progress)
                for t in range(timings)]
    if timings == 1:
        return runs[0]
    return TimedPlans(np.min([r.ms for r in runs], axis=0).tolist(), np.median([r.relative for r in runs], axis=0).tolist(),
                      min(r.base_ms for r in runs), max(r.pass_shift for r in runs), [r.relative for r in runs])


def time_plans(graph: UnitGraph, model: nn.Module, plans: list[list[int]], batch: int = 1, threads: int = 1,
               repeats: int = 15, clock: Clock = "auto", desc: str = "timing", progress: bool = False,
               **kwargs: Any) -> TimedPlans:
    """Prune ``model`` to each count vector of ``plans`` and time them with :func:`time_against_base`."""
    from tqdm.auto import tqdm

    models = [apply_plan(model, graph, PruningPlan.from_counts(graph, c)) if list(c) != list(graph.channels) else model
              for c in tqdm(plans, desc=f"{desc}: pruning", unit="plan", disable=not progress or None)]
    return time_against_base(model, models, graph.input_shape, batch, threads, repeats, clock, desc=desc,
                             progress=progress, **kwargs)


def default_device_name(device: str = "cpu") -> str:
    """A CUDA device's name, or the CPU model name and core count, e.g. ``"Intel(R) Xeon(R) ... (2 cores)"``."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name} ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------- the ``latency`` cost model


def latency_cost(graph: UnitGraph, model: nn.Module | None = None, lut: str | Path | None = None, **options: Any):
    """Factory of the ``latency`` cost model (see :func:`autoprune.latency.costs.make_latency_cost`).

    ``COST_MODELS`` names it with a lazy entry point (:mod:`autoprune.core.cost`), so nothing needs to
    import this module for a ``latency`` budget to work.
    """
    from autoprune.latency.costs import make_latency_cost

    return make_latency_cost(graph, model, lut, **options)


def latency_summary(session: Any, pruned: nn.Module, plan: Any) -> dict[str, Any]:
    """``summary.json`` entry for latency budgets (see :func:`autoprune.latency.costs.latency_summary`)."""
    from autoprune.latency import costs

    return costs.latency_summary(session, pruned, plan)
