"""What a submitted job carries: its config, rewritten to point at the files packaged with it.

:func:`package` writes the job's Ray ``working_dir``: ``config.yaml``, its files under ``inputs/``
(``model.checkpoint``, ``budget.lut``, each ``budgets[i].lut``, the ``luts:`` folder as ``inputs/luts``)
and a user factory's module found in
the current directory. Every file the config names must exist here; a missing one is a one-line error
before the cluster is contacted.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from autoprune.config import ExperimentConfig, load_config
from autoprune.errors import AutopruneError, ConfigError


def job_kind(cfg: ExperimentConfig, kind: str | None) -> str:
    """``run`` for a config that lists searchers / budgets / seeds (an ``autoprune run`` experiment)."""
    if kind not in (None, "search", "run"):
        raise AutopruneError(f"--kind must be search or run (got {kind!r})")
    return kind or ("run" if cfg.searchers or cfg.budgets or cfg.seeds else "search")


def planned_evaluations(cfg: ExperimentConfig, kind: str) -> int | None:
    """Evaluations the searcher(s) will make, when the options say (``evaluations``, ``episodes``)."""
    from autoprune.search.base import SEARCHERS

    configs = [c["config"] for c in _combinations(cfg)] if kind == "run" else [cfg.to_dict()]
    total = 0
    for raw in configs:
        name = raw["searcher"]["name"]
        options = SEARCHERS.get(name).parse_options(raw["searcher"])
        count = getattr(options, "evaluations", None) or getattr(options, "episodes", None)
        if count is None:  # e.g. NetAdapt: as many as it takes to reach the budget
            return None
        total += int(count)
    return total


def _combinations(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    from autoprune.pipeline.experiments import combinations

    return combinations(cfg)


def package(cfg: ExperimentConfig, dest: Path, cwd: Path | None = None) -> Path:
    """Write the job's working dir to ``dest``: ``config.yaml`` with its files under ``inputs/``, and the
    module of a user factory found in ``cwd``. A file the config names must exist here."""
    cwd = cwd or Path.cwd()
    raw = cfg.to_dict()
    shipped: dict[Path, str] = {}

    def ship(path: str, key: str) -> str:
        src = (cwd / Path(path).expanduser()).resolve()
        if not src.is_file():
            raise ConfigError(f"{key} {path!r} does not exist; submit sends the files a config names to the cluster")
        if src not in shipped:
            name = src.name if src.name not in shipped.values() else f"{len(shipped)}-{src.name}"
            shutil.copy2(src, dest / "inputs" / name)
            shipped[src] = name
        return f"inputs/{shipped[src]}"

    (dest / "inputs").mkdir(parents=True, exist_ok=True)
    if raw["model"].get("checkpoint"):
        raw["model"]["checkpoint"] = ship(raw["model"]["checkpoint"], "model.checkpoint")
    if raw["budget"].get("lut"):
        raw["budget"]["lut"] = ship(raw["budget"]["lut"], "budget.lut")
    for i, budget in enumerate(raw.get("budgets") or []):
        if isinstance(budget, dict) and budget.get("lut"):
            budget["lut"] = ship(budget["lut"], f"budgets[{i}].lut")
    if raw.get("luts"):  # a local LUT registry: its tables travel with the job
        src = (cwd / Path(raw["luts"]).expanduser()).resolve()
        if not src.is_dir():
            raise ConfigError(f"luts {raw['luts']!r} is not a directory; submit sends the LUT folder a config names")
        shutil.copytree(src, dest / "inputs" / "luts", ignore=shutil.ignore_patterns("*.tmp", "__pycache__"),
                        dirs_exist_ok=True)
        raw["luts"] = "inputs/luts"
    for factory in (raw["model"].get("factory"), raw["data"].get("factory")):
        top = str(factory or "").split(":", 1)[0].split(".", 1)[0]
        for src in (cwd / f"{top}.py", cwd / top) if top else ():
            if src.is_file() and not (dest / src.name).exists():
                shutil.copy2(src, dest / src.name)
            elif (src / "__init__.py").is_file() and not (dest / src.name).exists():
                shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    load_config(dest / "config.yaml")  # what the job will load: still a valid config
    return dest
