"""The files a finished run leaves for others to read: ``pruned_model.pt`` and ``summary.json``.

``pruned_model.pt`` (format ``autoprune.pruned/v1``) is a ``torch.save`` of a plain dict, loadable
with ``weights_only=True``:

* ``model``: the base model's spec (:func:`model_spec`: built-in name or factory, kwargs, input
  channels, classes, input shape), enough to rebuild the unpruned architecture;
* ``plan``: the pruning plan (:meth:`~autoprune.core.plan.PruningPlan.to_dict`);
* ``granularity``: ``channel`` (the architecture is cut to the plan) or ``fine`` / ``nm`` (same
  architecture, zeros in the weights);
* ``state_dict``: the pruned, fine-tuned weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.atomic import atomic_write_with, read_json
from autoprune.core.cost import SPARSE_GRANULARITIES
from autoprune.core.graph import build_unit_graph
from autoprune.core.plan import PruningPlan
from autoprune.core.prune import apply_plan
from autoprune.device import cpu_state
from autoprune.errors import AutopruneError
from autoprune.models.zoo import build_model

if TYPE_CHECKING:
    from autoprune.config import ExperimentConfig
    from autoprune.data.datasets import DataBundle

PRUNED_FORMAT = "autoprune.pruned/v1"


def model_spec(cfg: ExperimentConfig, data: DataBundle, input_shape) -> dict[str, Any]:
    """What rebuilds the unpruned model: the ``model`` entry of ``pruned_model.pt``."""
    return {"name": cfg.model.name, "factory": cfg.model.factory, "kwargs": dict(cfg.model.kwargs),
            "in_channels": int(input_shape[0]), "num_classes": int(data.num_classes),
            "input_shape": [int(s) for s in input_shape]}


def spec_model(spec: dict[str, Any]) -> nn.Module:
    """Rebuild the (unpruned) model described by :func:`model_spec`."""
    return build_model(spec["name"], spec["factory"], spec["kwargs"],
                       in_channels=spec["in_channels"], num_classes=spec["num_classes"])


def save_pruned(path: Path, model: nn.Module, spec: dict[str, Any], plan: PruningPlan, granularity: str) -> None:
    """Write ``pruned_model.pt`` atomically (see the module docstring for the format)."""
    payload = {"format": PRUNED_FORMAT, "model": spec, "plan": plan.to_dict(), "granularity": granularity,
               "state_dict": cpu_state(model)}  # CPU tensors: loads anywhere (load_pruned's map_location)
    atomic_write_with(path, lambda buf: torch.save(payload, buf))


def read_pruned(path: str | Path, map_location: Any = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The pruned model of a ``pruned_model.pt`` (eval mode) and its base model's spec."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise AutopruneError(f"{str(path)!r} is not a readable pruned model ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != PRUNED_FORMAT:
        raise AutopruneError(f"{str(path)!r} is not an autoprune pruned model")
    spec = payload["model"]
    model = spec_model(spec).eval()
    graph = build_unit_graph(model, spec["input_shape"])
    plan = PruningPlan.from_dict(payload["plan"])
    sparse = payload.get("granularity") in SPARSE_GRANULARITIES  # same architecture, zeros in the weights
    pruned = model if sparse else apply_plan(model, graph, plan)
    pruned.load_state_dict(payload["state_dict"])
    if isinstance(map_location, (str, torch.device)):
        pruned.to(map_location)
    return pruned.eval(), spec


def load_pruned(path: str | Path, map_location: Any = "cpu") -> nn.Module:
    """Load ``pruned_model.pt`` written by a search: the physically smaller model, in eval mode.

    The file holds the base model's spec, the plan and the weights (``weights_only=True``); the
    architecture is rebuilt from the spec (a user factory must be importable) and cut to the plan.

    :param path: the ``pruned_model.pt`` file.
    :param map_location: where the weights go (``torch.load``'s argument; a device also moves the model).
    """
    return read_pruned(path, map_location)[0]


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """A run's ``summary.json``."""
    return read_json(Path(run_dir) / "summary.json")
