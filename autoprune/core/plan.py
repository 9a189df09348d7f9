"""The pruning plan: the one output type of every searcher.

A plan maps each prunable unit's name to a *preserve ratio* and the channel count it resolves
to (``round(ratio * channels)`` rounded to a multiple of ``round_to``, at least one channel, at
most all of them). It round-trips through JSON and carries optional metadata (costs, accuracy,
which searcher produced it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoprune.atomic import json_default
from autoprune.core.graph import UnitGraph
from autoprune.errors import AutopruneError

SCHEMA = "autoprune.plan/v1"


def resolve_count(ratio: float, channels: int, round_to: int = 1) -> int:
    """Kept channels for a preserve ``ratio`` of ``channels`` (>= 1, <= channels)."""
    if not math.isfinite(ratio):
        raise AutopruneError(f"preserve ratio {ratio!r} is not a finite number")
    kept = ratio * channels
    if round_to > 1:
        kept = round(kept / round_to) * round_to
        if kept < 1:
            kept = min(round_to, channels)
    return int(min(channels, max(1, round(kept))))


@dataclass
class PruningPlan:
    """Unit name -> preserve ratio and kept channel count, plus metadata."""

    ratios: dict[str, float]
    channels: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_ratios(
        cls,
        graph: UnitGraph,
        ratios: Mapping[str, float] | Sequence[float] | float,
        round_to: int = 1,
        **meta: Any,
    ) -> PruningPlan:
        """Resolve ratios (one per unit, a mapping, or one float for all) to channel counts."""
        if isinstance(ratios, (int, float)):
            ratios = [float(ratios)] * len(graph)
        if not isinstance(ratios, Mapping):
            ratios = list(ratios)
            if len(ratios) != len(graph):
                raise AutopruneError(f"plan has {len(ratios)} ratios for {len(graph)} units")
            ratios = dict(zip(graph.names, ratios, strict=True))
        unknown = set(ratios) - set(graph.names)
        if unknown:
            raise AutopruneError(f"plan names unknown units: {', '.join(sorted(unknown))}")
        full = {u.name: float(ratios.get(u.name, 1.0)) for u in graph.units}
        channels = {u.name: resolve_count(full[u.name], u.out_channels, u.step(round_to)) for u in graph.units}
        return cls(full, channels, dict(meta))

    @classmethod
    def from_counts(cls, graph: UnitGraph, counts: Sequence[int] | Mapping[str, int], **meta: Any) -> PruningPlan:
        if not isinstance(counts, Mapping):
            counts = dict(zip(graph.names, counts, strict=True))
        channels = {}
        for u in graph.units:
            c = int(counts.get(u.name, u.out_channels))
            if not 1 <= c <= u.out_channels:
                raise AutopruneError(f"unit {u.name!r}: {c} channels is outside 1..{u.out_channels}")
            channels[u.name] = c
        ratios = {u.name: channels[u.name] / u.out_channels for u in graph.units}
        return cls(ratios, channels, dict(meta))

    @classmethod
    def identity(cls, graph: UnitGraph) -> PruningPlan:
        return cls.from_counts(graph, graph.channels)

    def counts(self, graph: UnitGraph) -> list[int]:
        """Channel counts in graph order (units missing from the plan keep everything)."""
        return [self.channels.get(u.name, u.out_channels) for u in graph.units]

    def key(self, graph: UnitGraph) -> tuple[int, ...]:
        """Identity of the plan for caching: identical channel counts are the same plan."""
        return tuple(self.counts(graph))

    def check(self, graph: UnitGraph) -> None:
        """Raise if the plan does not fit ``graph`` (unknown units, counts out of range)."""
        for name, c in self.channels.items():
            spec = graph.unit(name)
            if not 1 <= c <= spec.out_channels:
                raise AutopruneError(f"plan: unit {name!r} keeps {c} of {spec.out_channels} channels")

    # ------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "ratios": self.ratios, "channels": self.channels, "meta": self.meta}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=json_default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        if not isinstance(data, Mapping) or "channels" not in data:
            raise AutopruneError("not a pruning plan (expected a JSON object with 'channels')")
        if data.get("schema", SCHEMA) != SCHEMA:
            raise AutopruneError(f"unsupported plan schema {data.get('schema')!r} (expected {SCHEMA})")
        channels = {str(k): int(v) for k, v in data["channels"].items()}
        ratios = {str(k): float(v) for k, v in data.get("ratios", {}).items()}
        return cls(ratios, channels, dict(data.get("meta", {})))

    @classmethod
    def from_json(cls, text: str) -> PruningPlan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AutopruneError(f"pruning plan is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data)
