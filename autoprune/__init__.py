"""autoprune: automated per-layer pruning-ratio search for PyTorch models.

The Python API, importable from here (each name is imported on first use, so ``import autoprune``
stays light)::

    import autoprune

    cfg = autoprune.load_config("experiments/quickstart.yaml", ["ray.workers=0"])
    session = autoprune.prepare(cfg)            # model, data, unit graph, cost models, budget
    run_dir = autoprune.run_search(cfg)         # search -> prune -> fine-tune -> test -> run dir
    model = autoprune.load_pruned(run_dir / "pruned_model.pt")

``session.graph``, ``session.evaluator()``, ``session.budget`` and ``session.context()`` are the
pieces a searcher (:class:`Searcher`, :func:`register_searcher`) or the Gymnasium env works with.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "autoprune.config",
    "ExperimentConfig": "autoprune.config",
    "Session": "autoprune.pipeline.session",
    "prepare": "autoprune.pipeline.session",
    "run_search": "autoprune.pipeline.run",
    "load_pruned": "autoprune.pipeline.artifacts",
    "PruningPlan": "autoprune.core.plan",
    "apply_plan": "autoprune.core.prune",
    "UnitGraph": "autoprune.core.graph",
    "build_unit_graph": "autoprune.core.graph",
    "skip_units": "autoprune.core.skip",
    "Budget": "autoprune.core.cost",
    "make_budget": "autoprune.core.cost",
    "plan_costs": "autoprune.core.cost",
    "Evaluator": "autoprune.search.evaluate",
    "SearchContext": "autoprune.search.base",
    "Searcher": "autoprune.search.base",
    "register_searcher": "autoprune.search.base",
    "SEARCHERS": "autoprune.search.base",
    "AutopruneError": "autoprune.errors",
    "ConfigError": "autoprune.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
