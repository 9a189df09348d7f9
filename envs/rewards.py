"""Episode rewards of the pruning MDP: small pure functions in a registry, chosen by name.

A reward function takes the :class:`Outcome` of one episode (validation accuracy and the
pruned plan's costs) plus optional keyword parameters (``searcher.reward_kwargs`` in YAML) and
returns a float; higher is better. Register your own::

    from autoprune.envs.rewards import REWARDS, Outcome

    @REWARDS.register("acc_squared")
    def acc_squared(outcome: Outcome) -> float:
        return outcome.accuracy ** 2

Built-ins (AMC's, with error = 1 - accuracy as a fraction):

- ``acc``: ``-error``; the budget is enforced by the action wall.
- ``acc_flops`` / ``acc_params`` / ``acc_latency``: ``-error * log(cost)`` of the pruned plan's
  absolute FLOPs (MACs) / parameters / latency (the latency cost model's unit).
- ``blend``: ``accuracy - weight * kept`` where ``kept`` is the fraction of the base cost kept
  (the budget's cost kind unless ``cost`` names another).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autoprune.errors import ConfigError
from autoprune.registry import Registry

RewardFn = Callable[..., float]
REWARDS: Registry = Registry("reward")


@dataclass(frozen=True)
class Outcome:
    """What one episode produced: the plan's accuracy and costs.

    :param accuracy: validation accuracy of the pruned model, in [0, 1].
    :param costs: absolute cost per cost kind (``flops``, ``params``, ``latency`` ...).
    :param kept: cost kept as a fraction of the unpruned model's, per cost kind.
    :param budget_kind: the cost kind the budget is expressed in.
    """

    accuracy: float
    costs: Mapping[str, float] = field(default_factory=dict)
    kept: Mapping[str, float] = field(default_factory=dict)
    budget_kind: str = "flops"

    def cost(self, kind: str) -> float:
        if kind not in self.costs:
            raise ConfigError(
                f"this reward needs a {kind!r} cost model, but only {', '.join(sorted(self.costs))} are "
                f"available; use a {kind} budget or choose another searcher.reward"
            )
        return float(self.costs[kind])

    def kept_fraction(self, kind: str) -> float:
        self.cost(kind)
        return float(self.kept[kind])


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register ``fn(outcome, **params) -> float`` under ``name``."""
    return REWARDS.register(name)


@register_reward("acc")
def acc(outcome: Outcome) -> float:
    """``-error``: only accuracy counts (the action wall enforces the budget)."""
    return -(1.0 - outcome.accuracy)


def _error_log_cost(outcome: Outcome, kind: str) -> float:
    return -(1.0 - outcome.accuracy) * math.log(max(outcome.cost(kind), 1e-12))


@register_reward("acc_flops")
def acc_flops(outcome: Outcome) -> float:
    """``-error * log(FLOPs)`` (AMC's FLOPs-aware reward)."""
    return _error_log_cost(outcome, "flops")


@register_reward("acc_params")
def acc_params(outcome: Outcome) -> float:
    """``-error * log(params)``."""
    return _error_log_cost(outcome, "params")


@register_reward("acc_latency")
def acc_latency(outcome: Outcome) -> float:
    """``-error * log(latency)`` (needs a latency cost model, i.e. a latency budget)."""
    return _error_log_cost(outcome, "latency")


@register_reward("blend")
def blend(outcome: Outcome, weight: float = 0.5, cost: str | None = None) -> float:
    """``accuracy - weight * kept``: trade accuracy against the kept fraction of a cost."""
    return outcome.accuracy - float(weight) * outcome.kept_fraction(cost or outcome.budget_kind)


def make_reward(reward: str | RewardFn, kwargs: Mapping[str, Any] | None = None) -> Callable[[Outcome], float]:
    """Resolve a reward by name (or take a callable) and bind its parameters.

    Raises :class:`ConfigError` if the parameters do not match the function's signature.
    """
    fn = REWARDS.get(reward) if isinstance(reward, str) else reward
    kwargs = dict(kwargs or {})
    name = reward if isinstance(reward, str) else getattr(fn, "__name__", "reward")
    try:
        inspect.signature(fn).bind(Outcome(1.0), **kwargs)
    except TypeError as exc:
        raise ConfigError(f"searcher.reward_kwargs do not fit reward {name!r} ({exc}); check the names") from exc
    return functools.partial(fn, **kwargs) if kwargs else fn
