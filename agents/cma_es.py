"""``cmaes``: evolutionary search of per-unit ratios with CMA-ES (the ``cmaes`` package, ask/tell).

CMA-ES (Hansen 2016) samples a generation of ratio vectors from a Gaussian, then moves its mean
toward the better ones and adapts its covariance and step size. It works in ``[0, 1]`` per unit,
mapped onto ``[min_ratio, max_ratio]``, and starts at the middle (every unit alike: after the
budget scaling, the uniform plan) with step size ``sigma0``. A generation is asked in batches of
``parallel`` and told when all of it is scored.

Why the ``cmaes`` package and not Optuna's ``CmaEsSampler`` (which wraps the same package): the
sampler keeps its optimiser pickled in trial attributes that ``add_trial`` cannot restore, so a
study rebuilt from ``trials.parquet`` would start CMA-ES again from its first mean and step size.
Driving ``cmaes.CMA`` directly, a resumed search replays the generations on record (the same
seeded samples, told the recorded values) and goes on exactly where it stopped. Why not Ray Tune's
wrappers: see :mod:`autoprune.agents.tpe`.

Budget, batches, rows and resume: see :mod:`autoprune.agents.ask_tell`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.agents.ask_tell import AskTellSearcher, check_common, derived_seed
from autoprune.errors import ConfigError
from autoprune.search.base import register_searcher

log = logging.getLogger(__name__)


@register_searcher
class CmaEsSearcher(AskTellSearcher):
    """CMA-ES over per-unit preserve ratios, proposals scaled to the budget."""

    name = "cmaes"

    @dataclass
    class Options:
        evaluations: int = 50
        """Number of plans to evaluate."""
        parallel: int = 0
        """Proposals evaluated together; 0: the Ray pool's workers, or 4 in-process."""
        sigma0: float = 0.2
        """Initial step size, as a fraction of ``[min_ratio, max_ratio]``."""
        population: int = 0
        """Proposals per generation; 0: CMA-ES's default, 4 + 3 ln(units)."""

        def validate(self) -> None:
            check_common(self.evaluations, self.parallel)
            if not 0 < self.sigma0 <= 1:
                raise ConfigError(f"searcher.sigma0 must be in (0, 1] (got {self.sigma0})")
            if self.population != 0 and self.population < 4:  # CMA-ES's rank-mu update needs mu >= 2
                raise ConfigError(f"searcher.population must be 0 (the default) or >= 4 (got {self.population})")

    def start(self, dims: int, lo: float, hi: float) -> None:
        import cmaes

        self.lo, self.hi = lo, hi
        self.cma = cmaes.CMA(mean=np.full(dims, 0.5), sigma=self.options.sigma0, bounds=np.tile([0.0, 1.0], (dims, 1)),
                             seed=derived_seed(self.ctx.seed), population_size=self.options.population or None)
        self.queue: deque[np.ndarray] = deque()  # this generation's samples not handed out yet
        self.scored: list[tuple[np.ndarray, float]] = []  # this generation's (sample, -value) so far

    def _next(self) -> np.ndarray:
        if not self.queue:  # the last generation is told: sample the next
            self.queue.extend(self.cma.ask() for _ in range(self.cma.population_size))
        return self.queue.popleft()

    def ask(self, k: int) -> tuple[list[Any], list[np.ndarray]]:
        first = self._next()
        samples = [first] + [self.queue.popleft() for _ in range(min(k - 1, len(self.queue)))]
        return samples, [self.lo + s * (self.hi - self.lo) for s in samples]

    def tell(self, handles: Sequence[Any], values: Sequence[float]) -> None:
        self.scored.extend((s, -v) for s, v in zip(handles, values, strict=True))  # cmaes minimises
        if len(self.scored) == self.cma.population_size:
            self.cma.tell(self.scored)
            self.scored = []

    def replay(self, xs: Sequence[np.ndarray], values: Sequence[float]) -> None:
        width, differ = (self.hi - self.lo) or 1.0, 0
        for x, value in zip(xs, values, strict=True):
            sample = self._next()  # the seeded sampler proposes again what the original run asked
            recorded = np.clip((np.asarray(x, dtype=np.float64) - self.lo) / width, 0.0, 1.0)
            if not np.allclose(sample, recorded, rtol=0, atol=1e-9):
                sample, differ = recorded, differ + 1
            self.tell([sample], [value])
        if differ:
            log.warning("cmaes: %d recorded proposals differ from the replayed ones (another seed or cmaes "
                        "version?); the recorded ones were told", differ)
