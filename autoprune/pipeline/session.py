"""Setting up a search: seeding, the base model (loaded or trained), and the validated :class:`Session`.

Everything that can be checked is checked in :func:`prepare` *before* a run directory is created,
so bad input never leaves a half-written run dir behind. A session is also the way into the Python
API::

    session = autoprune.prepare(autoprune.load_config("experiments/quickstart.yaml"))
    env = ChannelPruningEnv(session.graph, session.evaluator(), session.budget, costs=session.costs)
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.atomic import atomic_write_with, check_writable
from autoprune.config import ExperimentConfig
from autoprune.core.cost import Budget, CostModel, make_budget, plan_costs
from autoprune.core.criteria import CRITERIA
from autoprune.core.graph import UnitGraph, build_unit_graph
from autoprune.core.iterative import check_recorded, recording, steps_per_epoch
from autoprune.core.skip import skip_units
from autoprune.core.train import dataset_accuracy, train_model
from autoprune.data.datasets import DataBundle, load_data
from autoprune.device import CPU, Device, cpu_state
from autoprune.errors import AutopruneError, ConfigError
from autoprune.models.zoo import check_input_shape, load_checkpoint
from autoprune.pipeline.artifacts import model_spec, spec_model
from autoprune.search.base import SEARCHERS, SearchContext, Searcher
from autoprune.search.evaluate import Evaluator
from autoprune.search.records import TrialRecorder
from autoprune.search.rounding import ROUNDING_GAIN, auto_round_to, rounding_gains, suggested_round_to

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Session:
    """A validated experiment, ready to search: model, data, graph, costs and budget.

    :param cfg: the experiment.
    :param data: its dataset splits.
    :param model: the trained base model.
    :param input_shape: one input's ``(C, H, W)``.
    :param graph: the base model's prunable units.
    :param costs: plan-only cost models by kind (``flops``, ``params`` at the pruning granularity,
        and the budget's): the one counter used by the search, the records and the summary.
    :param budget: the budget a plan must meet.
    :param searcher_cls: the configured searcher.
    :param searcher_options: its parsed options.
    :param base_training_seconds: wall time spent training the base model here (0 when it was loaded).
    :param runtime: where models run (``runtime:``, resolved on this machine); ``model`` itself stays on
        the CPU and each evaluator holds its own copy on the device.
    """

    cfg: ExperimentConfig
    data: DataBundle
    model: nn.Module
    input_shape: tuple[int, ...]
    graph: UnitGraph
    costs: dict[str, CostModel]
    budget: Budget
    searcher_cls: type[Searcher]
    searcher_options: Any
    base_training_seconds: float = 0.0
    runtime: Device = CPU
    lut_level: dict[str, Any] | None = None
    """``budget.reanchor``: the LUT level this run uses (``factor``, ``plans``, ``round_to``, ``previous``)."""
    rounding: dict[str, Any] | None = None
    """``pruning.round_to`` as the search uses it (``value``; ``auto``: whether it was chosen here, and the
    ``flops_kept`` by random plans at each rounding it was chosen from). ``cfg.pruning.round_to`` is that value."""

    def evaluator(self) -> Evaluator:
        """In-process evaluator, or a Ray actor pool (same interface) when ``ray.workers > 0``."""
        c = self.cfg
        if c.ray.workers > 0:
            from autoprune.pipeline.pool import RayEvaluatorPool

            return RayEvaluatorPool.from_config(self.model, self.graph, self.data, c, self.runtime)
        return Evaluator(self.model, self.graph, self.data, evaluation=c.evaluation, pruning=c.pruning,
                         train=c.train, finetune=c.finetune, seed=c.seed, runtime=self.runtime)

    def context(self, evaluator=None, recorder: TrialRecorder | None = None, run_dir: Path | None = None,
                resume: bool = False, progress: bool = True) -> SearchContext:
        """What a searcher works with; a new :meth:`evaluator` and an in-memory recorder by default."""
        return SearchContext(
            graph=self.graph, evaluator=self.evaluator() if evaluator is None else evaluator,
            budget=self.budget, costs=self.costs, pruning=self.cfg.pruning, seed=self.cfg.seed,
            recorder=TrialRecorder(None) if recorder is None else recorder, run_dir=run_dir, resume=resume,
            searcher_name=self.cfg.searcher_name, progress=progress,
            finetune_steps=self.cfg.evaluation.finetune_steps,
        )


def reanchored(budget: Budget, graph: UnitGraph, model: nn.Module, cfg: ExperimentConfig,
               level: dict[str, Any] | None, progress: bool) -> tuple[Budget, dict[str, Any]]:
    """``budget`` with its LUT's level re-measured on this machine (``budget.reanchor`` plans), or set to
    ``level`` (a resumed run's); the LUT file is left as it is."""
    from autoprune.latency.check import reanchor_lut
    from autoprune.latency.lut import LutCost

    lut = budget.cost.lut
    if level is None:
        n, near = cfg.budget.reanchor, budget.target / budget.cost.base
        log.info("budget.reanchor: timing %d plans near the budget (%.3g of the unpruned model) against it to "
                 "re-measure the LUT's level", n, near)
        reanchor_lut(lut, model, plans=n, seed=cfg.seed, round_to=cfg.pruning.round_to, progress=progress,
                     graph=graph,  # the search's units: pruning.skip's stay whole in the anchors too
                     near=near if 0 < near < 1 else None)
        level = dict(lut.header["level"])
    else:
        lut.header["level"] = dict(level)
    cost = LutCost(lut, graph)  # the level scales pruned plans only: the base, and so the target, stay
    log.info("budget.reanchor: LUT level x%.3f (was x%.3f)", cost.level, float(level.get("previous", 1.0)))
    return Budget(cost, budget.target), level


def base_model(cfg: ExperimentConfig, data: DataBundle, checkpoint: str | Path | None = None,
               progress: bool = True, runtime: Device | None = None) -> tuple[nn.Module, tuple[int, ...], bool]:
    """Build the base model; load its checkpoint, or train it (on ``runtime``'s device). Returns
    (model on the CPU, input shape, trained)."""
    input_shape = tuple(cfg.model.input_shape or data.input_shape)
    if not input_shape or any(int(s) < 1 for s in input_shape):
        raise ConfigError(f"model.input_shape must be one sample's shape, e.g. [C, H, W] (got {list(input_shape)})")
    if input_shape != tuple(data.input_shape):
        raise ConfigError(
            f"model.input_shape {list(input_shape)} does not match the data's {list(data.input_shape)}; "
            "set data.resize / data.channels or drop model.input_shape"
        )
    spec = model_spec(cfg, data, input_shape)
    seed_everything(cfg.seed)  # the initial weights depend on the seed only
    model = spec_model(spec)
    check_input_shape(model, input_shape, data.num_classes)
    ckpt = checkpoint or cfg.model.checkpoint
    if ckpt:
        load_checkpoint(model, ckpt)
        return model.eval(), input_shape, False
    if cfg.train.workers > 0:  # on Ray Train (rewinding, which records in-process, is refused with it)
        from autoprune.pipeline import finetune

        finetune.train(model, cfg, epochs=cfg.train.epochs, lr=cfg.train.lr, workers=cfg.train.workers,
                       desc="train base model", spec=spec)
        return model.eval(), input_shape, True
    with recording(model, cfg.finetune.rewind_epoch, steps_per_epoch(len(data.train), cfg.train.batch_size)):
        train_model(model, data.train_augmented, cfg.train, seed=cfg.seed, desc="train base model", progress=progress,
                    runtime=runtime)
    if runtime is not None and not runtime.is_default:  # the session's model lives on the CPU
        model.to("cpu", memory_format=torch.contiguous_format)
    return model.eval(), input_shape, True


def train_base_model(cfg: ExperimentConfig, out: str | Path, progress: bool = True) -> tuple[nn.Module, float]:
    """Train the configured base model, save its state_dict to ``out``; return it and its test accuracy.

    ``model.checkpoint`` is not read: it names where a search loads the weights from, often ``out``
    itself, not yet written (a config names it before the model is trained)."""
    cfg.validate()
    if cfg.model.checkpoint:
        log.info("train: model.checkpoint %r is not read; training from the seed's initial weights",
                 cfg.model.checkpoint)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, checkpoint=None))
    runtime = Device.from_config(cfg.runtime)
    out = Path(out)
    check_writable(out.parent)
    data = load_data(cfg.data)
    model, _shape, _ = base_model(cfg, data, progress=progress, runtime=runtime)
    atomic_write_with(out, lambda buf: torch.save(cpu_state(model), buf))
    return model, dataset_accuracy(model, data.test)


