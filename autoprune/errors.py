"""The one exception type that reaches the user as a one-line message.

Anything raised as :class:`AutopruneError` is a problem with the user's input (config, model,
data, paths). The CLI prints its message on one line and exits with code 2; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

SUGGEST_CUTOFF = 0.5
"""Similarity (difflib ratio) a valid name needs to be suggested for a misspelled one; 0.5 catches
``epocs``, ``lr_scal``, ``warmpu``, ``batchsize``."""


class AutopruneError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


class ConfigError(AutopruneError):
    """The experiment configuration is invalid."""


class BudgetError(AutopruneError):
    """The budget cannot be met (or is not a valid budget)."""


def closest(word: Any, choices: Iterable[str]) -> str | None:
    """The choice nearest to the misspelled ``word`` (case and ``-``/``_`` ignored), or None."""

    def norm(text: Any) -> str:
        return str(text).lower().replace("-", "_")

    by_norm = {norm(c): c for c in choices}
    match = difflib.get_close_matches(norm(word), list(by_norm), n=1, cutoff=SUGGEST_CUTOFF)
    return by_norm[match[0]] if match else None
