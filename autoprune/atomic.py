"""Atomic file writes and checked reads (run dirs, checkpoints, LUTs, reports).

Every file is written to a temporary name in the same directory, flushed and fsynced, then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash leaves either the old
file or the new one, never half of one. The file gets the mode a plain ``open`` would give it
(0666 less the umask: group-readable on shared storage), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import functools
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from autoprune.errors import AutopruneError


@functools.cache
def _file_mode() -> int:
    """0666 less the process umask: read from ``/proc/self/status`` where there is one (``os.umask``
    can only read it by setting it, which races with other threads), once per process."""
    try:
        with open("/proc/self/status") as fh:
            mask = next(int(line.split()[1], 8) for line in fh if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), _file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=json_default) + "\n")


def atomic_write_with(path: str | Path, writer: Callable[[io.BytesIO], None]) -> None:
    """Serialise with ``writer(buffer)`` (e.g. ``torch.save``) and write atomically."""
    buf = io.BytesIO()
    writer(buf)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_parquet(path: str | Path, df: pd.DataFrame) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AutopruneError(f"{str(path)!r} is missing or not valid JSON ({type(exc).__name__})") from exc


def read_parquet_bytes(data: bytes) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(data))


def read_trials(path: str | Path) -> pd.DataFrame:
    """The trials table, or an empty one before the first write. Safe beside a live writer: the
    file is read through one open handle (``pd.read_parquet(path)`` stats the path and opens it
    again, so a rename in between pairs the old file's size with the new file's bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return pd.DataFrame()
    except OSError as exc:
        raise AutopruneError(f"{str(path)!r} cannot be read ({type(exc).__name__})") from exc
    try:
        return read_parquet_bytes(data)
    except Exception as exc:
        raise AutopruneError(
            f"{str(path)!r} is corrupted ({type(exc).__name__}); delete it to restart the search"
        ) from exc


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy / torch scalars and arrays, and paths."""
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def check_writable(path: Path) -> None:
    """Fail early (before any work) if ``path`` cannot be created or written."""
    probe_dir = path
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir() or not os.access(probe_dir, os.W_OK | os.X_OK):
        raise AutopruneError(f"output directory {str(path)!r} is not writable; choose another with --out")
