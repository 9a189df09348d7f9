"""Fine-tuning (and base training) in-process or on Ray Train, checkpointed every epoch.

``finetune.workers: N`` runs the long fine-tune of the best plan as a Ray Train ``TorchTrainer`` with
``N`` DDP workers (gloo on CPU, NCCL on GPU); ``train.workers: N`` trains the base model the same way.
``0`` (the default) trains in the calling process. Both paths run the one training loop,
:func:`autoprune.core.train.train_model` (SGD with momentum, cosine schedule, NaN guard), through its
:class:`~autoprune.core.train.TrainHooks`:

* **Model.** The model goes through Ray's object store once, as what rebuilds it
  (:func:`model_payload`: the base model's spec, the plan, fine / N:M masks and the weights); each
  worker rebuilds the architecture (:func:`rebuild`) and loads the weights.
* **Data.** Each worker opens the data itself from the config (``load_data(cfg.data)``); no tensors
  are shipped. With ``N > 1`` each worker reads its shard (``DistributedSampler``, reshuffled every
  epoch with the run's seed) in batches of ``ceil(train.batch_size / N)``: the global batch, the
  steps per epoch and so the lr schedule stay those of the in-process run. BatchNorm statistics are
  per worker (no SyncBN); DDP keeps rank 0's buffers.
* **One worker** runs on Ray Train with the exact loader of the in-process run (no sampler, no DDP
  wrapper): the same seed gives the same weights (tested: equal within float tolerance; the worker
  runs torch on ``1`` thread, so sums may be ordered differently than in a multi-threaded process).
* **Checkpoints.** After every epoch the model, optimizer, lr schedule, torch RNG and data-order
  generator are saved atomically to ``<run dir>/finetune_ckpt/epoch_K.pt`` (only the latest is kept)
  and, on Ray Train, reported to Ray (``ray.train.report`` with a ``Checkpoint``; Ray uses it when it
  restarts a failed worker group, ``ray.max_retries`` times). ``autoprune search --resume RUN_DIR``
  after a ``kill -9`` during the fine-tune continues from the last finished epoch (in-process too),
  bit for bit as if never interrupted. Iterative schedules and rewinding are fine-tuned in-process
  without checkpoints (a resume restarts them); ``finetune.workers > 0`` refuses them (a config
  error). Base training on Ray Train is not checkpointed in the run dir (it runs before the run dir
  exists).
* **Resources.** Each worker asks Ray for 1 CPU (and 1 GPU when :func:`use_gpu`); asking for more
  workers than the cluster has is a one-line error before anything trains (:func:`check_resources`),
  and so is waiting more than :data:`FREE_WAIT_S` for them to become free.

On a multi-node cluster the run dir must be on storage every node sees (Ray Train stores its own
checkpoints under ``<run dir>/finetune_ckpt/ray``).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.atomic import atomic_write_with
from autoprune.core.cost import SPARSE_GRANULARITIES
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.core.sparsity import apply_masks, masks_of
from autoprune.core.train import TrainHooks, train_model
from autoprune.device import Device, cuda_available, to_cpu
from autoprune.errors import AutopruneError, ConfigError
from autoprune.pipeline.artifacts import spec_model

if TYPE_CHECKING:
    from autoprune.config import ExperimentConfig

log = logging.getLogger(__name__)

CKPT_DIR = "finetune_ckpt"
"""The fine-tune's epoch checkpoints, inside the run dir."""
CKPT_FORMAT = "autoprune.finetune_ckpt/v1"
STATE_FILE = "state.pt"
"""The file inside a Ray Train checkpoint directory."""
FREE_WAIT_S = 120.0
"""How long a Ray Train fit waits for enough free CPUs (GPUs) before it gives up with an error."""


def use_gpu(cfg: ExperimentConfig) -> bool:
    """Whether Ray Train workers ask for a GPU each (and use NCCL): the configured device is CUDA.

    The one place that decides it; reads ``runtime.device`` when the config has a runtime section
    (CPU otherwise). Inside a worker the device itself comes from ``ray.train.torch.get_device()``.
    """
    runtime = getattr(cfg, "runtime", None)
    device = str(getattr(runtime, "device", None) or "cpu")
    if device == "auto":
        return cuda_available()
    return device.startswith("cuda")


# ------------------------------------------------------------------------------------- the model


