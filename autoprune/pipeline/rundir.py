"""The run directory's lifecycle: its default name, the checks before a run starts or resumes, and
removing what a new run wrote when it fails before finishing anything.

A run dir holds ``config.yaml``, ``base_model.pt`` (when the base model was trained here),
``trials.parquet``, searcher checkpoints, ``best_plan.json``, ``pruned_model.pt``, ``summary.json`` and
``run_state.json``: the time each *segment* of the run (its start, then every ``--resume``) took, kept
by :class:`RunClock` so that the times in ``summary.json`` count the whole run, not only its last part.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autoprune.atomic import atomic_write_json, check_writable
from autoprune.config import ExperimentConfig, dump_config, load_config
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
        if not same_config(run_dir / "config.yaml", cfg):
            raise AutopruneError(
                f"--resume {str(run_dir)!r}: the run was started with a different config; "
                "resume without a config (or with the same one), or start a new run"
            )
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise AutopruneError(f"output directory {str(run_dir)!r} is not empty; choose another with --out")
    check_writable(run_dir)


def same_config(saved: Path, cfg: ExperimentConfig) -> bool:
    """Whether the run's saved ``config.yaml`` is ``cfg``: read by today's code, so keys added since the run
    started take their defaults on both sides (a run started by an earlier version resumes)."""
    text = saved.read_text()
    if text == dump_config(cfg):
        return True
    try:
        return dump_config(load_config(saved)) == dump_config(cfg)
    except AutopruneError:
        return False


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


# ------------------------------------------------------------------------------ run_state.json

log = logging.getLogger(__name__)
RUN_STATE = "run_state.json"
HEARTBEAT_SECONDS = 10.0
"""How often a running segment rewrites ``run_state.json`` (besides once per saved trial)."""
PHASES = ("setup", "base_training", "search", "finetune", "test")
"""Timed phases of a segment; ``base_training`` is part of ``setup``."""
STATUSES = ("running", "finished", "failed", "interrupted", "killed")


def read_run_state(run_dir: Path, resume: bool) -> list[dict[str, Any]]:
    """The segments an earlier part of the run recorded in ``run_state.json`` (``[]`` for a new run, or a
    run dir without the file). A segment still marked ``running`` was killed (e.g. ``kill -9``): it is
    returned as ``killed``, ending at its last heartbeat. A corrupted file refuses the resume."""
    path = run_dir / RUN_STATE
    if not resume or not path.exists():
        return []
    try:
        segments = json.loads(path.read_text())["segments"]
        valid = isinstance(segments, list) and all(_valid_segment(s) for s in segments)
    except (OSError, ValueError, TypeError, KeyError):
        valid = False
    if not valid:
        raise AutopruneError(f"--resume {str(run_dir)!r}: {RUN_STATE} is corrupted; delete it to resume without "
                             "the earlier segments' times (summary.json will then count only from the resume)")
    return [{**s, "status": "killed"} if s["status"] == "running" else s for s in segments]


def _valid_segment(s: Any) -> bool:
    def seconds(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0

    return (isinstance(s, dict) and s.get("kind") in ("start", "resume") and s.get("status") in STATUSES
            and all(seconds(s.get(k)) for k in ("started", "ended", "seconds"))
            and all(isinstance(s.get(k), int) and s[k] >= 0 for k in ("evaluations_before", "evaluations_after"))
            and isinstance(s.get("phases"), dict) and all(seconds(v) for v in s["phases"].values()))


class RunClock:
    """Times one segment of a run (``start``, or a ``resume``) and keeps ``run_state.json`` up to date.

    The file lists every segment: ``kind``, ``started`` / ``ended`` (Unix time), ``seconds``, ``status``,
    ``evaluations_before`` / ``evaluations_after`` (rows in ``trials.parquet``) and the seconds of each
    phase (:data:`PHASES`). It is written atomically by :meth:`beat`, once per saved trial (the
    recorder's heartbeat) and every :data:`HEARTBEAT_SECONDS` from a background thread, and a last time
    by :meth:`close`. So a segment killed with ``kill -9`` stays on record as ``running`` with the time up
    to its last heartbeat, and the next resume counts it (as ``killed``).

    A new run writes from the moment its run dir holds its config; a resumed one from its first saved
    trial (or its best plan), so a resume refused early (a bad searcher checkpoint) leaves the run dir as
    it was.

    :param run_dir: the run directory.
    :param started: when the segment started (``time.time()``), before the base model was prepared.
    :param kind: ``start`` or ``resume``.
    :param evaluations: the number of trials on record now.
    :param previous: the earlier segments (:func:`read_run_state`).
    """

    def __init__(self, run_dir: Path, started: float, kind: str, evaluations: Callable[[], int],
                 previous: list[dict[str, Any]] | None = None) -> None:
        self.path = Path(run_dir) / RUN_STATE
        self.started, self.kind, self.evaluations = started, kind, evaluations
        self.previous = list(previous or [])
        self.evaluations_before = evaluations()
        self.phases = dict.fromkeys(PHASES, 0.0)
        self._running: tuple[str, float] | None = None
        self._lock = threading.Lock()
        self._active = self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, phase: str, seconds: float) -> None:
        """Count ``seconds`` (already measured) to ``phase``."""
        self.phases[phase] += seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name``; a heartbeat during it counts the time so far."""
        self._running = (name, time.time())
        try:
            yield
        finally:
            self.phases[name] += time.time() - self._running[1]
            self._running = None

    def segment(self, now: float, status: str = "running") -> dict[str, Any]:
        """This segment's record at ``now``."""
        phases = dict(self.phases)
        if self._running is not None:
            phases[self._running[0]] += now - self._running[1]
        return {"kind": self.kind, "started": self.started, "ended": now, "seconds": now - self.started,
                "status": status, "evaluations_before": self.evaluations_before,
                "evaluations_after": self.evaluations(), "phases": phases}

    def segments(self, now: float, status: str = "running") -> list[dict[str, Any]]:
        """All segments of the run, this one (at ``now``) last."""
        return [*self.previous, self.segment(now, status)]

    def totals(self, now: float, status: str = "running") -> dict[str, Any]:
        """Seconds over all segments: ``run_seconds`` and ``<phase>_seconds``, and the ``segments``."""
        segments = self.segments(now, status)
        out: dict[str, Any] = {"run_seconds": sum(s["seconds"] for s in segments)}
        for phase in PHASES:
            out[f"{phase}_seconds"] = sum(s["phases"].get(phase, 0.0) for s in segments)
        out["segments"] = segments
        return out

    def beat(self) -> None:
        """Write ``run_state.json`` now, and from now on every :data:`HEARTBEAT_SECONDS`."""
        with self._lock:
            if self._closed:
                return
            self._active = True
            self._write(time.time(), "running")
        if self._thread is None:
            self._thread = threading.Thread(target=self._tick, name="autoprune-heartbeat", daemon=True)
            self._thread.start()

    def close(self, status: str, now: float | None = None, write: bool = True) -> None:
        """End the segment with ``status``: stop the heartbeat, write the last record (if it wrote before,
        or ``status`` is ``finished``). Later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stop.set()
            if write and (self._active or status == "finished"):
                self._write(time.time() if now is None else now, status)
        if self._thread is not None:
            self._thread.join()

    def _write(self, now: float, status: str) -> None:
        atomic_write_json(self.path, {"segments": self.segments(now, status)})

    def _tick(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with self._lock:
                if self._closed:
                    return
                try:
                    self._write(time.time(), "running")
                except OSError as exc:  # the run dir went away, a full disk: the next beat tries again
                    log.debug("run_state.json heartbeat failed: %s", exc)
