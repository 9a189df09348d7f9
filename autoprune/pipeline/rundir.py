"""The run directory's lifecycle: its default name, the checks before a run starts or resumes, and
removing what a new run wrote when it fails before finishing anything.

A run dir holds ``config.yaml``, ``base_model.pt`` (when the base model was trained here),
``trials.parquet``, searcher checkpoints, ``best_plan.json``, ``pruned_model.pt`` and ``summary.json``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from autoprune.atomic import check_writable
from autoprune.config import ExperimentConfig, dump_config
from autoprune.errors import AutopruneError


def default_run_dir(cfg: ExperimentConfig, root: str | Path = "runs") -> Path:
    """``runs/<name>__<searcher>__<seed>__<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{cfg.name}__{cfg.searcher_name}__{cfg.seed}__{stamp}"


def check_run_dir(run_dir: Path, cfg: ExperimentConfig, resume: bool) -> None:
    """Before any work: a resumed dir must hold a run of the same config; a new one must be empty."""
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise AutopruneError(f"--resume {str(run_dir)!r}: not a run directory (no config.yaml)")
        if (run_dir / "config.yaml").read_text() != dump_config(cfg):
            raise AutopruneError(
                f"--resume {str(run_dir)!r}: the run was started with a different config; "
                "resume without a config (or with the same one), or start a new run"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise AutopruneError(f"output directory {str(run_dir)!r} is not empty; choose another with --out")
    check_writable(run_dir)


def saved_base_model(run_dir: Path, resume: bool) -> Path | None:
    """The base model a resumed run trained earlier (None for a new run, or when it was loaded)."""
    path = run_dir / "base_model.pt"
    return path if resume and path.exists() else None


def create_run_dir(run_dir: Path) -> Path | None:
    """Create ``run_dir`` and its missing parents; return the topmost directory created (or None)."""
    created = next((p for p in reversed([run_dir, *run_dir.parents]) if not p.exists()), None)
    run_dir.mkdir(parents=True, exist_ok=True)
    return created


def remove_new(run_dir: Path, created: Path | None) -> None:
    """Delete what a failed new run wrote: its run dir and the parents it created (if still empty), or
    everything in the empty ``--out`` dir it was given (``created`` None)."""
    if created is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:
            if parent != created and created not in parent.parents:
                break
            try:
                parent.rmdir()  # only if empty: another run may have started in it meanwhile
            except OSError:
                break
        return
    for path in run_dir.iterdir():  # the dir was empty before (check_run_dir refuses a non-empty one)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