def prepare(cfg: ExperimentConfig, base_checkpoint: str | Path | None = None, progress: bool = True,
            lut_level: dict[str, Any] | None = None, rounding: dict[str, Any] | None = None) -> Session:
    """Validate everything and build what a search needs (may train the base model).

    :param cfg: the experiment (from :func:`~autoprune.config.load_config`).
    :param base_checkpoint: a state_dict of the base model to load instead of ``model.checkpoint``.
    :param progress: show progress bars while training the base model.
    :param lut_level: with ``budget.reanchor``, the level an earlier part of this run measured (a resumed
        run keeps it rather than timing again).
    :param rounding: with ``pruning.round_to: auto``, what an earlier part of this run chose (a resumed run
        keeps it, even if its LUT was re-anchored since).
    """
    cfg.validate()
    runtime = Device.from_config(cfg.runtime)  # a device this machine lacks fails here, before any work
    searcher_cls = SEARCHERS.get(cfg.searcher_name)
    options = searcher_cls.parse_options(cfg.searcher)
    CRITERIA.get(cfg.pruning.criterion)
    searcher_cls.check(options, cfg.pruning)
    if cfg.ray.workers > 0:  # an unreachable cluster should fail before the base model is trained
        from autoprune.pipeline.pool import check_ray_address

        check_ray_address(cfg.ray.address)
    if cfg.ray.workers > 0 and cfg.ray.gpus_per_worker > 0:  # GPUs the cluster lacks: an error, not a hang
        from autoprune.pipeline.pool import check_cluster_gpus

        check_cluster_gpus(cfg)
    if cfg.train.workers > 0 or cfg.finetune.workers > 0:  # Ray Train: fail before any long work
        from autoprune.pipeline.finetune import check_workers

        check_workers(cfg)
    data = load_data(cfg.data)
    labels = data.train.tensors[1] if hasattr(data.train, "tensors") else None
    if labels is not None and len(labels) == 0:
        raise AutopruneError("the training split is empty")
    started = time.time()
    model, input_shape, trained = base_model(cfg, data, base_checkpoint, progress, runtime)
    training_seconds = time.time() - started if trained else 0.0
    check_recorded(cfg, model)
    graph = skip_units(build_unit_graph(model, input_shape), cfg.pruning.skip)
    b = cfg.budget
    budget = make_budget(graph, b.kind, b.value, absolute=b.latency_ms is not None, pruning=cfg.pruning,
                         model=model, lut=b.lut, runtime=b.runtime, device=b.device, luts=cfg.luts)
    if b.verify:  # a LUT for another device fails here, not after the search
        from autoprune.latency.verify import check_verifiable

        check_verifiable(budget, model)
    costs = plan_costs(graph, cfg.pruning)
    explicit = cfg.pruning.round_to != "auto"
    rounding = {"value": cfg.pruning.round_to, "auto": False} if explicit else rounding or auto_round_to(
        SearchContext(graph=graph, evaluator=None, budget=budget, costs={**costs, budget.kind: budget.cost},
                      pruning=dataclasses.replace(cfg.pruning, round_to=1)))
    cfg = dataclasses.replace(cfg, pruning=dataclasses.replace(cfg.pruning, round_to=int(rounding["value"])))
    if b.reanchor:  # its anchor plans are drawn at the search's rounding
        budget, lut_level = reanchored(budget, graph, model, cfg, lut_level, progress)
    costs[budget.kind] = budget.cost
    session = Session(cfg=cfg, data=data, model=model, input_shape=input_shape, graph=graph, costs=costs,
                      budget=budget, searcher_cls=searcher_cls, searcher_options=options,
                      base_training_seconds=training_seconds, runtime=runtime,
                      lut_level=lut_level if b.reanchor else None, rounding=rounding)
    reach = SearchContext(graph=graph, evaluator=None, budget=budget, costs=costs, pruning=cfg.pruning)
    budget.check_reachable(reach.min_counts(), floor_counts=reach.floor_counts())
    if explicit:
        warn_misaligned(reach)
    return session


