"""A small name -> object registry used for models, datasets, criteria, searchers and rewards."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from autoprune.errors import AutopruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise an :class:`AutopruneError` with suggestions.

    :param kind: what the registry holds (used in error messages), e.g. ``"searcher"``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""

        def add(item: T) -> T:
            if name in self._items and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(str(name), list(self._items), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AutopruneError(
                f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))


def import_object(path: str, what: str = "factory") -> Callable:
    """Import ``"package.module:attribute"``; this executes the user's code."""
    import importlib

    if not isinstance(path, str) or ":" not in path:
        raise AutopruneError(f"{what} {path!r} must look like 'package.module:function'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the user's module raises at import
        raise AutopruneError(
            f"{what} {path!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            "check the path and that the package is on PYTHONPATH"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AutopruneError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AutopruneError(f"{what} {path!r} is not callable")
    return obj
