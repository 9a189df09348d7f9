"""The storage a cluster shares: where submitted jobs keep their inputs, run dirs, LUTs and MLflow store.

A storage root is a directory (an absolute path, or ``file://``), used in place, or any URI that
pyarrow's filesystems accept (``s3://bucket/autoprune``, ``gs://...``, ``hdfs://...``), reached
through ``pyarrow.fs``. Its layout::

    ROOT/
      runs/<run>/         the run dir of a search (or the experiment dir of ``autoprune run``)
      jobs/<run>/package/ what the job was submitted with: config.yaml, inputs/ (checkpoint, LUTs), code
      luts/<device>/      latency lookup tables, one folder per device, built once, named by later searches
      mlflow/             the default MLflow store of jobs (a directory root only): mlflow.db, artifacts/

A job on a directory root writes its run dir there directly. On a URI root the run dir is staged on
the node's disk and copied up every :data:`SYNC_SECONDS`, and when the job ends or is stopped
(:class:`Syncer`), files in an order that keeps a resumable state: trials.parquet after the
checkpoints, summary.json (the "finished" mark) last.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

from autoprune.errors import AutopruneError

log = logging.getLogger(__name__)
RUNS, JOBS, LUTS, MLFLOW = "runs", "jobs", "luts", "mlflow"
SYNC_SECONDS = 10.0
"""How often a job on a URI root copies its staged run dir up."""
LAST = ("trials.parquet", "summary.json")
"""Uploaded after every other file, in this order (a consistent state to resume from)."""
_FILESYSTEMS: dict[str, Any] = {}


def _skipped(name: str) -> bool:
    """Temporary files of atomic writes (``.name.xxx.tmp``) and caches are never copied."""
    return (name.startswith(".") and name.endswith(".tmp")) or name == "__pycache__"


class Storage:
    """A storage root: a local directory (``local`` is set) or a pyarrow filesystem URI."""

    def __init__(self, root: str) -> None:
        import pyarrow.fs as pafs

        self.root = root
        if "://" not in root or root.startswith("file://"):
            path = Path(root.removeprefix("file://")).expanduser()
            if not path.is_absolute():
                raise AutopruneError(f"storage {root!r} must be an absolute path or a URI (s3://..., gs://...)")
            self.local: Path | None = path
            self.fs, self.base = pafs.LocalFileSystem(), str(path)
            return
        self.local = None
        try:
            if root not in _FILESYSTEMS:  # one filesystem object per root and process
                _FILESYSTEMS[root] = pafs.FileSystem.from_uri(root)
            self.fs, self.base = _FILESYSTEMS[root]
        except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for bad or unreachable URIs
            raise AutopruneError(f"storage {root!r} is not usable ({' '.join(str(exc).split())[:200]}); "
                                 "give a directory or a URI pyarrow can open (s3://, gs://, hdfs://)") from exc

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # ------------------------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` below the root."""
        return "/".join([self.base.rstrip("/"), *parts]) if self.base else "/".join(parts)

    def uri(self, *parts: str) -> str:
        """``parts`` below the root, as a user would write it (path or URI)."""
        return "/".join([self.root.rstrip("/"), *parts])

    def local_path(self, *parts: str) -> Path | None:
        return self.local.joinpath(*parts) if self.local is not None else None

    # ------------------------------------------------------------------------------- reads
    def _info(self, *parts: str):
        try:
            return self.fs.get_file_info(self.path(*parts))
        except OSError as exc:
            raise AutopruneError(f"storage {self.root!r} is not reachable from here ({exc})") from exc

    def is_file(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(*parts).type == pafs.FileType.File

    def is_dir(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self._info(*parts).type == pafs.FileType.Directory

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as fh:
            return fh.read()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write one file (atomically on a directory root; an object store's PUT is atomic)."""
        if self.local is not None:
            from autoprune.atomic import atomic_write_bytes

            atomic_write_bytes(self.local.joinpath(*parts), data)
            return
        self.fs.create_dir(self.path(*parts[:-1]), recursive=True)
        with self.fs.open_output_stream(self.path(*parts)) as fh:
            fh.write(data)

    def list_dir(self, *parts: str) -> list[str]:
        """Names directly below ``parts`` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        if not self.is_dir(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(i.base_name for i in infos)

    def files(self, *parts: str) -> dict[str, tuple[int, float]]:
        """Every file below ``parts``: relative path -> (size, mtime)."""
        import pyarrow.fs as pafs

        if not self.is_dir(*parts):
            return {}
        top = self.path(*parts).rstrip("/") + "/"
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts), recursive=True))
        return {i.path[len(top):]: (i.size, i.mtime_ns or 0) for i in infos if i.type == pafs.FileType.File}

    # ------------------------------------------------------------------------------ copies
    def download(self, parts: tuple[str, ...], dest: Path) -> Path:
        """Copy the directory ``parts`` to the new local directory ``dest`` (all or nothing)."""
        if not self.is_dir(*parts):
            raise AutopruneError(f"{self.uri(*parts)!r} does not exist")
        if dest.exists():
            raise AutopruneError(f"{str(dest)!r} already exists; choose another --out")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            for rel in self.files(*parts):
                if not any(_skipped(p) for p in rel.split("/")):
                    target = tmp / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with self.fs.open_input_stream(self.path(*parts, rel)) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
            tmp.mkdir(exist_ok=True)  # an empty directory is still a directory
            os.replace(tmp, dest)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise AutopruneError(f"copying {self.uri(*parts)!r} to {str(dest)!r} failed ({exc}); "
                                 "nothing was written") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    def upload_file(self, src: Path, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts[:-1]), recursive=True)
        tmp = self.path(*parts[:-1], f".{parts[-1]}.{uuid.uuid4().hex[:8]}.tmp")
        with open(src, "rb") as fh, self.fs.open_output_stream(tmp if self.local is not None else self.path(*parts)) as out:
            shutil.copyfileobj(fh, out, 1 << 20)
        if self.local is not None:  # a directory root: rename into place
            os.replace(tmp, self.path(*parts))

    def upload(self, src: Path, *parts: str) -> None:
        """Copy the local directory ``src`` to ``parts`` (files replaced one by one)."""
        for path in ordered_files(src):
            self.upload_file(path, *parts, *path.relative_to(src).parts)

    def delete_file(self, *parts: str) -> None:
        self.fs.delete_file(self.path(*parts))


def ordered_files(root: Path) -> list[Path]:
    """The files below ``root`` to copy, in upload order (see :data:`LAST`)."""
    files = [p for p in root.rglob("*") if p.is_file() and not any(_skipped(q) for q in p.relative_to(root).parts)]
    rank = {name: i + 1 for i, name in enumerate(LAST)}
    return sorted(files, key=lambda p: (rank.get(p.name, 0) if p.parent == root else 0, str(p)))


class Syncer:
    """Keeps a URI copy of a staged local directory up to date: every ``period`` seconds in a thread,
    and once more on :meth:`stop`. Only files that changed since their last upload are sent; files
    it uploaded and that vanished locally are deleted."""

    def __init__(self, storage: Storage, src: Path, parts: tuple[str, ...], period: float = SYNC_SECONDS) -> None:
        self.storage, self.src, self.parts, self.period = storage, src, parts, period
        self._sent: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="autoprune-sync", daemon=True)

    def start(self) -> Syncer:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.sync()
            except Exception as exc:  # a failed upload is retried next period; the job goes on
                log.warning("copying the run dir to %s failed (%s); retrying", self.storage.uri(*self.parts), exc)

    def sync(self) -> int:
        """Upload what changed; return the number of files sent."""
        with self._lock:
            sent, seen = 0, set()
            for path in ordered_files(self.src) if self.src.is_dir() else []:
                rel = path.relative_to(self.src).as_posix()
                seen.add(rel)
                try:
                    st = path.stat()
                except FileNotFoundError:  # replaced or removed meanwhile: the next sync sends it
                    continue
                if self._sent.get(rel) != (st.st_size, st.st_mtime_ns):
                    self.storage.upload_file(path, *self.parts, *rel.split("/"))
                    self._sent[rel] = (st.st_size, st.st_mtime_ns)
                    sent += 1
            for rel in [r for r in self._sent if r not in seen]:
                self.storage.delete_file(*self.parts, *rel.split("/"))
                del self._sent[rel]
            return sent

    def stop(self) -> None:
        """Stop the thread and copy everything that is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sync()
