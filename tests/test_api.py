"""The public Python API: what ``import autoprune`` offers, used the way a user would."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import autoprune

API = ["load_config", "prepare", "Session", "run_search", "load_pruned", "PruningPlan", "apply_plan", "UnitGraph",
       "build_unit_graph", "Evaluator", "Searcher", "register_searcher", "SearchContext", "make_budget", "plan_costs"]


@pytest.mark.parametrize("name", API)
def test_the_api_is_importable_from_autoprune(name):
    assert name in autoprune.__all__ and name in dir(autoprune)
    assert getattr(autoprune, name) is not None
    exec(f"from autoprune import {name}", {})


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        autoprune.nope  # noqa: B018


def test_import_autoprune_stays_light():
    code = ("import sys, autoprune; heavy = [m for m in ('torch', 'ray', 'pandas', 'autoprune.pipeline') "
            "if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_user_builds_the_env_from_a_prepared_session(tiny_session):
    """prepare -> (graph, evaluator, budget) -> ChannelPruningEnv, as the README shows."""
    from autoprune.envs.pruning_env import ChannelPruningEnv

    session = tiny_session
    assert isinstance(session, autoprune.Session) and isinstance(session.graph, autoprune.UnitGraph)
    env = ChannelPruningEnv(session.graph, session.evaluator(), session.budget, costs=session.costs)
    obs, _ = env.reset(seed=0)
    terminated, info = False, {}
    while not terminated:
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    plan = info["plan"]
    assert isinstance(plan, autoprune.PruningPlan)
    assert session.budget.fits(plan.counts(session.graph)) and np.isfinite(reward)
    model = autoprune.apply_plan(session.model, session.graph, plan)
    assert sum(p.numel() for p in model.parameters()) == session.costs["params"](plan.counts(session.graph))


def test_a_user_searcher_runs_on_a_session_context(tiny_session):
    @autoprune.register_searcher
    class HalfSearcher(autoprune.Searcher):
        name = "api_test_half"

        def search(self):
            ratios = self.ctx.fit_to_budget([0.5] * len(self.ctx.graph))
            plan = self.ctx.plan_from_ratios(ratios, searcher=self.name)
            self.ctx.record(plan, self.ctx.evaluate(plan))
            return plan

    from autoprune.search.base import SEARCHERS

    assert SEARCHERS.get("api_test_half") is HalfSearcher
    ctx = tiny_session.context()
    plan = HalfSearcher(ctx).search()
    assert ctx.fits(plan) and len(ctx.recorder.rows) == 1 and 0 <= plan.meta["val_accuracy"] <= 1
