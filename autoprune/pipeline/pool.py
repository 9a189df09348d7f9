"""Evaluating plans on a pool of Ray actors.

:class:`RayEvaluatorPool` is an :class:`~autoprune.evaluate.Evaluator` whose ``evaluate`` and
``evaluate_many`` run on ``workers`` Ray actors. The base model, unit graph and data are put in
the object store once; every actor is built from that one reference (a replacement actor too),
so nothing big is sent per plan: a plan travels as its JSON-able dict. Results are cached on the
driver by channel counts, so an identical plan is evaluated once however many searchers ask.

Each actor asks Ray for one CPU and runs torch with one thread: ``workers`` actors use
``workers`` cores, without oversubscription (on 2 cores, 2 actors x 1 thread). The driver keeps
a local evaluator for what is not a search evaluation (pruning the best plan, base accuracy).

With ``ray.gpus_per_worker: g`` every actor also asks Ray for ``g`` GPUs (fractions share one) and
runs on the GPU Ray assigns it (``cuda`` inside the actor; the CPU when it got none), with the rest
of the ``runtime:`` section (amp, channels_last, DataLoader settings). Asking for more GPUs than the
cluster has is a one-line error (:func:`check_gpus`), not a hang. The data travels as its
``DataConfig``: each actor opens the dataset itself (an image folder by its path), so no split goes
through the object store; only the model's weights do, once.

Ray is started on demand: ``address: null`` joins the Ray named by ``RAY_ADDRESS`` or starts a
local one with the machine's cores (no dashboard); an address joins that cluster; a running Ray
(``ray.is_initialized()``) is used as is. The pool shuts down only what it started.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from torch import nn

from autoprune.config import DataConfig, ExperimentConfig, RuntimeConfig
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.device import Device, actor_device
from autoprune.errors import AutopruneError, ConfigError
from autoprune.search.evaluate import EvalResult, Evaluator

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 25.0
"""How long joining a Ray cluster may take before it is reported unreachable."""
RELEASE_WAIT_S = 10.0
"""How long closing a pool waits for Ray to free its killed actors' CPUs (a Ray that stays up)."""
STALL_WARN_S = 120.0
"""With no evaluation back for this long, the pool logs a warning naming the cluster's free resources
(an actor Ray cannot place waits silently otherwise: a busy shared cluster, a lost node)."""


# ------------------------------------------------------------------------------------ Ray itself


_PROBED: set[str] = set()


def check_ray_address(address: str | None) -> None:
    """Before any long work: fail fast if the configured (or ``RAY_ADDRESS``) cluster is unreachable."""
    import ray

    target = address or os.environ.get("RAY_ADDRESS")
    if target and not ray.is_initialized():
        _probe_address(target)


def _probe_address(address: str) -> None:
    """Fail fast (well under 30 s) when ``address`` is not a reachable Ray cluster.

    ``ray.init`` retries an unreachable GCS for minutes, so the address is first tried over TCP
    (host:port forms), then joined by a short-lived subprocess with a timeout. A reachable address
    is probed once per process.
    """
    if address in _PROBED:
        return
    hint = "start it with `ray start --head` or set ray.address: null for a local Ray"
    host_port = address.split("://", 1)[-1]
    if address != "auto" and ":" in host_port:
        host, _, port = host_port.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as exc:
            raise AutopruneError(f"Ray cluster at {address!r} is unreachable ({exc}); {hint}") from exc
    code = f"import ray; ray.init(address={address!r}, include_dashboard=False, log_to_driver=False)"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=CONNECT_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise AutopruneError(
            f"Ray cluster at {address!r} did not answer within {CONNECT_TIMEOUT_S:.0f} s; {hint}") from exc
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise AutopruneError(f"cannot join the Ray cluster at {address!r} ({last[:200]}); {hint}")
    _PROBED.add(address)


