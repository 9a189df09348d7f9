"""A small name -> object registry used for models, datasets, criteria, searchers, cost models and rewards.

A registry is filled by its own package: either the module that defines an object registers it
(``@REGISTRY.register("name")``), or the registry names it with a lazy *entry point*
(``"package.module:attribute"``) that is imported the first time the name is looked up. Entry points
let a lower layer know the objects a higher layer provides (``COST_MODELS`` knows ``latency`` from
:mod:`autoprune.latency`, ``SEARCHERS`` knows the built-in searchers) without importing it, and
without anyone importing a module only for its side effects.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from autoprune.errors import AutopruneError, closest

T = TypeVar("T")


def _location(obj: Any) -> str:
    """``"module:qualname"`` of a class or function (what an entry point for it would say)."""
    return f"{getattr(obj, '__module__', '')}:{getattr(obj, '__qualname__', '')}"


class Registry(Generic[T]):
    """Maps names to objects; unknown names raise an :class:`AutopruneError` with suggestions.

    :param kind: what the registry holds (used in error messages), e.g. ``"searcher"``.
    :param entry_points: name -> ``"package.module:attribute"``, imported on the first :meth:`get`
        of that name (see :meth:`register_lazy`).
    """

    def __init__(self, kind: str, entry_points: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}
        for name, target in (entry_points or {}).items():
            self.register_lazy(name, target)

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator.

        A name held by an entry point may be registered by the object that entry point names (the
        module registering its own object when it is imported), or with ``overwrite=True``.
        """

        def add(item: T) -> T:
            taken = name in self._items or (name in self._lazy and self._lazy[name] != _location(item))
            if taken and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._lazy.pop(name, None)
            self._items[name] = item
            return item

        return add(obj) if obj is not None else add

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:attribute"``, imported when ``name`` is first looked up."""
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"{self.kind} {name!r}: entry point {target!r} must look like 'package.module:attribute'")
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = target

    def get(self, name: str) -> T:
        if name in self._lazy and name not in self._items:
            self._resolve(name)
        if name not in self._items:
            known = self.names()
            close = closest(name, known)
            hint = f" (did you mean {close!r}?)" if close else ""
            raise AutopruneError(f"unknown {self.kind} {name!r}{hint}; choose one of: {', '.join(known)}")
        return self._items[name]

    def _resolve(self, name: str) -> None:
        target = self._lazy[name]
        module_name, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)  # may register ``name`` itself
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise AutopruneError(f"{self.kind} {name!r}: cannot load {target!r} ({type(exc).__name__}: {exc})"
                                 ) from exc
        if self._lazy.pop(name, None) is not None:  # the module did not register it: the entry point does
            self._items[name] = obj

    def names(self) -> list[str]:
        """Every registered name, entry points included (nothing is imported)."""
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_object(path: str, what: str = "factory") -> Callable:
    """Import ``"package.module:attribute"``; this executes the user's code."""
    if not isinstance(path, str) or ":" not in path:
        raise AutopruneError(f"{what} {path!r} must look like 'package.module:function'")
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the user's module raises at import
        raise AutopruneError(
            f"{what} {path!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); "
            "check the path and that the package is in the working directory or on PYTHONPATH"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise AutopruneError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise AutopruneError(f"{what} {path!r} is not callable")
    return obj
