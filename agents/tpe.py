"""``tpe``: model-based search of per-unit ratios with Optuna's TPE sampler (ask/tell).

The Tree-structured Parzen Estimator (Bergstra et al. 2011; Optuna's multivariate TPE, Falkner et
al. 2018) models good and bad ratio vectors with two densities and proposes where their ratio is
highest. The first ``startup_trials`` proposals are random. A batch of ``parallel`` proposals is
asked before any of them is told; Optuna's constant liar keeps the batch's proposals apart.

Why Optuna's ask/tell and not Ray Tune's ``OptunaSearch``: the evaluator (in-process, or the Ray
pool that holds model and data once per worker) already scores a batch of plans in parallel and
caches plans by channel counts. A Tune trial per plan would add a process and a checkpoint per
evaluation, bypass that cache, and keep a second record beside ``trials.parquet``. Here the study
lives in memory only: ``trials.parquet`` is the one record, and a resumed search rebuilds the study
from it (``add_trial``).

Budget, batches, rows and resume: see :mod:`autoprune.agents.ask_tell`. The sampler is made anew
for each batch, seeded from the run's seed and the number of trials so far, so a resumed search
asks exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.agents.ask_tell import AskTellSearcher, check_common, derived_seed
from autoprune.search.base import positive, register_searcher


@register_searcher
class TpeSearcher(AskTellSearcher):
    """Optuna's TPE over per-unit preserve ratios, proposals scaled to the budget."""

    name = "tpe"

    @dataclass
    class Options:
        evaluations: int = 50
        """Number of plans to evaluate."""
        parallel: int = 0
        """Proposals asked (and evaluated) together; 0: the Ray pool's workers, or 4 in-process."""
        startup_trials: int = 10
        """Random proposals before TPE models the results."""

        def validate(self) -> None:
            check_common(self.evaluations, self.parallel)
            positive("startup_trials", self.startup_trials, allow_zero=True)

    def start(self, dims: int, lo: float, hi: float) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
        self.keys = list(self.ctx.graph.names)
        self.space = {k: optuna.distributions.FloatDistribution(lo, hi) for k in self.keys}
        self.study = optuna.create_study(direction="maximize", sampler=self._sampler(0))

    def _sampler(self, trials: int) -> Any:
        """A TPE sampler seeded from the run's seed and the number of ``trials`` so far."""
        import optuna

        seed = derived_seed(self.ctx.seed, trials)
        with warnings.catch_warnings():  # multivariate / constant_liar are experimental in Optuna 4
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(n_startup_trials=self.options.startup_trials, seed=seed,
                                              multivariate=True, constant_liar=True)

    def ask(self, k: int) -> tuple[list[Any], list[np.ndarray]]:
        self.study.sampler = self._sampler(len(self.study.trials))
        trials = [self.study.ask(self.space) for _ in range(k)]
        return trials, [np.array([t.params[key] for key in self.keys]) for t in trials]

    def tell(self, handles: Sequence[Any], values: Sequence[float]) -> None:
        for trial, value in zip(handles, values, strict=True):
            self.study.tell(trial, value)

    def replay(self, xs: Sequence[np.ndarray], values: Sequence[float]) -> None:
        import optuna

        for x, value in zip(xs, values, strict=True):
            params = {k: float(np.clip(v, self.space[k].low, self.space[k].high)) for k, v in zip(self.keys, x, strict=True)}
            self.study.add_trial(optuna.trial.create_trial(params=params, distributions=self.space, value=value))
