"""Optional experiment tracking of a search: MLflow and TensorBoard (``tracking:`` in the config).

:func:`track` wraps a search: it hooks a tracker onto the :class:`~autoprune.search.records.TrialRecorder`
(``recorder.observers``), so every trial is logged as the searcher records it, whatever the searcher,
and logs the result when the search ends.

MLflow layout (what MLflow's own hyperparameter-search integrations do): one MLflow experiment per
``name`` of the config; one **parent run per search** (named after the run dir) with the config as
params, the search progress as step metrics (``search/val_accuracy``, ``search/best_val_accuracy``,
``search/reward``, ``search/<cost>_kept``; step = trial index), the summary as metrics, and the run dir's
files as artifacts (``run/``: config, best plan, summary, trials; ``model/pruned_model.pt``;
``report/``: report.md and plots); and one **nested run per trial** (``trial-0007``) whose params are
the plan (``ratio/<unit>``, ``channels/<unit>``) and whose metrics are its kept FLOPs / params /
latency, proxy accuracy and reward, so the UI can compare and chart trials. A resumed search continues
its parent run (its id is kept in ``<run_dir>/tracking.json``); a trial that the searcher recorded
again after a resume replaces its earlier nested run.

The store is ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's local default
(``sqlite:///mlflow.db`` in the working directory); with a SQLite store the artifacts go to
``mlruns/<experiment>`` beside the database.

TensorBoard: the same progress scalars go to ``<run_dir>/tensorboard`` (beside what SB3 writes with
``searcher.tensorboard`` and Ray Tune writes in an ``autoprune run`` directory).

A failure to log never stops a search: it is logged as a warning and the search goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from autoprune.atomic import atomic_write_json
from autoprune.config import ExperimentConfig
from autoprune.errors import AutopruneError
from autoprune.search.records import TrialRecorder

log = logging.getLogger(__name__)
STATE_FILE = "tracking.json"
PARAM_BATCH = 100  # MLflow's log_batch limit on params per call
SKIPPED = ("index", "time")


@contextlib.contextmanager
def track(cfg: ExperimentConfig, run_dir: Path, recorder: TrialRecorder) -> Iterator[None]:
    """Track the search that runs inside this block (a no-op unless ``cfg.tracking`` turns it on).

    :param cfg: the experiment (its ``tracking`` section decides what is logged).
    :param run_dir: the run directory (it exists; ``summary.json`` is read when the block ends).
    :param recorder: the search's trial recorder; the trackers observe its appends.
    """
    trackers: list[Any] = []
    try:
        if cfg.tracking.mlflow:
            trackers.append(MlflowTracker(cfg, run_dir, recorder))
        if cfg.tracking.tensorboard:
            trackers.append(TensorBoardTracker(run_dir, recorder))
    except BaseException:
        for tracker in trackers:
            _quietly(tracker.close, "FAILED")
        raise
    for tracker in trackers:
        recorder.observers.append(tracker.trial)
    status = "FINISHED"
    try:
        yield
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        for tracker in trackers:
            recorder.observers.remove(tracker.trial)
            _quietly(tracker.close, status)


def _quietly(fn, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:  # tracking is a side channel: it must not end a search
        log.warning("experiment tracking failed (%s: %s); the search goes on", type(exc).__name__, exc)


def _number(value: Any) -> float | None:
    """A finite number as float, else None (bools, strings, NaN are not metrics)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def progress_metrics(row: dict[str, Any], best: float | None) -> dict[str, float]:
    """The ``search/*`` scalars of one trial row (``best`` is the best accuracy up to it)."""
    out = {f"search/{k}": v for k in ("val_accuracy", "reward") if (v := _number(row.get(k))) is not None}
    out.update({f"search/{k}": v for k in row if k.endswith("_kept") and (v := _number(row[k])) is not None})
    if best is not None:
        out["search/best_val_accuracy"] = best
    return out


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _Best:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        accs = [a for r in rows if (a := _number(r.get("val_accuracy"))) is not None]
        self.value = max(accs) if accs else None

    def update(self, row: dict[str, Any]) -> float | None:
        acc = _number(row.get("val_accuracy"))
        if acc is not None and (self.value is None or acc > self.value):
            self.value = acc
        return self.value


# ------------------------------------------------------------------------------------------ MLflow


def _mlflow():
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise AutopruneError("tracking.mlflow needs the mlflow package; pip install 'autoprune[service]'") from exc
    if not log.isEnabledFor(logging.INFO):  # MLflow's own INFO lines (store creation) only with -v
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    return mlflow, MlflowClient


