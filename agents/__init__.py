"""Searchers (installed as ``autoprune.agents``); importing this package registers them."""

from autoprune.agents import baselines  # noqa: F401