def model_payload(model: nn.Module, spec: dict[str, Any], plan: PruningPlan | None = None,
                  granularity: str = "channel") -> dict[str, Any]:
    """What rebuilds ``model`` elsewhere: the unpruned model's spec (:func:`~autoprune.pipeline.
    artifacts.model_spec`), the plan it was pruned to (None: unpruned), its masks and its weights."""
    return {"spec": spec, "plan": None if plan is None else plan.to_dict(), "granularity": granularity,
            "masks": {k: v.cpu() for k, v in masks_of(model).items()},
            "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}


def rebuild(payload: dict[str, Any]) -> nn.Module:
    """The model of :func:`model_payload`: the spec's architecture, cut to the plan (channel pruning)
    or masked (fine / N:M), holding the payload's weights."""
    spec = payload["spec"]
    model = spec_model(spec)
    if payload["plan"] is not None and payload["granularity"] not in SPARSE_GRANULARITIES:
        graph = build_unit_graph(model, spec["input_shape"])
        model = apply_plan(model, graph, PruningPlan.from_dict(payload["plan"]))
    apply_masks(model, payload["masks"])
    model.load_state_dict(payload["state_dict"])
    return model


# ------------------------------------------------------------------------------------ checkpoints


class EpochCheckpoints:
    """``epoch_K.pt`` files of one training run in ``directory`` (the latest kept), written atomically.

    :param meta: what identifies the run (plan, epochs, lr, ...): a file whose ``meta`` differs is
        not resumed from.
    """

    def __init__(self, directory: Path, meta: dict[str, Any]) -> None:
        self.directory, self.meta = Path(directory), meta
        self._clock = time.monotonic()

    def record(self, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        """The file's content; ``seconds``: since the previous record (or this object was made)."""
        now = time.monotonic()
        seconds, self._clock = now - self._clock, now
        return {"format": CKPT_FORMAT, "epoch": int(epoch), "meta": self.meta, "state": to_cpu(state),
                "seconds": seconds}

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        """Write ``epoch_<epoch>.pt`` (a record of ``state``), then remove the older files."""
        self.write(self.record(epoch, state))

    def write(self, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        epoch = record["epoch"]
        atomic_write_with(self.directory / f"epoch_{epoch}.pt", lambda buf: torch.save(record, buf))
        for old, k in self._files():
            if k < epoch:
                old.unlink(missing_ok=True)

    def _files(self) -> list[tuple[Path, int]]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.glob("epoch_*.pt"):
            try:
                found.append((path, int(path.stem.split("_", 1)[1])))
            except ValueError:
                continue
        return sorted(found, key=lambda f: f[1], reverse=True)

    def latest(self) -> dict[str, Any] | None:
        """The record of the last finished epoch of this run, or None."""
        for path, _k in self._files():
            try:
                record = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 (a damaged file: try the one before)
                log.warning("ignoring the unreadable fine-tune checkpoint %s (%s)", path, type(exc).__name__)
                continue
            if isinstance(record, dict) and record.get("format") == CKPT_FORMAT and record.get("meta") == self.meta:
                return record
            log.warning("ignoring %s: it is from another fine-tune", path)
        return None


# --------------------------------------------------------------------------------------- training


def train(model: nn.Module, cfg: ExperimentConfig, *, epochs: int, lr: float, workers: int, desc: str,
          spec: dict[str, Any], plan: PruningPlan | None = None, ckpt_dir: Path | None = None,
          train_data=None, progress: bool = True, runtime: Device | None = None) -> nn.Module:
    """Train ``model`` (in place when in-process) for ``epochs`` at ``lr`` with ``cfg.train``'s loop,
    in-process (``workers`` 0) or on Ray Train; checkpointed per epoch into ``ckpt_dir`` (None: not
    saved) and resumed from its last finished epoch. Returns the trained model.

    :param spec: the unpruned model's spec (rebuilds the architecture in Ray workers).
    :param plan: the plan ``model`` was pruned to (None: unpruned).
    :param train_data: the training split (in-process only; Ray workers load it from ``cfg.data``).
    :param runtime: the device in-process training runs on (default the CPU; the model moves there);
        Ray Train workers use the device Ray gives them.
    """
    meta = {"desc": desc, "epochs": int(epochs), "lr": float(lr), "seed": int(cfg.seed), "workers": int(workers),
            "batch_size": int(cfg.train.batch_size), "plan": None if plan is None else plan.to_json()}
    ckpts = EpochCheckpoints(ckpt_dir, meta) if ckpt_dir is not None else None
    start = ckpts.latest() if ckpts is not None else None
    if start is not None:
        log.info("%s: resuming from epoch %d of %d (%s)", desc, start["epoch"], epochs, ckpt_dir)
    if epochs <= 0:
        return model
    if workers <= 0:
        hooks = TrainHooks(resume=None if start is None else start["state"],
                           on_epoch_end=None if ckpts is None else ckpts.save)
        if train_data is None:
            from autoprune.data.datasets import load_data

            train_data = load_data(cfg.data).train_augmented
        return train_model(model, train_data, cfg.train, epochs=epochs, lr=lr, seed=cfg.seed, desc=desc,
                           progress=progress, hooks=hooks, runtime=runtime)
    if start is not None and start["epoch"] >= epochs:  # finished before the kill: no need for Ray
        model.load_state_dict(start["state"]["model"])
        return model.eval()
    granularity = cfg.pruning.granularity if plan is not None else "channel"
    final = _ray_fit(cfg, model_payload(model, spec, plan, granularity), start, meta, epochs=epochs, lr=lr,
                     workers=workers, desc=desc, ckpt_dir=ckpt_dir)
    model.load_state_dict(final["state"]["model"])
    return model.eval()


# --------------------------------------------------------------------------------------- Ray Train


def check_workers(cfg: ExperimentConfig) -> None:
    """Before anything long runs: ``train.workers`` / ``finetune.workers`` fit the Ray cluster, as far
    as can be told without starting Ray (a local Ray gets this machine's cores; GPUs are checked when
    the fit starts). Probes a configured cluster address."""
    workers = max(cfg.train.workers, cfg.finetune.workers if cfg.finetune.epochs > 0 else 0)
    if workers <= 0:
        return
    import ray

    from autoprune.pipeline.pool import check_ray_address

    check_ray_address(cfg.ray.address)
    if ray.is_initialized():  # the cluster's size only: what is busy now may be free when the fit starts
        check_resources(workers, use_gpu(cfg), wait_s=None)
    elif not (cfg.ray.address or os.environ.get("RAY_ADDRESS")):
        cpus = os.cpu_count() or 1
        for key in ("train.workers", "finetune.workers"):
            asked = cfg.train.workers if key == "train.workers" else cfg.finetune.workers
            if asked > cpus:
                raise ConfigError(f"{key}={asked} but a local Ray has {cpus} CPUs (one per worker); "
                                  f"set {key} <= {cpus}")


def check_resources(workers: int, gpu: bool, wait_s: float | None = FREE_WAIT_S) -> None:
    """A one-line error unless the running Ray cluster has ``workers`` CPUs (and GPUs when ``gpu``),
    and they become free within ``wait_s`` seconds (other work may hold them for a while; None: the
    cluster's size is checked, not what is free)."""
    import ray

    needs = {"CPU": float(workers), **({"GPU": float(workers)} if gpu else {})}
    total = ray.cluster_resources()
    for kind, amount in needs.items():
        if total.get(kind, 0.0) < amount:
            raise AutopruneError(f"{workers} Ray Train workers need {amount:g} {kind}s (one each) but the Ray cluster "
                                 f"has {total.get(kind, 0.0):g}; lower train.workers / finetune.workers")
    if wait_s is None:
        return
    deadline = time.monotonic() + wait_s
    while True:
        free = ray.available_resources()
        short = {k: free.get(k, 0.0) for k, a in needs.items() if free.get(k, 0.0) < a}
        if not short:
            return
        if time.monotonic() >= deadline:
            have = ", ".join(f"{v:g} {k}s" for k, v in short.items())
            raise AutopruneError(f"{workers} Ray Train workers need {workers} free CPUs{' and GPUs' if gpu else ''} but "
                                 f"only {have} were free after {wait_s:.0f} s (other work holds them); lower "
                                 "train.workers / finetune.workers")
        time.sleep(1.0)


def _ray_fit(cfg: ExperimentConfig, payload: dict[str, Any], start: dict[str, Any] | None, meta: dict[str, Any], *,
             epochs: int, lr: float, workers: int, desc: str, ckpt_dir: Path | None) -> dict[str, Any]:
    """Run the Ray Train fit; returns the record of its last epoch."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from autoprune.pipeline.pool import ensure_ray

    gpu = use_gpu(cfg)
    started = ensure_ray(cfg.ray.address)
    scratch = None
    if ckpt_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="autoprune-train-"))
    storage = (ckpt_dir or scratch) / "ray"
    shutil.rmtree(storage, ignore_errors=True)  # a killed run's Ray records are not resumed from
    try:
        check_resources(workers, gpu)
        config = {"cfg": cfg, "model": ray.put(payload), "start": None if start is None else ray.put(start),
                  "meta": meta, "epochs": epochs, "lr": lr, "desc": desc, "threads": 1,
                  "ckpt_dir": None if ckpt_dir is None else str(Path(ckpt_dir).resolve())}
        resources = {"CPU": 1.0, **({"GPU": 1.0} if gpu else {})}
        trainer = TorchTrainer(
            _worker_loop, train_loop_config=config,
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(
                name=f"{desc.replace(' ', '_')}-{uuid.uuid4().hex[:8]}", storage_path=str(storage.resolve()),
                failure_config=FailureConfig(max_failures=cfg.ray.max_retries,
                                             controller_failure_limit=cfg.ray.max_retries),
                checkpoint_config=CheckpointConfig(num_to_keep=1)))
        log.info("%s on Ray Train: %d workers (%s)", desc, workers, "GPU, nccl" if gpu else "CPU, gloo")
        try:
            result = trainer.fit()
        except TrainingFailedError as exc:
            raise _user_error(exc, desc) from None
        if result.checkpoint is None:
            raise AutopruneError(f"{desc} on Ray Train finished without a checkpoint")
        with result.checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if started:
            ray.shutdown()


def _user_error(exc: Exception, desc: str) -> AutopruneError:
    """A worker's own error (e.g. the NaN guard's) as itself; anything else as one line."""
    failures = getattr(exc, "worker_failures", None) or {}
    for error in failures.values():
        if isinstance(error, AutopruneError):
            return error
    first = next(iter(failures.values()), exc)
    text = (str(first).strip().splitlines() or [type(first).__name__])[-1]
    return AutopruneError(f"{desc} on Ray Train failed: {text[:300]}")


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: rebuild the model, open the data, train its shard, checkpoint per epoch."""
    import ray
    import ray.train
    import ray.train.torch as ray_torch
    from ray.train import Checkpoint
    from torch.utils.data import DistributedSampler

    from autoprune.data.datasets import load_data

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    cfg: ExperimentConfig = config["cfg"]
    model = rebuild(ray.get(config["model"]))
    start = None if config["start"] is None else ray.get(config["start"])
    restored = ray.train.get_checkpoint()  # Ray restarted the worker group after a failure
    if restored is not None:
        with restored.as_directory() as folder:
            record = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        if start is None or record["epoch"] > start["epoch"]:
            start = record
    device = ray_torch.get_device()
    model.to(device)
    train = load_data(cfg.data).train_augmented
    sampler = None
    if world > 1:
        sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
    train_cfg = replace(cfg.train, batch_size=max(1, math.ceil(cfg.train.batch_size / world)))
    ckpts = EpochCheckpoints(Path(config["ckpt_dir"]), config["meta"]) if config["ckpt_dir"] else None
    store = EpochCheckpoints(Path("."), config["meta"])  # only formats the records

    def on_epoch_end(epoch: int, state: dict[str, Any]) -> None:
        record = store.record(epoch, state)
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                torch.save(record, Path(folder) / STATE_FILE)
                if ckpts is not None:
                    ckpts.write(record)
                checkpoint = Checkpoint.from_directory(folder)
            ray.train.report({"epoch": epoch, "seconds": record["seconds"]}, checkpoint=checkpoint)

    wrap: Callable[[nn.Module], nn.Module] | None = ray_torch.prepare_model if world > 1 else None
    train_model(model, train, train_cfg, epochs=config["epochs"], lr=config["lr"], seed=cfg.seed,
                desc=config["desc"], progress=False, runtime=Device.from_config(cfg.runtime, device),
                hooks=TrainHooks(sampler=sampler, wrap=wrap, device=device,
                                 resume=None if start is None else start["state"], on_epoch_end=on_epoch_end))
