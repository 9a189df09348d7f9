"""The ``ddpg`` searcher's two extensions of stable-baselines3, through SB3's own hooks.

- :class:`TruncatedNormalNoise`: AMC's exploration noise as an SB3 ``ActionNoise``.
- :class:`AMCDDPG`: ``DDPG`` with a separate actor learning rate and a pluggable warm-up policy.

The searcher that drives them is :mod:`autoprune.agents.ddpg`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.noise import VectorizedActionNoise
from stable_baselines3.common.utils import update_learning_rate


class TruncatedNormalNoise(VectorizedActionNoise):
    """AMC's exploration: the action is drawn from N(mu, sigma) truncated to [-1, 1], where mu is
    the actor's action; returned as the offset SB3 adds to mu (so its clip never triggers).

    One object serves every env (it subclasses ``VectorizedActionNoise`` so SB3 does not wrap it
    in per-env copies that would share a random stream). ``mean_fn`` returns the actor's actions
    for the current observations; ``center_fn`` (optional) maps them to where the noise is centred
    (default: the actor's actions). Neither is pickled; both are re-bound after loading.

    :param n_envs: number of envs stepped together.
    :param seed: seeds the noise's own generator.
    """

    def __init__(self, n_envs: int, seed: int = 0) -> None:
        self.n_envs = int(n_envs)
        self.sigma = 0.0  # in action units ([-1, 1] range)
        self.active = False
        self.rng = np.random.default_rng(seed)
        self.mean_fn: Any = None
        self.center_fn: Any = None

    def __call__(self) -> np.ndarray:
        if not self.active or self.sigma <= 0 or self.mean_fn is None:
            return np.zeros((self.n_envs, 1), dtype=np.float32)
        actor = np.asarray(self.mean_fn(), dtype=np.float64).reshape(self.n_envs, -1)
        mu = actor if self.center_fn is None else np.asarray(self.center_fn(actor), dtype=np.float64)
        mu = np.clip(mu.reshape(self.n_envs, -1), -1.0, 1.0)
        x = truncnorm.rvs((-1.0 - mu) / self.sigma, (1.0 - mu) / self.sigma, loc=mu, scale=self.sigma,
                          random_state=self.rng)
        return (np.asarray(x) - actor).astype(np.float32)  # SB3 adds it to the actor's action

    def reset(self, indices=None) -> None:
        """Sigma follows the episode counter (set by :class:`AMCEpisodes`), so nothing to reset."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("mean_fn", "center_fn")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, mean_fn=None, center_fn=None)

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(n_envs={self.n_envs}, sigma={self.sigma:.4g})"


class AMCDDPG(DDPG):
    """SB3's ``DDPG``; ``_update_learning_rate`` gives the actor its own rate and
    ``_sample_action`` takes warm-up actions from ``warmup_policy`` when one is set."""

    actor_learning_rate: float | None = None
    warmup_policy: Any = None
    """``fn() -> (n_envs, 1) actions`` for the warm-up steps; None: SB3's uniform samples. Not saved."""

    def _update_learning_rate(self, optimizers) -> None:
        super()._update_learning_rate(optimizers)
        if self.actor_learning_rate is not None:
            update_learning_rate(self.actor.optimizer, self.actor_learning_rate)

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):
        if self.warmup_policy is not None and self.num_timesteps < learning_starts:
            action = np.asarray(self.warmup_policy(), dtype=np.float32).reshape(n_envs, -1)
            return action, action  # the action space is [-1, 1]: scaled and unscaled agree
        return super()._sample_action(learning_starts, action_noise, n_envs)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "warmup_policy"]
