"""Searches as Ray Jobs: submit, list, follow, stop, resubmit and fetch (``autoprune submit`` & co.).

Everything goes through Ray's own job API (:class:`ray.job_submission.JobSubmissionClient`, the head's
dashboard address, ``http://HEAD:8265``): Ray queues, runs, logs and stops the jobs. A job is one
``autoprune search`` (or one ``autoprune run`` experiment) run by :mod:`autoprune.pipeline.jobdriver`
on the cluster. What it needs travels as the job's Ray ``working_dir``
(:mod:`autoprune.pipeline.jobpackage`): the config, rewritten so its files point into the package (a
local checkpoint, LUTs, a user factory's module from the current directory). Its results go to the shared storage (:mod:`autoprune.pipeline.storage`), under
``runs/<run>``, never to a node's own disk.

A job's id is its run's name (``<name>__<searcher>__<seed>__<time>``); a resubmitted job (after a
stop or crash) gets ``<run>--2``, ``--3``, ... and continues the same run dir. Ray keeps what a job is
in its metadata (``autoprune``, ``run``, ``kind``, ``storage``, ``planned``, ``cpus``).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoprune.config import ExperimentConfig, load_config
from autoprune.errors import AutopruneError, ConfigError
from autoprune.pipeline.jobpackage import job_kind, package, planned_evaluations
from autoprune.pipeline.storage import MLFLOW, RUNS, Storage

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
STORAGE_ENV = "AUTOPRUNE_STORAGE"
LOCAL_STORAGE = Path("~/.autoprune/storage")
"""The storage of a cluster on this machine when none is given."""
TAG = "autoprune"
ACTIVE = ("PENDING", "RUNNING")
DRIVER = "python -m autoprune.pipeline.jobdriver"


# ------------------------------------------------------------------------------------- cluster


def resolve_address(address: str | None) -> str:
    """``--address``, else ``RAY_ADDRESS``, else the dashboard of a Ray on this machine."""
    return address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS


def _is_local(address: str) -> bool:
    host = address.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


@dataclass
class Cluster:
    """A connected job client and the address it answers at."""

    client: Any
    address: str


HTTP_TIMEOUT_S = (10.0, 120.0)
"""Every request to the job server: seconds to connect, and to wait for each answer (Ray's client sets none, so a
server that takes the connection and never answers hung the command)."""


def _timed_client_class() -> type:
    """Ray's :class:`JobSubmissionClient` with :data:`HTTP_TIMEOUT_S` on every request it makes (its version check
    when constructed included): a timeout is then the one-line error of :func:`connect` / :func:`_request`."""
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", HTTP_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


def connect(address: str | None = None) -> Cluster:
    """A :class:`JobSubmissionClient` for ``address``; an unreachable one is a one-line error, fast."""
    try:
        JobSubmissionClient = _timed_client_class()  # noqa: N806 - Ray's class, a timeout added
    except ImportError as exc:  # pragma: no cover - ray is a dependency
        raise AutopruneError("the job commands need ray[default]; pip install 'autoprune[service]'") from exc
    address = resolve_address(address)
    hint = "start one with `ray start --head` (ray[default] installed) or give --address http://HEAD:8265"
    if address.startswith(("http://", "https://")):
        host_port = address.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", "")
        try:
            socket.create_connection((host.strip("[]"), int(port or (443 if address.startswith("https") else 80))),
                                     timeout=5).close()
        except (OSError, ValueError) as exc:
            raise AutopruneError(f"no Ray cluster answers at {address} ({exc}); {hint}") from exc
    from ray.exceptions import AuthenticationError

    try:
        try:
            client = JobSubmissionClient(address)
        except AuthenticationError:  # a token-protected cluster: Ray's own token sources, as `ray start` reads them
            headers = _token_headers()
            if not headers:
                raise AutopruneError(f"the Ray cluster at {address} requires a token; set RAY_AUTH_TOKEN or "
                                     "RAY_AUTH_TOKEN_PATH (see https://docs.ray.io/en/latest/ray-security/"
                                     "token-auth.html)") from None
            client = JobSubmissionClient(address, headers=headers)
    except AuthenticationError as exc:
        raise AutopruneError(f"the Ray cluster at {address} refused the token ({exc.message.splitlines()[0]})") from None
    except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
        raise AutopruneError(f"no Ray job server at {address} ({' '.join(str(exc).split())[:200]}); {hint}") from exc
    return Cluster(client, address)


def _token_headers() -> dict[str, str]:
    """``Authorization`` from ``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if not token and path.is_file():
        token = path.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def _request(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (ConnectionError, OSError) as exc:
        raise AutopruneError(f"{what}: the Ray job server stopped answering ({exc})") from exc


def job_details(cluster: Cluster, job: str):
    """Ray's ``JobDetails`` of an autoprune job (an unknown id is a one-line error)."""
    try:
        info = cluster.client.get_job_info(job)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise AutopruneError(f"there is no job {job!r} on {cluster.address}; "
                                 "see `autoprune jobs`") from None
        raise AutopruneError(f"job {job!r}: {' '.join(str(exc).split())[:200]}") from exc
    if (info.metadata or {}).get(TAG) != "1":
        raise AutopruneError(f"job {job!r} was not submitted by autoprune")
    return info


def _status(info) -> str:
    return str(getattr(info.status, "value", info.status))


def _autoprune_jobs(cluster: Cluster) -> list[Any]:
    jobs = _request("listing jobs", cluster.client.list_jobs)
    return sorted((j for j in jobs if (j.metadata or {}).get(TAG) == "1" and j.submission_id),
                  key=lambda j: j.start_time or 0)


# -------------------------------------------------------------------------------------- submit


def resolve_storage(storage: str | None, address: str) -> str:
    """``--storage``, else ``AUTOPRUNE_STORAGE``, else ``~/.autoprune/storage`` for a Ray on this machine."""
    root = storage or os.environ.get(STORAGE_ENV)
    if not root:
        if not _is_local(address):
            raise AutopruneError(f"give --storage (a directory every node of {address} mounts, or a URI such as "
                                 f"s3://bucket/autoprune) or set {STORAGE_ENV}: results are not kept on a node's disk")
        root = str(LOCAL_STORAGE.expanduser())
    if "://" not in root:
        root = str(Path(root).expanduser().resolve())
    return root


def _new_run_name(cfg: ExperimentConfig, kind: str, taken: set[str]) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    middle = "experiment" if kind == "run" else f"{cfg.searcher_name}__{cfg.seed}"
    name, n = f"{cfg.name}__{middle}__{stamp}", 2
    while name in taken:
        name, n = f"{cfg.name}__{middle}__{stamp}-{n}", n + 1
    return name


def submit(config: str | Path, overrides: list[str] | None = None, *, address: str | None = None,
           storage: str | None = None, kind: str | None = None, budget: str | None = None) -> str:
    """Submit a search (or an experiment) as a Ray Job; return the job id.

    :param config: the experiment YAML (its files are packaged; they must exist here).
    :param overrides: ``KEY=VALUE`` overrides, as ``--set``.
    :param address: the Ray head's dashboard, ``http://HEAD:8265`` (default ``RAY_ADDRESS``, then local).
    :param storage: the shared storage root (default ``AUTOPRUNE_STORAGE``, then ``~/.autoprune/storage``
        for a Ray on this machine).
    :param kind: ``search`` or ``run``; default ``run`` when the config lists searchers, budgets or seeds.
    :param budget: the budget short form (``flops=0.5``), as ``--budget``.
    """
    cfg = load_config(config, list(overrides or []), budget)
    kind = job_kind(cfg, kind)
    planned = planned_evaluations(cfg, kind)  # also validates every searcher's options
    address = resolve_address(address)
    root = resolve_storage(storage, address)
    store = Storage(root)
    if cfg.tracking.mlflow and not cfg.tracking.uri:  # the job's working dir is not kept: log to the storage
        if store.local is None:
            raise ConfigError("tracking.mlflow on a URI storage needs tracking.uri (an MLflow server, "
                              "e.g. http://HOST:5000): a job's local MLflow store would be lost")
        cfg.tracking.uri = f"sqlite:///{store.local / MLFLOW / 'mlflow.db'}"
    with tempfile.TemporaryDirectory(prefix="autoprune-submit-") as tmp:
        pkg = package(cfg, Path(tmp) / "package")
        cluster = connect(address)
        taken = {j.submission_id for j in _request("listing jobs", cluster.client.list_jobs)}
        run = _new_run_name(cfg, kind, taken)
        cpus = 1 if kind == "search" and cfg.ray.workers == 0 else 0  # in-process evaluation computes here
        metadata = {TAG: "1", "run": run, "kind": kind, "storage": root, "planned": str(planned or ""),
                    "cpus": str(cpus)}
        entrypoint = f"{DRIVER} --storage {shlex.quote(root)} --run {shlex.quote(run)} --kind {kind} --package ."
        return _submit(cluster.client, entrypoint, run, metadata, {"working_dir": str(pkg)})


def _submit(client, entrypoint: str, job: str, metadata: dict[str, str], runtime_env: dict[str, Any]) -> str:
    runtime_env = {**runtime_env, "env_vars": {"PYTHONUNBUFFERED": "1"}}
    try:
        return client.submit_job(entrypoint=entrypoint, submission_id=job, metadata=metadata,
                                 runtime_env=runtime_env, entrypoint_num_cpus=float(metadata.get("cpus") or 0))
    except (RuntimeError, ValueError, ConnectionError) as exc:
        raise AutopruneError(f"the cluster refused the job: {' '.join(str(exc).split())[:300]}") from exc


def resubmit(job: str, *, address: str | None = None) -> str:
    """Resubmit a stopped or failed job: a new job that continues its run dir. Returns the new job id."""
    cluster = connect(address)
    meta = dict(job_details(cluster, job).metadata)
    run, kind = meta["run"], meta.get("kind", "search")
    jobs = _autoprune_jobs(cluster)
    _refuse_active(jobs, run, "stop it first (autoprune stop {job})")
    if _finished(Storage(meta["storage"]), run, kind):
        raise AutopruneError(f"run {run!r} has finished; fetch it with autoprune fetch {job}")
    taken, n = {j.submission_id for j in jobs}, 2
    while f"{run}--{n}" in taken:
        n += 1
    meta["resumes"] = job
    entrypoint = f"{DRIVER} --storage {shlex.quote(meta['storage'])} --run {shlex.quote(run)} --kind {kind}"
    return _submit(cluster.client, entrypoint, f"{run}--{n}", meta, {})


def _refuse_active(jobs: list[Any], run: str, then: str) -> None:
    """A run is searched by one job at a time."""
    for j in jobs:
        if (j.metadata or {}).get("run") == run and _status(j) in ACTIVE:
            raise AutopruneError(f"job {j.submission_id} is {_status(j)} on run {run!r}; "
                                 + then.format(job=j.submission_id))


# ---------------------------------------------------------------------------------- list, logs


@dataclass
class JobRow:
    """One line of ``autoprune jobs``."""

    job: str
    status: str
    kind: str
    run: str
    done: int | None
    planned: int | None
    best: float | None
    submitted: float | None
    message: str = ""


def progress(store: Storage, run: str, kind: str) -> tuple[int, float | None]:
    """Evaluations recorded so far and the best proxy accuracy among them, read from the storage."""
    from autoprune.atomic import read_parquet_bytes

    files = [(RUNS, run, "trials.parquet")]
    if kind == "run":
        files = [(RUNS, run, RUNS, name, "trials.parquet") for name in store.list_dir(RUNS, run, RUNS)]
    done, best = 0, None
    for parts in files:
        if not store.is_file(*parts):
            continue
        # one read of the bytes: the job may rename a new table over this one while we look
        column = read_parquet_bytes(store.read_bytes(*parts))["val_accuracy"]
        done += len(column)
        values = [v for v in column.tolist() if v is not None and v == v]
        if values:
            best = max(values) if best is None else max(best, max(values))
    return done, best


def _finished(store: Storage, run: str, kind: str) -> bool:
    return store.is_file(RUNS, run, "report", "report.md") if kind == "run" else store.is_file(RUNS, run, "summary.json")


def list_jobs(address: str | None = None) -> list[JobRow]:
    """The autoprune jobs on the cluster, oldest first, with their progress (where the storage is readable)."""
    cluster = connect(address)
    rows, stores = [], {}
    for j in _autoprune_jobs(cluster):
        meta = j.metadata
        done = best = None
        try:
            store = stores.get(meta["storage"]) or stores.setdefault(meta["storage"], Storage(meta["storage"]))
            done, best = progress(store, meta["run"], meta.get("kind", "search"))
        except Exception:  # the storage may not be reachable from here: progress unknown
            pass
        message = "" if _status(j) != "FAILED" else _last_error(j.message or "")
        rows.append(JobRow(j.submission_id, _status(j), meta.get("kind", "search"), meta["run"], done,
                           int(meta["planned"]) if meta.get("planned") else None, best,
                           (j.start_time or 0) / 1000 or None, message))
    return rows


def _last_error(message: str) -> str:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("autoprune: error:")]
    return (errors or lines or [""])[-1][:300]


