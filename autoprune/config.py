"""Typed experiment configuration, loaded strictly from YAML.

Each section of an experiment file is a dataclass; unknown or misspelled keys and values of the
wrong type are errors that name the key. ``--set a.b=value`` overrides are applied to the raw
mapping before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoprune.errors import ConfigError


@dataclass
class ModelConfig:
    name: str | None = None
    """Built-in model name (``mnist_cnn``, ``resnet20``, ``resnet56``, ``vgg_small``, ``mobilenetv2_small``)."""
    factory: str | None = None
    """User model factory ``"package.module:function"`` (executes the user's code)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the built-in constructor or the factory."""
    checkpoint: str | None = None
    """A state_dict file, loaded with ``weights_only=True``; without it the model is trained first."""
    input_shape: list[int] | None = None
    """``[C, H, W]`` of one input; defaults to the dataset's shape."""


@dataclass
class DataConfig:
    name: str | None = None
    """Built-in dataset (``mnist5k``, ``digits``, ``cifar10``); ``mnist5k`` when no factory is set."""
    factory: str | None = None
    """User data factory ``"package.module:function"`` returning ``(train, val, test)`` Datasets."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the factory."""
    val_samples: int = 1000
    """Search-validation images held out from the training data (the search never sees test)."""
    test_fraction: float = 0.2
    """Share of a built-in dataset kept as the test split."""
    resize: int | None = None
    """Resize images to ``resize x resize`` (e.g. 32 for CIFAR-style networks)."""
    channels: int | None = None
    """Repeat grey images to this many channels (e.g. 3)."""
    root: str | None = None
    """Where on-disk datasets (cifar10) live; never downloaded."""


@dataclass
class TrainConfig:
    epochs: int = 5
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4


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
    """Latency lookup table (JSON) for latency budgets; without it latency is measured."""

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
        if keys[0] == "latency_ms":
            if not value > 0:
                raise ConfigError(f"budget.latency_ms must be > 0 (got {value})")
        elif not 0 < value <= 1:
            raise ConfigError(f"budget.{keys[0]} is the fraction kept and must be in (0, 1] (got {value})")


@dataclass
class PruningConfig:
    criterion: str = "l1"
    """Channel importance criterion (``l1``, ``l2``, ...)."""
    granularity: str = "channel"
    """``channel`` (physical removal), ``fine`` (unstructured) or ``nm`` (N:M)."""
    round_to: int = 1
    """Round kept channel counts to a multiple of this."""
    min_ratio: float = 0.2
    """Smallest preserve ratio a searcher may choose for a unit."""
    max_ratio: float = 1.0
    """Largest preserve ratio a searcher may choose for a unit."""
    p: float = 2.0
    """Norm order for the ``lp`` criterion."""
    n: int = 2
    """N of N:M sparsity (zeros per group)."""
    m: int = 4
    """M of N:M sparsity (group size)."""
    calibration_batches: int = 4
    """Batches used by data-driven criteria (taylor, apoz, hessian, reconstruction)."""
    scope: str = "layer"
    """``fine`` granularity: ``layer`` (each layer keeps its density) or ``global`` (one magnitude threshold)."""


@dataclass
class EvaluationConfig:
    adaptive_bn_batches: int = 20
    """Training batches used to re-estimate BatchNorm statistics before scoring (0 disables)."""
    batch_size: int = 256
    val_samples: int | None = None
    """Score on at most this many search-validation samples (default: all)."""


@dataclass
class FinetuneConfig:
    epochs: int = 3
    lr_scale: float = 0.1
    """Fine-tuning lr = train.lr x lr_scale (1/10 to 1/100 of the training lr)."""
    schedule: dict[str, Any] | None = None
    """Iterative pruning: ``{steps: k, kind: cubic|linear}``."""
    rewind: str | None = None
    """Lottery-ticket rewinding: ``init`` or ``epoch_N``."""


@dataclass
class RayConfig:
    address: str | None = None
    """``null`` starts a local Ray on demand (honours RAY_ADDRESS); an address joins a cluster."""
    workers: int = 0
    """Evaluation actors; 0 evaluates in-process without Ray."""
    max_retries: int = 2
    """Retries of a failed evaluation or trial."""


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    budget: BudgetConfig = field(default_factory=lambda: BudgetConfig(flops=0.5))
    pruning: PruningConfig = field(default_factory=PruningConfig)
    searcher: dict[str, Any] = field(default_factory=lambda: {"name": "random", "evaluations": 50})
    """Searcher name and its own keys (validated by the searcher)."""
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    searchers: list[Any] | None = None
    """``autoprune run`` only: searchers to compare (names or searcher mappings)."""
    budgets: list[Any] | None = None
    """``autoprune run`` only: budgets to compare (mappings or ``flops=0.5`` strings)."""
    seeds: list[int] | None = None
    """``autoprune run`` only: seeds to repeat each combination with."""

    @property
    def searcher_name(self) -> str:
        return str(self.searcher.get("name", ""))

    def validate(self) -> None:
        self.budget.validate()
        if not self.name or any(c in self.name for c in '/\\\0') or self.name in (".", ".."):
            raise ConfigError(f"name {self.name!r} must be a non-empty file-name part (no '/', '\\')")
        if "name" not in self.searcher:
            raise ConfigError("searcher.name is required, e.g. searcher: {name: random}")
        if (self.model.name is None) == (self.model.factory is None):
            raise ConfigError("model: set exactly one of name or factory")
        if self.data.name is None and self.data.factory is None:
            self.data.name = "mnist5k"
        if self.data.name is not None and self.data.factory is not None:
            raise ConfigError("data: set exactly one of name or factory")
        p = self.pruning
        if not 0 < p.min_ratio <= p.max_ratio <= 1:
            raise ConfigError(
                f"pruning: need 0 < min_ratio <= max_ratio <= 1 (got {p.min_ratio}, {p.max_ratio})"
            )
        if p.round_to < 1:
            raise ConfigError(f"pruning.round_to must be >= 1 (got {p.round_to})")
        for key, val in (("train.epochs", self.train.epochs), ("finetune.epochs", self.finetune.epochs)):
            if val < 0:
                raise ConfigError(f"{key} must be >= 0 (got {val})")
        if not (self.train.lr > 0 and self.finetune.lr_scale > 0):  # NaN fails too
            raise ConfigError("train.lr and finetune.lr_scale must be > 0")
        if self.data.val_samples < 1:
            raise ConfigError(f"data.val_samples must be >= 1 (got {self.data.val_samples})")
        if self.ray.workers < 0:
            raise ConfigError(f"ray.workers must be >= 0 (got {self.ray.workers})")
        self._check_ranges()

    def _check_ranges(self) -> None:
        """Numbers that would otherwise fail deep inside torch or numpy with a traceback."""
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63) (got {self.seed})")
        minimum = {"train.batch_size": (self.train.batch_size, 1), "evaluation.batch_size": (self.evaluation.batch_size, 1),
                   "evaluation.adaptive_bn_batches": (self.evaluation.adaptive_bn_batches, 0),
                   "evaluation.val_samples": (self.evaluation.val_samples, 1), "data.resize": (self.data.resize, 1),
                   "data.channels": (self.data.channels, 1), "ray.max_retries": (self.ray.max_retries, 0)}
        for key, (value, low) in minimum.items():
            if value is not None and value < low:
                raise ConfigError(f"{key} must be >= {low} (got {value})")
        if not 0 < self.data.test_fraction < 1:
            raise ConfigError(f"data.test_fraction must be in (0, 1) (got {self.data.test_fraction})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------- loading


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


def from_dict(cls: type, raw: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``raw``; unknown keys and wrong types raise ``ConfigError``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping (got {raw!r})")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix}{close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown config key {prefix}{key!r}{hint}; valid keys: {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b=value`` (value in YAML syntax) into ``(["a", "b"], value)``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set searcher.episodes=30")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return [p for p in key.strip().split(".") if p], parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        if not path:
            raise ConfigError(f"--set {text!r}: empty key")
        node = raw
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    return raw


def parse_budget(text: str) -> dict[str, float]:
    """``flops=0.5`` -> ``{"flops": 0.5}`` (the CLI's short form)."""
    if "=" not in text:
        raise ConfigError(f"--budget {text!r}: expected KIND=VALUE, e.g. --budget flops=0.5")
    kind, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError as exc:
        raise ConfigError(f"--budget {text!r}: {value!r} is not a number") from exc
    return {kind.strip(): number}


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return raw


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    budget: str | None = None,
) -> ExperimentConfig:
    """Load and validate an experiment config from a YAML path or a mapping."""
    raw = dict(source) if isinstance(source, dict) else (read_yaml(source) if source else {})
    raw = apply_overrides(raw, list(overrides or []))
    if budget:
        raw["budget"] = {**{k: v for k, v in (raw.get("budget") or {}).items() if k == "lut"},
                         **parse_budget(budget)}
    cfg = from_dict(ExperimentConfig, raw)
    cfg.validate()
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
