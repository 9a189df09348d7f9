"""The searcher interface, the searcher registry, and what a search gets to work with.

A searcher receives a :class:`SearchContext` (unit graph, cost models, budget, evaluator,
recorder) and its own typed options, and returns the best :class:`PruningPlan` it found. It
never builds models itself: plans go to ``ctx.evaluate`` (in-process, or a Ray pool with the same
interface), and every evaluated plan becomes a row in ``trials.parquet`` through ``ctx.record``.

Register a searcher of your own::

    @register_searcher
    class MySearcher(Searcher):
        name = "mine"
        @dataclass
        class Options:
            evaluations: int = 10
        def search(self) -> PruningPlan: ...
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from autoprune.config import PruningConfig, from_dict
from autoprune.core.budget_fit import BudgetFitter
from autoprune.core.cost import Budget, CostModel
from autoprune.core.graph import UnitGraph
from autoprune.core.plan import PruningPlan
from autoprune.errors import ConfigError
from autoprune.registry import Registry
from autoprune.search.evaluate import EvalResult
from autoprune.search.records import TrialRecorder

SEARCHERS: Registry = Registry("searcher", entry_points={
    "uniform": "autoprune.agents.baselines:UniformSearcher",
    "random": "autoprune.agents.baselines:RandomSearcher",
    "global": "autoprune.agents.baselines:GlobalSearcher",
    "sensitivity": "autoprune.agents.sensitivity:SensitivitySearcher",
    "netadapt": "autoprune.agents.netadapt:NetAdaptSearcher",
    "ddpg": "autoprune.agents.ddpg:DdpgSearcher",
    "tpe": "autoprune.agents.tpe:TpeSearcher",
    "cmaes": "autoprune.agents.cma_es:CmaEsSearcher",
})
"""Searchers by name: the built-ins are lazy entry points (imported on first use); add your own with
:func:`register_searcher`."""


class PlanEvaluator(Protocol):
    """What a searcher scores plans with: :class:`~autoprune.evaluate.Evaluator` or a Ray pool."""

    def evaluate(self, plan: PruningPlan, finetune_steps: int | None = None) -> EvalResult: ...

    def evaluate_many(self, plans: Sequence[PruningPlan], finetune_steps: int | None = None) -> list[EvalResult]: ...


@dataclass
class SearchContext:
    """Everything a searcher may use (typed; no config namespace)."""

    graph: UnitGraph
    evaluator: PlanEvaluator
    budget: Budget
    costs: dict[str, CostModel]
    pruning: PruningConfig = field(default_factory=PruningConfig)
    seed: int = 0
    recorder: TrialRecorder = field(default_factory=lambda: TrialRecorder(None))
    run_dir: Path | None = None
    resume: bool = False
    searcher_name: str = ""
    progress: bool = True
    finetune_steps: int = 0
    """``evaluation.finetune_steps``: the short-term fine-tune every evaluation gets (recorded with each row)."""
    rounding: dict[str, Any] | None = field(default=None, init=False)
    """Where ``pruning.round_to`` was ``auto``: what it was resolved to here (:func:`~autoprune.search.rounding.
    auto_round_to`; ``pruning`` holds the number). :func:`autoprune.prepare` resolves it before, once."""

    def __post_init__(self) -> None:
        if self.pruning.round_to == "auto":
            from autoprune.search.rounding import auto_round_to

            at_one = dataclasses.replace(self, pruning=dataclasses.replace(self.pruning, round_to=1))
            self.rounding = auto_round_to(at_one)
            self.pruning = dataclasses.replace(self.pruning, round_to=int(self.rounding["value"]))

    # ----------------------------------------------------------------------------- plans
    def plan_from_ratios(self, ratios: Sequence[float] | float, **meta: Any) -> PruningPlan:
        return PruningPlan.from_ratios(self.graph, ratios, self.pruning.round_to, **meta)

    def counts(self, ratios: Sequence[float]) -> list[int]:
        return self.fitter.counts(ratios)

    def min_counts(self) -> list[int]:
        return list(self.fitter.min_counts)

    def floor_counts(self) -> list[int]:
        """Every unit at its smallest width (one step), whatever ``min_ratio`` allows."""
        return [min(u.step(self.pruning.round_to), u.out_channels) for u in self.graph.units]

    def max_counts(self) -> list[int]:
        return list(self.fitter.max_counts)

    def fits(self, plan: PruningPlan) -> bool:
        return self.budget.fits(plan.counts(self.graph))

    def clip(self, ratios: Sequence[float]) -> np.ndarray:
        return self.fitter.clip(ratios)

    @functools.cached_property
    def fitter(self) -> BudgetFitter:
        """The budget arithmetic (scaling, walls, fair shares) over this graph, budget and ratio range."""
        p = self.pruning
        return BudgetFitter(self.graph, self.budget, p.min_ratio, p.max_ratio, p.round_to)

    def fit_to_budget(self, ratios: Sequence[float], iters: int = 40) -> np.ndarray:
        """Scale ``ratios`` by the largest factor whose clipped plan meets the budget.

        The factor may shrink or grow the vector, so the plan keeps its shape (which units are
        pruned harder) and uses the budget fully.
        """
        ratios, fitter = self.clip(ratios), self.fitter
        hi = self.pruning.max_ratio / max(float(ratios.min()), 1e-6)
        if not self.budget.fits(fitter.scaled(ratios, hi)):
            hi = fitter.largest_factor(ratios, 0.0, hi, iters)
        return self.clip(ratios * hi)

    # --------------------------------------------------------------------------- records
    def describe(self, plan: PruningPlan) -> dict[str, float]:
        """Costs and kept fractions of a plan, from the cost models (no model is built)."""
        counts = plan.counts(self.graph)
        out: dict[str, float] = {}
        for kind, model in self.costs.items():
            value = model(counts)
            out[kind] = value
            out[f"{kind}_kept"] = value / model.base
        return out

    def evaluate(self, plan: PruningPlan, finetune_steps: int | None = None) -> EvalResult:
        """``plan``'s accuracy after ``finetune_steps`` short-term fine-tuning batches (default:
        :attr:`finetune_steps`, ``evaluation.finetune_steps``)."""
        return self.evaluator.evaluate(plan, finetune_steps)

    def evaluate_many(self, plans: Sequence[PruningPlan], finetune_steps: int | None = None) -> list[EvalResult]:
        return self.evaluator.evaluate_many(plans, finetune_steps)

    def record(self, plan: PruningPlan, result: EvalResult, reward: float | None = None,
               flush: bool = True, **extra: Any) -> dict[str, Any]:
        """Append one row to ``trials.parquet`` and annotate ``plan.meta`` with costs and accuracy."""
        costs = self.describe(plan)
        plan.meta.update(costs)
        plan.meta["val_accuracy"] = result.accuracy
        row: dict[str, Any] = {"searcher": self.searcher_name}
        row.update({f"ratio/{n}": plan.ratios[n] for n in self.graph.names})
        row.update({f"channels/{n}": plan.channels[n] for n in self.graph.names})
        row.update(costs)
        row.update(val_accuracy=result.accuracy, reward=np.nan if reward is None else float(reward),
                   seconds=result.seconds, cached=result.cached, time=time.time())
        if self.finetune_steps:  # scored after a short-term fine-tune (an explicit count in ``extra`` wins)
            row["finetune_steps"] = self.finetune_steps
        row.update(extra)
        return self.recorder.append(row, flush=flush)


class Searcher(ABC):
    """Base class of every searcher: typed ``Options``, one ``search()`` returning a plan."""

    name: ClassVar[str] = ""

    @dataclass
    class Options:
        pass

    def __init__(self, ctx: SearchContext, options: Any | None = None) -> None:
        self.ctx = ctx
        self.options = options if options is not None else self.Options()

    @classmethod
    def parse_options(cls, raw: dict[str, Any]) -> Any:
        """Strictly parse ``searcher:`` keys (without ``name``) into ``cls.Options``.

        A key that is another searcher's option is named as such in the error.
        """
        raw = {k: v for k, v in (raw or {}).items() if k != "name"}
        options = from_dict(cls.Options, raw, prefix="searcher.", elsewhere=cls._owner_of)
        validate = getattr(options, "validate", None)
        if callable(validate):
            validate()
        return options

    @classmethod
    def _owner_of(cls, key: str) -> str | None:
        """``searcher.KEY is an option of ddpg, not random: ...`` when other searchers take ``key``."""

        def takes(other: type[Searcher]) -> bool:
            return dataclasses.is_dataclass(other.Options) and key in {f.name for f in dataclasses.fields(other.Options)}

        owners = [name for name in SEARCHERS if name != cls.name and takes(SEARCHERS.get(name))]
        if not owners:
            return None
        use = f"set searcher.name: {owners[0]}" if len(owners) == 1 else "set searcher.name to one of them"
        return f"searcher.{key} is an option of {', '.join(owners)}, not {cls.name}: remove it, or {use}"

    @classmethod
    def check(cls, options: Any, pruning: PruningConfig) -> None:
        """Check parsed ``options`` against the pruning section before any work (default: nothing to check)."""
        return None

    @abstractmethod
    def search(self) -> PruningPlan:
        """Return the best plan found (its ``meta`` carries costs and ``val_accuracy``)."""


BUDGET_OPTIONS = ("evaluations", "episodes")
"""The names searchers give their budget of plan evaluations: ``evaluations`` (random, tpe, cmaes) and
``episodes`` (ddpg: one plan evaluation per episode). :func:`switch_searcher` carries one over as the
other. (``uniform``, ``sensitivity`` and ``netadapt`` take no such budget.)"""


def switch_searcher(section: Any, name: str, given: Iterable[str] = ()) -> tuple[dict[str, Any], str]:
    """The ``searcher:`` section for searcher ``name``, made from one written for another searcher.

    The options ``name`` also takes are kept; the budget of evaluations is carried over under ``name``'s
    key for it (:data:`BUDGET_OPTIONS`: ``evaluations`` <-> ``episodes``); the others are dropped.
    ``given`` names options the caller sets afterwards (``--set searcher.KEY=...``): they win, so an
    option that would land on one of them is dropped too.

    Returns the new section (``name`` included) and a one-line note of what was kept and dropped, e.g.
    ``keeping episodes=50 (from evaluations); dropping: foo=1 (not an option of ddpg)`` ("" when the
    section held nothing to carry over). An unknown ``name`` raises the registry's error.
    """
    cls = SEARCHERS.get(name)
    old = section if isinstance(section, dict) else {}
    if old.get("name") == name:
        return dict(old), ""
    takes = {f.name for f in dataclasses.fields(cls.Options)} if dataclasses.is_dataclass(cls.Options) else set()
    budget = next((k for k in BUDGET_OPTIONS if k in takes), None)
    given = set(given)
    new: dict[str, Any] = {"name": name}
    kept, foreign, overridden = [], [], []
    direct = [k for k in old if k != "name" and k in takes]
    mapped = [k for k in old if k != "name" and k not in takes]
    for key in direct + mapped:  # an option of the same name wins over a carried-over budget
        into = key if key in takes else budget if key in BUDGET_OPTIONS else None
        shown = f"{key}={_show(old[key])}"
        if into is None:
            foreign.append(shown)
        elif into in given or into in new:
            overridden.append(f"{shown} (by searcher.{into})")
        else:
            new[into] = old[key]
            kept.append(shown if into == key else f"{into}={_show(old[key])} (from {key})")
    parts = [f"keeping {', '.join(kept)}"] if kept else []
    if foreign:
        what = "an option" if len(foreign) == 1 else "options"
        parts.append(f"dropping: {', '.join(foreign)} (not {what} of {name})")
    if overridden:
        parts.append(f"overridden: {', '.join(overridden)}")
    return new, "; ".join(parts)


def _show(value: Any) -> str:
    """An option's value as written in YAML (``budget``, ``[8, 8]``, ``true``)."""
    return value if isinstance(value, str) else json.dumps(value, default=str)


def register_searcher(cls: type[Searcher]) -> type[Searcher]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    SEARCHERS.register(cls.name, cls)
    return cls


def best_of(rows: list[dict[str, Any]], key: str = "val_accuracy") -> dict[str, Any] | None:
    valid = [r for r in rows if r.get(key) is not None and not np.isnan(r.get(key, np.nan))]
    return max(valid, key=lambda r: r[key]) if valid else None


def plan_from_row(graph: UnitGraph, row: dict[str, Any]) -> PruningPlan:
    counts = [int(row[f"channels/{n}"]) for n in graph.names]
    plan = PruningPlan.from_counts(graph, counts)
    plan.ratios = {n: float(row[f"ratio/{n}"]) for n in graph.names}
    return plan


def positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"searcher.{name} must be {'>= 0' if allow_zero else '> 0'} (got {value})")