def logs(job: str, *, address: str | None = None, follow: bool = False,
         write: Callable[[str], Any] = sys.stdout.write) -> str:
    """Write the job's log (``follow``: until it ends); return its status."""
    cluster = connect(address)
    job_details(cluster, job)
    if not follow:
        write(_request("reading logs", lambda: cluster.client.get_job_logs(job)))
        return _status(job_details(cluster, job))

    async def tail() -> None:
        async for lines in cluster.client.tail_job_logs(job):
            write(lines)

    _request("following logs", lambda: asyncio.run(tail()))
    for _ in range(50):  # the log ends just before Ray records the final status
        status = _status(job_details(cluster, job))
        if status not in ACTIVE:
            break
        time.sleep(0.2)
    return status


def stop(job: str, *, address: str | None = None) -> str:
    """Ask Ray to stop a job (SIGTERM to its driver); return its status before the stop."""
    cluster = connect(address)
    status = _status(job_details(cluster, job))
    if status in ACTIVE:
        _request("stopping the job", lambda: cluster.client.stop_job(job))
    return status


# ---------------------------------------------------------------------------------------- fetch


def fetch(job: str, out: str | Path = "runs", *, address: str | None = None) -> Path:
    """Copy a finished job's run dir to ``out/<run>`` (through a temporary dir: all or nothing)."""
    cluster = connect(address)
    info = job_details(cluster, job)
    meta, status = info.metadata, _status(info)
    run, kind = meta["run"], meta.get("kind", "search")
    _refuse_active(_autoprune_jobs(cluster), run, "wait for it (autoprune logs {job} --follow), then fetch")
    store = Storage(meta["storage"])
    if store.local is not None and not store.local.is_dir():
        raise AutopruneError(f"the job's storage {store.root!r} is not mounted here; fetch needs it (or a URI "
                             "storage both sides reach)")
    if not _finished(store, run, kind):
        raise AutopruneError(f"job {job} is {status} and its run has not finished; "
                             f"resume it with autoprune submit --resume {job}")
    return store.download((RUNS, run), Path(out) / run)
