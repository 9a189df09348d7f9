"""Gymnasium environments (installed as ``autoprune.envs``).

Importing this package registers ``autoprune/ChannelPruning-v0`` with a lazy string entry point,
so ``gymnasium.make("autoprune/ChannelPruning-v0", graph=..., evaluator=..., budget=...)`` works
without importing torch-heavy modules up front.
"""

from __future__ import annotations

import gymnasium

ENV_ID = "autoprune/ChannelPruning-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="autoprune.envs.pruning_env:ChannelPruningEnv")

__all__ = ["ENV_ID"]
