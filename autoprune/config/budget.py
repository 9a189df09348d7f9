"""The ``budget:`` section of an experiment file: what a plan must meet (a fraction of the FLOPs, params or
latency kept, or a latency in ms), and how a latency budget is priced and checked."""

from __future__ import annotations

from dataclasses import dataclass

from autoprune.errors import ConfigError


@dataclass
class BudgetConfig:
    flops: float | None = None
    """Fraction of the base model's FLOPs (MACs) to keep."""
    params: float | None = None
    """Fraction of the base model's parameters to keep."""
    latency: float | None = None
    """Fraction of the base model's latency to keep."""
    latency_ms: float | None = None
    """Absolute latency target in milliseconds."""
    lut: str | None = None
    """Latency lookup table (JSON) for latency budgets; without it (and without ``device``) latency is
    measured on this machine."""
    runtime: str | None = None
    """Latency budgets: the runtime latency is for (``torch``, ``onnxruntime``, ``openvino``): the LUT must be built
    for it, or plans are measured in it (default: the LUT's runtime, or ``torch`` when measured)."""
    device: str | None = None
    """Latency budgets: the device name the LUT must be built for; without ``lut``, that device's LUT
    is looked up in ``luts`` (or ``$AUTOPRUNE_LUT_DIR``) by device, runtime and model."""
    reanchor: int = 0
    """Latency budgets with a LUT: before the search, time this many random plans (drawn as the search draws,
    ``pruning.round_to``) against the unpruned model here and multiply the LUT's predictions by the median
    measured / predicted fraction (what ``autoprune lut reanchor`` stores; the LUT file is not changed).
    0: the LUT as it is."""
    verify: int = 0
    """Latency budgets with a LUT timed on this machine: after the search, time the plan against the unpruned
    model here and, when its measured fraction is more than ``verify_tolerance`` off the budget, re-level the LUT
    on it and scale the plan (its shape kept) to the budget at that level; at most this many rounds
    (:mod:`autoprune.latency.verify`). 0: the searched plan as the LUT priced it."""
    verify_tolerance: float = 0.05
    """``budget.verify``: how far (``|measured / budget - 1|``) a plan may run off the budget and be kept."""

    @property
    def kind(self) -> str:
        return "latency" if self.latency_ms is not None else self._set_keys()[0]

    @property
    def value(self) -> float:
        return float(getattr(self, self._set_keys()[0]))

    def _set_keys(self) -> list[str]:
        return [k for k in ("flops", "params", "latency", "latency_ms") if getattr(self, k) is not None]

    def validate(self) -> None:
        keys = self._set_keys()
        if len(keys) != 1:
            raise ConfigError(
                "budget: set exactly one of flops, params, latency, latency_ms "
                f"(got {', '.join(keys) or 'none'}), e.g. budget: {{flops: 0.5}}"
            )
        value = getattr(self, keys[0])
        if self.reanchor < 0 or self.verify < 0 or not 0 < self.verify_tolerance < 1:
            raise ConfigError(f"budget.reanchor and budget.verify must be >= 0 and budget.verify_tolerance in (0, 1) "
                              f"(got {self.reanchor}, {self.verify}, {self.verify_tolerance})")
        with_lut = keys[0] in ("latency", "latency_ms") and (self.lut is not None or self.device is not None)
        for key, what, n in (("reanchor", "re-measures a LUT's level", 8), ("verify", "times the plan found", 3)):
            if getattr(self, key) and not with_lut:  # both act on a LUT's latency budget
                raise ConfigError(f"budget.{key} {what}: it needs a latency budget with budget.lut or budget.device, "
                                  f"e.g. budget: {{latency: 0.6, lut: r20.json, {key}: {n}}}")
        if keys[0] == "latency_ms":
            if not value > 0:
                raise ConfigError(f"budget.latency_ms must be > 0 (got {value})")
        elif not 0 < value <= 1:
            raise ConfigError(f"budget.{keys[0]} is the fraction kept and must be in (0, 1] (got {value})")
