"""The one exception type that reaches the user as a one-line message.

Anything raised as :class:`AutopruneError` is a problem with the user's input (config, model,
data, paths). The CLI prints its message on one line and exits with code 2; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutopruneError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


class ConfigError(AutopruneError):
    """The experiment configuration is invalid."""


class BudgetError(AutopruneError):
    """The budget cannot be met (or is not a valid budget)."""