def ensure_ray(address: str | None = None) -> bool:
    """Make sure Ray is initialised; return True if this call started (or joined) it.

    A running Ray is never re-initialised. ``address`` (or ``RAY_ADDRESS``) joins a cluster;
    otherwise a local Ray with all the machine's cores is started, without a dashboard.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    target = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if target:
        _probe_address(target)
        kwargs["address"] = target
    else:
        kwargs["num_cpus"] = os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
        raise AutopruneError(f"cannot start or join Ray ({exc}); check ray.address / RAY_ADDRESS") from exc
    log.info("Ray started: %s", ray.cluster_resources())
    return True


def check_gpus(gpus_per_worker: float, workers: int = 1, together: bool = False) -> None:
    """Raise a one-line ``ConfigError`` when the running Ray cluster has fewer GPUs than one worker's
    ``gpus_per_worker`` (or, ``together``, than all ``workers``' at once: a Tune trial's placement
    group), which Ray would otherwise wait for forever."""
    import ray

    if gpus_per_worker <= 0:
        return
    have = float(ray.cluster_resources().get("GPU", 0))
    if together and gpus_per_worker * workers > have:
        raise ConfigError(f"ray.gpus_per_worker={gpus_per_worker:g} x {workers} workers per trial needs "
                          f"{gpus_per_worker * workers:g} GPUs but the Ray cluster has {have:g}; lower "
                          "ray.gpus_per_worker or ray.workers, or set ray.gpus_per_worker: 0 (CPU)")
    if gpus_per_worker > have:
        raise ConfigError(f"ray.gpus_per_worker={gpus_per_worker:g} but the Ray cluster has {have:g} GPUs; "
                          "set ray.gpus_per_worker: 0 (CPU) or join a cluster with GPUs (ray.address)")
    if gpus_per_worker * workers > have:
        log.warning("ray.gpus_per_worker=%g x ray.workers=%d > the cluster's %g GPUs: only %d actors run at once",
                    gpus_per_worker, workers, have, int(have // gpus_per_worker))


def check_cluster_gpus(cfg: ExperimentConfig) -> None:
    """Before the base model trains: the GPUs ``ray.gpus_per_worker`` asks for exist (starts Ray for
    the check and shuts down what it started)."""
    import ray

    if cfg.ray.gpus_per_worker <= 0 or cfg.ray.workers <= 0:
        return
    started = ensure_ray(cfg.ray.address)
    try:
        if not _in_placement_group():
            check_gpus(cfg.ray.gpus_per_worker, cfg.ray.workers)
    finally:
        if started:
            ray.shutdown()


def _in_placement_group() -> bool:
    from ray.util import get_current_placement_group

    return get_current_placement_group() is not None


def _actor_class():
    """The Ray actor class (defined lazily so importing this module does not import Ray)."""
    import ray

    @ray.remote(num_cpus=1, max_restarts=0)
    class EvalWorker:
        """Holds one :class:`Evaluator` built from the shared payload; evaluates plan dicts."""

        def __init__(self, payload: dict[str, Any], threads: int, gpus: float = 0.0,
                     runtime: RuntimeConfig | None = None) -> None:
            import torch

            from autoprune.data.datasets import load_data

            torch.set_num_threads(threads)
            payload = dict(payload)
            if isinstance(payload["data"], DataConfig):  # opened here, by path, not shipped
                payload["data"] = load_data(payload["data"])
            device = actor_device(gpus)  # the GPU Ray assigned (CUDA_VISIBLE_DEVICES), else the CPU
            self.evaluator = Evaluator(**payload, runtime=Device.from_config(runtime or RuntimeConfig(), device))

        def evaluate(self, plan: dict[str, Any], finetune_steps: int | None) -> EvalResult:
            return self.evaluator.evaluate(PruningPlan.from_dict(plan), finetune_steps)

        def pid(self) -> int:
            return os.getpid()

        def device(self) -> str:
            return str(self.evaluator.runtime.device)

    return EvalWorker


# ------------------------------------------------------------------------------------- the pool


class RayEvaluatorPool(Evaluator):
    """An :class:`Evaluator` whose plan evaluations run on Ray actors (same interface).

    :param workers: number of actors (each 1 CPU, 1 torch thread).
    :param address: Ray address; ``None`` -> ``RAY_ADDRESS`` or a local Ray.
    :param max_retries: how often one plan is retried on a replacement actor after its actor died.
    :param threads: torch threads per actor.
    :param gpus_per_worker: GPUs each actor asks Ray for (0: CPU actors).
    :param runtime_config: the ``runtime:`` section the actors follow (their device is the one Ray
        assigns them).
    :param data_config: the data's config: actors then open the data themselves from it (a folder by
        its path) instead of receiving ``data`` through the object store.
    :param runtime: the driver's local evaluator's device (:class:`~autoprune.device.Device`).
    The other parameters are :class:`Evaluator`'s.
    """

    def __init__(self, model: nn.Module, graph: UnitGraph, data, evaluation=None, pruning=None, train=None,
                 finetune=None, seed: int = 0, *, workers: int = 2, address: str | None = None,
                 max_retries: int = 2, threads: int = 1, gpus_per_worker: float = 0.0,
                 runtime_config: RuntimeConfig | None = None, data_config: DataConfig | None = None,
                 runtime: Device | None = None) -> None:
        super().__init__(model, graph, data, evaluation=evaluation, pruning=pruning, train=train,
                         finetune=finetune, seed=seed, runtime=runtime)
        import ray

        if workers < 1:
            raise AutopruneError(f"ray.workers must be >= 1 for a Ray pool (got {workers})")
        self.max_retries = max_retries
        self.threads = threads
        self.replaced = 0
        self.actors: list[Any] = []
        self._started_ray = ensure_ray(address)
        self.gpus_per_worker = float(gpus_per_worker)
        self.runtime_config = runtime_config
        if not _in_placement_group():
            try:
                check_gpus(self.gpus_per_worker, workers)
            except ConfigError:
                self.close()
                raise
        self.workers = self._fit_workers(workers)
        payload = {"model": model, "graph": graph, "data": data_config or data, "evaluation": self.evaluation,
                   "pruning": self.pruning, "train": self.train_cfg, "finetune": self.finetune_cfg,
                   "seed": seed}
        self._payload = ray.put(payload)  # once; every actor (and replacement) reads this one copy
        self._cls = _actor_class()
        self.actors = [self._new_actor() for _ in range(self.workers)]

    @classmethod
    def from_config(cls, model: nn.Module, graph: UnitGraph, data, cfg: ExperimentConfig,
                    runtime: Device | None = None) -> RayEvaluatorPool:
        """The pool ``cfg`` describes (its evaluation, pruning, train, fine-tune, seed, ray and runtime
        sections); the actors open the data from ``cfg.data``; ``runtime`` is the driver's device."""
        return cls(model, graph, data, evaluation=cfg.evaluation, pruning=cfg.pruning, train=cfg.train,
                   finetune=cfg.finetune, seed=cfg.seed, workers=cfg.ray.workers, address=cfg.ray.address,
                   max_retries=cfg.ray.max_retries, gpus_per_worker=cfg.ray.gpus_per_worker,
                   runtime_config=cfg.runtime, data_config=cfg.data, runtime=runtime)

    def _fit_workers(self, workers: int) -> int:
        import ray

        if _in_placement_group():  # inside a Tune trial: the trial reserved the actors' CPUs
            return workers
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if workers > cpus:
            log.warning("ray.workers=%d but the Ray cluster has %d CPUs; using %d actors", workers, cpus,
                        max(cpus, 1))
        return max(1, min(workers, cpus))

    def _new_actor(self):
        options = {"num_gpus": self.gpus_per_worker} if self.gpus_per_worker > 0 else {}
        return self._cls.options(**options).remote(self._payload, self.threads, self.gpus_per_worker,
                                                   self.runtime_config)

    # ------------------------------------------------------------------------- evaluation
    def evaluate(self, plan: PruningPlan, finetune_steps: int | None = None) -> EvalResult:
        """Evaluate one plan on an actor (cached on the driver by channel counts)."""
        return self.evaluate_many([plan], finetune_steps)[0]

    def evaluate_many(self, plans: Sequence[PruningPlan], finetune_steps: int | None = None) -> list[EvalResult]:
        """Evaluate independent plans in parallel across the actors; results in input order.

        As with the in-process evaluator, a plan already evaluated (or repeated in ``plans``)
        is answered from the cache with ``cached=True``.
        """
        finetune_steps = self.steps(finetune_steps)
        if not self.actors:  # closed: evaluate in-process
            return [Evaluator.evaluate(self, p, finetune_steps) for p in plans]
        keys = [(p.key(self.graph), finetune_steps) for p in plans]
        todo = {}
        for key, plan in zip(keys, plans, strict=True):
            if key not in self.cache and key not in todo:
                todo[key] = plan.to_dict()
        fresh = self._run(todo, finetune_steps) if todo else {}
        results, seen = [], set()
        for key in keys:
            if key in fresh and key not in seen:
                results.append(fresh[key])
            else:
                hit = self.cache[key]
                results.append(EvalResult(hit.accuracy, 0.0, 0.0, True, dict(hit.extra)))
            seen.add(key)
        return results

    def _run(self, todo: dict[tuple, dict], finetune_steps: int) -> dict[tuple, EvalResult]:
        """Spread ``todo`` over the actors, one plan in flight per actor; retry on dead actors."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        queue = deque((key, plan, 0) for key, plan in todo.items())
        idle = deque(range(len(self.actors)))
        in_flight: dict[Any, tuple[int, tuple, dict, int]] = {}
        done: dict[tuple, EvalResult] = {}
        while queue or in_flight:
            while queue and idle:
                slot = idle.popleft()
                key, plan, attempts = queue.popleft()
                ref = self.actors[slot].evaluate.remote(plan, finetune_steps)
                in_flight[ref] = (slot, key, plan, attempts)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=STALL_WARN_S)
            if not ready:
                self._warn_stalled(len(in_flight))
                continue
            slot, key, plan, attempts = in_flight.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as exc:  # the evaluation itself failed: not a worker problem
                cause = getattr(exc, "cause", None)
                raise (cause if isinstance(cause, AutopruneError) else exc) from None
            except RayActorError as exc:
                self._replace(slot, exc)
                if attempts >= self.max_retries:
                    raise AutopruneError(
                        f"an evaluation actor died {attempts + 1} times on the same plan "
                        f"(ray.max_retries={self.max_retries}); see the Ray logs, or set ray.workers: 0"
                    ) from exc
                queue.appendleft((key, plan, attempts + 1))
            else:
                result.cached = False
                self.cache[key] = done[key] = result
                self.evaluations += 1
            idle.append(slot)
        return done

    def _warn_stalled(self, in_flight: int) -> None:
        import ray

        free, total = ray.available_resources(), ray.cluster_resources()
        room = ", ".join(f"{k} {free.get(k, 0):g} of {total[k]:g}" for k in ("CPU", "GPU") if k in total)
        log.warning("no evaluation came back in %g s (%d in flight on %d actors); the Ray cluster has %s free: "
                    "an actor Ray cannot place waits for resources", STALL_WARN_S, in_flight, len(self.actors),
                    room or "no CPU")

    def _replace(self, slot: int, exc: Exception) -> None:
        log.warning("evaluation actor %d died (%s); starting a replacement", slot, type(exc).__name__)
        self.replaced += 1
        self.actors[slot] = self._new_actor()

    # --------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Kill the actors; shut Ray down only if this pool started it. The local evaluator stays.

        On a Ray that stays up, wait (at most ``RELEASE_WAIT_S``) until the killed actors' CPUs are free
        again: ``ray.kill`` returns before Ray releases them, and the next pool's actors would queue behind
        them (ray-project/ray#34917)."""
        import ray

        if not ray.is_initialized():
            return
        stays = not self._started_ray and bool(self.actors) and not _in_placement_group()
        free_after = ray.available_resources().get("CPU", 0.0) + len(self.actors) if stays else 0.0
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
        elif stays:
            free_after = min(free_after, ray.cluster_resources().get("CPU", 0.0))
            deadline = time.monotonic() + RELEASE_WAIT_S
            while ray.available_resources().get("CPU", 0.0) < free_after - 1e-6 and time.monotonic() < deadline:
                time.sleep(0.05)

    def __enter__(self) -> RayEvaluatorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
