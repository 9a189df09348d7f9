"""Loading an experiment: YAML files, ``--set`` overrides, the ``--budget`` short form, dumping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoprune.config.checks import from_dict
from autoprune.config.sections import ExperimentConfig
from autoprune.errors import ConfigError


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
        given = parse_budget(budget)
        keep = ("lut", "runtime", "device") + (("reanchor", "verify", "verify_tolerance") if {"latency", "latency_ms"} & set(given) else ())
        raw["budget"] = {**{k: v for k, v in (raw.get("budget") or {}).items() if k in keep}, **given}
    cfg = from_dict(ExperimentConfig, raw)
    cfg.validate()
    return cfg


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
