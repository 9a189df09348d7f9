"""The search layer that envs and agents build on: the searcher interface and registry, the
search context, plan evaluation (prune -> adaptive BN -> accuracy) and trial records."""

from autoprune.search.base import SEARCHERS, SearchContext, Searcher, register_searcher
from autoprune.search.evaluate import EvalResult, Evaluator
from autoprune.search.records import TrialRecorder

__all__ = ["SEARCHERS", "EvalResult", "Evaluator", "SearchContext", "Searcher", "TrialRecorder", "register_searcher"]
