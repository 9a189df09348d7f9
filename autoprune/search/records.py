"""Trial records: one row per evaluated plan, kept in ``trials.parquet`` atomically."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from autoprune.atomic import atomic_write_parquet, read_trials


class TrialRecorder:
    """Appends one row per evaluated plan and keeps ``trials.parquet`` up to date atomically."""

    def __init__(self, path: Path | None, rows: list[dict[str, Any]] | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._last_flush = 0.0
        self.observers: list[Callable[[dict[str, Any]], None]] = []
        """Called with each appended row (after it is saved): experiment tracking hooks in here."""
        self.heartbeat: Callable[[], None] | None = None
        """Called after each write of ``trials.parquet``: the run keeps its time on record with it
        (:class:`~autoprune.pipeline.rundir.RunClock`)."""

    @classmethod
    def resume(cls, path: Path) -> TrialRecorder:
        df = read_trials(path)
        return cls(path, df.to_dict("records") if len(df) else [])

    def append(self, row: dict[str, Any], flush: bool = True) -> dict[str, Any]:
        row = {"index": len(self.rows), **row}
        self.rows.append(row)
        if flush:
            self.flush()
        for observer in self.observers:
            observer(row)
        return row

    def flush(self) -> None:
        if self.path is not None and self.rows:
            atomic_write_parquet(self.path, pd.DataFrame(self.rows))
            self._last_flush = time.time()
            if self.heartbeat is not None:
                self.heartbeat()
