"""Strict parsing of a mapping into a config dataclass: types, unknown keys (with the closest
valid key, another owner's key, or a renamed key), and enumerated values."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from autoprune.errors import ConfigError, closest

RENAMED: dict[str, tuple[str, str]] = {
    "evaluation.val_samples": ("evaluation.score_samples", ""),
    "finetune.rewind": ("finetune.rewind_epoch", ", with init as 0 and epoch_N as N"),
    "searcher.fill_budget": ("searcher.scale_to_budget", ""),  # sensitivity's; ddpg's fill_budget is the env's
}
"""Old key -> (new key, how values translate). An old key that is not a field any more, in a section
that has the new one, is an error naming the new key."""


def check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
    """Raise a ``ConfigError`` naming ``key``, the nearest choice and all of them unless ``value`` is one."""
    if value in choices:
        return
    near = closest(value, choices)
    hint = f"did you mean {near}? Set" if near else "set"
    raise ConfigError(f"{key} {value!r} is not a valid value; {hint} it to one of: {', '.join(choices)}")


def unknown_key(key: str, names: Sequence[str], prefix: str = "",
                elsewhere: Callable[[str], str | None] | None = None) -> ConfigError:
    """The error for ``prefix + key``, which is not one of ``names``: renamed, another owner's, misspelled."""
    full, section = f"{prefix}{key}", prefix.rstrip(".")
    valid = f"valid keys{f' of {section}' if section else ''}: {', '.join(names)}"
    new, how = RENAMED.get(full, ("", ""))
    if new and new.rpartition(".")[2] in names:
        return ConfigError(f"{full} was renamed to {new}; rename it in the config{how}")
    other = elsewhere(str(key)) if elsewhere else None
    if other:
        return ConfigError(f"{other}; {valid}")
    near = closest(key, names)
    if near:
        return ConfigError(f"unknown config key {full}: did you mean {prefix}{near}? Rename it ({valid})")
    return ConfigError(f"unknown config key {full}: remove it ({valid})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping (got {type(value).__name__} {value!r})")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list (got {type(value).__name__} {value!r})")
        (item_tp,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping (got {type(value).__name__} {value!r})")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number (got {type(value).__name__} {value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer (got {type(value).__name__} {value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false (got {value!r})")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key} must be a string (got {type(value).__name__} {value!r})")
        return str(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{key} must be {_type_name(tp)} (got {value!r})")
    return value


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "",
              elsewhere: Callable[[str], str | None] | None = None) -> Any:
    """Build dataclass ``cls`` from ``raw``; unknown, renamed or missing keys and wrong types raise
    ``ConfigError``.

    :param prefix: dotted path of ``raw`` in the config (``"searcher."``), used in messages.
    :param elsewhere: ``key -> sentence`` saying which sibling owns an unknown key (e.g. another
        searcher's option), or None.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping (got {raw!r})")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise unknown_key(key, names, prefix, elsewhere)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    for f in fields:
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{f.name} is required; add it to {prefix.rstrip('.') or 'the config'}")
    return cls(**kwargs)
