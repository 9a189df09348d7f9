"""Searchers (installed as ``autoprune.agents``); importing this package registers them."""

from autoprune.agents import (
    baselines,  # noqa: F401
    cma_es,  # noqa: F401
    ddpg,  # noqa: F401
    netadapt,  # noqa: F401
    sensitivity,  # noqa: F401
    tpe,  # noqa: F401
)