def _sqlite_file(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Several searches may create one SQLite store at once (Tune trials): one at a time."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class MlflowTracker:
    """A parent run per search, a nested run per trial (see the module docstring)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: Path, recorder: TrialRecorder) -> None:
        mlflow, client_cls = _mlflow()
        self.run_dir = run_dir
        self.uri = cfg.tracking.uri or mlflow.get_tracking_uri()
        self.children: dict[int, str] = {}
        try:
            with _store_lock(self.uri):  # creating the client creates a new store's tables
                self.client = client_cls(self.uri)
                self.experiment_id = self._experiment(cfg.name)
                self.parent = self._parent(cfg)
        except Exception as exc:
            raise AutopruneError(f"MLflow tracking store {self.uri!r} is not usable ({type(exc).__name__}: "
                                 f"{' '.join(str(exc).split())[:200]}); fix tracking.uri or set "
                                 "tracking.mlflow: false") from exc
        self.best = _Best([])
        for row in recorder.rows:  # trials recorded before a resume (and not logged yet)
            if int(row["index"]) not in self.children:
                self.trial(row)
            else:
                self.best.update(row)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        db = _sqlite_file(self.uri)
        location = (db.parent / "mlruns" / name).as_uri() if db else None
        return self.client.create_experiment(name, artifact_location=location)

    def _parent(self, cfg: ExperimentConfig) -> str:
        state_path = self.run_dir / STATE_FILE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        previous = state.get("mlflow", {})
        if previous.get("tracking_uri") == self.uri and previous.get("run_id"):
            try:
                run_id = self.client.get_run(previous["run_id"]).info.run_id
            except Exception:  # deleted, or another store: start a new parent run
                run_id = None
            if run_id:
                self.client.update_run(run_id, status="RUNNING")
                children = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'",
                                                   max_results=50000)
                self.children = {int(r.data.tags["autoprune.trial"]): r.info.run_id for r in children
                                 if "autoprune.trial" in r.data.tags}
                return run_id
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id, run_name=self.run_dir.name,
                                     tags={"autoprune.run_dir": str(self.run_dir.resolve()),
                                           "autoprune.searcher": cfg.searcher_name})
        params = [Param(k, str(v)[:6000]) for k, v in flatten(cfg.to_dict()).items() if v is not None]
        for i in range(0, len(params), PARAM_BATCH):
            self.client.log_batch(run.info.run_id, params=params[i:i + PARAM_BATCH])
        atomic_write_json(state_path, {"mlflow": {"tracking_uri": self.uri, "experiment_id": self.experiment_id,
                                                  "run_id": run.info.run_id}})
        return run.info.run_id

    def trial(self, row: dict[str, Any]) -> None:
        _quietly(self._trial, row)

    def _trial(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param

        index, now = int(row["index"]), int(time.time() * 1000)
        best = self.best.update(row)
        if index in self.children:  # recorded again after a resume: the new trial replaces the old
            self.client.delete_run(self.children.pop(index))
        params, metrics = [], []
        for key, value in row.items():
            if key in SKIPPED:
                continue
            number = _number(value)
            if key.startswith(("ratio/", "channels/")) or isinstance(value, str):
                params.append(Param(key, str(value)[:6000]))
            elif number is not None:
                metrics.append(Metric(key, number, now, 0))
        child = self.client.create_run(self.experiment_id, run_name=f"trial-{index:04d}",
                                       tags={"mlflow.parentRunId": self.parent, "autoprune.trial": str(index)})
        run_id = child.info.run_id
        for i in range(0, max(len(params), 1), PARAM_BATCH):
            self.client.log_batch(run_id, metrics=metrics if i == 0 else [], params=params[i:i + PARAM_BATCH])
        self.client.set_terminated(run_id)
        self.children[index] = run_id
        self.client.log_batch(self.parent, metrics=[Metric(k, v, now, index)
                                                    for k, v in progress_metrics(row, best).items()])

    def close(self, status: str) -> None:
        try:
            if (self.run_dir / "summary.json").is_file():
                _quietly(self._summary)
                _quietly(self._artifacts)
                _quietly(self._report)
        finally:
            self.client.set_terminated(self.parent, status)

    def _summary(self) -> None:
        from mlflow.entities import Metric

        summary = json.loads((self.run_dir / "summary.json").read_text())
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, 0) for k, value in flatten(summary).items() if (v := _number(value)) is not None]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.parent, metrics=metrics[i:i + 1000])

    def _artifacts(self) -> None:
        for name in ("config.yaml", "best_plan.json", "summary.json", "trials.parquet"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.parent, str(self.run_dir / name), "run")
        if (self.run_dir / "pruned_model.pt").is_file():
            self.client.log_artifact(self.parent, str(self.run_dir / "pruned_model.pt"), "model")

    def _report(self) -> None:
        from autoprune.pipeline.report import write_report

        with tempfile.TemporaryDirectory() as tmp:
            write_report([self.run_dir], tmp)
            self.client.log_artifacts(self.parent, tmp, "report")


# ------------------------------------------------------------------------------------- TensorBoard


class TensorBoardTracker:
    """Search progress scalars in ``<run_dir>/tensorboard`` (tensorboardX, else torch's writer)."""

    def __init__(self, run_dir: Path, recorder: TrialRecorder) -> None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise AutopruneError("tracking.tensorboard needs tensorboardX; pip install tensorboardX") from exc
        self.run_dir = run_dir
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10)
        self.best = _Best(recorder.rows)

    def trial(self, row: dict[str, Any]) -> None:
        _quietly(self._trial, row)

    def _trial(self, row: dict[str, Any]) -> None:
        for key, value in progress_metrics(row, self.best.update(row)).items():
            self.writer.add_scalar(key, value, int(row["index"]))

    def close(self, status: str) -> None:
        summary_path = self.run_dir / "summary.json"
        if summary_path.is_file():
            summary = json.loads(summary_path.read_text())
            for key, value in flatten(summary).items():
                if (v := _number(value)) is not None:
                    self.writer.add_scalar(f"summary/{key}", v, 0)
        self.writer.close()
