"""Units the user keeps whole: ``pruning.skip``, glob patterns over module names.

A practitioner often keeps some layers at full width: the stem conv that sees the raw input, a
detection head, a layer the sensitivity scan showed to be fragile. A unit is kept whole when any
conv/linear whose output channels belong to it matches a pattern, so skipping one conv of a
residual stage keeps every conv joined by that stage's adds (they share one set of channels).
Kept units leave the graph: no searcher sees them, every plan keeps them at full width and the
costs count them at full width.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from fnmatch import fnmatchcase

from autoprune.core.graph import UnitGraph
from autoprune.errors import AutopruneError

SHOWN = 12
"""Unit names listed in the error for a pattern that matches nothing."""


def skip_units(graph: UnitGraph, patterns: Sequence[str]) -> UnitGraph:
    """``graph`` without the units matched by ``patterns`` (``fnmatch`` globs, case-sensitive).

    :raises AutopruneError: a pattern matches no module of the model, or nothing is left to prune.
    """
    patterns = tuple(str(p) for p in patterns or ())
    if not patterns:
        return graph
    names = {m.name for m in graph.modules} | {n for u in graph.units for n in (u.name, *u.members)}
    for pattern in patterns:
        if not any(fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(graph.names[:SHOWN]) + (", ..." if len(graph) > SHOWN else "")
            raise AutopruneError(f"pruning.skip: {pattern!r} matches no layer of the model "
                                 f"(prunable units: {shown})")
    discovery = {name: i for i, (name, _c) in enumerate(graph.discovered())}
    keep, skipped, couplings = [], list(graph.skipped), []
    for unit, coupling in zip(graph.units, graph.couplings, strict=True):
        layers = (unit.name, *unit.members)
        if any(fnmatchcase(n, p) for n in layers for p in patterns):
            skipped.append(dataclasses.replace(unit, index=discovery[unit.name]))
        else:
            keep.append(dataclasses.replace(unit, index=len(keep)))
            couplings.append(coupling)
    if not keep:
        raise AutopruneError(f"pruning.skip {list(patterns)} keeps every unit whole: nothing is left to prune")
    return dataclasses.replace(graph, units=keep, couplings=couplings, skipped=skipped,
                               skip=tuple(dict.fromkeys((*graph.skip, *patterns))))
