"""Atomic writes: the file appears whole, with the mode a plain open() would give it."""

from __future__ import annotations

import os
import stat
import threading

import pandas as pd
import pytest

from autoprune.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    read_json,
    read_trials,
)


def test_written_files_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    path = tmp_path / "sub" / "result.json"
    atomic_write_json(path, {"a": 1})
    assert read_json(path) == {"a": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "data.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_read_trials_beside_a_live_writer_never_sees_a_torn_table(tmp_path):
    """A writer renames tables of changing sizes over the file while we read it: every read gets
    one whole table (``pd.read_parquet(path)`` failed ~7% of such reads: it stats, then reopens)."""
    path = tmp_path / "trials.parquet"
    atomic_write_parquet(path, pd.DataFrame({"a": [0]}))
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            i += 1
            n = i % 50 + 1
            atomic_write_parquet(path, pd.DataFrame({"a": range(n), "s": ["x" * (i % 7)] * n}))

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        lengths = [len(read_trials(path)) for _ in range(600)]
    finally:
        stop.set()
        thread.join()
    assert all(1 <= n <= 50 for n in lengths) and len(set(lengths)) > 1