def warn_misaligned(ctx: SearchContext, gain: float = ROUNDING_GAIN, draws: int = 6) -> str | None:
    """Warn (and return the line) when a latency budget whose cost is not monotone (a LUT: a runtime whose
    kernels favour multiples of 4, 8 or 16 channels can run a wider layer faster) would let the search's plans
    keep ``gain`` times or more the FLOPs at a coarser ``pruning.round_to`` (:func:`rounding_gains`; the
    smallest alignment within 0.01 of the best is named).

    Measured on a ConvNeXt-style model in ONNX Runtime (benchmarks/budget_fit.py): at 0.72 of its latency 30 random
    plans kept 0.133 of the FLOPs fitted by bisection alone, 0.218 by the fitter's scan and 0.519 at ``round_to`` 8,
    and ran at 0.642, 0.684 and 0.706 of the unpruned model (docs/latency.md).
    Costs a few seconds at the start of a search (4 roundings x 6 fits: 0.6 s for ResNet-20, 1.4 s for
    MobileNetV2, 3.3 s for ResNet-56 here).
    """
    if getattr(ctx.budget.cost, "monotone", True):
        return None
    kept = rounding_gains(ctx, draws)
    configured = kept.pop(ctx.pruning.round_to, None)
    if configured is None or not kept:
        return None
    align = suggested_round_to(kept)
    if kept[align] < gain * configured:
        return None
    runtime = getattr(ctx.budget.cost, "runtime", "?")
    line = (f"the latency budget prices some channel counts higher than wider ones ({runtime} kernels favour "
            f"multiples of 4, 8 or 16): random plans fitted to it keep {configured:.2f} of the FLOPs on average at "
            f"pruning.round_to {ctx.pruning.round_to} and {kept[align]:.2f} at {align}; set pruning.round_to: "
            f"{align} or auto (docs/latency.md)")
    log.warning(line)
    return line
