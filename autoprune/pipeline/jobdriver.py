"""The driver of a submitted job: what ``autoprune submit`` runs on the cluster.

``python -m autoprune.pipeline.jobdriver --storage ROOT --run RUN --kind search|run [--package DIR]``

1. The job's package (config.yaml, inputs/, user code) is kept on the storage, under
   ``jobs/RUN/package``: the first job uploads it from its Ray working dir (``--package``), a
   resubmitted job downloads it. It is unpacked at a fixed local place (``<tmp>/autoprune-jobs/RUN``),
   so a resubmitted job sees the same paths, and the config's relative paths resolve there.
2. The run dir is ``runs/RUN`` on the storage: written in place on a directory root, staged and
   synced (:class:`~autoprune.pipeline.storage.Syncer`) on a URI root.
3. A run dir that holds a started run is resumed (``run_search(resume=...)`` or the experiment's
   ``Tuner.restore``): a stopped or crashed job loses no finished evaluation when resubmitted.
4. The report is written into the run dir at the end (``report/``).

``SIGTERM`` (``ray job stop``) interrupts the search like Ctrl-C: files are written atomically, the
staged run dir is synced once more, and the exit code is 130. A user error prints one
``autoprune: error: ...`` line and exits 2, as on the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from autoprune.errors import AutopruneError
from autoprune.latency.lutdir import ENV_VAR as LUT_DIR_ENV
from autoprune.pipeline.storage import JOBS, LUTS, RUNS, Storage, Syncer

log = logging.getLogger(__name__)
PACKAGE = "package"


def workdir(run: str) -> Path:
    """The fixed local directory of a run's job on this node."""
    return Path(tempfile.gettempdir()) / "autoprune-jobs" / run


def unpack(storage: Storage, run: str, package: Path | None) -> Path:
    """Put the job's package on the storage (first job) or fetch it (resubmission); return its local copy."""
    local = workdir(run) / PACKAGE
    if package is not None:
        storage.upload(package.resolve(), JOBS, run, PACKAGE)
    elif not storage.is_file(JOBS, run, PACKAGE, "config.yaml"):
        raise AutopruneError(f"the inputs of run {run!r} are not on {storage.root!r} (jobs/{run}/package); "
                             "submit the config again")
    shutil.rmtree(local, ignore_errors=True)
    if package is not None:
        shutil.copytree(package, local)
    else:
        storage.download((JOBS, run, PACKAGE), local)
    return local


def run_dir_for(storage: Storage, run: str) -> tuple[Path, Syncer | None]:
    """The run dir to write: in place on a directory root, else a staged copy kept in sync."""
    if storage.local is not None:
        return storage.local / RUNS / run, None
    staged = workdir(run) / "run"
    shutil.rmtree(staged, ignore_errors=True)
    if storage.is_dir(RUNS, run):
        storage.download((RUNS, run), staged)
    return staged, Syncer(storage, staged, (RUNS, run)).start()


def run_job(storage_root: str, run: str, kind: str, package: Path | None = None) -> str:
    """Run (or resume) job ``run`` of ``kind`` ``search`` or ``run``; return where its run dir is."""
    from autoprune.config import load_config

    storage = Storage(storage_root)
    pkg = unpack(storage, run, package)
    os.chdir(pkg)  # the config's relative paths (inputs/...) and user code resolve here
    sys.path.insert(0, str(pkg))
    shared_luts = storage.local_path(LUTS)
    if shared_luts is not None and shared_luts.is_dir():  # the cluster's per-device LUTs serve every job
        os.environ.setdefault(LUT_DIR_ENV, str(shared_luts))  # (a config's own `luts:` still wins)
    cfg = load_config(pkg / "config.yaml")
    if package is None and (kind == "run" or cfg.ray.workers > 0):
        _join_ray(pkg)
    run_dir, syncer = run_dir_for(storage, run)
    try:
        if kind == "run":
            _experiment(cfg, run_dir)
        else:
            _search(cfg, run_dir)
    finally:
        if syncer is not None:
            syncer.stop()  # if this fails, the staged copy stays on this node
        os.chdir(tempfile.gettempdir())
        shutil.rmtree(workdir(run), ignore_errors=True)  # everything is on the storage
    return storage.uri(RUNS, run)


def _join_ray(pkg: Path) -> None:
    """A resubmitted job has no Ray ``working_dir`` of its own: join the cluster with the package as the
    workers' working dir, so evaluation actors and Tune trials can import the user's code."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, runtime_env={"working_dir": str(pkg)},
                 log_to_driver=False)


def _search(cfg, run_dir: Path) -> None:
    from autoprune.pipeline.report import write_report
    from autoprune.pipeline.run import run_search

    if (run_dir / "summary.json").is_file():
        log.info("run %s already finished", run_dir.name)
        return
    resume = run_dir if (run_dir / "config.yaml").is_file() else None
    log.info("%s search %s in %s", "resuming" if resume else "starting", cfg.searcher_name, run_dir)
    run_search(cfg, out=run_dir, resume=resume, progress=False)
    write_report([run_dir], run_dir / "report")


def _experiment(cfg, out: Path) -> None:
    from ray import tune

    from autoprune.pipeline.experiments import run_experiment
    from autoprune.pipeline.report import write_report

    resume = tune.Tuner.can_restore(str(out / "tune"))
    log.info("%s experiment in %s", "resuming" if resume else "starting", out)
    failed = run_experiment(cfg, out, resume)
    if any((out / RUNS).rglob("summary.json")):
        write_report([out / RUNS], out / "report")
    if failed:
        raise AutopruneError(f"{len(failed)} trial(s) failed ({', '.join(failed)}); resubmit the job to retry them")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoprune.pipeline.jobdriver")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--kind", choices=("search", "run"), default="search")
    parser.add_argument("--package", type=Path, help="the job's Ray working dir (first submission)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        where = run_job(args.storage, args.run, args.kind, args.package)
    except AutopruneError as exc:
        print(f"autoprune: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("autoprune: stopped; finished trials are saved (resubmit with autoprune submit --resume)",
              file=sys.stderr, flush=True)
        return 130
    print(f"autoprune: finished run {args.run}: {where}", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
